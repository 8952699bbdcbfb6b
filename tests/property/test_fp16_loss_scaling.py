"""fp16 loss scaling: wherever an inf/NaN appears, that step is skipped and reported, and nothing else is."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from trainkit import MixedPrecision, SingleDeviceStrategy

pytestmark = pytest.mark.usefixtures("restore_numeric_flags")

MAX_STEPS = 5


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))


@st.composite
def injections(draw: st.DrawFn) -> dict:
    """Where the non-finite value appears: which step, the loss or which gradient element, which value."""
    steps = draw(st.integers(1, MAX_STEPS))
    return {
        "steps": steps,
        "bad_step": draw(st.integers(0, steps - 1)),
        "target": draw(st.sampled_from(["loss", "gradient"])),
        "param": draw(st.integers(0, 3)),
        "position": draw(st.floats(0, 1, exclude_max=True)),
        "value": draw(st.sampled_from([math.inf, -math.inf, math.nan])),
        "clip": draw(st.booleans()),
    }


@settings(max_examples=60, deadline=None)
@given(case=injections())
def test_a_non_finite_gradient_skips_exactly_that_step(case):
    # a small initial scale, so that only the injected value overflows
    precision = MixedPrecision("fp16", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**8))
    strategy = SingleDeviceStrategy("cpu", precision=precision)
    strategy.setup_environment()
    model = _model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (step + 1))
    model, optimizer, scheduler = strategy.setup(model, optimizer, scheduler)
    x, y = torch.randn(3, 4), torch.randn(3, 2)
    for step in range(case["steps"]):
        bad = step == case["bad_step"]
        before = [p.detach().clone() for p in model.parameters()]
        scale, lr_epoch, skipped = precision.scaler.get_scale(), scheduler.last_epoch, precision.skipped_steps
        with strategy.forward_context():
            loss = nn.functional.mse_loss(model(x).float(), y)
        if bad and case["target"] == "loss":
            loss = loss * case["value"]
        strategy.backward(loss, model)
        if bad and case["target"] == "gradient":
            grad = list(model.parameters())[case["param"]].grad.view(-1)
            grad[int(case["position"] * grad.numel())] = case["value"]
        if case["clip"]:
            strategy.clip_gradients(model, optimizer, max_norm=1.0)
        stepped = strategy.optimizer_step(optimizer)
        if stepped:  # the caller's side of the contract: no scheduler step for a skipped step
            scheduler.step()
        strategy.zero_grad(optimizer)

        after = list(model.parameters())
        assert stepped is not bad
        assert precision.skipped_steps == skipped + bad
        assert scheduler.last_epoch == lr_epoch + (not bad)
        assert all(torch.isfinite(p).all() for p in after)
        if bad:
            assert precision.scaler.get_scale() == scale * 0.5
            assert all(torch.equal(b, a) for b, a in zip(before, after))
            assert all(optimizer.state[p].get("step", 0) == step for p in after)
        else:
            assert precision.scaler.get_scale() == scale
            assert any(not torch.equal(b, a) for b, a in zip(before, after))
    strategy.teardown()
