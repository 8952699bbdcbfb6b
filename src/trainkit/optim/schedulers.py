"""The SCHEDULERS entries (transformers' ``lr_scheduler_type`` names), ``get_scheduler`` and ``create_scheduler``.

Every entry builds a ``ScheduledLR`` over the pure schedule of ``schedules.py`` (the same curve as
transformers), except ``reduce_lr_on_plateau``, a ``torch.optim.lr_scheduler.ReduceLROnPlateau`` that
the loop steps with a metric after evaluation. Torch is imported when an entry is called, not here.
"""

from __future__ import annotations

import inspect
import math
import numbers
from typing import TYPE_CHECKING, Any

from trainkit.optim.optim_args import check_keywords
from trainkit.optim.registries import SCHEDULERS
from trainkit.optim.schedules import (
    ConstantSchedule,
    CosineSchedule,
    CosineWarmupWithMinLRSchedule,
    CosineWithRestartsSchedule,
    InverseSqrtSchedule,
    LinearSchedule,
    PolynomialSchedule,
    Schedule,
    WarmupStableDecaySchedule,
)
from trainkit.utils.logging import get_logger

if TYPE_CHECKING:
    from torch.optim import Optimizer
    from torch.optim.lr_scheduler import LRScheduler

    from trainkit.args import TrainingArguments

__all__ = ["check_scheduler_kwargs", "create_scheduler", "get_scheduler"]

logger = get_logger(__name__)

STEP_ARGUMENTS = ("num_warmup_steps", "num_training_steps")


# ------------------------------------------------------------------ validation helpers
def _check_steps(name: str, **values: Any) -> None:
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise ValueError(f"lr scheduler {name!r}: {key} must be a non-negative integer, got {value!r}")


def _check_number(name: str, key: str, value: Any, low: float = -math.inf, high: float = math.inf) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
    if not ok or not low <= float(value) <= high:
        bounds = "" if (low, high) == (-math.inf, math.inf) else f" in [{low}, {high}]"
        raise ValueError(f"lr scheduler {name!r}: {key} must be a finite number{bounds}, got {value!r}")


def _min_lr_rate(name: str, optimizer: Optimizer, min_lr: float | None, min_lr_rate: float | None) -> float:
    """transformers' rule: exactly one of ``min_lr`` (absolute) and ``min_lr_rate`` (a ratio of the lr)."""
    if min_lr is not None and min_lr_rate is not None:
        raise ValueError(f"lr scheduler {name!r}: set only one of min_lr and min_lr_rate")
    if min_lr is None and min_lr_rate is None:
        raise ValueError(f"lr scheduler {name!r}: one of min_lr or min_lr_rate must be set in lr_scheduler_kwargs")
    if min_lr is not None:
        _check_number(name, "min_lr", min_lr, 0.0, optimizer.defaults["lr"])
        return float(min_lr) / optimizer.defaults["lr"]
    _check_number(name, "min_lr_rate", min_lr_rate, 0.0, 1.0)
    return float(min_lr_rate)  # type: ignore[arg-type]


def _scheduled(optimizer: Optimizer, schedule: Schedule, last_epoch: int) -> LRScheduler:
    from trainkit.optim.lr_scheduler import ScheduledLR

    return ScheduledLR(optimizer, schedule, last_epoch)


# ---------------------------------------------------------------------------- entries
@SCHEDULERS.register("linear", description="Linear warmup from 0, then linear decay to 0 at the last step.")
def linear(optimizer: Optimizer, num_warmup_steps: int, num_training_steps: int, last_epoch: int = -1) -> LRScheduler:
    _check_steps("linear", num_warmup_steps=num_warmup_steps, num_training_steps=num_training_steps)
    return _scheduled(optimizer, LinearSchedule(num_warmup_steps, num_training_steps), last_epoch)


@SCHEDULERS.register("cosine", description="Linear warmup, then a half cosine (num_cycles=0.5) down to 0.")
def cosine(
    optimizer: Optimizer, num_warmup_steps: int, num_training_steps: int, num_cycles: float = 0.5, last_epoch: int = -1
) -> LRScheduler:
    _check_steps("cosine", num_warmup_steps=num_warmup_steps, num_training_steps=num_training_steps)
    _check_number("cosine", "num_cycles", num_cycles)
    return _scheduled(optimizer, CosineSchedule(num_warmup_steps, num_training_steps, num_cycles), last_epoch)


@SCHEDULERS.register(
    "cosine_with_restarts", description="Linear warmup, then num_cycles cosine decays (hard restarts)."
)
def cosine_with_restarts(
    optimizer: Optimizer, num_warmup_steps: int, num_training_steps: int, num_cycles: float = 1, last_epoch: int = -1
) -> LRScheduler:
    _check_steps("cosine_with_restarts", num_warmup_steps=num_warmup_steps, num_training_steps=num_training_steps)
    _check_number("cosine_with_restarts", "num_cycles", num_cycles, 0.0)
    schedule = CosineWithRestartsSchedule(num_warmup_steps, num_training_steps, num_cycles)
    return _scheduled(optimizer, schedule, last_epoch)


@SCHEDULERS.register("polynomial", description="Linear warmup, then polynomial decay (power) from the lr to lr_end.")
def polynomial(
    optimizer: Optimizer,
    num_warmup_steps: int,
    num_training_steps: int,
    lr_end: float = 1e-7,
    power: float = 1.0,
    last_epoch: int = -1,
) -> LRScheduler:
    _check_steps("polynomial", num_warmup_steps=num_warmup_steps, num_training_steps=num_training_steps)
    lr_init = optimizer.defaults["lr"]
    _check_number("polynomial", "lr_end", lr_end, 0.0)
    if not lr_init > lr_end:
        raise ValueError(f"lr scheduler 'polynomial': lr_end ({lr_end}) must be smaller than initial lr ({lr_init})")
    _check_number("polynomial", "power", power, 0.0)
    if power == 0:  # 0**0 == 1 would hold the lr at its peak through the last step
        raise ValueError("lr scheduler 'polynomial': power must be > 0, got 0")
    schedule = PolynomialSchedule(num_warmup_steps, num_training_steps, lr_init, lr_end, power)
    return _scheduled(optimizer, schedule, last_epoch)


@SCHEDULERS.register("constant", description="The optimizer's lr at every step (no warmup).")
def constant(optimizer: Optimizer, last_epoch: int = -1) -> LRScheduler:
    return _scheduled(optimizer, ConstantSchedule(), last_epoch)


@SCHEDULERS.register("constant_with_warmup", description="Linear warmup from 0, then the optimizer's lr.")
def constant_with_warmup(optimizer: Optimizer, num_warmup_steps: int, last_epoch: int = -1) -> LRScheduler:
    _check_steps("constant_with_warmup", num_warmup_steps=num_warmup_steps)
    return _scheduled(optimizer, ConstantSchedule(num_warmup_steps), last_epoch)


@SCHEDULERS.register("inverse_sqrt", description="Linear warmup, then decay as 1/sqrt(step) scaled by timescale.")
def inverse_sqrt(
    optimizer: Optimizer, num_warmup_steps: int, timescale: int | None = None, last_epoch: int = -1
) -> LRScheduler:
    _check_steps("inverse_sqrt", num_warmup_steps=num_warmup_steps)
    if timescale is None:
        timescale = num_warmup_steps or 10_000
    _check_number("inverse_sqrt", "timescale", timescale, 1.0)
    return _scheduled(optimizer, InverseSqrtSchedule(num_warmup_steps, timescale), last_epoch)


@SCHEDULERS.register("reduce_lr_on_plateau", description="torch's ReduceLROnPlateau, stepped with the eval metric.")
def reduce_lr_on_plateau(
    optimizer: Optimizer,
    mode: str = "min",
    factor: float = 0.1,
    patience: int = 10,
    threshold: float = 1e-4,
    threshold_mode: str = "rel",
    cooldown: int = 0,
    min_lr: float | list[float] = 0.0,
    eps: float = 1e-8,
) -> LRScheduler:
    from torch.optim.lr_scheduler import ReduceLROnPlateau

    return ReduceLROnPlateau(
        optimizer,
        mode=mode,  # type: ignore[arg-type]
        factor=factor,
        patience=patience,
        threshold=threshold,
        threshold_mode=threshold_mode,  # type: ignore[arg-type]
        cooldown=cooldown,
        min_lr=min_lr,
        eps=eps,
    )


@SCHEDULERS.register("cosine_with_min_lr", description="Linear warmup, then a half cosine down to min_lr.")
def cosine_with_min_lr(
    optimizer: Optimizer,
    num_warmup_steps: int,
    num_training_steps: int,
    num_cycles: float = 0.5,
    last_epoch: int = -1,
    min_lr: float | None = None,
    min_lr_rate: float | None = None,
) -> LRScheduler:
    name = "cosine_with_min_lr"
    _check_steps(name, num_warmup_steps=num_warmup_steps, num_training_steps=num_training_steps)
    _check_number(name, "num_cycles", num_cycles)
    rate = _min_lr_rate(name, optimizer, min_lr, min_lr_rate)
    return _scheduled(optimizer, CosineSchedule(num_warmup_steps, num_training_steps, num_cycles, rate), last_epoch)


@SCHEDULERS.register(
    "cosine_warmup_with_min_lr", description="Warmup reaching the lr at step W-1, cosine reaching min_lr at T-1."
)
def cosine_warmup_with_min_lr(
    optimizer: Optimizer,
    num_warmup_steps: int,
    num_training_steps: int,
    num_cycles: float = 0.5,
    last_epoch: int = -1,
    min_lr: float | None = None,
    min_lr_rate: float | None = None,
    warmup_lr_rate: float | None = None,
) -> LRScheduler:
    name = "cosine_warmup_with_min_lr"
    _check_steps(name, num_warmup_steps=num_warmup_steps, num_training_steps=num_training_steps)
    _check_number(name, "num_cycles", num_cycles)
    rate = _min_lr_rate(name, optimizer, min_lr, min_lr_rate)
    if warmup_lr_rate is not None:
        _check_number(name, "warmup_lr_rate", warmup_lr_rate, 0.0, 1.0)
    schedule = CosineWarmupWithMinLRSchedule(num_warmup_steps, num_training_steps, rate, num_cycles, warmup_lr_rate)
    return _scheduled(optimizer, schedule, last_epoch)


@SCHEDULERS.register("warmup_stable_decay", description="Warmup, a constant stage, then a decay over num_decay_steps.")
def warmup_stable_decay(
    optimizer: Optimizer,
    num_warmup_steps: int,
    num_decay_steps: int | None = None,
    num_training_steps: int | None = None,
    num_stable_steps: int | None = None,
    warmup_type: str = "linear",
    decay_type: str = "cosine",
    min_lr_ratio: float = 0.0,
    num_cycles: float = 0.5,
    last_epoch: int = -1,
) -> LRScheduler:
    name = "warmup_stable_decay"
    if num_decay_steps is None:
        raise ValueError(f"lr scheduler {name!r} needs num_decay_steps in lr_scheduler_kwargs")
    _check_steps(name, num_warmup_steps=num_warmup_steps, num_decay_steps=num_decay_steps)
    if num_training_steps is not None:
        _check_steps(name, num_training_steps=num_training_steps)
    stable = _stable_steps(num_warmup_steps, num_decay_steps, num_training_steps, num_stable_steps)
    _check_number(name, "min_lr_ratio", min_lr_ratio, 0.0, 1.0)
    _check_number(name, "num_cycles", num_cycles)
    schedule = WarmupStableDecaySchedule(
        num_warmup_steps, stable, num_decay_steps, warmup_type, decay_type, min_lr_ratio, num_cycles
    )
    return _scheduled(optimizer, schedule, last_epoch)


def _stable_steps(warmup: int, decay: int, total: int | None, stable: int | None) -> int:
    """``num_stable_steps``, or what ``num_training_steps`` leaves after warmup and decay (transformers' rule)."""
    if stable is None and total is None:
        raise ValueError("lr scheduler 'warmup_stable_decay': either num_training_steps or num_stable_steps is needed")
    if stable is not None:
        _check_steps("warmup_stable_decay", num_stable_steps=stable)
        if total is not None and warmup + stable + decay != total:
            logger.warning(
                "warmup_stable_decay: num_stable_steps=%d is used; warmup + stable + decay = %d steps, "
                "but training runs %d (the steps after the decay stay at min_lr_ratio).",
                stable,
                warmup + stable + decay,
                total,
            )
        return stable
    assert total is not None
    # transformers allows a negative stable stage (warmup + decay > total): the decay then starts earlier.
    return total - warmup - decay


# ------------------------------------------------------------------- public functions
def _resolve_warmup(num_warmup_steps: int | float | None, num_training_steps: int | None) -> int | None:
    """An int, or a float in (0, 1) taken as a ratio of ``num_training_steps`` (rounded up, as transformers)."""
    if not isinstance(num_warmup_steps, float):
        return num_warmup_steps
    if num_warmup_steps.is_integer() and num_warmup_steps >= 0:
        return int(num_warmup_steps)
    if not 0 < num_warmup_steps < 1:
        raise ValueError(f"num_warmup_steps must be an integer or a ratio in (0, 1), got {num_warmup_steps!r}")
    if num_training_steps is None:
        raise ValueError(f"num_warmup_steps={num_warmup_steps} is a ratio of num_training_steps, which is not given")
    return math.ceil(num_training_steps * num_warmup_steps)


def get_scheduler(
    name: str,
    optimizer: Optimizer,
    num_warmup_steps: int | float | None = None,
    num_training_steps: int | None = None,
    scheduler_specific_kwargs: dict[str, Any] | None = None,
) -> LRScheduler:
    """Build the scheduler registered as ``name`` (transformers' ``get_scheduler``, same signature and errors).

    ``num_warmup_steps`` may also be a float in (0, 1): a ratio of ``num_training_steps``. A schedule
    that needs a step count raises ``ValueError("<name> requires `<arg>`, ...")`` when it is missing; a
    key of ``scheduler_specific_kwargs`` the schedule does not take raises a TypeError naming it.
    """
    name = str(getattr(name, "value", name))
    entry = SCHEDULERS.entry(name)
    user_kwargs = dict(scheduler_specific_kwargs or {})
    steps = {
        "num_warmup_steps": _resolve_warmup(num_warmup_steps, num_training_steps),
        "num_training_steps": num_training_steps,
    }
    step_kwargs = _step_kwargs(name, entry.factory, steps)  # first, as transformers checks these first
    check_scheduler_kwargs(name, user_kwargs)
    scheduler = SCHEDULERS.get(name, optimizer=optimizer, **step_kwargs, **user_kwargs)
    from torch.optim.lr_scheduler import LRScheduler

    if not isinstance(scheduler, LRScheduler):
        raise TypeError(f"lr scheduler {name!r} built a {type(scheduler).__name__}, which is not an LRScheduler")
    return scheduler


def check_scheduler_kwargs(name: str, kwargs: dict[str, Any], source: str = "lr_scheduler_kwargs") -> None:
    """Raise a TypeError naming a key of ``kwargs`` the scheduler ``name`` does not take (or a step count)."""
    for key in STEP_ARGUMENTS:
        if key in kwargs:
            raise TypeError(f"{source} must not set {key!r}: it comes from the warmup arguments and the run's length")
    factory = SCHEDULERS.entry(name, check_requirements=False).factory
    check_keywords(kwargs, factory, f"lr scheduler {name!r}", source, ("optimizer", *STEP_ARGUMENTS))


def _step_kwargs(name: str, factory: Any, steps: dict[str, int | None]) -> dict[str, int]:
    """The step counts ``factory`` names (all of them when it takes ``**kwargs``); a missing required one raises."""
    params = inspect.signature(factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    out: dict[str, int] = {}
    for key, value in steps.items():
        param = params.get(key)
        if param is None and not takes_any:
            continue
        if value is None:
            if param is not None and param.default is inspect.Parameter.empty:
                raise ValueError(f"{name} requires `{key}`, please provide that argument.")
            continue
        out[key] = value
    return out


def _takes_warmup(name: str) -> bool:
    """Whether the scheduler registered as ``name`` uses ``num_warmup_steps``."""
    params = inspect.signature(SCHEDULERS.entry(name, check_requirements=False).factory).parameters
    return "num_warmup_steps" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def create_scheduler(args: TrainingArguments, optimizer: Optimizer, num_training_steps: int) -> LRScheduler:
    """The scheduler ``args`` describe: ``lr_scheduler_type``, ``lr_scheduler_kwargs`` and the warmup of ``args``."""
    warmup = args.get_warmup_steps(num_training_steps)
    name = args.lr_scheduler_type
    if warmup > 0 and not _takes_warmup(name):
        logger.warning(
            "lr_scheduler_type=%r has no warmup, so the %d warmup steps of warmup_steps/warmup_ratio are not used "
            "(as in transformers); 'constant_with_warmup' is the constant schedule with a warmup.",
            name,
            warmup,
        )
    kwargs = args.lr_scheduler_kwargs if isinstance(args.lr_scheduler_kwargs, dict) else {}
    return get_scheduler(name, optimizer, warmup, num_training_steps, kwargs)
