"""trainkit's optimizers and parameter groups against transformers' Trainer (skipped without transformers)."""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from tests.optim_helpers import install_fake_bitsandbytes, safe_round_trip
from trainkit import TrainingArguments
from trainkit.optim import Adafactor, build_param_groups, create_optimizer, get_decay_parameter_names

transformers = pytest.importorskip("transformers")
from transformers import Trainer  # noqa: E402

HYPER = {"learning_rate": 3e-3, "adam_beta1": 0.85, "adam_beta2": 0.98, "adam_epsilon": 1e-7, "weight_decay": 0.05}


class LlamaRMSNorm(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class Block(nn.Module):
    """Names as transformers models use them, so transformers' name patterns find every norm."""

    def __init__(self) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(11, 8)
        self.input_layernorm = LlamaRMSNorm(8)
        self.q_proj = nn.Linear(8, 8)
        self.ln_f = nn.LayerNorm(8)
        self.norm = LlamaRMSNorm(8)
        self.lm_head = nn.Linear(8, 11, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.input_layernorm(self.embed_tokens(ids))
        return self.lm_head(self.norm(self.ln_f(self.q_proj(h))))


def hf_decay_names(model: nn.Module) -> list[str]:
    return Trainer.get_decay_parameter_names(None, model)


def test_decay_names_equal_transformers_for_transformers_style_names():
    model = Block()
    theirs = hf_decay_names(model)
    if "input_layernorm.weight" in theirs:
        pytest.skip("this transformers finds norms by nn.LayerNorm type and 'bias' only (name patterns came later)")
    assert get_decay_parameter_names(model) == theirs


def test_a_norm_under_an_unusual_name_is_found_by_type_where_transformers_decays_it():
    model = nn.Sequential(nn.Linear(4, 4), LlamaRMSNorm(4))
    assert hf_decay_names(model) == ["0.weight", "1.weight"]
    assert get_decay_parameter_names(model) == ["0.weight"]


def hf_optimizer(name: str, model: nn.Module, optim_args: str | None = None) -> torch.optim.Optimizer:
    args = SimpleNamespace(optim=name, optim_args=optim_args, **HYPER)
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    return cls(build_param_groups(model, HYPER["weight_decay"]), **kwargs)


def train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> None:
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        ids = torch.randint(0, 11, (4, 6), generator=generator)
        optimizer.zero_grad()
        model(ids).logsumexp(-1).mean().backward()
        optimizer.step()


@pytest.mark.parametrize("name", ["adamw_torch", "adamw_torch_fused", "adafactor", "sgd", "adagrad", "rmsprop"])
def test_optimizer_trains_as_transformers(name: str):
    torch.manual_seed(0)
    ours_model = Block()
    theirs_model = copy.deepcopy(ours_model)
    ours = create_optimizer(ours_model, TrainingArguments(output_dir="out", report_to="none", optim=name, **HYPER))
    theirs = hf_optimizer(name, theirs_model)
    if name != "adafactor":
        assert type(ours) is type(theirs)
    for ours_group, theirs_group in zip(ours.param_groups, theirs.param_groups):
        assert {k: v for k, v in ours_group.items() if k != "params"} == {
            k: v for k, v in theirs_group.items() if k != "params"
        }
    train(ours_model, ours, 4)
    train(theirs_model, theirs, 4)
    for (key, value), expected in zip(ours_model.state_dict().items(), theirs_model.state_dict().values()):
        torch.testing.assert_close(value, expected, rtol=0, atol=0, msg=key)


ADAFACTOR_CONFIGS: list[dict[str, Any]] = [
    {"lr": 1e-2, "relative_step": False, "scale_parameter": False},
    {"lr": 1e-2, "relative_step": False, "scale_parameter": True, "beta1": 0.9, "weight_decay": 0.1},
    {"lr": None, "relative_step": True, "scale_parameter": True},
    {"lr": None, "relative_step": True, "scale_parameter": False, "warmup_init": True, "clip_threshold": 0.5},
]


@pytest.mark.parametrize("config", ADAFACTOR_CONFIGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_adafactor_equals_transformers(config: dict[str, Any], dtype: torch.dtype):
    torch.manual_seed(0)
    shapes = [(5,), (4, 6), (2, 3, 4)]
    ours_params = [nn.Parameter(torch.randn(s).to(dtype)) for s in shapes]
    theirs_params = [nn.Parameter(p.detach().clone()) for p in ours_params]
    ours = Adafactor(ours_params, **config)
    theirs = transformers.Adafactor(theirs_params, **config)
    for _ in range(5):
        grads = [torch.randn(s).to(dtype) for s in shapes]
        for params, optimizer in ((ours_params, ours), (theirs_params, theirs)):
            for param, grad in zip(params, grads):
                param.grad = grad.clone()
            optimizer.step()
    for mine, reference in zip(ours_params, theirs_params):
        torch.testing.assert_close(mine, reference, rtol=0, atol=0)


BNB_NAMES = [
    "adamw_bnb_8bit",
    "adamw_8bit",
    "paged_adamw_32bit",
    "paged_adamw_8bit",
    "lion_8bit",
    "lion_32bit",
    "paged_lion_32bit",
    "paged_lion_8bit",
    "rmsprop_bnb",
    "rmsprop_bnb_8bit",
    "rmsprop_bnb_32bit",
    "ademamix",
    "ademamix_8bit",
    "paged_ademamix_32bit",
    "paged_ademamix_8bit",
]


@pytest.mark.parametrize("name", BNB_NAMES)
def test_bitsandbytes_arguments_equal_transformers(monkeypatch: pytest.MonkeyPatch, name: str):
    if name not in {o.value for o in transformers.training_args.OptimizerNames}:
        pytest.skip(f"this transformers has no optim={name!r}")
    install_fake_bitsandbytes(monkeypatch)
    optim_args = "beta3=0.999,alpha=8,t_alpha=100" if "ademamix" in name else None
    args = SimpleNamespace(optim=name, optim_args=optim_args, **HYPER)
    hf_cls, hf_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, Block())
    calls = install_fake_bitsandbytes(monkeypatch)
    create_optimizer(
        Block(), TrainingArguments(output_dir="out", report_to="none", optim=name, optim_args=optim_args, **HYPER)
    )
    assert calls["optimizers"] == [(hf_cls.__name__, hf_kwargs)]


@pytest.mark.parametrize("direction", ["transformers_to_trainkit", "trainkit_to_transformers"])
def test_adafactor_state_loads_both_ways(direction: str):
    torch.manual_seed(0)
    config = {"lr": 1e-2, "relative_step": False, "scale_parameter": True, "beta1": 0.9}
    writer_cls, reader_cls = (transformers.Adafactor, Adafactor)
    if direction == "trainkit_to_transformers":
        writer_cls, reader_cls = reader_cls, writer_cls
    params = [nn.Parameter(torch.randn(4, 6)), nn.Parameter(torch.randn(5))]
    grads = [[torch.randn_like(p) for p in params] for _ in range(4)]

    def run(optimizer: torch.optim.Optimizer, tensors: list[nn.Parameter], steps: list[list[torch.Tensor]]) -> None:
        for step_grads in steps:
            for tensor, grad in zip(tensors, step_grads):
                tensor.grad = grad.clone()
            optimizer.step()

    writer = writer_cls(params, **config)
    run(writer, params, grads[:2])
    resumed_params = [nn.Parameter(p.detach().clone()) for p in params]
    reader = reader_cls(resumed_params, **config)
    reader.load_state_dict(safe_round_trip(writer.state_dict()))
    run(writer, params, grads[2:])
    run(reader, resumed_params, grads[2:])
    for mine, reference in zip(resumed_params, params):
        torch.testing.assert_close(mine, reference, rtol=0, atol=0)
