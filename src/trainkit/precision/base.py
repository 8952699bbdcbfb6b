"""``Precision``: the fp32 base class. Every hook works and changes nothing (a null object).

Mixed and half modes override a few hooks; the Strategy calls the same methods whatever
the mode, so no loop ever branches on the precision. ``tf32`` is a flag of every mode,
applied in ``setup()`` and restored in ``teardown()``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

__all__ = ["NULL_CONTEXT", "GlobalFlags", "Precision"]

NULL_CONTEXT = contextlib.nullcontext()  # reusable: entering it twice is fine, and it costs nothing per step


class GlobalFlags:
    """Snapshot and restore of the process-global numeric flags a precision may touch."""

    def __init__(self) -> None:
        self.matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
        self.cudnn_tf32 = torch.backends.cudnn.allow_tf32
        self.matmul_precision = torch.get_float32_matmul_precision()
        self.default_dtype = torch.get_default_dtype()

    def restore(self) -> None:
        torch.backends.cuda.matmul.allow_tf32 = self.matmul_tf32
        torch.backends.cudnn.allow_tf32 = self.cudnn_tf32
        torch.set_float32_matmul_precision(self.matmul_precision)
        torch.set_default_dtype(self.default_dtype)


class Precision:
    """Full fp32 precision (optionally with TF32 matmuls); the base of every precision mode."""

    name = "fp32"
    # Capability: True when optimizer_step itself detects inf/NaN gradients and skips (a GradScaler),
    # so the loop leaves gradient overflow to it rather than skipping on a non-finite gradient norm.
    skips_nonfinite_gradients = False

    def __init__(self, tf32: bool | None = None) -> None:
        self.tf32 = tf32
        self.device_type = "cpu"
        self.skipped_steps = 0
        self._saved_flags: GlobalFlags | None = None

    # ------------------------------------------------------------- global state
    def setup(self, device: torch.device | str | None = None) -> None:
        """Apply process-global flags (tf32) for ``device``; ``teardown()`` restores them."""
        if device is not None:
            self.device_type = torch.device(device).type
        if self._saved_flags is None:
            self._saved_flags = GlobalFlags()
        if self.tf32 is not None:
            torch.backends.cuda.matmul.allow_tf32 = self.tf32
            torch.backends.cudnn.allow_tf32 = self.tf32
            torch.set_float32_matmul_precision("high" if self.tf32 else "highest")

    def teardown(self) -> None:
        if self._saved_flags is not None:
            self._saved_flags.restore()
            self._saved_flags = None

    # ------------------------------------------------------------------- model
    def convert_module(self, module: nn.Module) -> nn.Module:
        """Cast the module's parameters where the mode stores them in half (true-half modes)."""
        return module

    def forward_context(self) -> contextlib.AbstractContextManager[Any]:
        """The context of training forward passes (``torch.autocast`` in mixed modes)."""
        return NULL_CONTEXT

    @contextlib.contextmanager
    def eval_context(self, module: nn.Module) -> Iterator[None]:
        """The context of evaluation forward passes (full-eval modes cast the module here)."""
        with self.forward_context():
            yield

    def convert_input(self, data: Any) -> Any:
        """Cast floating-point inputs where the mode needs it."""
        return data

    # ---------------------------------------------------------------- backward
    def pre_backward(self, loss: torch.Tensor, module: nn.Module | None = None) -> torch.Tensor:
        """Scale the loss before backward (loss scaling lives here)."""
        return loss

    def backward(self, loss: torch.Tensor, module: nn.Module | None = None) -> None:
        loss.backward()

    def post_backward(self, loss: torch.Tensor, module: nn.Module | None = None) -> None:
        """Hook after backward."""

    # --------------------------------------------------------------- optimizer
    def unscale_gradients(self, optimizer: Optimizer) -> None:
        """Bring gradients back to their true scale before clipping (no-op without a scaler)."""

    def optimizer_step(self, optimizer: Optimizer) -> bool:
        """Step the optimizer; return False when the step was skipped (inf/NaN gradients)."""
        optimizer.step()
        return True

    def skip_step(self, optimizer: Optimizer) -> None:
        """The caller skips this step (a non-finite loss): settle any per-step state (a scaler's update)."""
        self.skipped_steps += 1

    # ------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """State that travels with checkpoints (the GradScaler's, in fp16 mixed precision)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no state to load, got keys {sorted(state)}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(tf32={self.tf32})"
