"""Strategies: where and how the model runs (single device, DDP, FSDP2, DeepSpeed, XLA).

The XLA strategies import torch_xla only when they are constructed; ``DDPStrategy`` and
``FSDPStrategy`` (torch.distributed, FSDP2) are imported on first access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from trainkit.strategies.base import Strategy
from trainkit.strategies.single_device import SingleDeviceStrategy
from trainkit.strategies.xla import XLAStrategy
from trainkit.strategies.xla_spmd import XLASPMDStrategy

if TYPE_CHECKING:
    from trainkit.strategies.ddp import DDPStrategy
    from trainkit.strategies.fsdp import FSDPStrategy

__all__ = ["DDPStrategy", "FSDPStrategy", "SingleDeviceStrategy", "Strategy", "XLASPMDStrategy", "XLAStrategy"]

_LAZY = {"DDPStrategy": "trainkit.strategies.ddp", "FSDPStrategy": "trainkit.strategies.fsdp"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'trainkit.strategies' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
