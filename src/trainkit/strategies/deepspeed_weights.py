"""Full weights in and out of a live DeepSpeed engine, and safe reading of its checkpoint files.

ZeRO-3 partitions every parameter over the ranks (``param.ds_tensor``; ``param.data`` is empty
outside forward), so a full state dict is loaded one module at a time inside
``deepspeed.zero.GatheredParameters(..., modifier_rank=0)``: rank 0 writes the gathered parameters,
and DeepSpeed re-partitions them from rank 0's values on exit. Below stage 3 every rank holds the
whole module: rank 0 loads, then broadcasts. DeepSpeed reads its own checkpoint files with
``torch.load(weights_only=False)``; ``safe_engine_loads`` makes those reads weights-only, with the
few DeepSpeed classes its files hold allowed.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from trainkit.checkpoint.errors import CheckpointError

__all__ = ["full_shapes", "load_partitioned", "load_replicated", "safe_engine_loads"]

_FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"


class _Shapes(nn.Module):
    """Stands in for a ZeRO-3 module in ``describe_state_mismatch``: its state dict with the real shapes."""

    def __init__(self, entries: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.entries = entries

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        return self.entries


def full_shapes(module: nn.Module) -> nn.Module:
    """``module``, or a stand-in whose state dict has the full shapes when ZeRO-3 partitioned its parameters."""
    if not any(hasattr(p, "ds_shape") for p in module.parameters()):
        return module
    entries = {}
    for key, value in module.state_dict(keep_vars=True).items():
        entries[key] = torch.empty(getattr(value, "ds_shape", value.shape), device="meta")
    return _Shapes(entries)


def _key(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def load_partitioned(module: nn.Module, state: Mapping[str, Any], is_rank_zero: bool) -> None:
    """Rank 0's weights into ZeRO-3's partitions, one module's parameters gathered at a time; buffers broadcast."""
    import deepspeed

    for prefix, sub in module.named_modules():
        params = list(sub.named_parameters(recurse=False))
        if params:
            with deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=0), torch.no_grad():
                if is_rank_zero:
                    for name, param in params:
                        if _key(prefix, name) in state:
                            param.copy_(state[_key(prefix, name)])
        for name, buffer in sub.named_buffers(recurse=False):
            if is_rank_zero and _key(prefix, name) in state:
                buffer.data.copy_(state[_key(prefix, name)])
            dist.broadcast(buffer.data, src=0)


def load_replicated(module: nn.Module, state: Mapping[str, Any], is_rank_zero: bool, strict: bool) -> None:
    """Rank 0 loads ``state``; every parameter and buffer is then broadcast from it (ZeRO stages 0-2)."""
    if is_rank_zero:
        module.load_state_dict(state, strict=strict)
    for tensor in [*module.parameters(), *module.buffers()]:
        dist.broadcast(tensor.data, src=0)


def _deepspeed_checkpoint_classes() -> list[Any]:
    """The classes DeepSpeed pickles into its checkpoint files (ZeRO stage enum, loss scalers, fragment addresses)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]


@contextlib.contextmanager
def safe_engine_loads(folder: Path) -> Iterator[None]:
    """Every ``torch.load`` inside reads weights-only (torch's ``TORCH_FORCE_WEIGHTS_ONLY_LOAD``), DeepSpeed's own
    checkpoint classes allowed; anything else in a file is refused with an error naming it."""
    previous = os.environ.get(_FORCE_WEIGHTS_ONLY)
    os.environ[_FORCE_WEIGHTS_ONLY] = "1"
    try:
        with torch.serialization.safe_globals(_deepspeed_checkpoint_classes()):
            yield
    except pickle.UnpicklingError as err:
        lines = [line.strip() for line in str(err).splitlines() if "Unsupported global" in line]
        reason = lines[0] if lines else f"{type(err).__name__}: {str(err).strip()[:300]}"
        raise CheckpointError(
            f"DeepSpeed's checkpoint in {folder} holds an object that cannot be loaded safely (weights_only): "
            f"{reason}. If you trust these files, allow that class with torch.serialization.add_safe_globals([...])"
        ) from err
    finally:
        if previous is None:
            os.environ.pop(_FORCE_WEIGHTS_ONLY, None)
        else:
            os.environ[_FORCE_WEIGHTS_ONLY] = previous
