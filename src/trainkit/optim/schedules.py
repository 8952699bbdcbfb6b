"""Learning-rate schedules as pure functions of the step: the multiplier of the base learning rate.

Each class is a frozen dataclass whose ``__call__(step)`` returns the factor transformers'
schedule of the same name gives (same formula, same floating-point operations), so that
``base_lr * schedule(step)`` equals transformers' learning rate. They need no optimizer and no
torch, which makes them easy to test and to plot. The formulas are written out in docs/schedulers.md.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = [
    "ConstantSchedule",
    "CosineSchedule",
    "CosineWarmupWithMinLRSchedule",
    "CosineWithRestartsSchedule",
    "InverseSqrtSchedule",
    "LinearSchedule",
    "PolynomialSchedule",
    "Schedule",
    "WarmupStableDecaySchedule",
]

SHAPES = ("linear", "cosine", "1-sqrt")


def _linear_warmup(step: int, num_warmup_steps: int) -> float:
    return float(step) / float(max(1, num_warmup_steps))


def _progress(step: int, num_warmup_steps: int, num_training_steps: int) -> float:
    return float(step - num_warmup_steps) / float(max(1, num_training_steps - num_warmup_steps))


@dataclass(frozen=True)
class Schedule:
    """A learning-rate multiplier as a function of the number of scheduler steps taken."""

    name: ClassVar[str] = "schedule"

    def __call__(self, step: int) -> float:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """The schedule's name and parameters as plain values (stored in the scheduler's state_dict)."""
        return {"schedule": self.name, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class ConstantSchedule(Schedule):
    """1 at every step; with ``num_warmup_steps`` a linear warmup from 0 first (``constant_with_warmup``)."""

    num_warmup_steps: int = 0
    name: ClassVar[str] = "constant"

    def __call__(self, step: int) -> float:
        if step < self.num_warmup_steps:
            return float(step) / float(max(1.0, self.num_warmup_steps))
        return 1.0


@dataclass(frozen=True)
class LinearSchedule(Schedule):
    """Linear warmup from 0 to 1, then linear decay to 0 at ``num_training_steps``."""

    num_warmup_steps: int
    num_training_steps: int
    name: ClassVar[str] = "linear"

    def __call__(self, step: int) -> float:
        if step < self.num_warmup_steps:
            return _linear_warmup(step, self.num_warmup_steps)
        remaining = float(self.num_training_steps - step) / float(
            max(1, self.num_training_steps - self.num_warmup_steps)
        )
        return max(0.0, remaining)


@dataclass(frozen=True)
class CosineSchedule(Schedule):
    """Linear warmup, then a cosine of ``num_cycles`` periods from 1 down to ``min_lr_rate``."""

    num_warmup_steps: int
    num_training_steps: int
    num_cycles: float = 0.5
    min_lr_rate: float = 0.0
    name: ClassVar[str] = "cosine"

    def __call__(self, step: int) -> float:
        if step < self.num_warmup_steps:
            return _linear_warmup(step, self.num_warmup_steps)
        progress = _progress(step, self.num_warmup_steps, self.num_training_steps)
        factor = 0.5 * (1.0 + math.cos(math.pi * float(self.num_cycles) * 2.0 * progress))
        return max(0.0, factor * (1 - self.min_lr_rate) + self.min_lr_rate)


@dataclass(frozen=True)
class CosineWithRestartsSchedule(Schedule):
    """Linear warmup, then ``num_cycles`` cosine decays from 1 to 0, each restarting at 1; 0 from the end on."""

    num_warmup_steps: int
    num_training_steps: int
    num_cycles: float = 1
    name: ClassVar[str] = "cosine_with_restarts"

    def __call__(self, step: int) -> float:
        if step < self.num_warmup_steps:
            return _linear_warmup(step, self.num_warmup_steps)
        progress = _progress(step, self.num_warmup_steps, self.num_training_steps)
        if progress >= 1.0:
            return 0.0
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((float(self.num_cycles) * progress) % 1.0))))


@dataclass(frozen=True)
class PolynomialSchedule(Schedule):
    """Linear warmup, then ``(lr_init - lr_end) * remaining**power + lr_end`` (over ``lr_init``); ``lr_end`` after."""

    num_warmup_steps: int
    num_training_steps: int
    lr_init: float
    lr_end: float = 1e-7
    power: float = 1.0
    name: ClassVar[str] = "polynomial"

    def __call__(self, step: int) -> float:
        if step < self.num_warmup_steps:
            return _linear_warmup(step, self.num_warmup_steps)
        decay_steps = self.num_training_steps - self.num_warmup_steps
        # transformers divides by zero here when warmup fills the whole run; the decay is over, so: the end value.
        if step > self.num_training_steps or decay_steps == 0:
            return self.lr_end / self.lr_init
        remaining = 1 - (step - self.num_warmup_steps) / decay_steps
        return ((self.lr_init - self.lr_end) * remaining**self.power + self.lr_end) / self.lr_init


@dataclass(frozen=True)
class InverseSqrtSchedule(Schedule):
    """Linear warmup, then ``1 / sqrt((step + timescale - num_warmup_steps) / timescale)``."""

    num_warmup_steps: int
    timescale: int
    name: ClassVar[str] = "inverse_sqrt"

    def __call__(self, step: int) -> float:
        if step < self.num_warmup_steps:
            return _linear_warmup(step, self.num_warmup_steps)
        shift = self.timescale - self.num_warmup_steps
        return 1.0 / math.sqrt((step + shift) / self.timescale)


@dataclass(frozen=True)
class CosineWarmupWithMinLRSchedule(Schedule):
    """transformers' shifted variant: warmup reaches 1 at step ``W - 1`` and the cosine ends at ``T - 1``.

    Warmup is ``(step + 1) / W``, or from ``warmup_lr_rate`` to 1 when that is set; the cosine then
    runs from 1 to ``min_lr_rate`` with ``progress = (step - W + 1) / (T - W)``.
    """

    num_warmup_steps: int
    num_training_steps: int
    min_lr_rate: float
    num_cycles: float = 0.5
    warmup_lr_rate: float | None = None
    name: ClassVar[str] = "cosine_warmup_with_min_lr"

    def __call__(self, step: int) -> float:
        current, warmup, total = float(step), float(self.num_warmup_steps), float(self.num_training_steps)
        if current < warmup:
            if self.warmup_lr_rate is None:
                return (current + 1.0) / max(1.0, warmup)
            rate = float(self.warmup_lr_rate)
            return rate + (1.0 - rate) * current / max(1, warmup - 1)
        progress = (current - warmup + 1.0) / max(1.0, total - warmup)
        factor = 0.5 * (1.0 + math.cos(math.pi * self.num_cycles * 2.0 * progress))
        return max(0.0, factor * (1 - self.min_lr_rate) + self.min_lr_rate)


@dataclass(frozen=True)
class WarmupStableDecaySchedule(Schedule):
    """Warmup (linear / cosine / 1-sqrt) from ``min_lr_ratio`` to 1, a constant stage, a decay back to it."""

    num_warmup_steps: int
    num_stable_steps: int
    num_decay_steps: int
    warmup_type: str = "linear"
    decay_type: str = "cosine"
    min_lr_ratio: float = 0.0
    num_cycles: float = 0.5
    name: ClassVar[str] = "warmup_stable_decay"

    def __post_init__(self) -> None:
        for field, value in (("warmup_type", self.warmup_type), ("decay_type", self.decay_type)):
            if value not in SHAPES:
                raise ValueError(f"warmup_stable_decay: {field}={value!r} must be 'linear', 'cosine' or '1-sqrt'")

    def __call__(self, step: int) -> float:
        warmup, stable, decay = self.num_warmup_steps, self.num_stable_steps, self.num_decay_steps
        if step < warmup:
            progress = float(step) / float(max(1, warmup))
            factor = _rising(self.warmup_type, progress)
        elif step < warmup + stable:
            return 1.0
        elif step < warmup + stable + decay:
            progress = float(step - warmup - stable) / float(max(1, decay))
            factor = _falling(self.decay_type, progress, self.num_cycles)
        else:
            return self.min_lr_ratio
        return max(0.0, factor * (1.0 - self.min_lr_ratio) + self.min_lr_ratio)


def _rising(shape: str, progress: float) -> float:
    if shape == "linear":
        return progress
    if shape == "cosine":
        return 0.5 * (1.0 - math.cos(math.pi * progress))
    return 1.0 - math.sqrt(1.0 - progress)


def _falling(shape: str, progress: float, num_cycles: float) -> float:
    if shape == "linear":
        return 1.0 - progress
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress))
    return 1.0 - math.sqrt(progress)
