"""MixedPrecision, HalfPrecision and the tf32 flag: behaviour beyond the shared contract."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.precision_helpers import make_batches, make_model, params_of
from trainkit.precision import HalfPrecision, MixedPrecision, Precision, module_cast_to

pytestmark = pytest.mark.usefixtures("restore_numeric_flags")


# ------------------------------------------------------------------ MixedPrecision
def test_mixed_precision_needs_a_device_type_before_forward():
    precision = MixedPrecision("bf16")
    with pytest.raises(RuntimeError, match=r"call setup\(device\).*device_type="):
        precision.forward_context()


def test_fp16_needs_a_device_type_before_scaling():
    with pytest.raises(RuntimeError, match="does not know the device type"):
        MixedPrecision("fp16").pre_backward(torch.tensor(1.0))


def test_device_type_in_the_constructor_serves_hand_written_loops():
    precision = MixedPrecision("fp16", device_type="cpu")
    assert precision.scaler is not None
    with precision.forward_context():
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.float16
    assert not torch.is_autocast_enabled("cpu")


def test_setup_on_another_device_than_the_constructor_names_both():
    precision = MixedPrecision("bf16", device_type="cpu")
    with pytest.raises(ValueError, match=r"device_type='cpu'\) cannot run on device 'meta'"):
        precision.setup("meta")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_fp16_on_cuda_without_cuda_is_an_error_not_a_disabled_scaler():
    with pytest.raises(ValueError, match="no CUDA device is available"):
        MixedPrecision("fp16", device_type="cuda")


def test_unknown_mode_and_misplaced_scaler_are_errors():
    with pytest.raises(ValueError, match="precision must be 'fp16' or 'bf16', got 'fp8'"):
        MixedPrecision("fp8")
    with pytest.raises(ValueError, match="takes no GradScaler"):
        MixedPrecision("bf16", scaler=torch.amp.GradScaler("cpu"))
    with pytest.raises(ValueError, match="HalfPrecision: precision must be"):
        HalfPrecision("16")
    with pytest.raises(TypeError, match="tf32 must be True, False or None"):
        Precision(tf32="yes")  # type: ignore[arg-type]


def test_bf16_mixed_has_no_scaler_and_never_skips():
    precision = MixedPrecision("bf16")
    precision.setup("cpu")
    loss = torch.tensor(2.0, requires_grad=True)
    assert precision.scaler is None
    assert precision.pre_backward(loss) is loss
    assert precision.state_dict() == {}
    precision.teardown()


def test_a_given_scaler_is_used():
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    precision = MixedPrecision("fp16", scaler=scaler)
    precision.setup("cpu")
    assert precision.scaler is scaler
    assert precision.pre_backward(torch.tensor(1.0)).item() == 8.0
    precision.teardown()


def test_scaler_state_loaded_before_setup_is_applied_at_setup():
    precision = MixedPrecision("fp16")
    state = {"scale": 128.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 10, "_growth_tracker": 3}
    precision.load_state_dict(state)
    assert precision.state_dict() == state
    precision.setup("cpu")
    assert precision.scaler is not None
    assert precision.scaler.get_scale() == 128.0
    assert precision.scaler.get_growth_interval() == 10
    assert precision.state_dict() == state
    precision.teardown()


def test_unscaling_twice_in_one_step_unscales_once():
    precision = MixedPrecision("fp16", device_type="cpu")
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    precision.backward(precision.pre_backward(model(torch.ones(1, 2)).sum()))
    precision.unscale_gradients(optimizer)
    once = model.weight.grad.clone()
    precision.unscale_gradients(optimizer)
    assert torch.equal(model.weight.grad, once)
    assert torch.equal(once, torch.ones(1, 2))
    assert precision.optimizer_step(optimizer) is True


# --------------------------------------------------------------------------- tf32
@pytest.mark.parametrize("tf32", [True, False])
def test_tf32_is_applied_by_setup_and_restored_by_teardown(tf32):
    torch.backends.cuda.matmul.allow_tf32 = not tf32
    torch.backends.cudnn.allow_tf32 = not tf32
    cpu_matmul = getattr(torch.backends.mkldnn.matmul, "fp32_precision", None)
    precision = Precision(tf32=tf32)
    precision.setup("cpu")
    assert getattr(torch.backends.mkldnn.matmul, "fp32_precision", None) == cpu_matmul  # TF32 is a CUDA flag
    assert torch.backends.cuda.matmul.allow_tf32 is tf32
    assert torch.backends.cudnn.allow_tf32 is tf32
    assert torch.get_float32_matmul_precision() == ("high" if tf32 else "highest")
    precision.teardown()
    assert torch.backends.cuda.matmul.allow_tf32 is (not tf32)
    assert torch.backends.cudnn.allow_tf32 is (not tf32)


def test_tf32_none_leaves_the_flags_alone():
    torch.backends.cuda.matmul.allow_tf32 = True
    precision = Precision(tf32=None)
    precision.setup("cpu")
    assert torch.backends.cuda.matmul.allow_tf32 is True
    precision.teardown()
    assert torch.backends.cuda.matmul.allow_tf32 is True


def test_setup_twice_keeps_the_first_snapshot():
    precision = Precision(tf32=True)
    precision.setup("cpu")
    precision.setup("cpu")
    precision.teardown()
    assert torch.backends.cuda.matmul.allow_tf32 is False


# ---------------------------------------------------------------------- full eval
class TiedModel(nn.Module):
    """An embedding tied to the output layer, plus a float buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.out = nn.Linear(4, 10, bias=False)
        self.out.weight = self.embed.weight
        self.register_buffer("offset", torch.full((4,), 0.5))

    def forward(self, ids: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.out(self.embed(ids) + self.offset + noise)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_module_cast_restores_the_very_same_tensors(dtype):
    model = make_model()
    originals = {k: v for k, v in {**dict(model.named_parameters()), **dict(model.named_buffers())}.items()}
    values = params_of(model)
    with module_cast_to(model, dtype):
        assert {p.dtype for p in model.parameters()} == {dtype}
        assert model[1].running_mean.dtype == dtype
        assert model[1].num_batches_tracked.dtype == torch.int64
    current = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    assert all(current[k] is originals[k] for k in originals)
    assert all(torch.equal(model.state_dict()[k], values[k]) for k in values)


def test_module_cast_keeps_ties_and_restores_after_an_error():
    model = TiedModel()
    weight = model.embed.weight
    seen = []

    def fail_inside() -> None:
        with module_cast_to(model, torch.bfloat16):
            seen.append((model.out.weight is model.embed.weight, model.embed.weight.dtype))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_inside()
    assert seen == [(True, torch.bfloat16)]
    assert model.embed.weight is weight
    assert model.out.weight is weight
    assert weight.dtype == torch.float32


@pytest.mark.parametrize("training", ["fp32", "bf16-mixed", "fp16-mixed"])
@pytest.mark.parametrize(("eval_mode", "dtype"), [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_full_eval_combines_with_any_training_precision(training, eval_mode, dtype):
    from trainkit.precision import PRECISIONS

    precision = PRECISIONS.get(training, eval_precision=HalfPrecision(eval_mode))
    precision.setup("cpu")
    model = TiedModel().eval()
    before = params_of(model)
    ids, noise = torch.tensor([[1, 2, 3]]), torch.randn(1, 3, 4)
    with torch.no_grad(), precision.eval_context(model):
        assert not torch.is_autocast_enabled("cpu")
        out = model(ids, noise=noise)  # the float keyword input is cast too
        assert out.dtype == dtype
    assert model.embed.weight.dtype == torch.float32
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    precision.teardown()


def test_training_after_full_eval_is_bit_identical_to_training_without_it():
    def train(evaluate: bool) -> dict[str, torch.Tensor]:
        precision = Precision(eval_precision=HalfPrecision("fp16"))
        model = make_model()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for x, y in make_batches(4):
            model.train()
            nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
            if evaluate:
                model.eval()
                with torch.no_grad(), precision.eval_context(model):
                    model(x)
        return params_of(model)

    with_eval, without = train(True), train(False)
    assert all(torch.equal(with_eval[k], without[k]) for k in without)


def test_without_eval_precision_evaluation_uses_the_training_context():
    precision = MixedPrecision("bf16")
    precision.setup("cpu")
    model = nn.Linear(3, 2)
    with precision.eval_context(model):
        assert torch.is_autocast_enabled("cpu")
        assert model(torch.randn(1, 3)).dtype == torch.bfloat16
    assert model.weight.dtype == torch.float32
    precision.teardown()
