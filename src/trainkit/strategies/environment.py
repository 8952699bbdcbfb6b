"""``ProcessEnvironment``: where this process sits in a job, read from the variables torchrun sets.

torchrun (and ``python -m torch.distributed.run``, its module form) exports ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``GROUP_RANK`` (the node's rank),
``MASTER_ADDR`` and ``MASTER_PORT`` to every worker. DeepSpeed's launcher (``deepspeed``) exports
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` and the master address too, with ``LOCAL_SIZE`` and
``CROSS_RANK`` for the node layout (read when torchrun's names are absent). trainkit ships no
launcher of its own: a job is distributed exactly when these variables say so.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["TORCHRUN_HINT", "ProcessEnvironment"]

TORCHRUN_HINT = (
    "launch the script with torchrun, e.g. `torchrun --nproc_per_node 2 train.py ...` on one machine, or "
    "`torchrun --nnodes 2 --node_rank <0|1> --nproc_per_node 8 --master_addr <host of rank 0> --master_port 29500 "
    "train.py ...` on each of two machines"
)


def _int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


@dataclass(frozen=True)
class ProcessEnvironment:
    """Rank, local rank, world size and node layout of this process (one process: all zeros and ones)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    node_rank: int = 0
    launched: bool = False  # started by torchrun (or another launcher exporting the same variables)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None, local_rank: int = -1) -> ProcessEnvironment:
        """Read the launcher's variables; ``local_rank`` (``--local_rank`` of older launchers) fills a missing
        ``LOCAL_RANK``."""
        env = os.environ if environ is None else environ
        launched = "WORLD_SIZE" in env and "RANK" in env
        world = _int(env, "WORLD_SIZE", 1)
        rank = _int(env, "RANK", 0)
        local = _int(env, "LOCAL_RANK", local_rank if local_rank >= 0 else 0)
        local_world = _int(env, "LOCAL_WORLD_SIZE", _int(env, "LOCAL_SIZE", world))
        node = _int(env, "GROUP_RANK", _int(env, "NODE_RANK", _int(env, "CROSS_RANK", rank // max(local_world, 1))))
        result = cls(rank, local, world, local_world, node, launched)
        result.check()
        return result

    @property
    def num_nodes(self) -> int:
        return max(self.world_size // max(self.local_world_size, 1), 1)

    def check(self) -> None:
        """Refuse a layout that no launcher produces (a rank outside the world, uneven nodes)."""
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"RANK={self.rank} is not in [0, WORLD_SIZE={self.world_size})")
        if not 0 <= self.local_rank < max(self.local_world_size, 1):
            raise ValueError(f"LOCAL_RANK={self.local_rank} is not in [0, LOCAL_WORLD_SIZE={self.local_world_size})")
        if self.local_world_size < 1 or self.world_size % self.local_world_size:
            raise ValueError(
                f"WORLD_SIZE={self.world_size} is not a multiple of LOCAL_WORLD_SIZE={self.local_world_size}: "
                "every node must run the same number of processes"
            )

    def describe(self) -> str:
        return (
            f"rank {self.rank}/{self.world_size} (local rank {self.local_rank}/{self.local_world_size}, "
            f"node {self.node_rank}/{self.num_nodes})"
        )
