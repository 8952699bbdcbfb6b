"""``Strategy``: the process topology, and the one chain every training step goes through.

A Strategy owns its Precision and its CheckpointIO. The loops talk to the model only through
these methods, so they never branch on the backend: DDP overrides ``no_backward_sync`` and the
collectives, FSDP the state-dict methods, DeepSpeed ``backward`` and ``optimizer_step``, XLA the
device loader, ``mark_step``, ``begin_window`` and ``rng_state``. On one process every collective
is a no-op.
"""

from __future__ import annotations

import contextlib
import sys
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any

import torch
from lightning_utilities.core.apply_func import apply_to_collection
from torch import nn
from torch.optim import Optimizer

from trainkit.checkpoint.io import CheckpointIO
from trainkit.checkpoint.layout import PART_MODEL, PART_OPTIMIZER
from trainkit.checkpoint.weights import load_model_state
from trainkit.precision.base import NULL_CONTEXT, Precision

__all__ = ["ReduceOp", "Strategy"]

ReduceOp = str  # "sum" | "mean" | "max" | "min"


def _all_on(batch: dict[Any, Any], device: torch.device) -> bool:
    for value in batch.values():  # noqa: SIM110 (faster than all() over a generator, on the per-step path)
        if not isinstance(value, torch.Tensor) or value.device != device:
            return False
    return True


class Strategy(ABC):
    """Base class of every strategy; the single-process defaults live here."""

    # Capability: True when each rank holds only a shard of the parameters (FSDP, ZeRO-3), so a full
    # state dict is a collective and checkpoints must be written by every rank.
    shards_parameters = False
    # Capabilities: True when ``setup_optimizers`` builds the optimizer / the scheduler from the
    # strategy's own configuration (a DeepSpeed config's "optimizer" / "scheduler"), so the Trainer
    # creates none from its registries.
    builds_optimizer = False
    builds_scheduler = False
    # Capability: True when the precision follows the strategy's own configuration (DeepSpeed's
    # fp16/bf16 blocks), so the arguments are checked against it instead of choosing one.
    configures_precision = False

    def __init__(self, precision: Precision | None = None, checkpoint_io: CheckpointIO | None = None) -> None:
        self._precision = precision if precision is not None else Precision()
        self._checkpoint_io = checkpoint_io

    # --------------------------------------------------------------- components
    @property
    def precision(self) -> Precision:
        return self._precision

    @precision.setter
    def precision(self, precision: Precision) -> None:
        self._precision = precision

    @property
    def checkpoint_io(self) -> CheckpointIO:
        if self._checkpoint_io is None:
            from trainkit.checkpoint.safetensors_io import SafetensorsCheckpointIO

            self._checkpoint_io = SafetensorsCheckpointIO()
        return self._checkpoint_io

    @checkpoint_io.setter
    def checkpoint_io(self, io: CheckpointIO) -> None:
        self._checkpoint_io = io

    # ----------------------------------------------------------------- topology
    @property
    @abstractmethod
    def root_device(self) -> torch.device:
        """The device this process computes on."""

    @property
    def global_rank(self) -> int:
        return 0

    @property
    def local_rank(self) -> int:
        return 0

    @property
    def node_rank(self) -> int:
        return 0

    @property
    def world_size(self) -> int:
        return 1

    @property
    def is_global_zero(self) -> bool:
        return self.global_rank == 0

    @property
    def is_local_zero(self) -> bool:
        return self.local_rank == 0

    @property
    def distributed_sampler_kwargs(self) -> dict[str, int] | None:
        """``num_replicas``/``rank`` for a DistributedSampler, or None on one process."""
        return None

    # -------------------------------------------------------------------- setup
    def setup_environment(self) -> None:
        """Pick the device, start the process group, apply the precision's global flags."""
        self.precision.setup(self.root_device)

    def setup(
        self, model: nn.Module, optimizer: Optimizer | None = None, scheduler: Any = None
    ) -> tuple[nn.Module, Optimizer | None, Any]:
        """``setup_module`` then ``setup_optimizers``: the model, optimizer and scheduler to use.

        Strategies that replace parameters (FSDP2) need the optimizer built from the module that
        ``setup_module`` returns; hand-written loops on such strategies call the two phases apart.
        """
        model = self.setup_module(model)
        return self.setup_optimizers(model, optimizer, scheduler)

    def setup_module(self, model: nn.Module) -> nn.Module:
        """Convert for the precision, move to the device (a half model moves half the bytes), and
        wrap (DDP) or shard (FSDP) in subclasses."""
        return self.precision.convert_module(model).to(self.root_device)

    def set_training_steps(self, num_training_steps: int, num_warmup_steps: int) -> None:
        """The length of training, known before ``setup_optimizers`` (DeepSpeed fills its scheduler's steps)."""

    def setup_optimizers(
        self, model: nn.Module, optimizer: Optimizer | None, scheduler: Any
    ) -> tuple[nn.Module, Optimizer | None, Any]:
        """Connect the precision to the module and its optimizer (apex's ``amp.initialize`` needs both).

        DeepSpeed builds its engine here, and its optimizer / scheduler when ``builds_optimizer`` /
        ``builds_scheduler`` (then ``optimizer`` / ``scheduler`` are None, and a None scheduler
        returned means the caller creates the registry's on the returned optimizer).
        """
        model, optimizer = self.precision.connect(model, optimizer)
        return model, optimizer, scheduler

    def process_dataloader(self, dataloader: Iterable[Any]) -> Iterable[Any]:
        """Wrap a DataLoader for this backend (a device loader on XLA)."""
        return dataloader

    def batch_to_device(self, batch: Any, device: torch.device | None = None) -> Any:
        """Move every tensor of a (nested) batch to the device, casting inputs as the precision needs."""
        target = device or self.root_device
        if type(batch) is dict and _all_on(batch, target):
            return self._precision.convert_input(batch)  # already there: the common CPU case costs nothing
        non_blocking = target.type == "cuda"
        moved = apply_to_collection(batch, torch.Tensor, lambda t: t.to(target, non_blocking=non_blocking))
        return self._precision.convert_input(moved)

    def unwrap_model(self, model: nn.Module) -> nn.Module:
        """The user's module inside the wrappers torch adds (DataParallel/DDP, ``torch.compile``).

        Only known wrapper types are opened: a user module that merely has a ``.module`` attribute
        is the model itself. Strategies with their own wrapper (DeepSpeed's engine) extend this.
        """
        while True:
            if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
                model = model.module
            elif _is_compiled(model):
                model = model.get_submodule("_orig_mod")
            else:
                return model

    # --------------------------------------------------------------------- step
    def forward_context(self) -> contextlib.AbstractContextManager[Any]:
        return self._precision.forward_context()

    def eval_context(self, model: nn.Module) -> contextlib.AbstractContextManager[Any]:
        return self.precision.eval_context(self.unwrap_model(model))

    def backward(self, loss: torch.Tensor, model: nn.Module) -> None:
        loss = self._precision.pre_backward(loss, model)
        self._precision.backward(loss, model)
        self._precision.post_backward(loss, model)

    def no_backward_sync(self, model: nn.Module, enabled: bool) -> contextlib.AbstractContextManager[Any]:
        """Skip the gradient all-reduce inside the block when ``enabled`` (no-op on one process)."""
        return NULL_CONTEXT

    def clip_gradients(self, model: nn.Module, optimizer: Optimizer, max_norm: float) -> torch.Tensor | None:
        """Unscale gradients, clip their global norm to ``max_norm``; return the norm before clipping.

        None when the optimizer step clips instead (DeepSpeed): ``step_grad_norm`` reports the norm then.
        """
        self._precision.unscale_gradients(optimizer)
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    def step_grad_norm(self) -> torch.Tensor | None:
        """The global gradient norm the last ``optimizer_step`` measured itself (DeepSpeed's engine clips
        inside its step); None for strategies whose ``clip_gradients`` returns it."""
        return None

    def optimizer_step(self, optimizer: Optimizer, model: nn.Module | None = None) -> bool:
        """Step the optimizer through the precision; False when the step was skipped."""
        return self._precision.optimizer_step(optimizer)

    def skip_optimizer_step(self, optimizer: Optimizer, model: nn.Module | None = None) -> bool:
        """Skip this step's update (the loop found a non-finite loss); always returns False."""
        self._precision.skip_step(optimizer)
        return False

    def zero_grad(self, optimizer: Optimizer, model: nn.Module | None = None) -> None:
        optimizer.zero_grad(set_to_none=True)

    def mark_step(self) -> None:
        """Run the device work queued so far, before the loop reads a value of it on the host.

        A no-op on eager devices; XLA cuts and executes its lazily traced graph here, so that a
        host read (the loss, the gradient norm, predictions) does not trace the step twice.
        """

    def begin_window(self) -> None:
        """Called by the FitLoop before the first forward of each accumulation window (after a resume's RNG
        restore). A no-op here; XLA puts its device generator back where the last optimizer step left it."""

    # -------------------------------------------------------------- collectives
    def all_reduce(self, tensor: torch.Tensor, op: ReduceOp = "sum") -> torch.Tensor:
        """Reduce ``tensor`` over all processes (identity on one process)."""
        return tensor

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Stack ``tensor`` from every process along a new first dimension."""
        return tensor.unsqueeze(0)

    def all_gather_object(self, obj: Any) -> list[Any]:
        return [obj]

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return obj

    def barrier(self, name: str | None = None) -> None:
        """Wait for every process."""

    def reduce_boolean_decision(self, decision: bool | torch.Tensor, all: bool = True) -> bool:
        """True when every process (``all=True``) or any process decided True."""
        return bool(decision)

    # ------------------------------------------------------------------- state
    def model_state_dict(self, model: nn.Module) -> dict[str, Any]:
        """The full state dict of the user's module (gathered where the model is sharded)."""
        return self.unwrap_model(model).state_dict()

    def load_model_state_dict(self, model: nn.Module, state: dict[str, Any], strict: bool = True) -> Any:
        return self.unwrap_model(model).load_state_dict(state, strict=strict)

    def optimizer_state_dict(self, optimizer: Optimizer) -> dict[str, Any]:
        return optimizer.state_dict()

    def load_optimizer_state_dict(self, optimizer: Optimizer, state: dict[str, Any]) -> None:
        optimizer.load_state_dict(state)

    # -------------------------------------------------------------- checkpoints
    def checkpoint_parts(
        self, model: nn.Module, optimizer: Optimizer | None, include_optimizer: bool = True
    ) -> dict[str, Any]:
        """The parts of a training checkpoint that hold the model and its optimizer (a collective on sharded
        strategies): the full weights and ``optimizer.pt`` here; DeepSpeed's engine checkpoint instead."""
        parts = {PART_MODEL: self.model_state_dict(model)}
        if include_optimizer and optimizer is not None:
            parts[PART_OPTIMIZER] = self.optimizer_state_dict(optimizer)
        return parts

    def resume_parts(self) -> tuple[str, ...]:
        """The parts a checkpoint must hold for this strategy to resume from it."""
        return (PART_MODEL, PART_OPTIMIZER)

    def weights_parts(self) -> tuple[str, ...]:
        """Parts from which this strategy can load the weights alone (``load_best_model_at_end``), preferred first."""
        return (PART_MODEL,)

    def restore_checkpoint_parts(
        self, model: nn.Module, optimizer: Optimizer | None, parts: dict[str, Any], source: str = ""
    ) -> None:
        """Load what ``checkpoint_parts`` saved: the weights, and the optimizer state unless ``optimizer`` is None."""
        state = parts[PART_MODEL]
        try:
            self.load_model_state_dict(model, state)
        except RuntimeError:
            load_model_state(self.unwrap_model(model), state, source=source)  # raises, naming the keys at fault
            raise
        if optimizer is not None:
            self.load_optimizer_state_dict(optimizer, parts[PART_OPTIMIZER])

    def rng_state(self) -> dict[str, Any]:
        """Generator states of this backend beyond python's, numpy's, torch's CPU and CUDA ones (which
        ``capture_rng_state`` holds), merged into the checkpoint's RNG part: ints and tensors only, so that it
        loads with ``torch.load(weights_only=True)``. None here."""
        return {}

    def load_rng_state(self, state: dict[str, Any]) -> None:
        """Restore what ``rng_state`` returned, from the checkpoint's whole RNG part (other keys are ignored)."""

    def save_checkpoint(self, path: Any, state: dict[str, Any]) -> None:
        """Write a checkpoint through the CheckpointIO: from every rank when the IO is collective (each writes its
        own files), else from the coordinator of the IO's group (global rank 0 without one)."""
        io = self.checkpoint_io
        coordinator = io.group.is_coordinator if io.group is not None else self.is_global_zero
        if io.collective or coordinator:
            io.save(state, path)
        self.barrier("save_checkpoint")

    def load_checkpoint(self, path: Any) -> dict[str, Any]:
        return self.checkpoint_io.load(path, map_location="cpu")

    # ------------------------------------------------------------------ teardown
    def teardown(self) -> None:
        """Restore the precision's global flags and release the IO."""
        self.precision.teardown()
        if self._checkpoint_io is not None:
            self._checkpoint_io.teardown()


def _is_compiled(model: nn.Module) -> bool:
    """Whether ``model`` is ``torch.compile``'s wrapper (dynamo is loaded whenever one exists)."""
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    return eval_frame is not None and isinstance(model, eval_frame.OptimizedModule)
