"""Parameter groups as transformers builds them: weight decay on weights, none on biases and norm weights."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

__all__ = ["build_param_groups", "get_decay_parameter_names", "is_normalization_module"]

# transformers' name patterns (4.57), matched against the lower-cased full parameter name.
_NO_DECAY_NAME = re.compile(r"bias|layernorm|rmsnorm|(?:^|\.)norm(?:$|\.)|_norm(?:$|\.)")
# LayerNorm, RMSNorm, GroupNorm, BatchNorm2d, LlamaRMSNorm, T5LayerNorm, FusedLayerNorm, LayerNormalization...
_NORM_CLASS_NAME = re.compile(r"Norm(?:alization)?(?:\d+d)?$")


def is_normalization_module(module: nn.Module) -> bool:
    """True for torch's norm layers and for any module whose class (or a base class) is named ``...Norm``."""
    from torch import nn

    torch_norms = (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm)
    return isinstance(module, torch_norms) or any(_NORM_CLASS_NAME.search(c.__name__) for c in type(module).__mro__)


def get_decay_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters that get weight decay, in ``named_parameters()`` order.

    Excluded: parameters held directly by a normalisation module (found by type, so a custom
    ``RMSNorm`` under any attribute name counts) and those whose name matches transformers'
    patterns (``bias``, ``layernorm``, ``rmsnorm``, a ``norm`` / ``*_norm`` path segment). As in
    transformers, ``requires_grad`` is not looked at here; ``build_param_groups`` leaves frozen ones out.
    """
    in_norm = {id(p) for m in model.modules() if is_normalization_module(m) for p in m.parameters(recurse=False)}
    return [
        name
        for name, param in model.named_parameters()
        if id(param) not in in_norm and not _NO_DECAY_NAME.search(name.lower())
    ]


def build_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """transformers' two groups of trainable parameters: ``[decay (weight_decay), no decay (0.0)]``.

    Both groups are present (one may be empty) whenever ``weight_decay`` is not 0. With
    ``weight_decay == 0`` (transformers' default) the two groups would have the same
    hyperparameters, and every trainable parameter goes into one group: the same updates, one
    pass of the optimizer's per-group work instead of two (15 us per step of a small model on
    CPU, ``benchmarks/loop_overhead.py``). A model without trainable parameters is an error.
    """
    decay = set(get_decay_parameter_names(model))
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(f"{type(model).__name__} has no trainable parameters (all have requires_grad=False)")
    if weight_decay == 0:
        return [{"params": [p for _, p in trainable], "weight_decay": 0.0}]
    return [
        {"params": [p for name, p in trainable if name in decay], "weight_decay": weight_decay},
        {"params": [p for name, p in trainable if name not in decay], "weight_decay": 0.0},
    ]
