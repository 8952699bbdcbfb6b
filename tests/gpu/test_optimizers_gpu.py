"""Optimizers on CUDA: the fused AdamW, trainkit's own classes, and whichever optional packages are installed."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from trainkit import TrainingArguments
from trainkit.optim import OPTIMIZERS, create_optimizer

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

OPTIONAL = sorted(n for n in OPTIMIZERS.available() if OPTIMIZERS.entry(n, check_requirements=False).requires)
CUDA_OPTIONAL = [n for n in OPTIONAL if n not in ("adamw_torch_xla", "adamw_torch_npu_fused")]


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(64, 32), nn.Linear(32, 32), nn.LayerNorm(32), nn.Linear(32, 64)).cuda()


def train(net: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 3) -> None:
    generator = torch.Generator(device="cuda").manual_seed(0)
    for _ in range(steps):
        ids = torch.randint(0, 64, (8, 16), device="cuda", generator=generator)
        optimizer.zero_grad(set_to_none=True)
        net(ids).logsumexp(-1).mean().backward()
        optimizer.step()


def args(optim: str) -> TrainingArguments:
    return TrainingArguments(output_dir="out", report_to="none", optim=optim, learning_rate=1e-3, weight_decay=0.01)


def test_fused_adamw_on_cuda_matches_the_unfused_one():
    fused_model, plain_model = model(), model()
    fused = create_optimizer(fused_model, args("adamw_torch_fused"))
    plain = create_optimizer(plain_model, args("adamw_torch"))
    train(fused_model, fused)
    train(plain_model, plain)
    for a, b in zip(fused_model.parameters(), plain_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["adafactor", "adamw_hf", "sgd", "adagrad", "rmsprop"])
def test_trainkit_and_torch_optimizers_step_on_cuda(name: str):
    net = model()
    before = copy.deepcopy(net.state_dict())
    train(net, create_optimizer(net, args(name)))
    assert any(not torch.equal(v, before[k]) for k, v in net.state_dict().items())


@pytest.mark.parametrize("name", CUDA_OPTIONAL)
def test_installed_optional_optimizers_step_on_cuda(name: str):
    if not OPTIMIZERS.entry(name, check_requirements=False).is_available():
        pytest.skip(f"{name} needs {OPTIMIZERS.entry(name, check_requirements=False).requires}")
    net = model()
    before = copy.deepcopy(net.state_dict())
    train(net, create_optimizer(net, args(name)))
    assert any(not torch.equal(v, before[k]) for k, v in net.state_dict().items())
