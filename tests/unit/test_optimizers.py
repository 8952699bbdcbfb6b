"""create_optimizer and the OPTIMIZERS registry: parameter groups, arguments, optim_args, errors, user entries."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

from tests.optim_helpers import safe_round_trip
from trainkit import ArgumentParser, TrainingArguments
from trainkit.optim import (
    OPTIMIZERS,
    Adafactor,
    HFAdamW,
    build_param_groups,
    create_optimizer,
    get_decay_parameter_names,
    is_normalization_module,
    parse_optim_args,
)
from trainkit.options import OptimizerNames

TORCH_NATIVE = sorted(n for n in OPTIMIZERS.available() if not OPTIMIZERS.entry(n, check_requirements=False).requires)
OPTIONAL = sorted(set(OPTIMIZERS.available()) - set(TORCH_NATIVE))


class MyRMSNorm(nn.Module):
    """A custom RMSNorm (not a torch.nn.RMSNorm), as models define their own."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class TinyModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.proj = nn.Linear(8, 8)
        self.ln = nn.LayerNorm(8)
        self.final = MyRMSNorm(8)  # no "norm" in the attribute name: found by its type
        self.frozen = nn.Linear(8, 8)
        self.frozen.requires_grad_(False)
        self.head = nn.Linear(8, 3, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.final(self.frozen(self.ln(self.proj(self.embed(ids))))))


def make_args(**kwargs: Any) -> TrainingArguments:
    return TrainingArguments(output_dir="out", report_to="none", **kwargs)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 10, (4, 5), generator=generator)
    optimizer.zero_grad(set_to_none=True)
    model(ids).pow(2).mean().backward()
    optimizer.step()


def names_of(model: nn.Module, params: list[nn.Parameter]) -> list[str]:
    lookup = {id(p): n for n, p in model.named_parameters()}
    return [lookup[id(p)] for p in params]


# ------------------------------------------------------------------------------ parameter groups
def test_decay_names_exclude_biases_and_norm_weights_found_by_type():
    model = TinyModel()
    assert get_decay_parameter_names(model) == ["embed.weight", "proj.weight", "frozen.weight", "head.weight"]


def test_groups_hold_trainable_parameters_with_transformers_layout():
    model = TinyModel()
    decay, no_decay = build_param_groups(model, 0.05)
    assert names_of(model, decay["params"]) == ["embed.weight", "proj.weight", "head.weight"]
    assert names_of(model, no_decay["params"]) == ["proj.bias", "ln.weight", "ln.bias", "final.weight"]
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.05, 0.0)


def test_without_weight_decay_one_group_holds_every_trainable_parameter():
    model = TinyModel()
    (group,) = build_param_groups(model, 0.0)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert names_of(model, group["params"]) == trainable
    assert group["weight_decay"] == 0.0


def test_norm_detection_by_type_and_by_class_name():
    for module in (nn.LayerNorm(3), nn.RMSNorm(3), nn.GroupNorm(1, 3), nn.BatchNorm1d(3), nn.InstanceNorm2d(3)):
        assert is_normalization_module(module)
    assert is_normalization_module(MyRMSNorm(3))
    assert not is_normalization_module(nn.Linear(3, 3))
    assert not is_normalization_module(nn.Embedding(3, 3))


def test_parameters_inside_a_norm_named_container_keep_decay():
    """Only parameters a norm module holds itself are excluded (an adaptive norm's Linear is a weight)."""

    class AdaLayerNorm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(4, 8)
            self.norm = nn.LayerNorm(4, elementwise_affine=False)

    assert get_decay_parameter_names(AdaLayerNorm()) == ["linear.weight"]


def test_transformers_name_patterns_still_apply():
    model = nn.ModuleDict(
        {"attn": nn.ModuleDict({"relative_attention_bias": nn.Embedding(4, 2)}), "q": nn.Linear(2, 2)}
    )
    assert get_decay_parameter_names(model) == ["q.weight"]


def test_model_without_trainable_parameters_is_an_error():
    model = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="Linear has no trainable parameters"):
        create_optimizer(model, make_args())


# ---------------------------------------------------------------------------------- optimizers
def test_every_transformers_optimizer_name_is_registered():
    assert {o.value for o in OptimizerNames} <= set(OPTIMIZERS.available())


@pytest.mark.parametrize("name", TORCH_NATIVE)
def test_every_torch_native_optimizer_steps_and_round_trips_its_state(name: str):
    model = TinyModel()
    optimizer = create_optimizer(model, make_args(optim=name, learning_rate=1e-2, weight_decay=0.01))
    before = copy.deepcopy(model.state_dict())
    train_step(model, optimizer, seed=0)
    changed = {n for n, p in model.state_dict().items() if not torch.equal(p, before[n])}
    assert changed == {
        "embed.weight",
        "proj.weight",
        "proj.bias",
        "ln.weight",
        "ln.bias",
        "final.weight",
        "head.weight",
    }

    resumed_model = copy.deepcopy(model)
    resumed = create_optimizer(resumed_model, make_args(optim=name, learning_rate=1e-2, weight_decay=0.01))
    resumed.load_state_dict(safe_round_trip(optimizer.state_dict()))
    for seed in (1, 2):
        train_step(model, optimizer, seed)
        train_step(resumed_model, resumed, seed)
    for (key, value), resumed_value in zip(model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(value, resumed_value), key


@pytest.mark.parametrize(
    ("name", "cls", "expected"),
    [
        ("adamw_torch", torch.optim.AdamW, {"lr": 3e-3, "betas": (0.8, 0.95), "eps": 1e-6, "fused": None}),
        ("adamw_torch_fused", torch.optim.AdamW, {"lr": 3e-3, "betas": (0.8, 0.95), "eps": 1e-6, "fused": True}),
        ("adamw_hf", HFAdamW, {"lr": 3e-3, "betas": (0.8, 0.95), "eps": 1e-6, "correct_bias": True}),
        ("adafactor", Adafactor, {"lr": 3e-3, "scale_parameter": False, "relative_step": False, "beta1": None}),
        ("sgd", torch.optim.SGD, {"lr": 3e-3, "momentum": 0}),
        ("adagrad", torch.optim.Adagrad, {"lr": 3e-3}),
        ("rmsprop", torch.optim.RMSprop, {"lr": 3e-3}),
    ],
)
def test_arguments_are_honoured(name: str, cls: type, expected: dict[str, Any]):
    args = make_args(
        optim=name, learning_rate=3e-3, adam_beta1=0.8, adam_beta2=0.95, adam_epsilon=1e-6, weight_decay=0.1
    )
    optimizer = create_optimizer(TinyModel(), args)
    assert type(optimizer) is cls
    for group, decay in zip(optimizer.param_groups, (0.1, 0.0)):
        assert group["weight_decay"] == decay
        assert {k: group[k] for k in expected} == expected


def test_legacy_adafactor_flag_builds_adafactor():
    with pytest.warns(FutureWarning, match="adafactor=True"):
        args = make_args(adafactor=True)
    assert args.optim == "adafactor"
    assert isinstance(create_optimizer(TinyModel(), args), Adafactor)


def test_optim_args_reach_the_optimizer_with_their_types():
    args = make_args(optim="sgd", optim_args="momentum=0.9, nesterov=true, dampening=0")
    group = create_optimizer(TinyModel(), args).param_groups[0]
    assert (group["momentum"], group["nesterov"], group["dampening"]) == (0.9, True, 0.0)
    adafactor = create_optimizer(TinyModel(), make_args(optim="adafactor", optim_args="beta1=0.9,clip_threshold=2"))
    assert (adafactor.defaults["beta1"], adafactor.defaults["clip_threshold"]) == (0.9, 2.0)


@pytest.mark.parametrize(
    ("optim", "optim_args", "error", "message"),
    [
        ("adamw_torch", "momentum=0.9", TypeError, r"'adamw_torch' .*does not accept 'momentum' .*it accepts: amsgrad"),
        ("adamw_torch", "lr=0.1", ValueError, r"sets 'lr', which .* takes from TrainingArguments\.learning_rate"),
        ("sgd", "weight_decay=0.1", ValueError, r"sets 'weight_decay', which .* TrainingArguments\.weight_decay"),
        (
            "adamw_torch_fused",
            "fused=false",
            ValueError,
            r"sets 'fused', which .* takes from optim='adamw_torch_fused'",
        ),
        ("adafactor", "eps=1e-3", ValueError, r"optim_args eps=0\.001: a tuple cannot be given"),
        ("sgd", "nesterov=maybe", ValueError, r"optim_args nesterov='maybe' must be true or false"),
        ("adamw_torch", "model=1", ValueError, r"must not set 'model'"),
    ],
)
def test_bad_optim_args_name_the_key(optim: str, optim_args: str, error: type[Exception], message: str):
    with pytest.raises(error, match=message):
        create_optimizer(TinyModel(), make_args(optim=optim, optim_args=optim_args))


def test_optim_args_parse_as_transformers():
    assert parse_optim_args("a=1, b = 2.5,c=true,d=None,e=bfloat16") == {
        "a": 1,
        "b": 2.5,
        "c": True,
        "d": None,
        "e": "bfloat16",
    }
    assert parse_optim_args("") == parse_optim_args(None) == {}
    for bad in ("a=1,", "a", "=1", "a=1=2", "a=1,a=2"):
        with pytest.raises(ValueError, match=r"TrainingArguments\.optim_args"):
            parse_optim_args(bad)


def test_unknown_optimizer_lists_names_and_closest():
    with pytest.raises(
        ValueError, match=r"TrainingArguments\.optim='adamw_torh' .*Did you mean 'adamw_torch'\? Available: adafactor"
    ):
        make_args(optim="adamw_torh")
    args = make_args()
    args.optim = "sgdd"
    with pytest.raises(ValueError, match=r"Unknown optimizer 'sgdd'\. Did you mean 'sgd'\?"):
        create_optimizer(TinyModel(), args)


@pytest.mark.parametrize("name", OPTIONAL)
def test_optional_optimizer_without_its_package_names_the_install(name: str):
    entry = OPTIMIZERS.entry(name, check_requirements=False)
    if entry.is_available():
        pytest.skip(f"{entry.requires} is installed here")
    with pytest.raises(ImportError, match=rf"optimizer '{name}' needs .*not installed\. Install it with: .+"):
        create_optimizer(TinyModel(), make_args(optim=name))


def test_optional_optimizer_install_hints_name_the_pip_package():
    hints = {n: OPTIMIZERS.entry(n, check_requirements=False).install or "" for n in OPTIONAL}
    assert hints["adamw_bnb_8bit"] == "pip install bitsandbytes"
    assert hints["ademamix"] == "pip install 'bitsandbytes>=0.44.0'"
    assert hints["adamw_anyprecision"] == "pip install torchdistx"
    assert "trainkit[xla]" in hints["adamw_torch_xla"]
    assert "github.com/NVIDIA/apex" in hints["adamw_apex_fused"]


# ------------------------------------------------------------------------------------ user entries
@pytest.fixture
def user_optimizer() -> Iterator[list[dict[str, Any]]]:
    calls: list[dict[str, Any]] = []

    @OPTIMIZERS.register("test_my_sgd")
    def my_sgd(params: Any, args: TrainingArguments, momentum: float = 0.0, **optim_args: Any) -> torch.optim.Optimizer:
        calls.append({"momentum": momentum, **optim_args})
        return torch.optim.SGD(params, lr=args.learning_rate, momentum=momentum)

    yield calls
    OPTIMIZERS.remove("test_my_sgd")


def test_user_optimizer_is_selected_by_name_with_its_optim_args(user_optimizer: list[dict[str, Any]]):
    args = make_args(optim="test_my_sgd", optim_args="momentum=0.5,tag=x", learning_rate=0.2)
    optimizer = create_optimizer(TinyModel(), args)
    assert user_optimizer == [{"momentum": 0.5, "tag": "x"}]
    assert [g["lr"] for g in optimizer.param_groups] == [0.2]  # weight_decay 0: one group


def test_user_optimizer_from_the_command_line(user_optimizer: list[dict[str, Any]]):
    (args,) = ArgumentParser(TrainingArguments).parse_args_into_dataclasses(
        ["--output_dir", "out", "--optim", "test_my_sgd", "--optim_args", "momentum=0.25"], look_for_args_file=False
    )
    assert isinstance(create_optimizer(TinyModel(), args), torch.optim.SGD)
    assert user_optimizer == [{"momentum": 0.25}]


def test_entry_that_builds_no_optimizer_is_refused():
    OPTIMIZERS.register("test_not_an_optimizer", lambda params, args: object())
    try:
        with pytest.raises(TypeError, match="built a object, which is not a torch Optimizer"):
            create_optimizer(TinyModel(), make_args(optim="test_not_an_optimizer"))
    finally:
        OPTIMIZERS.remove("test_not_an_optimizer")


# ----------------------------------------------------------------------------- HF optimizer classes
def test_hf_adamw_follows_transformers_update_order():
    torch.manual_seed(0)
    param = nn.Parameter(torch.randn(3, 2))
    lr, (b1, b2), eps, wd = 0.1, (0.9, 0.99), 1e-6, 0.01
    optimizer = HFAdamW([param], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    expected, m, v = param.detach().clone(), torch.zeros(3, 2), torch.zeros(3, 2)
    for t in range(1, 4):
        grad = torch.randn(3, 2)
        param.grad = grad.clone()
        optimizer.step()
        m, v = b1 * m + (1 - b1) * grad, b2 * v + (1 - b2) * grad * grad
        expected = expected - lr * (1 - b2**t) ** 0.5 / (1 - b1**t) * m / (v.sqrt() + eps)  # eps before correction
        expected = expected - lr * wd * expected  # decay after the update
        torch.testing.assert_close(param.detach(), expected)


def test_adafactor_argument_rules():
    params = [nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="manual lr needs relative_step=False"):
        Adafactor(params, lr=1e-3)
    with pytest.raises(ValueError, match="relative_step=False needs an lr"):
        Adafactor(params, relative_step=False)
    with pytest.raises(ValueError, match="warmup_init=True needs relative_step=True"):
        Adafactor(params, lr=1e-3, relative_step=False, warmup_init=True)
