"""Samplers whose order is a pure function of (seed, epoch), so a resumed run sees the same data.

``EpochSampler`` follows ``DistributedSampler``'s arithmetic (permutation seeded by seed + epoch,
padded to a multiple of the replicas, rank ``r`` takes every ``num_replicas``-th index), so one
process and N processes walk the same global order. ``SkippableBatchSampler`` skips the batches
already consumed before a resume without loading their samples.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import BatchSampler, Sampler

__all__ = ["EpochSampler", "LengthGroupedSampler", "SkippableBatchSampler"]


class EpochSampler(Sampler[int]):
    """Indices of one epoch for one rank: shuffled by (seed, epoch) or in order."""

    def __init__(
        self,
        num_samples: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
    ) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        self.num_samples_total = num_samples
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = drop_last
        self.epoch = 0
        if drop_last and num_samples % num_replicas:
            self.per_rank = num_samples // num_replicas
        else:
            self.per_rank = math.ceil(num_samples / num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_order(self) -> list[int]:
        """Every rank's indices of this epoch, interleaved (what one big process would see)."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_samples_total, generator=g).tolist()
        else:
            order = list(range(self.num_samples_total))
        total = self.per_rank * self.num_replicas
        if total > len(order) and order:
            repeats = math.ceil((total - len(order)) / len(order))
            order += (order * repeats)[: total - len(order)]
        return order[:total]

    def __iter__(self) -> Iterator[int]:
        return iter(self.global_order()[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        return self.per_rank


class LengthGroupedSampler(EpochSampler):
    """transformers' length grouping: shuffled mega-batches, each sorted by length, longest first."""

    def __init__(self, lengths: Sequence[int], batch_size: int, **kwargs: object) -> None:
        super().__init__(len(lengths), **kwargs)  # type: ignore[arg-type]
        self.lengths = list(lengths)
        self.batch_size = batch_size

    def global_order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        mult = min(len(self.lengths) // (self.batch_size * 4), 50) or 1
        size = mult * self.batch_size
        megas = [sorted(order[i : i + size], key=lambda j: -self.lengths[j]) for i in range(0, len(order), size)]
        longest = max(range(len(megas)), key=lambda m: self.lengths[megas[m][0]]) if megas else 0
        if megas:  # the longest element first, so an out-of-memory error shows at once
            megas[0][0], megas[longest][0] = megas[longest][0], megas[0][0]
        flat = [i for mega in megas for i in mega]
        total = self.per_rank * self.num_replicas
        if total > len(flat) and flat:
            flat += flat[: total - len(flat)]
        return flat[:total]


class SkippableBatchSampler(BatchSampler):
    """A BatchSampler that can skip the first ``k`` batches of its next iteration (for resume)."""

    def __init__(self, sampler: Sampler[int], batch_size: int, drop_last: bool) -> None:
        super().__init__(sampler, batch_size, drop_last)
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        set_epoch = getattr(self.sampler, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)

    def skip_next(self, num_batches: int) -> None:
        """Skip ``num_batches`` batches at the start of the next iteration only."""
        self._skip = num_batches

    def __iter__(self) -> Iterator[list[int]]:
        skip, self._skip = self._skip, 0
        for i, batch in enumerate(super().__iter__()):
            if i >= skip:
                yield batch
