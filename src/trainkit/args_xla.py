"""Validation of the XLA keys of ``fsdp_config`` (transformers' ``xla``, ``xla_fsdp_v2``, ...).

trainkit implements transformers' FSDPv2: SPMD fully-sharded training (``XLASPMDStrategy``),
selected by ``fsdp='full_shard'`` with ``fsdp_config={'xla': True, 'xla_fsdp_v2': True}``.
transformers silently accepts contradictions here (non-boolean flags, v1 settings under v2,
``xla`` without ``fsdp``); trainkit names them instead. Pure checks: nothing is imported or started.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainkit.args import TrainingArguments

__all__ = ["XLA_FSDP_KEYS", "check_xla_fsdp_config"]

XLA_FSDP_KEYS = ("xla", "xla_fsdp_v2", "xla_fsdp_settings", "xla_fsdp_grad_ckpt")
_FLAGS = ("xla", "xla_fsdp_v2", "xla_fsdp_grad_ckpt")
# keys with a meaning under SPMD: the layers to checkpoint (and to give an optimization barrier)
_SPMD_KEYS = {*XLA_FSDP_KEYS, "transformer_layer_cls_to_wrap"}
_PREFIX = "TrainingArguments.fsdp_config"


def check_xla_fsdp_config(args: TrainingArguments) -> None:
    """Refuse XLA settings that are contradictory, not implemented, or would be ignored (naming them)."""
    config: dict[str, Any] = args.fsdp_config if isinstance(args.fsdp_config, dict) else {}
    for key in _FLAGS:
        if key in config and not isinstance(config[key], bool):
            raise ValueError(f"{_PREFIX}[{key!r}] must be True or False, got {config[key]!r}")
    if not config.get("xla"):
        stray = [k for k in XLA_FSDP_KEYS[1:] if config.get(k)]
        if stray:
            raise ValueError(f"{_PREFIX}: {stray} need fsdp_config['xla']=True (XLA FSDP)")
        return
    if not config.get("xla_fsdp_v2"):
        raise ValueError(
            f"{_PREFIX}['xla']=True without 'xla_fsdp_v2': XLA FSDP v1 (torch_xla's XlaFullyShardedDataParallel "
            "across PJRT processes) is not implemented; set fsdp_config['xla_fsdp_v2']=True for SPMD fully-sharded "
            "training (XLASPMDStrategy)"
        )
    if config.get("xla_fsdp_settings"):
        raise ValueError(
            f"{_PREFIX}['xla_fsdp_settings'] configures XLA FSDP v1, which trainkit does not implement; "
            "FSDPv2 (xla_fsdp_v2=True) takes none (transformers ignores them there)"
        )
    _check_fsdp_options(args)
    ignored = sorted(k for k, v in config.items() if k not in _SPMD_KEYS and v)
    if ignored:
        raise ValueError(
            f"{_PREFIX}: {ignored} have no meaning under XLA SPMD (every parameter is sharded, layers are named "
            "with 'transformer_layer_cls_to_wrap'); remove them"
        )
    if args.use_cpu:
        raise ValueError(
            "TrainingArguments: use_cpu=True contradicts fsdp_config['xla']=True (training on XLA devices)"
        )


def _check_fsdp_options(args: TrainingArguments) -> None:
    fsdp = args.fsdp if isinstance(args.fsdp, list) else []  # a list of FSDPOption once validated
    options = [str(getattr(o, "value", o)) for o in fsdp]
    if "full_shard" not in options:
        raise ValueError(
            f"{_PREFIX}['xla']=True needs fsdp='full_shard' (got fsdp={options}): XLA FSDPv2 is fully sharded"
        )
    other = [o for o in options if o not in ("full_shard", "auto_wrap")]
    if other:
        raise ValueError(f"TrainingArguments.fsdp: {other} are not supported with XLA FSDPv2 (SPMD); use 'full_shard'")
