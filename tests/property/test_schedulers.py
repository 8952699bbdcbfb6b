"""Every scheduler against its closed form (docs/schedulers.md) over random warmup, length and kwargs."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.optim_helpers import LR, Case, lr_curve, one_param_optimizer, safe_round_trip, scheduler_cases
from trainkit.optim import get_scheduler

# ----------------------------------------------------------------------------------- closed forms
# Written from docs/schedulers.md, independently of trainkit.optim.schedules.


def ramp(s: int, w: int) -> float:
    return s / max(1, w)


def half_cos(progress: float, cycles: float) -> float:
    return 0.5 * (1 + math.cos(2 * math.pi * cycles * progress))


def f_linear(s: int, w: int, t: int, kw: dict[str, Any]) -> float:
    return ramp(s, w) if s < w else max(0.0, (t - s) / max(1, t - w))


def f_cosine(s: int, w: int, t: int, kw: dict[str, Any]) -> float:
    return ramp(s, w) if s < w else max(0.0, half_cos((s - w) / max(1, t - w), kw.get("num_cycles", 0.5)))


def f_restarts(s: int, w: int, t: int, kw: dict[str, Any]) -> float:
    if s < w:
        return ramp(s, w)
    p = (s - w) / max(1, t - w)
    return 0.0 if p >= 1 else 0.5 * (1 + math.cos(math.pi * ((kw.get("num_cycles", 1) * p) % 1)))


def f_polynomial(s: int, w: int, t: int, kw: dict[str, Any]) -> float:
    end, power = kw.get("lr_end", 1e-7), kw.get("power", 1.0)
    if s < w:
        return ramp(s, w)
    if s > t or t == w:
        return end / LR
    return ((LR - end) * (1 - (s - w) / (t - w)) ** power + end) / LR


def f_constant(s: int, w: int, t: int, kw: dict[str, Any]) -> float:
    return 1.0


def f_constant_with_warmup(s: int, w: int, t: int, kw: dict[str, Any]) -> float:
    return ramp(s, w) if s < w else 1.0


def f_inverse_sqrt(s: int, w: int, t: int, kw: dict[str, Any]) -> float:
    scale = kw.get("timescale") or w or 10_000
    return ramp(s, w) if s < w else math.sqrt(scale / (s - w + scale))


def _min_rate(kw: dict[str, Any]) -> float:
    return kw["min_lr"] / LR if "min_lr" in kw else kw["min_lr_rate"]


def f_cosine_min(s: int, w: int, t: int, kw: dict[str, Any]) -> float:
    r = _min_rate(kw)
    return ramp(s, w) if s < w else r + (1 - r) * half_cos((s - w) / max(1, t - w), kw.get("num_cycles", 0.5))


def f_cosine_warmup_min(s: int, w: int, t: int, kw: dict[str, Any]) -> float:
    r, start = _min_rate(kw), kw.get("warmup_lr_rate")
    if s < w:
        return (s + 1) / w if start is None else start + (1 - start) * s / max(1, w - 1)
    return r + (1 - r) * half_cos((s - w + 1) / max(1, t - w), kw.get("num_cycles", 0.5))


def f_wsd(s: int, w: int, t: int, kw: dict[str, Any]) -> float:
    d, floor, cycles = kw["num_decay_steps"], kw.get("min_lr_ratio", 0.0), kw.get("num_cycles", 0.5)
    stable = t - w - d
    rise = {
        "linear": lambda p: p,
        "cosine": lambda p: (1 - math.cos(math.pi * p)) / 2,
        "1-sqrt": lambda p: 1 - math.sqrt(1 - p),
    }
    fall = {"linear": lambda p: 1 - p, "cosine": lambda p: half_cos(p, cycles), "1-sqrt": lambda p: 1 - math.sqrt(p)}
    if s < w:
        return floor + (1 - floor) * rise[kw.get("warmup_type", "linear")](s / max(1, w))
    if s < w + stable:
        return 1.0
    if s < t:
        return floor + (1 - floor) * fall[kw.get("decay_type", "cosine")]((s - w - stable) / max(1, d))
    return floor


CLOSED_FORMS: dict[str, Callable[[int, int, int, dict[str, Any]], float]] = {
    "linear": f_linear,
    "cosine": f_cosine,
    "cosine_with_restarts": f_restarts,
    "polynomial": f_polynomial,
    "constant": f_constant,
    "constant_with_warmup": f_constant_with_warmup,
    "inverse_sqrt": f_inverse_sqrt,
    "cosine_with_min_lr": f_cosine_min,
    "cosine_warmup_with_min_lr": f_cosine_warmup_min,
    "warmup_stable_decay": f_wsd,
}


def floor_of(name: str, kw: dict[str, Any]) -> float:
    """The documented lowest factor after warmup."""
    if name == "polynomial":
        return kw.get("lr_end", 1e-7) / LR
    if name in ("cosine_with_min_lr", "cosine_warmup_with_min_lr"):
        return _min_rate(kw)
    return kw.get("min_lr_ratio", 0.0)


def end_of(name: str, w: int, t: int, kw: dict[str, Any]) -> tuple[int, float]:
    """(step, factor) of the documented end of the schedule, for runs with num_warmup_steps < num_training_steps."""
    cycles = kw.get("num_cycles", 0.5)
    if name in ("linear", "cosine_with_restarts"):
        return t, 0.0
    if name == "cosine":
        return t, half_cos(1.0, cycles)
    if name in ("constant", "constant_with_warmup"):
        return t, 1.0
    if name == "inverse_sqrt":
        return t, f_inverse_sqrt(t, w, t, kw)
    if name == "cosine_with_min_lr":
        return t, _min_rate(kw) + (1 - _min_rate(kw)) * half_cos(1.0, cycles)
    if name == "cosine_warmup_with_min_lr":
        return t - 1, _min_rate(kw) + (1 - _min_rate(kw)) * half_cos(1.0, cycles)
    return t, floor_of(name, kw)  # polynomial, warmup_stable_decay


def build(name: str, case: Case) -> tuple[Any, Any]:
    warmup, total, kwargs = case
    optimizer = one_param_optimizer(LR)
    return optimizer, get_scheduler(name, optimizer, warmup, total, dict(kwargs))


NAMES = sorted(CLOSED_FORMS)
SETTINGS = settings(max_examples=25, deadline=None)


# -------------------------------------------------------------------------------------- properties
@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(data=st.data())
def test_curve_equals_closed_form_and_stays_in_bounds(name: str, data: st.DataObject) -> None:
    case = data.draw(scheduler_cases(name))
    warmup, total, kwargs = case
    curve = lr_curve(*build(name, case), total + 3)
    for step, lr in enumerate(curve):
        expected = LR * CLOSED_FORMS[name](step, warmup, total, kwargs)
        assert lr == pytest.approx(expected, rel=1e-9, abs=1e-15), f"step {step}"
        assert -1e-15 <= lr <= LR * (1 + 1e-12), f"step {step}: {lr} outside [0, {LR}]"
        if step >= warmup:
            assert lr >= LR * floor_of(name, kwargs) * (1 - 1e-9) - 1e-15, f"step {step} below the floor"


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(data=st.data())
def test_warmup_is_non_decreasing_and_the_end_is_reached(name: str, data: st.DataObject) -> None:
    case = data.draw(scheduler_cases(name))
    warmup, total, kwargs = case
    curve = lr_curve(*build(name, case), total)
    # The warmup ends at its peak: step W, or W - 1 for transformers' shifted cosine_warmup_with_min_lr.
    peak = warmup - 1 if name == "cosine_warmup_with_min_lr" else warmup
    assert all(a <= b * (1 + 1e-12) for a, b in itertools.pairwise(curve[: peak + 1]))
    end_step, end_factor = end_of(name, warmup, total, kwargs)
    assert curve[end_step] == pytest.approx(LR * end_factor, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(data=st.data(), stop_fraction=st.floats(0.0, 1.0))
def test_state_dict_round_trip_resumes_the_same_curve(name: str, data: st.DataObject, stop_fraction: float) -> None:
    case = data.draw(scheduler_cases(name))
    total = case[1]
    stop = int(stop_fraction * total)
    expected = lr_curve(*build(name, case), total + 2)

    optimizer, scheduler = build(name, case)
    lr_curve(optimizer, scheduler, stop)
    optimizer_state, scheduler_state = safe_round_trip(optimizer.state_dict()), safe_round_trip(scheduler.state_dict())
    resumed_optimizer, resumed = build(name, case)
    resumed_optimizer.load_state_dict(optimizer_state)
    resumed.load_state_dict(scheduler_state)
    assert lr_curve(resumed_optimizer, resumed, total + 2 - stop) == expected[stop:]


@settings(max_examples=40, deadline=None)
@given(
    metrics=st.lists(st.floats(0.0, 10.0), min_size=1, max_size=60),
    factor=st.floats(0.05, 0.9),
    patience=st.integers(0, 5),
    min_lr=st.floats(0.0, LR / 10),
    stop_fraction=st.floats(0.0, 1.0),
)
def test_reduce_on_plateau_only_reduces_by_factor_to_the_floor_and_resumes(
    metrics: list[float], factor: float, patience: int, min_lr: float, stop_fraction: float
) -> None:
    kwargs = {"factor": factor, "patience": patience, "min_lr": min_lr}

    def run(values: list[float], optimizer: Any, scheduler: Any) -> list[float]:
        lrs = []
        for value in values:
            optimizer.step()
            scheduler.step(value)
            lrs.append(optimizer.param_groups[0]["lr"])
        return lrs

    optimizer = one_param_optimizer(LR)
    lrs = [LR, *run(metrics, optimizer, get_scheduler("reduce_lr_on_plateau", optimizer, None, None, kwargs))]
    for before, after in itertools.pairwise(lrs):
        assert min_lr - 1e-15 <= after <= before
        assert after == before or after == pytest.approx(max(before * factor, min_lr), rel=1e-12)

    stop = int(stop_fraction * len(metrics))
    optimizer = one_param_optimizer(LR)
    scheduler = get_scheduler("reduce_lr_on_plateau", optimizer, None, None, kwargs)
    run(metrics[:stop], optimizer, scheduler)
    states = safe_round_trip(optimizer.state_dict()), safe_round_trip(scheduler.state_dict())
    resumed_optimizer = one_param_optimizer(LR)
    resumed = get_scheduler("reduce_lr_on_plateau", resumed_optimizer, None, None, kwargs)
    resumed_optimizer.load_state_dict(states[0])
    resumed.load_state_dict(states[1])
    assert run(metrics[stop:], resumed_optimizer, resumed) == lrs[stop + 1 :]
