"""Strategies: where and how the model runs (single device, DDP, FSDP2, DeepSpeed, XLA)."""

from trainkit.strategies.base import Strategy
from trainkit.strategies.single_device import SingleDeviceStrategy

__all__ = ["SingleDeviceStrategy", "Strategy"]
