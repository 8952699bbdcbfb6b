"""The arithmetic of one optimizer step over an accumulation window, exact as one big batch.

The loss of a window is the sum of its per-token (or per-sample) losses divided by the number
of label tokens (labels != -100) in the whole window, summed over the ranks when
``average_tokens_across_devices``. A model that takes ``num_items_in_batch`` normalises by it
itself; a model that returns a mean loss has each micro-batch re-weighted by its share of the
window's tokens. A short last window is normalised by its real size. Distributed strategies
average gradients over the ranks, so the loss is multiplied back by the world size.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "Window",
    "batch_size_of",
    "count_label_tokens",
    "is_single",
    "iter_windows",
    "make_window",
    "micro_batch_weight",
    "zero_loss",
]

IGNORE_INDEX = -100


@dataclass(slots=True)
class Window:
    """One accumulation window: its micro-batches and the counts its loss is normalised by."""

    batches: list[Any]
    num_items: int | None  # label tokens in the whole window (all ranks when averaged), None without labels
    num_samples: int  # examples in the whole window (all ranks when averaged)
    world_factor: int  # ranks whose gradients the strategy averages (1 when counts are per rank)


def _labels(batch: Any, label_names: Sequence[str]) -> torch.Tensor | None:
    if type(batch) is not dict and not isinstance(batch, Mapping):
        return None
    for name in label_names:
        value = batch.get(name)
        if isinstance(value, torch.Tensor):
            return value
    return None


def count_label_tokens(batch: Any, label_names: Sequence[str]) -> int | None:
    """Labels that count in the loss (``!= -100``) in one micro-batch; None when it has no labels."""
    labels = _labels(batch, label_names)
    if labels is None:
        return None
    return int((labels != IGNORE_INDEX).sum())


def batch_size_of(batch: Any) -> int:
    """Examples in a micro-batch: the first dimension of its first tensor."""
    if type(batch) is dict or isinstance(batch, Mapping):
        values: Any = batch.values()
    else:
        values = batch if isinstance(batch, (list, tuple)) else [batch]
    for value in values:
        if isinstance(value, torch.Tensor) and value.ndim > 0:
            return int(value.shape[0])
    return 1


def make_window(
    batches: list[Any],
    label_names: Sequence[str],
    all_reduce_sum: Any = None,
    world_size: int = 1,
    need_counts: bool = True,
) -> Window:
    """Count a window's label tokens and samples (summed over ranks with ``all_reduce_sum``).

    Without ``need_counts`` a window of one micro-batch on one rank is not counted: its weight is 1.
    """
    if not need_counts and len(batches) == 1 and (all_reduce_sum is None or world_size == 1):
        return Window(batches, None, batch_size_of(batches[0]), 1)
    tokens = [count_label_tokens(b, label_names) for b in batches]
    num_items = None if any(t is None for t in tokens) else sum(t for t in tokens if t is not None)
    num_samples = sum(batch_size_of(b) for b in batches)
    if all_reduce_sum is None or world_size == 1:
        return Window(batches, num_items, num_samples, 1)
    counts = all_reduce_sum([num_items if num_items is not None else -1, num_samples])
    items = None if num_items is None or counts[0] < 0 else counts[0]
    return Window(batches, items, counts[1], world_size)


def is_single(window: Window) -> bool:
    """A window of one micro-batch on one rank: its loss needs no re-weighting."""
    return len(window.batches) == 1 and window.world_factor == 1


def micro_batch_weight(window: Window, micro_items: int | None, micro_samples: int, loss_is_normalized: bool) -> float:
    """Factor applied to a micro-batch's loss before backward (see the module docstring)."""
    if loss_is_normalized:
        return float(window.world_factor)
    if window.num_items is not None and micro_items is not None:
        share = micro_items / window.num_items if window.num_items > 0 else 0.0
    else:
        share = micro_samples / window.num_samples
    return share * window.world_factor


def zero_loss(outputs: Any, loss: torch.Tensor) -> torch.Tensor:
    """A zero loss whose gradients are exactly zero (through the outputs' graph when there is one)."""
    values = outputs.values() if isinstance(outputs, Mapping) else outputs if isinstance(outputs, (list, tuple)) else []
    graph = [v for v in values if isinstance(v, torch.Tensor) and v.requires_grad and v is not loss]
    if graph:
        return sum((g.float().sum() for g in graph), torch.zeros((), device=loss.device)) * 0.0
    return torch.zeros((), device=loss.device, dtype=torch.float32)


def iter_windows(
    batches: Iterator[Any], batches_in_epoch: int | None, accumulation: int, start: int = 0
) -> Iterator[list[Any]]:
    """Group an epoch's micro-batches into accumulation windows; the last one may be shorter.

    ``start`` micro-batches were consumed before (resume); windows stay aligned to the epoch.
    """
    position = start
    while batches_in_epoch is None or position < batches_in_epoch:
        size = accumulation if batches_in_epoch is None else min(accumulation, batches_in_epoch - position)
        window = []
        for _ in range(size):
            try:
                window.append(next(batches))
            except StopIteration:
                break
        if not window:
            return
        position += len(window)
        yield window
        if len(window) < size:
            return
