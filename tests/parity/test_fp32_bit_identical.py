"""fp32 through SingleDeviceStrategy is bit-identical to the same plain PyTorch loop without trainkit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.precision_helpers import make_batches, make_model, params_of
from trainkit import HalfPrecision, Precision, SingleDeviceStrategy

pytestmark = pytest.mark.usefixtures("restore_numeric_flags")

STEPS = 25


def _optimizer(model: nn.Module, name: str) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)


def plain_loop(optimizer_name: str, max_norm: float | None) -> tuple[list[float], dict[str, torch.Tensor]]:
    model = make_model()
    optimizer = _optimizer(model, optimizer_name)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.5)
    losses = []
    for x, y in make_batches(STEPS):
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        if max_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses, params_of(model)


def strategy_loop(
    optimizer_name: str, max_norm: float | None, precision: Precision, evaluate: bool = False
) -> tuple[list[float], dict[str, torch.Tensor]]:
    strategy = SingleDeviceStrategy("cpu", precision=precision)
    strategy.setup_environment()
    model = make_model()
    optimizer = _optimizer(model, optimizer_name)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.5)
    model, optimizer, scheduler = strategy.setup(model, optimizer, scheduler)
    losses = []
    for batch in make_batches(STEPS):
        x, y = strategy.batch_to_device(batch)
        model.train()
        with strategy.forward_context():
            loss = nn.functional.mse_loss(model(x), y)
        strategy.backward(loss, model)
        if max_norm is not None:
            strategy.clip_gradients(model, optimizer, max_norm)
        if strategy.optimizer_step(optimizer):
            scheduler.step()
        strategy.zero_grad(optimizer)
        losses.append(loss.item())
        if evaluate:
            model.eval()
            with torch.no_grad(), strategy.eval_context(model):
                model(x)
    strategy.teardown()
    return losses, params_of(model)


@pytest.mark.parametrize("max_norm", [None, 0.5])
@pytest.mark.parametrize("optimizer_name", ["sgd", "adamw"])
def test_fp32_strategy_loop_is_bit_identical_to_plain_pytorch(optimizer_name, max_norm):
    plain_losses, plain_params = plain_loop(optimizer_name, max_norm)
    losses, params = strategy_loop(optimizer_name, max_norm, Precision())
    assert losses == plain_losses
    assert params.keys() == plain_params.keys()
    assert all(torch.equal(params[k], plain_params[k]) for k in plain_params)


def test_fp32_with_half_full_eval_between_steps_is_still_bit_identical():
    plain_losses, plain_params = plain_loop("adamw", 0.5)
    losses, params = strategy_loop("adamw", 0.5, Precision(eval_precision=HalfPrecision("bf16")), evaluate=True)
    assert losses == plain_losses
    assert all(torch.equal(params[k], plain_params[k]) for k in plain_params)
