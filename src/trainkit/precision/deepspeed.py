"""``DeepSpeedPrecision``: the precision of a DeepSpeed engine, which owns fp16/bf16 itself.

The engine casts the model to its dtype, keeps fp32 master weights in its optimizer, scales the
loss (fp16) and skips steps whose gradients overflow. What is left for trainkit: no autocast
(the model already computes in half), floating inputs cast to the engine's dtype, and the model
cast before the engine exists (so that evaluation before training runs in the same dtype).
Backward and the optimizer step are the DeepSpeedStrategy's: this precision refuses them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from trainkit.precision.base import Precision
from trainkit.precision.half import cast_floating, half_dtype

__all__ = ["DeepSpeedPrecision"]


class DeepSpeedPrecision(Precision):
    """fp32, fp16 or bf16 as a DeepSpeed engine runs it (``precision`` None means fp32)."""

    def __init__(
        self, precision: str | None = None, *, skips_nonfinite_gradients: bool = True, tf32: bool | None = None
    ) -> None:
        super().__init__(tf32=tf32)
        self.dtype = half_dtype(precision, "DeepSpeedPrecision") if precision is not None else None
        self._precision = precision
        # Whether the engine itself skips steps whose gradients are inf/NaN (ZeRO stages 1-3 and its
        # fp16/bf16 optimizers do; ZeRO stage 0 in fp32 steps a plain torch optimizer and does not).
        self.skips_nonfinite_gradients = skips_nonfinite_gradients

    @property
    def name(self) -> str:
        return f"deepspeed-{self._precision or 'fp32'}"

    @property
    def compute_dtype(self) -> torch.dtype | None:
        return self.dtype

    def convert_module(self, module: nn.Module) -> nn.Module:
        return module if self.dtype is None else module.to(dtype=self.dtype)

    def convert_input(self, data: Any) -> Any:
        return data if self.dtype is None else cast_floating(data, self.dtype)

    def pre_backward(self, loss: torch.Tensor, module: nn.Module | None = None) -> torch.Tensor:
        raise RuntimeError(_ENGINE_ONLY)

    def optimizer_step(self, optimizer: Optimizer) -> bool:
        raise RuntimeError(_ENGINE_ONLY)

    def _repr_fields(self) -> list[str]:
        return [repr(self._precision or "fp32"), *super()._repr_fields()]


_ENGINE_ONLY = (
    "DeepSpeedPrecision runs inside a DeepSpeed engine (its loss scaling and optimizer step are the engine's): "
    "use it with DeepSpeedStrategy"
)
