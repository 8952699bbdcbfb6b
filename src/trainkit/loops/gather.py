"""Evaluation outputs of every rank, put back in dataset order (transformers' ``gather_for_metrics``).

A distributed sampler gives rank ``r`` the global positions ``r, r+W, r+2W, ...`` and pads the
end with repeats of the first indices so every rank gets as many. So gathering the same rows of
every rank and interleaving them restores the dataset order, and the padding repeats are the
positions at or beyond the dataset's length. The evaluation loop removes them from a rank's
last batch *before* the forward pass (``EvalSharding.valid_rows``), so the loss and streamed
metrics count every example exactly once; the gather then drops the rows a rank lacks.
Variable-length dimensions are padded with -100 across ranks, as across batches.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from trainkit.loops.nested import PAD_INDEX, nested_apply, nested_numpify

__all__ = ["EvalSharding", "RankGather", "eval_sharding", "per_example", "real_samples_of", "take_rows"]


@dataclass(frozen=True)
class EvalSharding:
    """How an evaluation DataLoader splits the data over the ranks."""

    world_size: int = 1
    interleaved: bool = True  # rank r holds positions r, r+W, ... (a distributed sampler); else its own stream
    real_rows: int | None = None  # this rank's rows that are not sampler padding (None: unknown, keep them all)

    def valid_rows(self, seen: int, size: int) -> int:
        """Rows of the next batch of ``size`` (after ``seen`` rows) that are real examples, not padding."""
        if self.real_rows is None:
            return size
        return max(0, min(size, self.real_rows - seen))


def real_samples_of(sampler: Any) -> int | None:
    """This rank's indices that are not padding repeats, for a DistributedSampler-like sampler (else None)."""
    total = getattr(sampler, "num_samples_total", None)
    if total is None:
        dataset: Any = getattr(sampler, "dataset", None)
        total = len(dataset) if hasattr(dataset, "__len__") else None
    replicas, rank = getattr(sampler, "num_replicas", None), getattr(sampler, "rank", None)
    if total is None or replicas is None or rank is None:
        return None
    return min(len(sampler), max(0, math.ceil((total - rank) / replicas)))


def eval_sharding(dataloader: Any, world_size: int) -> EvalSharding:
    """The sharding of ``dataloader`` on ``world_size`` ranks: interleaved when its sampler splits the data."""
    if world_size == 1:
        return EvalSharding()
    sampler = getattr(dataloader, "sampler", None)
    if getattr(sampler, "num_replicas", 1) != world_size:
        return EvalSharding(world_size, interleaved=False)
    return EvalSharding(world_size, interleaved=True, real_rows=real_samples_of(sampler))


def take_rows(batch: Any, rows: int, size: int) -> Any:
    """The first ``rows`` examples of a collated batch of ``size`` (tensors and lists with ``size`` entries)."""

    def take(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == size:
            return value[:rows]
        if isinstance(value, list) and len(value) == size:
            return value[:rows]
        return value

    if isinstance(batch, Mapping):
        return type(batch)({k: take(v) for k, v in batch.items()})  # type: ignore[call-arg]
    if isinstance(batch, tuple):
        return tuple(take(v) for v in batch)
    return take(batch)


def per_example(value: Any) -> list[Any]:
    """A batch's predictions as one item per example (``eval_use_gather_object``)."""
    value = nested_numpify(value) if isinstance(value, torch.Tensor) else value
    if isinstance(value, np.ndarray):
        return list(value) if value.ndim else [value]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise TypeError(
        f"eval_use_gather_object=True: predictions and labels must be lists (one item per example) or tensors, "
        f"got {type(value).__name__}"
    )


class RankGather:
    """Gathers nested tensors (or per-example objects) of every rank into one batch in dataset order."""

    def __init__(self, strategy: Any, sharding: EvalSharding) -> None:
        self.strategy = strategy
        self.sharding = sharding

    @property
    def active(self) -> bool:
        return self.sharding.world_size > 1

    def tensors(self, value: Any) -> Any:
        """Every rank's rows of each tensor of ``value`` (same structure on every rank)."""
        if not self.active or value is None:
            return value
        return nested_apply(value, lambda t: self._tensor(t) if isinstance(t, torch.Tensor) else t)

    def _tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor if tensor.ndim else tensor.reshape(1)
        length = tensor.shape[1] if tensor.ndim > 1 else 0
        sizes = self.strategy.all_gather(torch.tensor([tensor.shape[0], length])).tolist()
        rows = max(s[0] for s in sizes)
        padded = _pad(tensor, rows, max(s[1] for s in sizes))
        stacked = self.strategy.all_gather(padded)
        if self.sharding.interleaved:  # rank r's row j is position j * W + r; missing rows are at the end
            merged = stacked.transpose(0, 1).reshape(-1, *stacked.shape[2:])
            return merged[: sum(s[0] for s in sizes)]
        return torch.cat([stacked[r, : s[0]] for r, s in enumerate(sizes)])

    def objects(self, value: Any) -> list[Any]:
        """Every rank's examples of ``value`` (``all_gather_object``), as one list."""
        items = per_example(value)
        if not self.active:
            return items
        parts = self.strategy.all_gather_object(items)
        if not self.sharding.interleaved:
            return [item for part in parts for item in part]
        longest = max(len(part) for part in parts)
        return [part[j] for j in range(longest) for part in parts if j < len(part)]


def _pad(tensor: torch.Tensor, rows: int, length: int) -> torch.Tensor:
    """``tensor`` grown to ``rows`` rows (and ``length`` in dim 1) with -100."""
    if tensor.shape[0] == rows and (tensor.ndim < 2 or tensor.shape[1] == length):
        return tensor
    shape = (rows, length, *tensor.shape[2:]) if tensor.ndim > 1 else (rows,)
    out = tensor.new_full(shape, PAD_INDEX)
    if tensor.ndim > 1:
        out[: tensor.shape[0], : tensor.shape[1]] = tensor
    else:
        out[: tensor.shape[0]] = tensor
    return out
