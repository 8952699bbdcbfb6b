"""``XLASPMDStrategy``: one process drives every XLA device of the host through SPMD sharding.

The devices form a mesh with axes ``("fsdp", "tensor")`` of shape ``(devices, 1)`` (transformers'
FSDPv2 mesh, also set as torch_xla's global mesh). Each batch is split along its first dimension
over the ``fsdp`` axis; with ``shard_parameters`` every parameter is split too (on its largest
dimension, as torch_xla's ``SpmdFullyShardedDataParallel``): fully-sharded data parallelism. Without
it the parameters are replicated: data parallelism. The XLA compiler inserts the collectives, so
the result is that of one device on the same batches.

As in transformers' FSDPv2, the DataLoader batch is the *global* batch: ``per_device_train_batch_size``
examples are split over the devices, and the loop, the counts and the sampler see one process.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from lightning_utilities.core.apply_func import apply_to_collection
from torch import nn
from torch.optim import Optimizer

from trainkit.checkpoint.io import CheckpointIO
from trainkit.precision.base import Precision
from trainkit.strategies.xla import XLAStrategy
from trainkit.strategies.xla_loader import send_to_xla

__all__ = ["XLASPMDStrategy", "partition_spec"]

AXES = ("fsdp", "tensor")


def partition_spec(shape: Sequence[int]) -> tuple[str | None, ...]:
    """The parameter split of fully-sharded SPMD: the largest dimension over ``fsdp`` (the first when tied)."""
    if not shape:
        return ()
    spec: list[str | None] = [None] * len(shape)
    spec[list(shape).index(max(shape))] = "fsdp"
    return tuple(spec)


def _sent_spec(spec: tuple[str | None, ...]) -> tuple[tuple[str, ...] | None, ...]:
    """``spec`` with the ``fsdp`` dimension split over both mesh axes, for a sharded transfer.

    ``tensor`` has size 1, so the sharding is the same; torch_xla 2.9's ``ShardingSpec`` (what a
    sharded transfer takes) fails on a one-dimensional tensor split over ``fsdp`` alone ("too many
    indices"), which ``mark_sharding`` accepts.
    """
    return tuple(AXES if axis == "fsdp" else None for axis in spec)


def _batch_spec(ndim: int) -> tuple[tuple[str, ...] | None, ...]:
    return _sent_spec(("fsdp",) + (None,) * (ndim - 1))


def _is_host_tensor_of_shape(value: Any, shape: tuple[int, ...] | None) -> bool:
    return isinstance(value, torch.Tensor) and value.device.type == "cpu" and value.ndim > 0 and value.shape == shape


class XLASPMDStrategy(XLAStrategy):
    """Data-parallel (replicated parameters) or fully-sharded training over all devices from one process.

    ``activation_checkpointing`` recomputes the forward pass of each layer whose class is named in
    ``layer_classes`` (default: the model's ``_no_split_modules``) during backward
    (transformers' ``xla_fsdp_grad_ckpt``). Named layers also get torch_xla's backward optimization
    barrier, so the compiler gathers their sharded weights one layer at a time.
    """

    def __init__(
        self,
        precision: Precision | None = None,
        checkpoint_io: CheckpointIO | None = None,
        *,
        shard_parameters: bool = True,
        activation_checkpointing: bool = False,
        layer_classes: Sequence[str] | None = None,
        prefetch: int = 2,
    ) -> None:
        super().__init__(precision=precision, checkpoint_io=checkpoint_io, prefetch=prefetch)
        self.shard_parameters = shard_parameters
        self.activation_checkpointing = activation_checkpointing
        self.layer_classes = list(layer_classes) if layer_classes is not None else None
        self._mesh: Any = None
        self._num_devices: int | None = None
        self._spmd_on = False
        self._input_specs: dict[int, Any] = {}

    # ----------------------------------------------------------------- topology
    @property
    def root_device(self) -> torch.device:
        self._use_spmd()  # before the first XLA tensor: SPMD cannot be switched on afterwards without copies
        return super().root_device

    @property
    def world_size(self) -> int:
        return 1  # one process feeds every device; the batch is split by sharding, not by a sampler

    @property
    def global_rank(self) -> int:
        return 0

    @property
    def local_rank(self) -> int:
        return 0

    @property
    def num_devices(self) -> int:
        if self._num_devices is None:
            import torch_xla.runtime as xr

            self._use_spmd()
            self._num_devices = int(xr.global_runtime_device_count())
        return self._num_devices

    @property
    def mesh(self) -> Any:
        """The ``torch_xla.distributed.spmd.Mesh`` over every device, axes ``("fsdp", "tensor")``."""
        if self._mesh is None:
            import numpy as np
            import torch_xla.distributed.spmd as xs

            devices = self.num_devices
            self._mesh = xs.Mesh(np.arange(devices), (devices, 1), AXES)
        return self._mesh

    def _use_spmd(self) -> None:
        if self._spmd_on:
            return
        import torch_xla.runtime as xr

        if not xr.is_spmd():
            xr.use_spmd()
        if xr.process_count() > 1:
            raise RuntimeError(
                f"XLASPMDStrategy drives the devices of one host from one process; PJRT reports "
                f"{xr.process_count()} processes (multi-host SPMD is not implemented)"
            )
        self._spmd_on = True

    # -------------------------------------------------------------------- setup
    def setup_environment(self) -> None:
        """SPMD mode and the global mesh (models that read ``xs.get_global_mesh()`` find it), then the precision."""
        import torch_xla.distributed.spmd as xs

        xs.set_global_mesh(self.mesh)
        super().setup_environment()

    def setup_module(self, model: nn.Module) -> nn.Module:
        """Move to the device, mark each parameter's sharding, and checkpoint the named layers."""
        import torch_xla.distributed.spmd as xs

        model = super().setup_module(model)
        layers = self._named_layers(model)
        if self.activation_checkpointing:
            from torch_xla.distributed.fsdp import checkpoint_module

            for layer in layers:
                checkpoint_module(layer)
        if self.shard_parameters:
            for param in model.parameters():
                xs.mark_sharding(param, self.mesh, partition_spec(param.shape))
            for layer in layers:
                xs.apply_backward_optimization_barrier(layer)
        return model

    def _named_layers(self, model: nn.Module) -> list[nn.Module]:
        names = self.layer_classes
        if names is None:
            names = list(getattr(model, "_no_split_modules", None) or [])
        if not names:
            if self.activation_checkpointing:
                raise ValueError(
                    f"XLASPMDStrategy(activation_checkpointing=True) needs the layer classes to checkpoint: "
                    f"{type(model).__name__} has no _no_split_modules, so set layer_classes "
                    "(fsdp_config['transformer_layer_cls_to_wrap'])"
                )
            return []
        layers = [m for m in model.modules() if type(m).__name__ in names]
        found = {type(m).__name__ for m in layers}
        missing = [n for n in names if n not in found]
        if missing:
            raise ValueError(
                f"XLASPMDStrategy: layer classes {missing} (transformer_layer_cls_to_wrap) are not in "
                f"{type(model).__name__}"
            )
        return layers

    # -------------------------------------------------------------------- state
    def load_optimizer_state_dict(self, optimizer: Optimizer, state: dict[str, Any]) -> None:
        """Optimizer state sent to the devices split like its parameters when they are sharded.

        torch's ``load_state_dict`` would copy each tensor whole to every device (replicated), so a
        resumed run would hold the full optimizer state per device until its first step.
        """
        if self.shard_parameters:
            state = {**state, "state": self._split_like_parameters(optimizer, state)}
        super().load_optimizer_state_dict(optimizer, state)

    def _split_like_parameters(self, optimizer: Optimizer, state: dict[str, Any]) -> dict[Any, Any]:
        """The per-parameter state, each tensor of its parameter's shape sent to the devices split as the
        parameter; other entries (``step``, factored statistics) are left to torch's ``load_state_dict``."""
        import torch_xla.core.xla_model as xm
        import torch_xla.distributed.spmd as xs

        shapes = {
            saved_id: tuple(param.shape)
            for saved, group in zip(state["param_groups"], optimizer.param_groups)
            for saved_id, param in zip(saved["params"], group["params"])
        }
        placed: dict[Any, Any] = {}
        for index, entry in state["state"].items():
            shape = shapes.get(index)
            names = [name for name, value in entry.items() if _is_host_tensor_of_shape(value, shape)]
            if not names:
                placed[index] = entry
                continue
            spec = xs.ShardingSpec(self.mesh, _sent_spec(partition_spec(entry[names[0]].shape)))
            sent = xm.send_cpu_data_to_device([entry[name] for name in names], self.root_device, spec)
            placed[index] = {**entry, **dict(zip(names, sent))}
        return placed

    def _send(self, batch: Any) -> Any:
        moved = send_to_xla(batch, self.root_device, self._input_spec)
        return apply_to_collection(moved, torch.Tensor, self._shard_uneven)

    def _input_spec(self, tensor: torch.Tensor) -> Any:
        """Inputs split on their first (batch) dimension over ``fsdp``; scalars and uneven ones sent whole."""
        if tensor.ndim == 0 or tensor.shape[0] % self.num_devices:
            return None
        if tensor.ndim not in self._input_specs:
            import torch_xla.distributed.spmd as xs

            self._input_specs[tensor.ndim] = xs.ShardingSpec(self.mesh, _batch_spec(tensor.ndim))
        return self._input_specs[tensor.ndim]

    def _shard_uneven(self, tensor: torch.Tensor) -> torch.Tensor:
        """A batch dimension the devices do not divide: marked after the transfer (XLA pads the last shard)."""
        if tensor.device.type == "xla" and tensor.ndim > 0 and tensor.shape[0] % self.num_devices:
            import torch_xla
            import torch_xla.distributed.spmd as xs

            if torch_xla._XLAC._get_xla_sharding_spec(tensor) in ("", "{replicated}"):  # not split by the caller
                xs.mark_sharding(tensor, self.mesh, _batch_spec(tensor.ndim))
        return tensor

    def __repr__(self) -> str:
        return (
            f"XLASPMDStrategy(shard_parameters={self.shard_parameters}, "
            f"activation_checkpointing={self.activation_checkpointing}, precision={self.precision!r})"
        )
