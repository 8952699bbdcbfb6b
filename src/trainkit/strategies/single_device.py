"""``SingleDeviceStrategy``: one process on one device (CPU, a CUDA device, or MPS)."""

from __future__ import annotations

import torch

from trainkit.checkpoint.io import CheckpointIO
from trainkit.precision.base import Precision
from trainkit.strategies.base import Strategy

__all__ = ["SingleDeviceStrategy", "default_device"]


def default_device(use_cpu: bool = False) -> torch.device:
    """CUDA when available, else MPS, else the CPU (``use_cpu`` forces the CPU)."""
    if not use_cpu and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if not use_cpu and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


class SingleDeviceStrategy(Strategy):
    """Train on a single device in this process."""

    def __init__(
        self,
        device: torch.device | str | int | None = None,
        precision: Precision | None = None,
        checkpoint_io: CheckpointIO | None = None,
    ) -> None:
        super().__init__(precision=precision, checkpoint_io=checkpoint_io)
        if isinstance(device, int):
            device = torch.device("cuda", device)
        self._device = torch.device(device) if device is not None else default_device()

    @property
    def root_device(self) -> torch.device:
        return self._device

    def setup_environment(self) -> None:
        """Make the CUDA device current (when one is named by index) and apply the precision's flags."""
        if self._device.type == "cuda" and self._device.index is not None:
            torch.cuda.set_device(self._device)
        super().setup_environment()

    def __repr__(self) -> str:
        return f"SingleDeviceStrategy(device={str(self._device)!r}, precision={self.precision!r})"
