"""SingleDeviceStrategy: the one chain of calls every step goes through, without the Trainer."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from tests.precision_helpers import make_batches, make_model
from trainkit import HalfPrecision, MixedPrecision, Precision, SingleDeviceStrategy
from trainkit.strategies import Strategy

pytestmark = pytest.mark.usefixtures("restore_numeric_flags")


class RecordingPrecision(Precision):
    """fp32 that records the order in which the strategy calls its hooks."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def setup(self, device: Any = None) -> None:
        self.calls.append(f"setup({device})")
        super().setup(device)

    def convert_module(self, module: nn.Module) -> nn.Module:
        self.calls.append("convert_module")
        return module

    def connect(self, module: nn.Module, optimizer: Any) -> tuple[nn.Module, Any]:
        self.calls.append(f"connect(optimizer={optimizer is not None})")
        return module, optimizer

    def convert_input(self, data: Any) -> Any:
        self.calls.append("convert_input")
        return data

    def pre_backward(self, loss: torch.Tensor, module: nn.Module | None = None) -> torch.Tensor:
        self.calls.append("pre_backward")
        return loss * 2

    def backward(self, loss: torch.Tensor, module: nn.Module | None = None) -> None:
        self.calls.append(f"backward({loss.item():g})")
        super().backward(loss, module)

    def post_backward(self, loss: torch.Tensor, module: nn.Module | None = None) -> None:
        self.calls.append("post_backward")

    def unscale_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        self.calls.append("unscale_gradients")

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> bool:
        self.calls.append("optimizer_step")
        return False

    def teardown(self) -> None:
        self.calls.append("teardown")
        super().teardown()


def test_every_step_goes_through_the_precision_hooks_in_order():
    precision = RecordingPrecision()
    strategy = SingleDeviceStrategy("cpu", precision=precision)
    strategy.setup_environment()
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer, _ = strategy.setup(model, optimizer)
    batch = strategy.batch_to_device(torch.ones(1, 2))
    strategy.backward(torch.tensor(1.5, requires_grad=True), model)
    strategy.clip_gradients(model, optimizer, max_norm=1.0)
    assert strategy.optimizer_step(optimizer) is False
    strategy.teardown()
    assert precision.calls == [
        "setup(cpu)",
        "convert_module",
        "connect(optimizer=True)",
        "convert_input",
        "pre_backward",
        "backward(3)",
        "post_backward",
        "unscale_gradients",
        "optimizer_step",
        "teardown",
    ]
    assert batch.shape == (1, 2)


def test_setup_without_an_optimizer_connects_the_module():
    precision = RecordingPrecision()
    SingleDeviceStrategy("cpu", precision=precision).setup(nn.Linear(2, 1))
    assert precision.calls == ["convert_module", "connect(optimizer=False)"]


def test_setup_phases():
    precision = RecordingPrecision()
    strategy = SingleDeviceStrategy("cpu", precision=precision)
    model = strategy.setup_module(nn.Linear(2, 1))
    assert precision.calls == ["convert_module"]  # the optimizer is built from the module returned here
    strategy.setup_optimizers(model, torch.optim.SGD(model.parameters(), lr=0.1), None)
    assert precision.calls == ["convert_module", "connect(optimizer=True)"]


def test_true_half_setup_and_batches():
    strategy = SingleDeviceStrategy("cpu", precision=HalfPrecision("bf16"))
    strategy.setup_environment()
    model = strategy.setup_module(make_model())
    x, y = strategy.batch_to_device({"x": torch.randn(2, 8), "ids": torch.tensor([1, 2])}).values()
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert (x.dtype, y.dtype) == (torch.bfloat16, torch.int64)
    strategy.teardown()


def test_clip_gradients_returns_the_unscaled_norm_under_fp16():
    def grad_norm(precision: Precision) -> torch.Tensor:
        strategy = SingleDeviceStrategy("cpu", precision=precision)
        strategy.setup_environment()
        model = make_model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        model, optimizer, _ = strategy.setup(model, optimizer)
        x, y = strategy.batch_to_device(make_batches(1)[0])
        with strategy.forward_context():
            loss = nn.functional.mse_loss(model(x).float(), y)
        strategy.backward(loss, model)
        norm = strategy.clip_gradients(model, optimizer, max_norm=1e-3)
        clipped = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
        strategy.teardown()
        assert clipped == pytest.approx(1e-3, rel=1e-3)
        return norm

    # a small initial scale: the default 2**16 overflows on this model's first step (and skips it)
    fp16_precision = MixedPrecision("fp16", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**8))
    fp32, fp16 = grad_norm(Precision()), grad_norm(fp16_precision)
    assert fp16.item() == pytest.approx(fp32.item(), rel=2e-2)


def test_eval_context_receives_the_unwrapped_module():
    seen: list[nn.Module] = []

    class Spy(Precision):
        def eval_context(self, module: nn.Module) -> Any:
            seen.append(module)
            return super().eval_context(module)

    strategy = SingleDeviceStrategy("cpu", precision=Spy())
    inner = nn.Linear(2, 2)
    with strategy.eval_context(nn.DataParallel(inner)):
        pass
    assert seen == [inner]


def test_unwrap_opens_torch_wrappers_only():
    class HasModuleAttribute(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = nn.Linear(2, 2)

    strategy = SingleDeviceStrategy("cpu")
    user_model = HasModuleAttribute()
    assert strategy.unwrap_model(user_model) is user_model
    assert strategy.unwrap_model(nn.DataParallel(user_model)) is user_model
    assert strategy.unwrap_model(torch.compile(nn.DataParallel(user_model))) is user_model


def test_setup_environment_applies_tf32_and_teardown_restores_it():
    strategy = SingleDeviceStrategy("cpu", precision=Precision(tf32=True))
    strategy.setup_environment()
    assert torch.backends.cuda.matmul.allow_tf32 is True
    strategy.teardown()
    assert torch.backends.cuda.matmul.allow_tf32 is False


def test_mixed_precision_learns_its_device_type_from_the_strategy():
    precision = MixedPrecision("bf16")
    SingleDeviceStrategy("cpu", precision=precision).setup_environment()
    assert precision.device_type == "cpu"
    precision.teardown()


@pytest.mark.parametrize(
    ("device", "expected", "set_device_calls"),
    [(0, "cuda:0", ["cuda:0"]), ("cuda:1", "cuda:1", ["cuda:1"]), ("cuda", "cuda", []), ("cpu", "cpu", [])],
)
def test_devices_and_the_current_cuda_device(monkeypatch, device, expected, set_device_calls):
    calls: list[str] = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(str(d)))
    monkeypatch.setattr(Precision, "setup", lambda self, device=None: None)
    strategy = SingleDeviceStrategy(device)
    strategy.setup_environment()
    assert str(strategy.root_device) == expected
    assert calls == set_device_calls


def test_single_process_topology_and_repr():
    strategy = SingleDeviceStrategy("cpu", precision=MixedPrecision("fp16"))
    assert isinstance(strategy, Strategy)
    assert (strategy.global_rank, strategy.world_size, strategy.is_global_zero) == (0, 1, True)
    assert repr(strategy) == "SingleDeviceStrategy(device='cpu', precision=MixedPrecision('fp16', tf32=None))"
