"""``HalfPrecision``: parameters, inputs and new tensors in fp16 or bf16 ("true" half).

Used for training (``fp16-true`` / ``bf16-true``) and for evaluation only
(``fp16_full_eval`` / ``bf16_full_eval``): its ``eval_context`` points the module at half copies
of its floating parameters and buffers and points it back at the very same fp32 tensors on
exit, so the master weights are bit-identical after evaluation (no cast back from half).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from lightning_utilities.core.apply_func import apply_to_collection
from torch import nn

from trainkit.precision.base import Precision

__all__ = ["HALF_DTYPES", "HalfPrecision", "cast_floating", "default_dtype", "half_dtype", "module_cast_to"]

HALF_DTYPES: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16}


def half_dtype(precision: str, owner: str) -> torch.dtype:
    """The dtype of ``"fp16"`` / ``"bf16"``; any other value is an error naming ``owner``."""
    if precision not in HALF_DTYPES:
        raise ValueError(f"{owner}: precision must be 'fp16' or 'bf16', got {precision!r}")
    return HALF_DTYPES[precision]


def cast_floating(data: Any, dtype: torch.dtype) -> Any:
    """Cast every floating-point tensor of a (nested) collection to ``dtype``; others are kept."""
    return apply_to_collection(data, torch.Tensor, lambda t: t.to(dtype) if t.is_floating_point() else t)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Make ``dtype`` torch's default floating dtype inside the block (tensors created in forward)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@contextlib.contextmanager
def module_cast_to(module: nn.Module, dtype: torch.dtype) -> Iterator[None]:
    """Run the block with ``module``'s floating parameters and buffers as ``dtype`` copies.

    The originals are kept and put back on exit (also on error), so nothing is ever cast back:
    parameters keep their identity (optimizers still hold them) and their exact values. A tensor
    shared by several submodules (tied weights) gets one copy, so the tie holds inside the block.
    """
    swapped: list[tuple[dict[str, Any], str, torch.Tensor]] = []
    copies: dict[int, torch.Tensor] = {}
    try:
        with torch.no_grad():
            for sub in module.modules():
                tables: tuple[dict[str, Any], ...] = (sub._parameters, sub._buffers)
                for table in tables:
                    for name, tensor in list(table.items()):
                        if tensor is None or not tensor.is_floating_point() or tensor.dtype == dtype:
                            continue
                        if id(tensor) not in copies:
                            copies[id(tensor)] = _copy_as(tensor, dtype)
                        swapped.append((table, name, tensor))
                        table[name] = copies[id(tensor)]
        yield
    finally:
        for table, name, original in reversed(swapped):
            table[name] = original


def _copy_as(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(tensor, nn.Parameter):
        return nn.Parameter(tensor.detach().to(dtype), requires_grad=tensor.requires_grad)
    return tensor.to(dtype)


@contextlib.contextmanager
def _inputs_cast_to(module: nn.Module, dtype: torch.dtype) -> Iterator[None]:
    """Cast the floating inputs of ``module``'s forward calls to ``dtype`` inside the block."""

    def cast_inputs(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
        return cast_floating(args, dtype), cast_floating(kwargs, dtype)

    handle = module.register_forward_pre_hook(cast_inputs, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


class HalfPrecision(Precision):
    """Parameters, floating inputs and tensors created in forward all in fp16 or bf16.

    No loss scaling: fp16-true is for inference or small, well-conditioned models; prefer
    bf16-true (fp32's exponent range) or ``MixedPrecision`` for training.
    """

    def __init__(
        self, precision: str = "bf16", *, tf32: bool | None = None, eval_precision: Precision | None = None
    ) -> None:
        super().__init__(tf32=tf32, eval_precision=eval_precision)
        self.dtype = half_dtype(precision, "HalfPrecision")
        self._precision = precision

    @property
    def name(self) -> str:
        return f"{self._precision}-true"

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.dtype

    def convert_module(self, module: nn.Module) -> nn.Module:
        return module.to(dtype=self.dtype)

    def forward_context(self) -> contextlib.AbstractContextManager[Any]:
        return default_dtype(self.dtype)

    @contextlib.contextmanager
    def _eval_context(self, module: nn.Module) -> Iterator[None]:
        """Evaluate in half: module cast for the block only, floating inputs cast, then restored exactly."""
        with module_cast_to(module, self.dtype), _inputs_cast_to(module, self.dtype), self.forward_context():
            yield

    def convert_input(self, data: Any) -> Any:
        return cast_floating(data, self.dtype)

    def _repr_fields(self) -> list[str]:
        return [repr(self._precision), *super()._repr_fields()]
