"""``Precision``: the fp32 base class. Every hook works and changes nothing (a null object).

Mixed and half modes override a few hooks; the Strategy calls the same methods whatever
the mode, so no loop ever branches on the precision. ``tf32`` is a flag of every mode,
applied in ``setup()`` and restored in ``teardown()``. ``eval_precision`` (any Precision)
replaces this one inside ``eval_context``: that is how ``fp16_full_eval``/``bf16_full_eval``
combine with any training precision.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from trainkit.precision.flags import GlobalFlags, set_tf32

__all__ = ["NULL_CONTEXT", "GlobalFlags", "Precision"]

NULL_CONTEXT = contextlib.nullcontext()  # reusable: entering it twice is fine, and it costs nothing per step


class Precision:
    """Full fp32 precision (optionally with TF32 matmuls); the base of every precision mode."""

    # Capability: True when optimizer_step itself detects inf/NaN gradients and skips the step (a
    # GradScaler), so the loop leaves gradient overflow to it instead of skipping on the gradient norm.
    skips_nonfinite_gradients = False

    def __init__(self, tf32: bool | None = None, eval_precision: Precision | None = None) -> None:
        if tf32 is not None and not isinstance(tf32, bool):
            raise TypeError(f"{type(self).__name__}: tf32 must be True, False or None, got {tf32!r}")
        self.tf32 = tf32
        self.eval_precision = eval_precision
        self.device_type: str | None = None
        self.skipped_steps = 0
        self._saved_flags: GlobalFlags | None = None

    @property
    def name(self) -> str:
        """The registry name of this mode (``fp32``, ``bf16-mixed``, ``fp16-true``, ...)."""
        return "fp32"

    @property
    def compute_dtype(self) -> torch.dtype | None:
        """The half dtype forward passes compute in (None: float32); FSDP all-gathers parameters in it."""
        return None

    def enable_sharded_gradients(self) -> None:
        """Gradients will be sharded across ranks (FSDP): inf/NaN checks must then agree across the shards.

        Nothing to do without a loss scaler; fp16 mixed precision swaps in a sharded GradScaler.
        """

    # ------------------------------------------------------------- global state
    def setup(self, device: torch.device | str | None = None) -> None:
        """Apply process-global flags (tf32) for ``device``; ``teardown()`` restores them."""
        if device is not None:
            self.device_type = torch.device(device).type
        if self._saved_flags is None:
            self._saved_flags = GlobalFlags()
        if self.tf32 is not None:
            set_tf32(self.tf32)
        if self.eval_precision is not None:
            self.eval_precision.setup(device)

    def teardown(self) -> None:
        """Put back every process-global flag ``setup()`` found (the eval precision's too)."""
        if self.eval_precision is not None:
            self.eval_precision.teardown()
        if self._saved_flags is not None:
            self._saved_flags.restore()
            self._saved_flags = None

    # ------------------------------------------------------------------- model
    def convert_module(self, module: nn.Module) -> nn.Module:
        """Cast the module's parameters where the mode stores them in half (true-half modes)."""
        return module

    def connect(self, module: nn.Module, optimizer: Optimizer | None) -> tuple[nn.Module, Optimizer | None]:
        """Bind the precision to the module (already on its device) and its optimizer; identity here.

        apex's ``amp.initialize`` needs both at once, which is why this hook exists.
        """
        return module, optimizer

    def forward_context(self) -> contextlib.AbstractContextManager[Any]:
        """The context of training forward passes (``torch.autocast`` in mixed modes)."""
        return NULL_CONTEXT

    def eval_context(self, module: nn.Module) -> contextlib.AbstractContextManager[Any]:
        """The context of evaluation forward passes: the eval precision's when one is set, else this mode's."""
        if self.eval_precision is not None:
            return self.eval_precision.eval_context(module)
        return self._eval_context(module)

    def _eval_context(self, module: nn.Module) -> contextlib.AbstractContextManager[Any]:
        """This mode's own evaluation context: the training forward context."""
        return self.forward_context()

    def convert_input(self, data: Any) -> Any:
        """Cast floating-point inputs where the mode needs it."""
        return data

    # ---------------------------------------------------------------- backward
    def pre_backward(self, loss: torch.Tensor, module: nn.Module | None = None) -> torch.Tensor:
        """Scale the loss before backward (loss scaling lives here)."""
        return loss

    def backward(self, loss: torch.Tensor, module: nn.Module | None = None) -> None:
        """Run backward on the (scaled) loss."""
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
        """The caller skips this step (a non-finite loss): settle per-step state (a scaler's update)."""
        self.skipped_steps += 1

    # ------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """State that travels with checkpoints (the GradScaler's, in fp16 mixed precision)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()``'s output; a mode without state accepts only an empty dict."""
        if state:
            raise ValueError(f"{type(self).__name__} has no state to load, got keys {sorted(state)}")

    def _repr_fields(self) -> list[str]:
        fields = [f"tf32={self.tf32}"]
        if self.eval_precision is not None:
            fields.append(f"eval_precision={self.eval_precision!r}")
        return fields

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(self._repr_fields())})"
