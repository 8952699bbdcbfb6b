"""``ParallelStrategy``: one process per device under torchrun; the process group and its collectives.

The base of ``DDPStrategy`` and ``FSDPStrategy``. The topology comes from the launcher's
environment (``ProcessEnvironment``); ``setup_environment`` starts the process group (gloo on
the CPU, nccl on CUDA unless ``backend`` says otherwise) with ``timeout``, so a rank that dies
or hangs makes the others fail within that time instead of waiting forever. Every collective
takes any tensor (host or device) and returns the result on this rank's device.

Once the group runs, the strategy connects its CheckpointIO: the IO learns this rank and the
ranks that write one checkpoint folder together (every rank, or this node's with
``save_on_each_node``), so every rank writes its own files (``rng_state_<rank>.pth``, its shards)
through the IO's staging protocol.
"""

from __future__ import annotations

import datetime
from typing import Any

import torch
import torch.distributed as dist

from trainkit.checkpoint.collective import CheckpointGroup, ProcessGroupCheckpointGroup
from trainkit.checkpoint.io import CheckpointIO
from trainkit.precision.base import Precision
from trainkit.strategies.base import ReduceOp, Strategy
from trainkit.strategies.environment import TORCHRUN_HINT, ProcessEnvironment
from trainkit.utils.logging import get_logger

__all__ = ["ParallelStrategy", "default_backend", "process_device", "start_from_arguments", "start_process_group"]

logger = get_logger(__name__)

_REDUCE_OPS = {"sum": dist.ReduceOp.SUM, "mean": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}


def process_device(local_rank: int, use_cpu: bool = False) -> torch.device:
    """``cuda:<local_rank>`` when CUDA is available (and not ``use_cpu``), else the CPU."""
    if use_cpu or not torch.cuda.is_available():
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ValueError(
            f"LOCAL_RANK={local_rank} but only {count} CUDA device(s) are visible: start at most {count} "
            "processes per node (torchrun --nproc_per_node) or set use_cpu=True"
        )
    return torch.device("cuda", local_rank)


def default_backend(device: torch.device) -> str:
    """nccl for CUDA devices, gloo for the CPU (transformers' defaults)."""
    return "nccl" if device.type == "cuda" else "gloo"


def _timeout(seconds: float | datetime.timedelta | None) -> datetime.timedelta | None:
    if seconds is None or isinstance(seconds, datetime.timedelta):
        return seconds
    if seconds <= 0:
        raise ValueError(f"ddp_timeout must be a positive number of seconds, got {seconds}")
    return datetime.timedelta(seconds=seconds)


def start_process_group(
    environment: ProcessEnvironment,
    backend: str,
    timeout: datetime.timedelta | None,
    device: torch.device,
) -> bool:
    """Start the default process group from the launcher's environment; False when one already runs.

    It lives until the process exits, or until the strategy that started it is torn down.
    (Destroying it from an ``atexit`` hook races with the other ranks' exits: gloo aborts.)
    """
    if dist.is_initialized():
        return False
    if not environment.launched:
        raise RuntimeError(
            f"A process group needs the variables of a launcher (RANK, WORLD_SIZE, ...): {TORCHRUN_HINT}"
        )
    kwargs: dict[str, Any] = {"backend": backend}
    if timeout is not None:
        kwargs["timeout"] = timeout
    if device.type == "cuda":
        torch.cuda.set_device(device)
        kwargs["device_id"] = device
    dist.init_process_group(**kwargs)
    logger.info("Process group started: %s, backend %s, device %s", environment.describe(), backend, device)
    return True


def start_from_arguments(args: Any) -> bool:
    """Start the process group of TrainingArguments when launched on several processes (``main_process_first``)."""
    environment = ProcessEnvironment.from_environ(local_rank=args.local_rank)
    if not environment.launched or environment.world_size == 1:
        return False
    device = process_device(environment.local_rank, args.use_cpu)
    return start_process_group(
        environment, args.ddp_backend or default_backend(device), _timeout(args.ddp_timeout), device
    )


class ParallelStrategy(Strategy):
    """Process group, topology and collectives shared by the data-parallel strategies."""

    def __init__(
        self,
        *,
        backend: str | None = None,
        timeout: float | datetime.timedelta | None = 1800,
        use_cpu: bool = False,
        save_on_each_node: bool = False,
        environment: ProcessEnvironment | None = None,
        precision: Precision | None = None,
        checkpoint_io: CheckpointIO | None = None,
    ) -> None:
        if checkpoint_io is not None:
            self._check_checkpoint_io(checkpoint_io)
        super().__init__(precision=precision, checkpoint_io=checkpoint_io)
        self.save_on_each_node = save_on_each_node
        self._checkpoint_group: CheckpointGroup | None = None
        self.environment = environment if environment is not None else ProcessEnvironment.from_environ()
        self._device = process_device(self.environment.local_rank, use_cpu)
        self.backend = backend or default_backend(self._device)
        if self.backend == "nccl" and self._device.type != "cuda":
            raise ValueError(
                f"ddp_backend='nccl' needs CUDA devices, but this process runs on {self._device}; use 'gloo' on the CPU"
            )
        self.timeout = _timeout(timeout)
        self._owns_group = False

    # --------------------------------------------------------------- components
    @property
    def checkpoint_io(self) -> CheckpointIO:
        if self._checkpoint_io is None:
            self._checkpoint_io = self._default_checkpoint_io()
        return self._checkpoint_io

    @checkpoint_io.setter
    def checkpoint_io(self, io: CheckpointIO) -> None:
        self._check_checkpoint_io(io)
        self._checkpoint_io = io
        if self._checkpoint_group is not None:  # already running: connect it now
            self._connect_checkpoint_io()

    def _default_checkpoint_io(self) -> CheckpointIO:
        from trainkit.checkpoint.safetensors_io import SafetensorsCheckpointIO

        return SafetensorsCheckpointIO()

    def _check_checkpoint_io(self, io: CheckpointIO) -> None:
        """Refuse an IO this strategy cannot write its checkpoints with (FSDP needs sharded ones)."""

    def checkpoint_group(self) -> CheckpointGroup:
        """The ranks that write one checkpoint folder together: all of them, or this node's with ``save_on_each_node``.

        Built on first use, a collective the first time (per-node groups are created by every rank).
        """
        if self._checkpoint_group is None:
            process_group = None
            if self.save_on_each_node and self.environment.num_nodes > 1:
                size = self.environment.local_world_size
                nodes = [list(range(node * size, (node + 1) * size)) for node in range(self.environment.num_nodes)]
                process_group, _ = dist.new_subgroups_by_enumeration(nodes)
            self._checkpoint_group = ProcessGroupCheckpointGroup(process_group)
        return self._checkpoint_group

    def _connect_checkpoint_io(self) -> None:
        io = self.checkpoint_io
        io.set_process(self.global_rank, self.world_size)
        io.set_group(self.checkpoint_group())

    # ----------------------------------------------------------------- topology
    @property
    def root_device(self) -> torch.device:
        return self._device

    @property
    def global_rank(self) -> int:
        return self.environment.rank

    @property
    def local_rank(self) -> int:
        return self.environment.local_rank

    @property
    def node_rank(self) -> int:
        return self.environment.node_rank

    @property
    def world_size(self) -> int:
        return self.environment.world_size

    @property
    def distributed_sampler_kwargs(self) -> dict[str, int]:
        return {"num_replicas": self.world_size, "rank": self.global_rank}

    # -------------------------------------------------------------------- setup
    def setup_environment(self) -> None:
        """Select the CUDA device, start (or join) the process group, then apply the precision's flags."""
        if self._device.type == "cuda":
            torch.cuda.set_device(self._device)
        self._start_process_group()
        self._connect_checkpoint_io()
        super().setup_environment()

    def _start_process_group(self) -> None:
        if dist.is_initialized():
            self._check_existing_group()
            return
        self._owns_group = start_process_group(self.environment, self.backend, self.timeout, self._device)

    def _check_existing_group(self) -> None:
        if (dist.get_rank(), dist.get_world_size()) != (self.global_rank, self.world_size):
            raise RuntimeError(
                f"The process group already started has rank {dist.get_rank()} of {dist.get_world_size()}, "
                f"but the environment says {self.environment.describe()}"
            )

    def teardown(self) -> None:
        """Restore the precision's flags, release the IO, and end the process group this strategy started.

        Call it on every rank: the ranks meet at a barrier first, so none closes its connections
        while another still uses them.
        """
        super().teardown()
        if self._owns_group and dist.is_initialized():
            self.barrier("teardown")
            dist.destroy_process_group()
            if self._checkpoint_io is not None:
                self._checkpoint_io.set_group(None)
            self._checkpoint_group = None
        self._owns_group = False

    # -------------------------------------------------------------- collectives
    def _on_device(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.detach().to(self._device, copy=True)

    def all_reduce(self, tensor: torch.Tensor, op: ReduceOp = "sum") -> torch.Tensor:
        """``tensor`` reduced over every rank (a new tensor on this rank's device; ``mean`` gives floats)."""
        if op not in _REDUCE_OPS:
            raise ValueError(f"all_reduce: op must be one of {sorted(_REDUCE_OPS)}, got {op!r}")
        work = self._on_device(torch.as_tensor(tensor))
        if op == "mean" and not work.is_floating_point():
            work = work.double()
        dist.all_reduce(work, op=_REDUCE_OPS[op])
        if op == "mean":
            work /= self.world_size
        return work

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's ``tensor`` (same shape everywhere) stacked along a new first dimension, in rank order."""
        local = self._on_device(torch.as_tensor(tensor)).contiguous()
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local)
        return torch.stack(parts)

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's picklable ``obj``, in rank order."""
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s picklable ``obj`` on every rank."""
        holder = [obj]
        dist.broadcast_object_list(holder, src=src)
        return holder[0]

    def barrier(self, name: str | None = None) -> None:
        """Wait for every rank (bounded by the process group's timeout)."""
        if self._device.type == "cuda" and self.backend == "nccl":
            dist.barrier(device_ids=[self._device.index])
        else:
            dist.barrier()

    def reduce_boolean_decision(self, decision: bool | torch.Tensor, all: bool = True) -> bool:
        """True when every rank (``all=True``) or at least one rank decided True."""
        votes = int(self.all_reduce(torch.tensor(int(bool(decision)), dtype=torch.int32), op="sum"))
        return votes == self.world_size if all else votes > 0
