"""Snapshot, change and restore the process-global numeric flags a precision may touch.

torch keeps two views of the TF32 settings. The legacy one (``allow_tf32`` of cuBLAS and cuDNN,
``set_float32_matmul_precision``) and, from torch 2.9, per-backend ``fp32_precision`` values.
The legacy setters update both views consistently, so trainkit changes flags only through them
(as transformers does, and as ``torch.compile``, which reads the legacy getters, expects).
Reading a legacy getter raises when user code mixed the two APIs, so every read is guarded;
the restore replays the legacy values first and then puts back each ``fp32_precision`` value
that the legacy replay changed, so both views end as they were.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["GlobalFlags", "set_tf32"]

# torch.backends attributes holding an ``fp32_precision`` (torch >= 2.9), parents before children:
# writing a parent resets its children, so they are written after it.
_FP32_PRECISION_PATHS = (
    "",
    "cudnn",
    "cuda.matmul",
    "cudnn.conv",
    "cudnn.rnn",
    "mkldnn.matmul",
    "mkldnn.conv",
    "mkldnn.rnn",
)


def _backend(path: str) -> Any:
    node: Any = torch.backends
    for part in filter(None, path.split(".")):
        node = getattr(node, part)
    return node


def _has_fp32_precision_api() -> bool:
    return hasattr(torch.backends.cuda.matmul, "fp32_precision")


def _read(getter: Any) -> Any:
    """The flag's value, or None when torch refuses to read it (mixed legacy/new API state)."""
    try:
        return getter()
    except RuntimeError:
        return None


def set_tf32(enabled: bool) -> None:
    """Allow (or forbid) TF32 in CUDA matmuls and cuDNN, through torch's legacy setters."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


class GlobalFlags:
    """The default dtype and TF32 / float32-matmul flags at construction; ``restore()`` puts them back."""

    def __init__(self) -> None:
        self.default_dtype = torch.get_default_dtype()
        self.matmul_precision = _read(torch.get_float32_matmul_precision)
        self.matmul_tf32 = _read(lambda: torch.backends.cuda.matmul.allow_tf32)
        self.cudnn_tf32 = _read(lambda: torch.backends.cudnn.allow_tf32)
        self.fp32_precision: dict[str, str] = {}
        if _has_fp32_precision_api():
            self.fp32_precision = {path: _backend(path).fp32_precision for path in _FP32_PRECISION_PATHS}

    def restore(self) -> None:
        torch.set_default_dtype(self.default_dtype)
        if self.matmul_tf32 is not None:
            torch.backends.cuda.matmul.allow_tf32 = self.matmul_tf32
        if self.matmul_precision is not None:
            torch.set_float32_matmul_precision(self.matmul_precision)
        if self.cudnn_tf32 is not None:
            torch.backends.cudnn.allow_tf32 = self.cudnn_tf32
        self._restore_fp32_precision()

    def _restore_fp32_precision(self) -> None:
        changed = [path for path, value in self.fp32_precision.items() if _backend(path).fp32_precision != value]
        if not changed:
            return
        # once a parent is rewritten its children are reset: rewrite everything from the first change on
        first = _FP32_PRECISION_PATHS.index(changed[0])
        for path in _FP32_PRECISION_PATHS[first:]:
            if _backend(path).fp32_precision != self.fp32_precision[path]:
                _backend(path).fp32_precision = self.fp32_precision[path]

    def as_dict(self) -> dict[str, Any]:
        """Every recorded value, for comparisons and error messages."""
        return {
            "default_dtype": self.default_dtype,
            "matmul_precision": self.matmul_precision,
            "matmul_tf32": self.matmul_tf32,
            "cudnn_tf32": self.cudnn_tf32,
            **{f"fp32_precision[{path or 'generic'}]": v for path, v in self.fp32_precision.items()},
        }

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GlobalFlags) and self.as_dict() == other.as_dict()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"GlobalFlags({self.as_dict()})"
