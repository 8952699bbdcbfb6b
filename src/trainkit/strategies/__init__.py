"""Strategies: where and how the model runs (single device, DDP, FSDP2, DeepSpeed, XLA).

The XLA strategies import torch_xla only when they are constructed.
"""

from trainkit.strategies.base import Strategy
from trainkit.strategies.single_device import SingleDeviceStrategy
from trainkit.strategies.xla import XLAStrategy
from trainkit.strategies.xla_spmd import XLASPMDStrategy

__all__ = ["SingleDeviceStrategy", "Strategy", "XLASPMDStrategy", "XLAStrategy"]
