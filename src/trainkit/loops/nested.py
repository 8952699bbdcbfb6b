"""Nested (tuple/list/dict) tensors and arrays: detach, move to the host, concatenate with -100 padding."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["PAD_INDEX", "nested_apply", "nested_concat", "nested_detach", "nested_numpify", "nested_truncate"]

PAD_INDEX = -100


def nested_apply(value: Any, fn: Callable[[Any], Any]) -> Any:
    """Apply ``fn`` to every leaf of a nested tuple/list/dict, keeping the structure."""
    if isinstance(value, (list, tuple)):
        return type(value)(nested_apply(v, fn) for v in value)
    if isinstance(value, Mapping):
        return type(value)({k: nested_apply(v, fn) for k, v in value.items()})  # type: ignore[call-arg]
    return fn(value)


def nested_detach(value: Any) -> Any:
    return nested_apply(value, lambda t: t.detach() if isinstance(t, torch.Tensor) else t)


def _to_numpy(t: Any) -> Any:
    if not isinstance(t, torch.Tensor):
        return t
    t = t.detach().cpu()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.float()  # numpy has no bfloat16
    return t.numpy()


def nested_numpify(value: Any) -> Any:
    """Every tensor of a nested structure as a numpy array on the host."""
    return nested_apply(value, _to_numpy)


def _pad_concat(a: Any, b: Any, pad: int) -> Any:
    """Concatenate along dim 0, padding dim 1 with ``pad`` when the two differ there (transformers' rule)."""
    is_torch = isinstance(a, torch.Tensor)
    if a.ndim == 0:
        a = a[None]
    if b.ndim == 0:
        b = b[None]
    if a.ndim == 1 or a.shape[1:] == b.shape[1:]:
        return torch.cat((a, b)) if is_torch else np.concatenate((a, b))
    shape = (a.shape[0] + b.shape[0], max(a.shape[1], b.shape[1]), *a.shape[2:])
    if is_torch:
        out = a.new_full(shape, pad)
    else:
        out = np.full(shape, pad, dtype=np.result_type(a.dtype, np.asarray(pad).dtype))
    out[: a.shape[0], : a.shape[1]] = a
    out[a.shape[0] :, : b.shape[1]] = b
    return out


def nested_concat(a: Any, b: Any, pad: int = PAD_INDEX) -> Any:
    """Concatenate two nested structures leaf by leaf (``a`` may be None: the first batch)."""
    if a is None:
        return b
    if isinstance(a, (list, tuple)):
        return type(a)(nested_concat(x, y, pad) for x, y in zip(a, b))
    if isinstance(a, Mapping):
        return type(a)({k: nested_concat(v, b[k], pad) for k, v in a.items()})  # type: ignore[call-arg]
    return _pad_concat(a, b, pad)


def nested_truncate(value: Any, limit: int) -> Any:
    """Keep the first ``limit`` rows of every leaf (drops a distributed sampler's padding duplicates)."""
    return nested_apply(value, lambda t: t[:limit] if hasattr(t, "__getitem__") and hasattr(t, "shape") else t)
