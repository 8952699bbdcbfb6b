"""``MixedPrecision``: ``torch.autocast`` in fp16 (with a GradScaler) or bf16, fp32 master weights.

The autocast device type comes from ``setup(device)`` (the Strategy calls it) or from the
constructor, for hand-written loops. fp16 scales the loss with a ``torch.amp.GradScaler`` on
CUDA and on the CPU alike; a step whose gradients hold inf/NaN is skipped, counted in
``skipped_steps``, and reported by ``optimizer_step`` returning False.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from trainkit.precision.base import Precision
from trainkit.precision.half import half_dtype

__all__ = ["MixedPrecision"]


class MixedPrecision(Precision):
    """Forward passes under ``torch.autocast(device_type, fp16|bf16)``; fp16 adds loss scaling."""

    def __init__(
        self,
        precision: str = "bf16",
        device_type: str | None = None,
        scaler: torch.amp.GradScaler | None = None,
        *,
        tf32: bool | None = None,
        eval_precision: Precision | None = None,
    ) -> None:
        super().__init__(tf32=tf32, eval_precision=eval_precision)
        self.dtype = half_dtype(precision, "MixedPrecision")
        self._precision = precision
        if scaler is not None and precision != "fp16":
            raise ValueError(f"MixedPrecision({precision!r}) takes no GradScaler: only fp16 needs loss scaling")
        self.scaler = scaler
        self._explicit_device_type = device_type
        self._pending_scaler_state: dict[str, Any] | None = None
        self._unscaled: set[int] = set()
        self._sharded_gradients = False
        if device_type is not None:
            self._bind_device_type(device_type)

    @property
    def name(self) -> str:
        return f"{self._precision}-mixed"

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.dtype

    def enable_sharded_gradients(self) -> None:
        """fp16: use a GradScaler whose inf/NaN check is agreed across gradient shards (FSDP)."""
        self._sharded_gradients = True
        self._shard_scaler()

    def _shard_scaler(self) -> None:
        if not self._sharded_gradients or self.scaler is None or self.device_type is None:
            return
        from trainkit.precision.sharded_scaler import ShardedGradScaler, sharded_copy

        if not isinstance(self.scaler, ShardedGradScaler):
            self.scaler = sharded_copy(self.scaler, self.device_type)

    # ------------------------------------------------------------- device type
    def setup(self, device: torch.device | str | None = None) -> None:
        if device is not None:
            device_type = torch.device(device).type
            if self._explicit_device_type not in (None, device_type):
                raise ValueError(
                    f"MixedPrecision(device_type={self._explicit_device_type!r}) cannot run on device {str(device)!r}"
                )
            self._bind_device_type(device_type)
        super().setup(device)

    def _bind_device_type(self, device_type: str) -> None:
        if not torch.amp.is_autocast_available(device_type):
            raise ValueError(f"MixedPrecision({self._precision!r}): torch.autocast does not support {device_type!r}")
        self.device_type = device_type
        if self._precision == "fp16" and self.scaler is None:
            self.scaler = _grad_scaler(device_type)
            if self._pending_scaler_state:
                self.scaler.load_state_dict(self._pending_scaler_state)
            self._pending_scaler_state = None
        self._shard_scaler()

    def _require_device_type(self) -> str:
        if self.device_type is None:
            raise RuntimeError(
                f"MixedPrecision({self._precision!r}) does not know the device type yet: call setup(device) "
                "(the Strategy does) or pass device_type='cuda'/'cpu' to the constructor"
            )
        return self.device_type

    # ------------------------------------------------------------------- hooks
    def forward_context(self) -> contextlib.AbstractContextManager[Any]:
        return torch.autocast(device_type=self._require_device_type(), dtype=self.dtype)

    def pre_backward(self, loss: torch.Tensor, module: nn.Module | None = None) -> torch.Tensor:
        if self._precision == "fp16":
            self._require_device_type()
        return self.scaler.scale(loss) if self.scaler is not None else loss

    def unscale_gradients(self, optimizer: Optimizer) -> None:
        # GradScaler refuses a second unscale_ before update(); clipping twice must not fail
        if self.scaler is not None and id(optimizer) not in self._unscaled:
            self.scaler.unscale_(optimizer)
            self._unscaled.add(id(optimizer))

    @property
    def skips_nonfinite_gradients(self) -> bool:  # type: ignore[override]
        return self.scaler is not None

    def skip_step(self, optimizer: Optimizer) -> None:
        """A skipped step still settles the scaler: after an unscale, ``update()`` lowers the scale."""
        if self.scaler is not None and id(optimizer) in self._unscaled:
            self.scaler.update()
        self._unscaled.clear()
        self.skipped_steps += 1

    def optimizer_step(self, optimizer: Optimizer) -> bool:
        """Step through the GradScaler; False (and one more ``skipped_steps``) when inf/NaN skipped it."""
        if self.scaler is None:
            return super().optimizer_step(optimizer)
        scale_before = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        self._unscaled.clear()
        # update() lowers the scale exactly when the step found inf/NaN gradients and was skipped
        stepped = not self.scaler.get_scale() < scale_before
        if not stepped:
            self.skipped_steps += 1
        return stepped

    # ------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """The GradScaler's state (fp16), the content of transformers' ``scaler.pt``; empty for bf16."""
        if self.scaler is not None:
            return self.scaler.state_dict()
        return dict(self._pending_scaler_state or {})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._precision != "fp16" or not state:
            super().load_state_dict(state)
        elif self.scaler is not None:
            self.scaler.load_state_dict(state)
        else:  # the scaler is built once the device type is known
            self._pending_scaler_state = dict(state)

    def _repr_fields(self) -> list[str]:
        fields = [repr(self._precision)]
        if self.device_type is not None:
            fields.append(f"device_type={self.device_type!r}")
        return [*fields, *super()._repr_fields()]


def _grad_scaler(device_type: str) -> torch.amp.GradScaler:
    """A GradScaler for ``device_type``; an error instead of torch's warning when it would be disabled."""
    if device_type == "cuda" and not torch.cuda.is_available():
        raise ValueError("MixedPrecision('fp16') on device type 'cuda': no CUDA device is available here")
    scaler = torch.amp.GradScaler(device_type)
    if not scaler.is_enabled():
        raise ValueError(f"MixedPrecision('fp16'): torch.amp.GradScaler({device_type!r}) is disabled on this machine")
    return scaler
