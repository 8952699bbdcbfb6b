"""OPTIMIZERS entries that need an optional package: registered with their requirement, imported when used.

Asking for one without its package raises an ImportError that names what to install (the registry
checks the requirement before the entry runs). The keyword arguments follow transformers'
``Trainer.get_optimizer_cls_and_kwargs`` for the same name.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from trainkit.optim.optimizers import adam_kwargs, instantiate
from trainkit.optim.registries import OPTIMIZERS

if TYPE_CHECKING:
    from torch import nn
    from torch.optim import Optimizer

    from trainkit.args import TrainingArguments

__all__: list[str] = []

_BNB = "pip install bitsandbytes"
_BNB_044 = "pip install 'bitsandbytes>=0.44.0'"


@OPTIMIZERS.register(
    "adamw_torch_xla",
    requires="torch_xla",
    install="pip install 'trainkit[xla]' (torch_xla pins its own torch version)",
    description="torch_xla.amp.syncfree.AdamW, for the XLA strategy.",
)
def adamw_torch_xla(params: Any, args: TrainingArguments, **optim_args: Any) -> Optimizer:
    from torch_xla.amp.syncfree import AdamW

    return instantiate("adamw_torch_xla", AdamW, params, adam_kwargs(args), optim_args)


@OPTIMIZERS.register(
    "adamw_torch_npu_fused",
    requires="torch_npu",
    install="pip install torch-npu",
    description="torch_npu's NpuFusedAdamW.",
)
def adamw_torch_npu_fused(params: Any, args: TrainingArguments, **optim_args: Any) -> Optimizer:
    from torch_npu.optim import NpuFusedAdamW

    return instantiate("adamw_torch_npu_fused", NpuFusedAdamW, params, adam_kwargs(args), optim_args)


@OPTIMIZERS.register(
    "adamw_apex_fused",
    requires="apex",
    install="build NVIDIA apex from https://github.com/NVIDIA/apex (the PyPI package named 'apex' is another project)",
    description="apex.optimizers.FusedAdam.",
)
def adamw_apex_fused(params: Any, args: TrainingArguments, **optim_args: Any) -> Optimizer:
    from apex.optimizers import FusedAdam

    return instantiate("adamw_apex_fused", FusedAdam, params, adam_kwargs(args), optim_args)


_ANYPRECISION_DTYPES = {
    "momentum_dtype": "float32",
    "variance_dtype": "float32",
    "compensation_buffer_dtype": "bfloat16",
}


@OPTIMIZERS.register(
    "adamw_anyprecision",
    requires="torchdistx",
    install="pip install torchdistx",
    description="torchdistx's AnyPrecisionAdamW; dtypes and use_kahan_summation through optim_args.",
)
def adamw_anyprecision(params: Any, args: TrainingArguments, **optim_args: Any) -> Optimizer:
    import torch
    from torchdistx.optimizers import AnyPrecisionAdamW

    fixed = {**adam_kwargs(args), "use_kahan_summation": bool(optim_args.pop("use_kahan_summation", False))}
    for key, default in _ANYPRECISION_DTYPES.items():
        dtype = getattr(torch, str(optim_args.pop(key, default)), None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"TrainingArguments.optim_args {key} must name a torch dtype (e.g. bfloat16)")
        fixed[key] = dtype
    return instantiate("adamw_anyprecision", AnyPrecisionAdamW, params, fixed, optim_args)


def _register_torchao(name: str, class_name: str) -> None:
    @OPTIMIZERS.register(
        name, requires="torchao>=0.4.0", install="pip install 'torchao>=0.4.0'", description=f"torchao's {class_name}."
    )
    def build(params: Any, args: TrainingArguments, **optim_args: Any) -> Optimizer:
        try:
            module = importlib.import_module("torchao.optim")
        except ImportError:  # torchao < 0.11 kept them in the prototype namespace
            module = importlib.import_module("torchao.prototype.low_bit_optim")
        return instantiate(name, getattr(module, class_name), params, adam_kwargs(args), optim_args)


_register_torchao("adamw_torch_4bit", "AdamW4bit")
_register_torchao("adamw_torch_8bit", "AdamW8bit")


# ------------------------------------------------------------------------ bitsandbytes
# name -> (bitsandbytes class, optim_bits, is_paged); rmsprop takes no is_paged.
_BNB_OPTIMIZERS: dict[str, tuple[str, int, bool | None]] = {
    "adamw_bnb_8bit": ("AdamW", 8, False),
    "adamw_8bit": ("AdamW", 8, False),
    "paged_adamw_32bit": ("AdamW", 32, True),
    "paged_adamw_8bit": ("AdamW", 8, True),
    "lion_8bit": ("Lion", 8, False),
    "lion_32bit": ("Lion", 32, False),
    "paged_lion_32bit": ("Lion", 32, True),
    "paged_lion_8bit": ("Lion", 8, True),
    "rmsprop_bnb": ("RMSprop", 32, None),
    "rmsprop_bnb_8bit": ("RMSprop", 8, None),
    "rmsprop_bnb_32bit": ("RMSprop", 32, None),
    "ademamix": ("AdEMAMix", 32, False),
    "ademamix_8bit": ("AdEMAMix", 8, False),
    "paged_ademamix_32bit": ("AdEMAMix", 32, True),
    "paged_ademamix_8bit": ("AdEMAMix", 8, True),
}


def _bnb_fixed(class_name: str, args: TrainingArguments, optim_args: dict[str, Any]) -> dict[str, Any]:
    """transformers' arguments per bitsandbytes class (AdEMAMix reads its betas, alpha and eps from optim_args)."""
    if class_name == "AdamW":
        return adam_kwargs(args)
    if class_name == "Lion":
        return {"lr": args.learning_rate, "betas": (args.adam_beta1, args.adam_beta2)}
    if class_name == "RMSprop":
        return {"lr": args.learning_rate}
    betas = (
        float(optim_args.pop("beta1", args.adam_beta1)),
        float(optim_args.pop("beta2", args.adam_beta2)),
        float(optim_args.pop("beta3", 0.9999)),
    )
    eps = float(optim_args.pop("eps", args.adam_epsilon))
    return {"lr": args.learning_rate, "betas": betas, "alpha": float(optim_args.pop("alpha", 5.0)), "eps": eps}


def _keep_embeddings_in_32bit(model: nn.Module) -> None:
    """As transformers: 8-bit optimizers keep the state of Embedding weights in 32 bits (more stable)."""
    import bitsandbytes
    from torch import nn

    manager = bitsandbytes.optim.GlobalOptimManager.get_instance()
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            manager.register_module_override(module, "weight", {"optim_bits": 32})


def _register_bnb(name: str, class_name: str, bits: int, paged: bool | None) -> None:
    ademamix = class_name == "AdEMAMix"

    @OPTIMIZERS.register(
        name,
        requires="bitsandbytes>=0.44.0" if ademamix else "bitsandbytes",
        install=_BNB_044 if ademamix else _BNB,
        description=f"bitsandbytes.optim.{class_name}, {bits}-bit{', paged' if paged else ''}.",
    )
    def build(params: Any, args: TrainingArguments, model: nn.Module | None = None, **optim_args: Any) -> Optimizer:
        bnb_optim = importlib.import_module("bitsandbytes.optim")
        fixed = {**_bnb_fixed(class_name, args, optim_args), "optim_bits": bits}
        if paged is not None:
            fixed["is_paged"] = paged
        optimizer = instantiate(name, getattr(bnb_optim, class_name), params, fixed, optim_args)
        if bits == 8 and model is not None:
            _keep_embeddings_in_32bit(model)
        return optimizer


for _name, (_class_name, _bits, _paged) in _BNB_OPTIMIZERS.items():
    _register_bnb(_name, _class_name, _bits, _paged)
