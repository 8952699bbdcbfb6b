"""``XLAStrategy``: torch_xla on PJRT, one XLA device per process (a TPU core, or the CPU for tests).

torch_xla traces operations lazily and runs them as compiled graphs. Three places cut a graph:
the device loader between batches, ``mark_step`` before the loop reads the loss (and the
gradient norm) of a step, and ``optimizer_step`` after the update. Several PJRT processes
(launched by torchrun or ``xmp.spawn``; the runtime gives the rank and the world size) each
compute on their own device; their gradients are averaged once per optimizer step, before
clipping. XLA's random generator is seeded at setup (``torch.manual_seed`` does not reach it)
and put back at each accumulation window where the last optimizer step left it, so that
checkpoints resume its numbers exactly (``begin_window``, ``rng_state``). ``import trainkit``
does not import torch_xla: this module imports it when used.
"""

from __future__ import annotations

import pickle
from typing import Any

import torch
from lightning_utilities.core.apply_func import apply_to_collection
from torch import nn
from torch.optim import Optimizer

from trainkit.checkpoint.io import CheckpointIO
from trainkit.precision.base import Precision
from trainkit.strategies.base import ReduceOp, Strategy
from trainkit.strategies.tied_parameters import retie_parameters, tied_parameter_names
from trainkit.strategies.xla_loader import DeviceCopies, XLADeviceLoader, send_to_xla
from trainkit.utils.imports import require
from trainkit.utils.logging import get_logger

__all__ = ["XLAStrategy", "to_cpu"]

logger = get_logger(__name__)


def to_cpu(state: Any) -> Any:
    """``state`` with every XLA tensor copied (detached) to the host: checkpoints are written from CPU tensors.

    A tensor object found under several names (a module's tied weights, from ``state_dict(keep_vars=True)``)
    becomes one CPU tensor, so a checkpoint stores it once with aliases, as on other devices.
    """
    import torch_xla

    torch_xla.sync()  # run the pending work as one graph: each copy below is then a transfer, not a graph
    copies: dict[int, torch.Tensor] = {}

    def copy(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.device.type != "xla":
            return tensor
        if id(tensor) not in copies:
            copies[id(tensor)] = tensor.detach().cpu()
        return copies[id(tensor)]

    return apply_to_collection(state, torch.Tensor, copy)


class XLAStrategy(Strategy):
    """Train on this process's XLA device; across PJRT processes, gradients are averaged at each step.

    ``prefetch``: batches the device loader sends ahead of the one in use.
    """

    def __init__(
        self, precision: Precision | None = None, checkpoint_io: CheckpointIO | None = None, *, prefetch: int = 2
    ) -> None:
        require("torch_xla", type(self).__name__)
        super().__init__(precision=precision, checkpoint_io=checkpoint_io)
        self.prefetch = prefetch
        self._device: torch.device | None = None
        self._device_copies = DeviceCopies()
        self._gradients_reduced = False
        self._started_process_group = False
        self._ranks: tuple[int, int, int] | None = None
        self._window_seed: int | None = None  # the device generator's state at the start of the next window

    # ----------------------------------------------------------------- topology
    @property
    def root_device(self) -> torch.device:
        if self._device is None:
            import torch_xla

            self._device = torch_xla.device()
        return self._device

    @property
    def global_rank(self) -> int:
        return self._topology()[0]

    @property
    def local_rank(self) -> int:
        return self._topology()[1]

    @property
    def world_size(self) -> int:
        return self._topology()[2]

    def _topology(self) -> tuple[int, int, int]:
        """(global rank, local rank, world size) from the PJRT runtime, fixed for the process's life."""
        if self._ranks is None:
            import torch_xla.runtime as xr

            self._ranks = (int(xr.global_ordinal()), int(xr.local_ordinal()), int(xr.world_size()))
        return self._ranks

    @property
    def distributed_sampler_kwargs(self) -> dict[str, int] | None:
        world = self.world_size
        return {"num_replicas": world, "rank": self.global_rank} if world > 1 else None

    # -------------------------------------------------------------------- setup
    def setup_environment(self) -> None:
        """Start the ``xla://`` process group when PJRT runs several processes, then the precision."""
        if self.world_size > 1:
            import torch.distributed as dist
            import torch_xla.distributed.xla_backend  # noqa: F401 (registers the 'xla' backend)

            if not dist.is_initialized():
                dist.init_process_group("xla", init_method="xla://")
                self._started_process_group = True
        super().setup_environment()
        self._set_window_seed(torch.initial_seed())  # torch.manual_seed (set_seed) does not reach XLA's generator

    def setup_module(self, model: nn.Module) -> nn.Module:
        """Convert for the precision and move to the device, keeping tied parameters tied (the move unties them)."""
        tied = tied_parameter_names(model)
        model = super().setup_module(model)
        retie_parameters(model, tied)
        return model

    def process_dataloader(self, dataloader: Any) -> XLADeviceLoader:
        """The device loader: host batches, each sent to the device ahead, a step marked between batches."""
        if isinstance(dataloader, XLADeviceLoader):
            return dataloader
        return XLADeviceLoader(dataloader, self._send, self._device_copies, self.prefetch)

    def batch_to_device(self, batch: Any, device: torch.device | None = None) -> Any:
        """The copy the device loader already sent, else a transfer now; cast as the precision needs."""
        if device is not None and device != self.root_device:
            return super().batch_to_device(batch, device)
        moved = self._device_copies.take(batch)
        if moved is None:
            moved = self._send(batch)
        return self.precision.convert_input(moved)

    def _send(self, batch: Any) -> Any:
        return send_to_xla(batch, self.root_device)

    # --------------------------------------------------------------------- step
    def mark_step(self) -> None:
        import torch_xla

        torch_xla.sync()

    def clip_gradients(self, model: nn.Module, optimizer: Optimizer, max_norm: float) -> torch.Tensor | None:
        """Average the gradients over the processes first: the norm is the global gradient's."""
        self._reduce_gradients(optimizer)
        return super().clip_gradients(model, optimizer, max_norm)

    def optimizer_step(self, optimizer: Optimizer, model: nn.Module | None = None) -> bool:
        """torch_xla's optimizer step (gradient all-reduce, then the update) through the precision, then the
        step mark, so that each optimizer step runs as one compiled graph."""
        self._reduce_gradients(optimizer)
        stepped = self.precision.optimizer_step(optimizer)
        self._end_step()
        return stepped

    def skip_optimizer_step(self, optimizer: Optimizer, model: nn.Module | None = None) -> bool:
        skipped = super().skip_optimizer_step(optimizer, model)
        self._end_step()
        return skipped

    def _reduce_gradients(self, optimizer: Optimizer) -> None:
        if self.world_size > 1 and not self._gradients_reduced:
            import torch_xla.core.xla_model as xm

            xm.reduce_gradients(optimizer)  # all-reduce of the sum, scaled by 1 / world size
            self._gradients_reduced = True

    def _end_step(self) -> None:
        import torch_xla.core.xla_model as xm

        self._gradients_reduced = False
        self.mark_step()
        self._device_copies.discard_handed_out()  # batches read but not moved: skipped on resume (IterableDataset)
        self._window_seed = int(xm.get_rng_state(self.root_device))  # a host value: no device wait

    def begin_window(self) -> None:
        """Put the device generator back where the last optimizer step left it (or the setup seed).

        Every step mark advances XLA's generator, and logging, evaluation and saving add step marks
        between windows; re-seeding here makes a window's random numbers depend only on the steps
        before it, so a run resumed from a checkpoint (which holds this seed) draws what the
        uninterrupted run draws.
        """
        if self._window_seed is not None:
            self._set_window_seed(self._window_seed)

    def _set_window_seed(self, seed: int) -> None:
        import torch_xla.core.xla_model as xm

        self._window_seed = seed
        xm.set_rng_state(seed, self.root_device)

    # -------------------------------------------------------------- collectives
    def all_reduce(self, tensor: torch.Tensor, op: ReduceOp = "sum") -> torch.Tensor:
        """Reduce over the PJRT processes; the result is on the device ``tensor`` came from."""
        if self.world_size == 1:
            return tensor
        import torch_xla.core.xla_model as xm

        kinds = {"sum": xm.REDUCE_SUM, "mean": xm.REDUCE_SUM, "max": xm.REDUCE_MAX, "min": xm.REDUCE_MIN}
        if op not in kinds:
            raise ValueError(f"XLAStrategy.all_reduce: op must be one of {sorted(kinds)}, got {op!r}")
        reduced = xm.all_reduce(kinds[op], tensor.to(self.root_device))
        if op == "mean":
            reduced = reduced / self.world_size
        return reduced.to(tensor.device)

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return tensor.unsqueeze(0)
        import torch_xla.core.xla_model as xm

        gathered = xm.all_gather(tensor.to(self.root_device).unsqueeze(0), dim=0)
        return gathered.to(tensor.device)

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every process's ``obj``, pickled into a byte tensor padded to the longest and gathered."""
        if self.world_size == 1:
            return [obj]
        payload = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8)
        sizes = self.all_gather(torch.tensor([payload.numel()], device=self.root_device)).flatten().tolist()
        padded = torch.zeros(max(sizes), dtype=torch.uint8)
        padded[: payload.numel()] = payload
        rows = self.all_gather(padded.to(self.root_device)).cpu()
        return [pickle.loads(rows[i, :size].numpy().tobytes()) for i, size in enumerate(sizes)]

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return obj if self.world_size == 1 else self.all_gather_object(obj)[src]

    def barrier(self, name: str | None = None) -> None:
        if self.world_size > 1:
            import torch_xla.core.xla_model as xm

            xm.rendezvous(name or "trainkit.barrier")

    def reduce_boolean_decision(self, decision: bool | torch.Tensor, all: bool = True) -> bool:
        if self.world_size == 1:
            return bool(decision)
        votes = self.all_reduce(torch.tensor(int(bool(decision)), device=self.root_device), op="sum")
        return int(votes) == self.world_size if all else int(votes) > 0

    # -------------------------------------------------------------------- state
    def model_state_dict(self, model: nn.Module) -> dict[str, Any]:
        """The user's module's state dict with its tensors on the CPU (sharded ones gathered whole, tied ones
        shared: XLA tensors have no storage that would tell)."""
        state: dict[str, Any] = to_cpu(self.unwrap_model(model).state_dict(keep_vars=True))
        return state

    def optimizer_state_dict(self, optimizer: Optimizer) -> dict[str, Any]:
        state: dict[str, Any] = to_cpu(optimizer.state_dict())
        return state

    def rng_state(self) -> dict[str, Any]:
        """``{"xla": seed}``: the device generator's state at the start of the next window (a host int)."""
        if self._window_seed is None:
            import torch_xla
            import torch_xla.core.xla_model as xm

            torch_xla.sync()  # pending random ops would leave a state that the next step mark moves on
            return {"xla": int(xm.get_rng_state(self.root_device))}
        return {"xla": self._window_seed}

    def load_rng_state(self, state: dict[str, Any]) -> None:
        """Seed the device generator from the checkpoint's ``xla`` entry (a warning when it has none)."""
        if "xla" not in state:
            logger.warning(
                "the checkpoint's RNG state holds no XLA generator state (saved on another device?): the random "
                "numbers on the XLA device (dropout) differ from the uninterrupted run's"
            )
            return
        self._set_window_seed(int(state["xla"]))

    def save_checkpoint(self, path: Any, state: dict[str, Any]) -> None:
        """Write ``state`` with its tensors moved to the CPU first (every process moves; rank 0 writes)."""
        super().save_checkpoint(path, to_cpu(state))

    def teardown(self) -> None:
        if self._started_process_group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self._started_process_group = False
        super().teardown()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(precision={self.precision!r})"
