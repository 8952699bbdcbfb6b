"""trainkit's schedulers give transformers' learning rate at every step (skipped without transformers)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.optim_helpers import LR, lr_curve, one_param_optimizer, safe_round_trip, scheduler_cases
from trainkit import get_scheduler
from trainkit.options import SchedulerType

transformers = pytest.importorskip("transformers")
from transformers import optimization as hf_optimization  # noqa: E402

# transformers' get_scheduler passes no lr_scheduler_kwargs to these (trainkit honours ``timescale``).
KWARGS_IGNORED_BY_HF = ("inverse_sqrt",)
# The names the installed transformers knows (the test extra allows versions older than 4.57).
HF_NAMES = {t.value for t in transformers.SchedulerType}
NAMES = [t.value for t in SchedulerType if t.value != "reduce_lr_on_plateau" and t.value in HF_NAMES]


def assert_close(ours: list[float], theirs: list[float]) -> None:
    assert len(ours) == len(theirs)
    for step, (a, b) in enumerate(zip(ours, theirs)):
        assert a == pytest.approx(b, rel=1e-7, abs=1e-300), f"step {step}: trainkit {a} != transformers {b}"


def hf_scheduler(name: str, optimizer: torch.optim.Optimizer, warmup: int, total: int, kwargs: dict[str, Any]) -> Any:
    if name == "inverse_sqrt":
        return hf_optimization.get_inverse_sqrt_schedule(optimizer, warmup, **kwargs)
    return transformers.get_scheduler(name, optimizer, warmup, total, scheduler_specific_kwargs=dict(kwargs))


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_lr_equals_transformers_at_every_step(name: str, data: st.DataObject) -> None:
    warmup, total, kwargs = data.draw(scheduler_cases(name))
    ours = one_param_optimizer(LR)
    theirs = one_param_optimizer(LR)
    expected = lr_curve(theirs, hf_scheduler(name, theirs, warmup, total, kwargs), total + 3)
    assert_close(lr_curve(ours, get_scheduler(name, ours, warmup, total, dict(kwargs)), total + 3), expected)


def test_inverse_sqrt_without_kwargs_matches_transformers_get_scheduler():
    ours, theirs = one_param_optimizer(LR), one_param_optimizer(LR)
    expected = lr_curve(theirs, transformers.get_scheduler("inverse_sqrt", theirs, 0, 100), 50)
    assert_close(lr_curve(ours, get_scheduler("inverse_sqrt", ours, 0, 100), 50), expected)


def test_reduce_on_plateau_matches_transformers():
    metrics = [5.0, 4.0, 4.0, 4.0, 4.5, 3.0, 3.0, 3.0, 3.0, 3.0]
    kwargs = {"factor": 0.5, "patience": 1, "min_lr": 0.01}
    curves = []
    for build in (get_scheduler, transformers.get_scheduler):
        optimizer = one_param_optimizer(LR)
        scheduler = build("reduce_lr_on_plateau", optimizer, scheduler_specific_kwargs=kwargs)
        assert isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
        lrs = []
        for metric in metrics:
            optimizer.step()
            scheduler.step(metric)
            lrs.append(optimizer.param_groups[0]["lr"])
        curves.append(lrs)
    assert curves[0] == curves[1]
    assert min(curves[0]) < LR


@pytest.mark.parametrize("name", ["linear", "cosine", "polynomial", "cosine_with_min_lr"])
def test_checkpoints_load_both_ways(name: str):
    """A transformers scheduler.pt resumes in trainkit, and trainkit's in transformers, on the same curve."""
    kwargs = {"min_lr_rate": 0.1} if name == "cosine_with_min_lr" else {}
    expected = lr_curve(*_pair(get_scheduler, name, kwargs), 40)
    for writer, reader in ((transformers.get_scheduler, get_scheduler), (get_scheduler, transformers.get_scheduler)):
        optimizer, scheduler = _pair(writer, name, kwargs)
        lr_curve(optimizer, scheduler, 15)
        states = safe_round_trip(optimizer.state_dict()), safe_round_trip(scheduler.state_dict())
        resumed_optimizer, resumed = _pair(reader, name, kwargs)
        resumed_optimizer.load_state_dict(states[0])
        resumed.load_state_dict(states[1])
        assert_close(lr_curve(resumed_optimizer, resumed, 25), expected[15:])


def _pair(build: Any, name: str, kwargs: dict[str, Any]) -> tuple[torch.optim.Optimizer, Any]:
    optimizer = one_param_optimizer(LR)
    return optimizer, build(name, optimizer, 4, 40, scheduler_specific_kwargs=dict(kwargs))
