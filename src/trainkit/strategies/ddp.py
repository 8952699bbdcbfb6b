"""``DDPStrategy``: one replica of the model per process, gradients averaged by ``DistributedDataParallel``.

transformers' ``ddp_*`` arguments map one to one: ``ddp_backend`` and ``ddp_timeout`` to the
process group, ``ddp_find_unused_parameters``, ``ddp_bucket_cap_mb`` and
``ddp_broadcast_buffers`` to the wrapper. Non-final micro-batches of an accumulation window run
under ``no_sync``, so gradients are all-reduced once per optimizer step.
"""

from __future__ import annotations

import contextlib
from typing import Any

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from trainkit.precision.base import NULL_CONTEXT
from trainkit.strategies.base import _is_compiled
from trainkit.strategies.parallel import ParallelStrategy

__all__ = ["DDPStrategy"]


def find_ddp(model: nn.Module) -> DistributedDataParallel | None:
    """The DDP wrapper of ``model``, looking through ``torch.compile``'s wrapper."""
    while True:
        if isinstance(model, DistributedDataParallel):
            return model
        if not _is_compiled(model):
            return None
        model = model.get_submodule("_orig_mod")


class DDPStrategy(ParallelStrategy):
    """``DistributedDataParallel`` over a process group started from torchrun's environment.

    ``find_unused_parameters=None`` follows transformers: True unless the model uses gradient
    checkpointing (``model.is_gradient_checkpointing``), where it would fail. ``bucket_cap_mb`` and
    ``broadcast_buffers`` left at None keep DDP's defaults (25 MB, True).
    """

    def __init__(
        self,
        *,
        find_unused_parameters: bool | None = None,
        bucket_cap_mb: int | None = None,
        broadcast_buffers: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.find_unused_parameters = find_unused_parameters
        self.bucket_cap_mb = bucket_cap_mb
        self.broadcast_buffers = broadcast_buffers

    def ddp_kwargs(self, model: nn.Module) -> dict[str, Any]:
        """The keyword arguments given to ``DistributedDataParallel`` for ``model``."""
        find_unused = self.find_unused_parameters
        if find_unused is None:
            find_unused = not bool(getattr(model, "is_gradient_checkpointing", False))
        kwargs: dict[str, Any] = {"find_unused_parameters": find_unused}
        if self.bucket_cap_mb is not None:
            kwargs["bucket_cap_mb"] = self.bucket_cap_mb
        if self.broadcast_buffers is not None:
            kwargs["broadcast_buffers"] = self.broadcast_buffers
        if self.root_device.type == "cuda":
            kwargs["device_ids"] = [self.root_device.index]
        return kwargs

    def setup_module(self, model: nn.Module) -> nn.Module:
        """Convert and move the module, then wrap it (DDP broadcasts rank 0's parameters and buffers)."""
        if find_ddp(model) is not None:
            return model
        module = super().setup_module(model)
        return DistributedDataParallel(module, **self.ddp_kwargs(module))

    def no_backward_sync(self, model: nn.Module, enabled: bool) -> contextlib.AbstractContextManager[Any]:
        """DDP's ``no_sync`` on non-final micro-batches: gradients accumulate locally, all-reduced on the last."""
        ddp = find_ddp(model) if enabled else None
        return ddp.no_sync() if ddp is not None else NULL_CONTEXT

    def __repr__(self) -> str:
        return (
            f"DDPStrategy({self.environment.describe()}, backend={self.backend!r}, device={str(self.root_device)!r}, "
            f"precision={self.precision!r})"
        )
