"""``CheckpointGroup``: the processes that write one checkpoint folder together, and the steps they agree on.

With several processes, every rank writes the files it owns (its ``rng_state_<rank>.pth``, its
shards) into the staging folder that one coordinator prepared, and the coordinator commits them
(``io.py``'s protocol). The group is every rank of the job, or one node's ranks with
``save_on_each_node`` (each node writes its own folder). Each step ends with one all-gather of
every rank's result *and* failure, so a rank that fails (a full disk, a missing folder) makes
every rank raise at the same step instead of leaving the others waiting in a collective.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, TypeVar

from trainkit.checkpoint.errors import CheckpointError

__all__ = ["CheckpointGroup", "ProcessGroupCheckpointGroup", "on_every_rank"]

T = TypeVar("T")


class CheckpointGroup(ABC):
    """Ranks ``0 .. size - 1`` writing one checkpoint folder; rank 0 of the group coordinates."""

    rank: int
    size: int
    # The torch.distributed group of these ranks (what torch.distributed.checkpoint coordinates
    # over); None means the default group.
    process_group: Any = None

    @property
    def is_coordinator(self) -> bool:
        return self.rank == 0

    @abstractmethod
    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's picklable ``obj``, in group-rank order (every rank of the group calls it)."""

    def describe(self) -> str:
        return f"rank {self.rank} of {self.size}"


class ProcessGroupCheckpointGroup(CheckpointGroup):
    """A ``torch.distributed`` group (the default group when ``process_group`` is None)."""

    def __init__(self, process_group: Any = None) -> None:
        import torch.distributed as dist

        self.process_group = process_group
        self.rank = dist.get_rank(process_group)
        self.size = dist.get_world_size(process_group)

    def all_gather_object(self, obj: Any) -> list[Any]:
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.size
        dist.all_gather_object(gathered, obj, group=self.process_group)
        return gathered


def on_every_rank(group: CheckpointGroup, what: str, work: Callable[[], T], on_failure: Callable[[], None]) -> list[T]:
    """Run ``work`` on every rank of ``group``; return every rank's result, or raise on every rank when one failed.

    ``on_failure`` runs on every rank before it raises (the coordinator removes the staging folder).
    The failing rank re-raises its own error; the others raise CheckpointError naming it.
    """
    error: Exception | None = None
    result: Any = None
    try:
        result = work()
    except Exception as err:  # reported to the other ranks, then re-raised below
        error = err
    failure = None if error is None else f"rank {group.rank}: {type(error).__name__}: {error}"
    outcomes = group.all_gather_object((result, failure))
    failures = [failed for _, failed in outcomes if failed is not None]
    if failures:
        on_failure()
        if error is not None:
            raise error
        raise CheckpointError(f"{what} failed on another rank of the {group.size} writing it: {'; '.join(failures)}")
    return [value for value, _ in outcomes]
