"""bf16-mixed and fp16-mixed on the CPU train a small model to within a stated tolerance of fp32.

Tolerances (measured on this model over 4 seeds, with headroom; see docs/precision.md):
- one forward pass under autocast: relative error of the loss below 5e-3 (bf16, measured at most
  8.6e-4) and 5e-4 (fp16, measured at most 1.1e-4);
- after 300 AdamW steps: held-out MSE within 5% (bf16-mixed, measured at most 1.8%) and 15%
  (fp16-mixed, measured at most 8.4%: the GradScaler skips the first 2-3 steps while its scale
  drops from 2**16, which shifts the trajectory) of the fp32 run's, and below half the initial MSE.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.precision_helpers import make_batches, make_model
from trainkit import SingleDeviceStrategy
from trainkit.precision import PRECISIONS

pytestmark = pytest.mark.usefixtures("restore_numeric_flags")

HELD_OUT = make_batches(8, seed=99)


def held_out_mse(strategy: SingleDeviceStrategy, model: nn.Module) -> float:
    model.eval()
    with torch.no_grad(), strategy.eval_context(model):
        errors = [nn.functional.mse_loss(model(strategy.batch_to_device(x)).float(), y).item() for x, y in HELD_OUT]
    model.train()
    return sum(errors) / len(errors)


def train(name: str, steps: int = 300) -> tuple[float, float, int]:
    """(initial held-out MSE, final held-out MSE, skipped steps) of one run in precision ``name``."""
    strategy = SingleDeviceStrategy("cpu", precision=PRECISIONS.get(name))
    strategy.setup_environment()
    model = make_model(seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, optimizer, _ = strategy.setup(model, optimizer)
    initial = held_out_mse(strategy, model)
    for batch in make_batches(steps):
        x, y = strategy.batch_to_device(batch)
        with strategy.forward_context():
            loss = nn.functional.mse_loss(model(x).float(), y)
        strategy.backward(loss, model)
        strategy.clip_gradients(model, optimizer, max_norm=1.0)
        strategy.optimizer_step(optimizer)
        strategy.zero_grad(optimizer)
    final = held_out_mse(strategy, model)
    strategy.teardown()
    return initial, final, strategy.precision.skipped_steps


@pytest.fixture(scope="module")
def fp32_run() -> tuple[float, float, int]:
    return train("fp32")


@pytest.mark.parametrize(("name", "tolerance"), [("bf16-mixed", 0.05), ("fp16-mixed", 0.15)])
def test_mixed_precision_trains_to_within_tolerance_of_fp32(fp32_run, name, tolerance):
    initial, final, _ = train(name)
    fp32_initial, fp32_final, fp32_skipped = fp32_run
    assert fp32_skipped == 0
    assert final < initial / 2
    assert abs(final - fp32_final) / fp32_final < tolerance
    assert abs(initial - fp32_initial) / fp32_initial < tolerance


@pytest.mark.parametrize(("name", "tolerance"), [("bf16-mixed", 5e-3), ("fp16-mixed", 5e-4)])
def test_one_autocast_forward_is_close_to_fp32(name, tolerance):
    precision = PRECISIONS.get(name)
    precision.setup("cpu")
    model = make_model().eval()
    x, y = make_batches(1, batch_size=256)[0]
    with torch.no_grad():
        reference = nn.functional.mse_loss(model(x), y)
        with precision.forward_context():
            mixed = nn.functional.mse_loss(model(x).float(), y)
    precision.teardown()
    assert abs(mixed - reference) / reference < tolerance
