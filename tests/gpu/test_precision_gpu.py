"""Precision on a CUDA device: autocast dtypes, loss scaling, TF32's effect on matmuls (skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.precision_helpers import make_batches, make_model, numeric_state, params_of
from trainkit import HalfPrecision, MixedPrecision, Precision, SingleDeviceStrategy
from trainkit.precision import PRECISIONS

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.usefixtures("restore_numeric_flags"),
]

needs_ampere = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 8, reason="needs an Ampere+ GPU"
)


def _train_steps(precision: Precision, steps: int = 20) -> tuple[SingleDeviceStrategy, nn.Module, list[float]]:
    strategy = SingleDeviceStrategy("cuda:0", precision=precision)
    strategy.setup_environment()
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, optimizer, _ = strategy.setup(model, optimizer)
    losses = []
    for batch in make_batches(steps):
        x, y = strategy.batch_to_device(batch)
        with strategy.forward_context():
            out = model(x)
            loss = nn.functional.mse_loss(out.float(), y.float())
        strategy.backward(loss, model)
        strategy.clip_gradients(model, optimizer, 1.0)
        strategy.optimizer_step(optimizer)
        strategy.zero_grad(optimizer)
        losses.append(loss.item())
    return strategy, model, losses


@pytest.mark.parametrize(("name", "dtype"), [("fp16-mixed", torch.float16), ("bf16-mixed", torch.bfloat16)])
def test_autocast_on_cuda_computes_in_half_and_keeps_fp32_weights(name, dtype):
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("this GPU has no bf16")
    before = numeric_state()
    precision = PRECISIONS.get(name)
    strategy, model, losses = _train_steps(precision)
    with strategy.forward_context():
        assert torch.is_autocast_enabled("cuda")
        assert model[0](torch.randn(2, 8, device="cuda")).dtype == dtype
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert sum(losses[-5:]) < sum(losses[:5])
    assert (precision.scaler is not None) == (name == "fp16-mixed")
    strategy.teardown()
    assert numeric_state() == before


def test_fp16_on_cuda_skips_an_inf_step_and_lowers_the_scale():
    precision = MixedPrecision("fp16")
    strategy = SingleDeviceStrategy("cuda:0", precision=precision)
    strategy.setup_environment()
    model = nn.Linear(4, 2).cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with strategy.forward_context():
        loss = model(torch.randn(3, 4, device="cuda")).float().sum()
    strategy.backward(loss, model)
    model.weight.grad[0, 0] = float("inf")
    weight, scale = model.weight.detach().clone(), precision.scaler.get_scale()
    assert strategy.optimizer_step(optimizer) is False
    assert torch.equal(model.weight, weight)
    assert precision.scaler.get_scale() == scale / 2
    assert precision.skipped_steps == 1
    strategy.teardown()


@needs_ampere
def test_tf32_changes_cuda_matmul_results_and_teardown_restores():
    gen = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(1024, 1024, device="cuda", generator=gen)
    b = torch.randn(1024, 1024, device="cuda", generator=gen)
    exact = (a.double() @ b.double()).float()

    def relative_error(tf32: bool) -> float:
        precision = Precision(tf32=tf32)
        precision.setup("cuda:0")
        error = ((a @ b - exact).norm() / exact.norm()).item()
        precision.teardown()
        return error

    before = numeric_state()
    with_tf32, without = relative_error(True), relative_error(False)
    assert numeric_state() == before
    assert without < 1e-5
    assert with_tf32 > 10 * without  # TF32 keeps 10 mantissa bits: ~1e-4..1e-3 relative error


@pytest.mark.parametrize("eval_mode", ["fp16", "bf16"])
def test_full_eval_on_cuda_restores_the_fp32_weights_exactly(eval_mode):
    if eval_mode == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("this GPU has no bf16")
    strategy, model, _ = _train_steps(MixedPrecision("fp16", eval_precision=HalfPrecision(eval_mode)), steps=3)
    before = params_of(model)
    model.eval()
    with torch.no_grad(), strategy.eval_context(model):
        out = model(torch.randn(2, 8, device="cuda"))
    assert out.dtype == {"fp16": torch.float16, "bf16": torch.bfloat16}[eval_mode]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    strategy.teardown()
