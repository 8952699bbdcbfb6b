"""The torch-native OPTIMIZERS entries (transformers' ``optim`` names) and ``create_optimizer``.

An entry is ``(params, args, **optim_args) -> Optimizer`` (see registries.py); an entry that also
names ``model`` receives the model. The built-in entries pass ``learning_rate`` (and for the Adam
family ``adam_beta1/2`` and ``adam_epsilon``) as transformers does, and every ``optim_args`` key to
the optimizer class: a key it does not take, or one the arguments already set, is an error naming
it (transformers ignores ``optim_args`` for most optimizers). Torch is imported when an entry runs.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from trainkit.optim.optim_args import check_keywords, coerce_to_signature, parse_optim_args
from trainkit.optim.param_groups import build_param_groups
from trainkit.optim.registries import OPTIMIZERS

if TYPE_CHECKING:
    from torch import nn
    from torch.optim import Optimizer

    from trainkit.args import TrainingArguments

__all__ = ["adam_kwargs", "create_optimizer", "instantiate"]

# Where the values an entry sets come from, for the error when optim_args sets them again.
_SOURCES = {
    "lr": "TrainingArguments.learning_rate",
    "betas": "TrainingArguments.adam_beta1 / adam_beta2",
    "eps": "TrainingArguments.adam_epsilon",
    "weight_decay": "TrainingArguments.weight_decay (applied per parameter group)",
}
_RESERVED = ("params", "args", "model")


def adam_kwargs(args: TrainingArguments) -> dict[str, Any]:
    """``lr``, ``betas`` and ``eps`` from the arguments, as transformers passes them to Adam-family optimizers."""
    return {"lr": args.learning_rate, "betas": (args.adam_beta1, args.adam_beta2), "eps": args.adam_epsilon}


def instantiate(
    name: str, cls: type[Optimizer], params: Any, fixed: Mapping[str, Any], optim_args: Mapping[str, Any]
) -> Optimizer:
    """``cls(params, **fixed, **optim_args)``, refusing optim_args that ``cls`` does not take or ``fixed`` sets."""
    owner = f"optim={name!r} ({cls.__module__}.{cls.__qualname__})"
    for key in optim_args:
        if key in fixed or key == "weight_decay":
            source = _SOURCES.get(key, f"optim={name!r} itself")
            raise ValueError(f"TrainingArguments.optim_args sets {key!r}, which {owner} takes from {source}")
    check_keywords(optim_args, cls, owner, "TrainingArguments.optim_args", skip=("params",))
    return cls(params, **fixed, **coerce_to_signature(cls, optim_args, owner))


def _lr(args: TrainingArguments) -> dict[str, Any]:
    return {"lr": args.learning_rate}


@OPTIMIZERS.register("adamw_torch", description="torch.optim.AdamW (the default).")
def adamw_torch(params: Any, args: TrainingArguments, **optim_args: Any) -> Optimizer:
    from torch.optim import AdamW

    return instantiate("adamw_torch", AdamW, params, adam_kwargs(args), optim_args)


@OPTIMIZERS.register("adamw_torch_fused", description="torch.optim.AdamW(fused=True).")
def adamw_torch_fused(params: Any, args: TrainingArguments, **optim_args: Any) -> Optimizer:
    from torch.optim import AdamW

    return instantiate("adamw_torch_fused", AdamW, params, {**adam_kwargs(args), "fused": True}, optim_args)


@OPTIMIZERS.register("adamw_hf", description="trainkit.optim.HFAdamW: transformers' legacy AdamW update order.")
def adamw_hf(params: Any, args: TrainingArguments, **optim_args: Any) -> Optimizer:
    from trainkit.optim.hf_adamw import HFAdamW

    return instantiate("adamw_hf", HFAdamW, params, adam_kwargs(args), optim_args)


@OPTIMIZERS.register("adafactor", description="trainkit.optim.Adafactor (transformers' semantics), external lr.")
def adafactor(params: Any, args: TrainingArguments, **optim_args: Any) -> Optimizer:
    from trainkit.optim.adafactor import Adafactor

    fixed = {**_lr(args), "scale_parameter": False, "relative_step": False}
    return instantiate("adafactor", Adafactor, params, fixed, optim_args)


@OPTIMIZERS.register("sgd", description="torch.optim.SGD (momentum, nesterov... through optim_args).")
def sgd(params: Any, args: TrainingArguments, **optim_args: Any) -> Optimizer:
    from torch.optim import SGD

    return instantiate("sgd", SGD, params, _lr(args), optim_args)


@OPTIMIZERS.register("adagrad", description="torch.optim.Adagrad.")
def adagrad(params: Any, args: TrainingArguments, **optim_args: Any) -> Optimizer:
    from torch.optim import Adagrad

    return instantiate("adagrad", Adagrad, params, _lr(args), optim_args)


@OPTIMIZERS.register("rmsprop", description="torch.optim.RMSprop.")
def rmsprop(params: Any, args: TrainingArguments, **optim_args: Any) -> Optimizer:
    from torch.optim import RMSprop

    return instantiate("rmsprop", RMSprop, params, _lr(args), optim_args)


def create_optimizer(model: nn.Module, args: TrainingArguments) -> Optimizer:
    """The optimizer ``args.optim`` names, over transformers' decay / no-decay groups of the trainable weights."""
    entry = OPTIMIZERS.entry(args.optim)
    optim_args = parse_optim_args(args.optim_args)
    for key in _RESERVED:
        if key in optim_args:
            raise ValueError(f"TrainingArguments.optim_args must not set {key!r} (the Trainer passes it)")
    kwargs: dict[str, Any] = {"params": build_param_groups(model, args.weight_decay), "args": args, **optim_args}
    if "model" in inspect.signature(entry.factory).parameters:
        kwargs["model"] = model
    optimizer = OPTIMIZERS.get(args.optim, **kwargs)
    from torch.optim import Optimizer

    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer {args.optim!r} built a {type(optimizer).__name__}, which is not a torch Optimizer")
    return optimizer
