"""Precision plugins: fp32 (+tf32) base, mixed fp16/bf16, true half, apex."""

from trainkit.precision.base import Precision

__all__ = ["Precision"]
