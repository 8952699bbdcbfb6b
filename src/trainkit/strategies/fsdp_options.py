"""transformers' ``fsdp`` options and ``fsdp_config`` keys read into ``FSDPStrategy`` keyword arguments.

Every key transformers documents is either mapped to FSDP2 or refused with the reason; a key
nobody knows is an error naming the known ones, so a typo is never silently ignored. Boolean
keys take JSON booleans or the strings "true"/"false" (transformers' own configs use strings).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["FSDP_CONFIG_KEYS", "fsdp_strategy_kwargs"]

# key -> what trainkit does with it (also the text of docs/distributed.md)
FSDP_CONFIG_KEYS: dict[str, str] = {
    "min_num_params": "size-based wrapping: submodules with at least this many parameters are FSDP units",
    "transformer_layer_cls_to_wrap": "class-based wrapping: submodules of these class names are FSDP units",
    "reshard_after_forward": "FSDP2's reshard_after_forward (must agree with full_shard/shard_grad_op when both given)",
    "activation_checkpointing": "recompute the FSDP units' activations in backward",
    "sync_module_states": "broadcast rank 0's weights into the shards (default true)",
    "cpu_ram_efficient_loading": "ranks other than 0 may build the model on the meta device (needs sync_module_states)",
    "forward_prefetch": "each unit all-gathers the next one's parameters during its forward",
    "backward_prefetch": "'backward_pre' (FSDP2 always prefetches the next unit in backward); others are refused",
    "limit_all_gathers": "accepted; FSDP2 bounds in-flight all-gathers by design, there is nothing to switch",
    "use_orig_params": "true accepted (FSDP2 always keeps the original parameters); false is refused",
    "version": "2 (FSDP2); 1 is refused: FSDP1 needs an accelerator and is not supported",
    "xla": "true selects XLA FSDPv2 (XLASPMDStrategy, docs/xla.md) instead of FSDPStrategy; false accepted",
    "xla_fsdp_settings": "XLA FSDP v1 settings: refused (docs/xla.md)",
    "xla_fsdp_grad_ckpt": "with xla: checkpoint the layers (docs/xla.md); false accepted",
    "xla_fsdp_v2": "with xla: SPMD fully-sharded training (docs/xla.md); false accepted",
}

_SHARDINGS = ("full_shard", "shard_grad_op", "hybrid_shard", "hybrid_shard_zero2", "no_shard")


def _flag(config: Mapping[str, Any], key: str, default: bool) -> bool:
    value = config.get(key, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError(f"fsdp_config[{key!r}] must be true or false, got {value!r}")


def _reshard_value(config: Mapping[str, Any]) -> bool | int | None:
    value = config.get("reshard_after_forward")
    if value is None or isinstance(value, (bool, int)):
        return value
    return _flag(config, "reshard_after_forward", True)


def _refuse_unsupported(config: Mapping[str, Any]) -> None:
    unknown = sorted(set(config) - set(FSDP_CONFIG_KEYS))
    if unknown:
        raise ValueError(f"fsdp_config: unknown key(s) {unknown}; trainkit knows {sorted(FSDP_CONFIG_KEYS)}")
    if str(config.get("version", 2)) != "2":
        raise ValueError(f"fsdp_config['version']={config['version']!r}: trainkit runs FSDP2 only (version 2)")
    if not _flag(config, "use_orig_params", True):
        raise ValueError("fsdp_config['use_orig_params']=false (flat parameters) is FSDP1-only; FSDP2 keeps them")
    xla = [key for key in ("xla", "xla_fsdp_grad_ckpt", "xla_fsdp_v2", "xla_fsdp_settings") if config.get(key)]
    if xla:
        raise ValueError(
            f"fsdp_config{xla}: XLA FSDP is XLASPMDStrategy's (the factory picks it for fsdp_config['xla']=True); "
            "FSDPStrategy runs torch's FSDP2"
        )
    prefetch = config.get("backward_prefetch")
    if prefetch is not None and str(prefetch).lower() != "backward_pre":
        raise ValueError(
            f"fsdp_config['backward_prefetch']={prefetch!r}: FSDP2 always prefetches the next unit in backward "
            "(FSDP1's 'backward_pre'); it cannot post-prefetch or turn prefetching off"
        )
    _flag(config, "limit_all_gathers", False)  # a boolean, with no switch behind it in FSDP2


def fsdp_strategy_kwargs(
    options: list[str], config: Mapping[str, Any] | None, gradient_checkpointing: bool = False
) -> dict[str, Any]:
    """``FSDPStrategy`` keyword arguments for ``fsdp`` option words and a normalised ``fsdp_config``."""
    config = dict(config or {})
    _refuse_unsupported(config)
    sharding = [o for o in options if o in _SHARDINGS]
    if len(sharding) > 1:
        raise ValueError(f"TrainingArguments.fsdp: {sharding} are exclusive; choose one")
    activation_checkpointing = _flag(config, "activation_checkpointing", False)
    if activation_checkpointing and gradient_checkpointing:
        raise ValueError(
            "fsdp_config['activation_checkpointing'] and TrainingArguments.gradient_checkpointing cannot both be "
            "true: keep activation_checkpointing (gradient_checkpointing under full_shard repeats an all-gather)"
        )
    sync = _flag(config, "sync_module_states", True)
    if _flag(config, "cpu_ram_efficient_loading", False) and not sync:
        raise ValueError("fsdp_config: cpu_ram_efficient_loading=true needs sync_module_states=true")
    classes = config.get("transformer_layer_cls_to_wrap") or []
    return {
        "sharding": sharding[0] if sharding else None,
        "reshard_after_forward": _reshard_value(config),
        "cpu_offload": "offload" in options,
        "auto_wrap": "auto_wrap" in options,
        "wrap_classes": [classes] if isinstance(classes, str) else list(classes),
        "min_num_params": int(config.get("min_num_params") or 0),
        "activation_checkpointing": activation_checkpointing,
        "sync_module_states": sync,
        "forward_prefetch": _flag(config, "forward_prefetch", False),
    }
