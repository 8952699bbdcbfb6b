"""``ShardedGradScaler``: fp16 loss scaling when each rank holds a shard of the gradients (FSDP2).

A GradScaler decides to skip a step when a gradient holds inf/NaN; with sharded gradients each
rank sees only its shard, so the ranks must agree or they would step different models. torch's
``ShardedGradScaler`` all-reduces that finding; this subclass unscales each DTensor gradient's
local shard directly (no DTensor dispatch, no implicit replication of the inf flag).
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler as _TorchShardedGradScaler
from torch.distributed.fsdp.sharded_grad_scaler import _GeneralMultiDeviceReplicator
from torch.distributed.tensor import DTensor
from torch.optim import Optimizer

__all__ = ["ShardedGradScaler", "sharded_copy"]


class ShardedGradScaler(_TorchShardedGradScaler):
    """torch's ShardedGradScaler (inf/NaN agreed across ranks), unscaling DTensor gradients shard by shard."""

    def _unscale_grads_(
        self, optimizer: Optimizer, inv_scale: torch.Tensor, found_inf: torch.Tensor, allow_fp16: bool = True
    ) -> dict[torch.device, torch.Tensor]:
        inv_scales = _GeneralMultiDeviceReplicator(inv_scale)
        found_infs = _GeneralMultiDeviceReplicator(found_inf)
        groups: dict[torch.device, dict[torch.dtype, list[torch.Tensor]]] = defaultdict(lambda: defaultdict(list))
        with torch.no_grad():
            for group in optimizer.param_groups:
                for param in group["params"]:
                    grad = param.grad
                    if grad is None:
                        continue
                    local = grad.to_local() if isinstance(grad, DTensor) else grad
                    if not allow_fp16 and local.dtype == torch.float16:
                        raise ValueError("Attempting to unscale FP16 gradients.")
                    groups[local.device][local.dtype].append(local)
            for device, by_dtype in groups.items():
                for grads in by_dtype.values():
                    torch._amp_foreach_non_finite_check_and_unscale_(
                        grads, found_infs.get(device), inv_scales.get(device)
                    )
        if not found_infs._per_device_tensors:  # a rank without gradient shards still votes
            assert self._scale is not None
            found_infs.get(self._scale.device)
        return found_infs._per_device_tensors


def sharded_copy(scaler: torch.amp.GradScaler, device_type: str) -> ShardedGradScaler:
    """A ShardedGradScaler with ``scaler``'s settings and current state (scale, growth tracker)."""
    sharded = ShardedGradScaler(
        device_type,
        init_scale=scaler.get_scale() if scaler.is_enabled() else 2.0**16,
        growth_factor=scaler.get_growth_factor(),
        backoff_factor=scaler.get_backoff_factor(),
        growth_interval=scaler.get_growth_interval(),
        enabled=scaler.is_enabled(),
    )
    state = scaler.state_dict()
    if state:
        sharded.load_state_dict(state)
    return sharded
