"""``ApexPrecision``: NVIDIA apex AMP (opt levels O0-O3), an optional backend on CUDA only.

apex is imported when the object is built, never at ``import trainkit``; without it the
constructor raises an ImportError that says how to install it. Recent apex releases no longer
ship ``apex.amp`` (apex PR #1896); ``MixedPrecision("fp16")`` is the maintained equivalent.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from trainkit.precision.base import Precision

__all__ = ["APEX_INSTALL", "APEX_OPT_LEVELS", "ApexPrecision"]

APEX_OPT_LEVELS = ("O0", "O1", "O2", "O3")
APEX_INSTALL = (
    "build NVIDIA apex with its CUDA extensions from https://github.com/NVIDIA/apex "
    "(a release that still has apex.amp), or use MixedPrecision('fp16') / fp16=True without apex"
)


def _import_amp() -> ModuleType:
    try:
        return importlib.import_module("apex.amp")
    except ImportError as err:
        raise ImportError(
            f"ApexPrecision needs NVIDIA apex's amp module, which cannot be imported ({err}). "
            f"Install it: {APEX_INSTALL}"
        ) from err


class ApexPrecision(Precision):
    """apex ``amp.initialize(model, optimizer, opt_level)`` with apex's dynamic loss scaling."""

    def __init__(
        self, opt_level: str = "O1", *, tf32: bool | None = None, eval_precision: Precision | None = None
    ) -> None:
        if opt_level not in APEX_OPT_LEVELS:
            raise ValueError(f"ApexPrecision: opt_level must be one of {', '.join(APEX_OPT_LEVELS)}, got {opt_level!r}")
        self._amp = _import_amp()
        super().__init__(tf32=tf32, eval_precision=eval_precision)
        self.opt_level = opt_level
        self._optimizer: Optimizer | None = None

    @property
    def name(self) -> str:
        return "apex"

    def enable_sharded_gradients(self) -> None:
        raise ValueError(
            "apex AMP cannot scale sharded gradients (FSDP): use fp16=True with half_precision_backend='auto' "
            "(torch.amp) instead of 'apex'"
        )

    def setup(self, device: torch.device | str | None = None) -> None:
        if device is not None and torch.device(device).type != "cuda":
            raise ValueError(f"ApexPrecision (apex AMP {self.opt_level}) needs a CUDA device, got {str(device)!r}")
        super().setup(device)

    def connect(self, module: nn.Module, optimizer: Optimizer | None) -> tuple[nn.Module, Optimizer | None]:
        if optimizer is None:
            return self._amp.initialize(module, opt_level=self.opt_level), None
        module, optimizer = self._amp.initialize(module, optimizer, opt_level=self.opt_level)
        self._optimizer = optimizer
        return module, optimizer

    def backward(self, loss: torch.Tensor, module: nn.Module | None = None) -> None:
        if self._optimizer is None:
            raise RuntimeError("ApexPrecision.backward: call connect(module, optimizer) first (Strategy.setup does)")
        # on exit apex checks the gradients for inf/NaN, unscales them and, on overflow, makes the
        # next optimizer.step() a one-shot skip
        with self._amp.scale_loss(loss, self._optimizer) as scaled_loss:
            scaled_loss.backward()

    def optimizer_step(self, optimizer: Optimizer) -> bool:
        stash = getattr(optimizer, "_amp_stash", None)
        skipped = bool(getattr(stash, "already_patched", False))
        optimizer.step()
        if skipped:
            self.skipped_steps += 1
        return not skipped

    def state_dict(self) -> dict[str, Any]:
        """apex's loss-scaler state."""
        return dict(self._amp.state_dict())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self._amp.load_state_dict(state)

    def teardown(self) -> None:
        # O1 patches torch functions process-wide; apex's handle can put the originals back
        handle = getattr(getattr(self._amp, "_amp_state", None), "handle", None)
        if handle is not None and hasattr(handle, "_deactivate"):
            handle._deactivate()
        super().teardown()

    def _repr_fields(self) -> list[str]:
        return [repr(self.opt_level), *super()._repr_fields()]
