"""Several "ranks" as threads of this process: a Strategy whose collectives exchange through memory.

It behaves like DDP for training (gradients averaged over the ranks after the last micro-batch of
a window; none during ``no_backward_sync``) and like any parallel strategy for the collectives, so
the loops' distributed arithmetic can be checked (with hypothesis) without starting processes.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch import nn

from trainkit.checkpoint.collective import CheckpointGroup
from trainkit.strategies.single_device import SingleDeviceStrategy

_REDUCE = {
    "sum": lambda xs: torch.stack(xs).sum(0),
    "mean": lambda xs: torch.stack(xs).double().mean(0) if not xs[0].is_floating_point() else torch.stack(xs).mean(0),
    "max": lambda xs: torch.stack(xs).max(0).values,
    "min": lambda xs: torch.stack(xs).min(0).values,
}


class ThreadGroup:
    """The shared memory of ``world_size`` thread ranks; ``exchange`` is their only collective."""

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self._barrier = threading.Barrier(world_size, timeout=20)
        self._slots: list[Any] = [None] * world_size

    def exchange(self, rank: int, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order (all ranks must call it)."""
        self._barrier.wait()
        self._slots[rank] = value
        self._barrier.wait()
        values = list(self._slots)
        self._barrier.wait()
        return values


class ThreadCheckpointGroup(CheckpointGroup):
    """Rank ``rank`` of a ThreadGroup as the ranks writing one checkpoint folder."""

    def __init__(self, group: ThreadGroup, rank: int) -> None:
        self.group, self.rank, self.size = group, rank, group.world_size

    def all_gather_object(self, obj: Any) -> list[Any]:
        return self.group.exchange(self.rank, obj)


def run_threads(world_size: int, work: Callable[[int, ThreadGroup], Any]) -> list[Any]:
    """``work(rank, group)`` on every rank of a new ThreadGroup; each rank's result or the exception it raised."""
    group = ThreadGroup(world_size)

    def outcome(rank: int) -> Any:
        try:
            return work(rank, group)
        except Exception as err:  # returned, so the test can check every rank's error
            return err

    with ThreadPoolExecutor(world_size) as pool:
        return list(pool.map(outcome, range(world_size)))


class ThreadRankStrategy(SingleDeviceStrategy):
    """Rank ``rank`` of a ThreadGroup, on the CPU, with DDP's gradient averaging."""

    def __init__(self, group: ThreadGroup, rank: int) -> None:
        super().__init__(device="cpu")
        self.group, self.rank = group, rank
        self._sync = True

    @property
    def global_rank(self) -> int:
        return self.rank

    @property
    def local_rank(self) -> int:
        return self.rank

    @property
    def world_size(self) -> int:
        return self.group.world_size

    @property
    def distributed_sampler_kwargs(self) -> dict[str, int]:
        return {"num_replicas": self.world_size, "rank": self.rank}

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        return _REDUCE[op](self.group.exchange(self.rank, torch.as_tensor(tensor).detach().clone()))

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return torch.stack(self.group.exchange(self.rank, tensor.detach().clone()))

    def all_gather_object(self, obj: Any) -> list[Any]:
        return self.group.exchange(self.rank, obj)

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return self.group.exchange(self.rank, obj)[src]

    def barrier(self, name: str | None = None) -> None:
        self.group.exchange(self.rank, None)

    def reduce_boolean_decision(self, decision: Any, all: bool = True) -> bool:
        votes = self.group.exchange(self.rank, bool(decision))
        return builtins_all(votes) if all else any(votes)

    def no_backward_sync(self, model: nn.Module, enabled: bool) -> contextlib.AbstractContextManager[Any]:
        return self._no_sync() if enabled else contextlib.nullcontext()

    @contextlib.contextmanager
    def _no_sync(self) -> Iterator[None]:
        self._sync = False
        try:
            yield
        finally:
            self._sync = True

    def backward(self, loss: torch.Tensor, model: nn.Module) -> None:
        super().backward(loss, model)
        if self._sync:  # DDP: average the accumulated gradients over the ranks
            for param in model.parameters():
                grads = self.group.exchange(self.rank, param.grad.detach().clone())
                param.grad.copy_(torch.stack(grads).mean(0))


builtins_all = all


def run_ranks(world_size: int, work: Callable[[ThreadRankStrategy], Any]) -> list[Any]:
    """``work(strategy)`` on every rank of a new ThreadGroup, in threads; the results in rank order."""
    group = ThreadGroup(world_size)
    with ThreadPoolExecutor(world_size) as pool:
        futures = [pool.submit(work, ThreadRankStrategy(group, rank)) for rank in range(world_size)]
        return [f.result() for f in futures]
