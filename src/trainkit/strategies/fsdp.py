"""``FSDPStrategy``: parameters, gradients and optimizer state sharded over the ranks with FSDP2.

Built on ``torch.distributed.fsdp.fully_shard`` (FSDP2: per-parameter DTensor sharding, no flat
parameters; runs on the CPU with gloo as on CUDA with nccl). transformers' ``fsdp`` options map to
FSDP2 as follows (``fsdp_options.py`` reads them from TrainingArguments):

- ``full_shard`` / ``shard_grad_op``: a 1-D mesh over all ranks, ``reshard_after_forward`` True /
  False (ZeRO-3 / ZeRO-2 behaviour); ``hybrid_shard`` / ``hybrid_shard_zero2``: a 2-D mesh,
  replicated across nodes and sharded within each node; ``no_shard``: replicated only.
- ``offload``: ``CPUOffloadPolicy`` (sharded parameters and gradients live on the CPU, the
  optimizer steps there).
- ``auto_wrap`` / ``transformer_layer_cls_to_wrap`` / ``min_num_params``: the submodules sharded
  as their own units (``fsdp_wrap.py``); ``activation_checkpointing`` recomputes those units.
- the Precision's compute dtype becomes ``MixedPrecisionPolicy(param_dtype=<half>,
  reduce_dtype=float32)``: parameters are all-gathered in half, gradients reduced in fp32, the
  sharded master weights and the optimizer stay fp32; autocast still runs, so ops it keeps in
  fp32 stay there. Pass ``mixed_precision=`` to choose another policy.

Checkpoints are sharded: every rank writes its shards of the model and optimizer with
``torch.distributed.checkpoint`` through ``ShardedCheckpointIO`` (``checkpoint_parts`` /
``restore_checkpoint_parts``); ``model_state_dict`` gathers the full weights for ``save_model``.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.optim import Optimizer

from trainkit.checkpoint.io import CheckpointIO
from trainkit.checkpoint.layout import PART_MODEL, PART_OPTIMIZER
from trainkit.checkpoint.sharded_io import SavedShards, ShardedCheckpointIO, ShardedStateDict
from trainkit.precision.base import NULL_CONTEXT
from trainkit.strategies.fsdp_state import (
    gather_full_state,
    load_sharded_model,
    load_sharded_optimizer,
    sharded_model_state,
    sharded_optimizer_state,
    tied_aliases,
)
from trainkit.strategies.fsdp_wrap import wrap_targets
from trainkit.strategies.parallel import ParallelStrategy

__all__ = ["SHARDINGS", "FSDPStrategy", "per_node_checkpoint_problem"]

# sharding -> reshard_after_forward (None: not meaningful, nothing is sharded)
SHARDINGS: dict[str, bool | None] = {
    "full_shard": True,
    "shard_grad_op": False,
    "hybrid_shard": True,
    "hybrid_shard_zero2": False,
    "no_shard": None,
}
_HYBRID = ("hybrid_shard", "hybrid_shard_zero2")


def per_node_checkpoint_problem(sharding: str, num_nodes: int, save_on_each_node: bool) -> str | None:
    """Why each node cannot write a checkpoint of its own (its ranks do not hold a whole replica), or None."""
    if not save_on_each_node or num_nodes < 2 or sharding in (*_HYBRID, "no_shard"):
        return None
    return (
        f"save_on_each_node=True with fsdp={sharding!r} on {num_nodes} nodes: each node's ranks hold only part of "
        "every parameter, so the checkpoint a node writes for itself would be incomplete. Use fsdp='hybrid_shard' or "
        "'hybrid_shard_zero2' (every node holds a whole replica), or save to storage all nodes share without "
        "save_on_each_node"
    )


class FSDPStrategy(ParallelStrategy):
    """FSDP2 (``fully_shard``) over a process group started from torchrun's environment."""

    shards_parameters = True

    def __init__(
        self,
        *,
        sharding: str | None = None,
        reshard_after_forward: bool | int | None = None,
        cpu_offload: bool = False,
        auto_wrap: bool = False,
        wrap_classes: Sequence[str] | None = None,
        min_num_params: int = 0,
        activation_checkpointing: bool = False,
        sync_module_states: bool = True,
        forward_prefetch: bool = False,
        mixed_precision: MixedPrecisionPolicy | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.sharding = sharding or "full_shard"
        if self.sharding not in SHARDINGS:
            raise ValueError(f"FSDPStrategy: sharding must be one of {sorted(SHARDINGS)}, got {sharding!r}")
        self.reshard_after_forward = _reshard(self.sharding, sharding is not None, reshard_after_forward)
        if self.sharding in _HYBRID and self.environment.num_nodes < 2:
            raise ValueError(
                f"fsdp={self.sharding!r} shards within a node and replicates across nodes, but this job has one node "
                f"(WORLD_SIZE={self.world_size}, LOCAL_WORLD_SIZE={self.environment.local_world_size}): use "
                "'full_shard' / 'shard_grad_op', or launch several nodes (torchrun --nnodes N)"
            )
        self.cpu_offload = cpu_offload
        self.auto_wrap = auto_wrap
        self.wrap_classes = list(wrap_classes or [])
        self.min_num_params = min_num_params
        self.activation_checkpointing = activation_checkpointing
        self.sync_module_states = sync_module_states
        self.forward_prefetch = forward_prefetch
        self.mixed_precision = mixed_precision
        self._module: nn.Module | None = None
        if self._checkpoint_io is None:  # set now, so that the factory does not give it a file IO
            self._checkpoint_io = self._default_checkpoint_io()

    def _default_checkpoint_io(self) -> CheckpointIO:
        return ShardedCheckpointIO()

    def _check_checkpoint_io(self, io: CheckpointIO) -> None:
        if not isinstance(io, ShardedCheckpointIO):
            raise ValueError(
                "FSDPStrategy writes sharded checkpoints (each rank its shards, torch.distributed.checkpoint): its "
                f"checkpoint_io must be a ShardedCheckpointIO, got {type(io).__name__}"
            )

    # -------------------------------------------------------------------- setup
    def setup_environment(self) -> None:
        """Start the process group; make the precision's inf/NaN checks agree across gradient shards."""
        if self.precision.eval_precision is not None:
            raise ValueError(
                "FSDPStrategy cannot evaluate in a separate half precision (fp16_full_eval / bf16_full_eval): FSDP2 "
                "owns the parameters, so the model cannot be cast for evaluation; use fp16/bf16 mixed precision"
            )
        self.precision.enable_sharded_gradients()
        super().setup_environment()

    def mixed_precision_policy(self) -> MixedPrecisionPolicy:
        """``mixed_precision`` when given, else the policy derived from the precision (module docstring)."""
        if self.mixed_precision is not None:
            return self.mixed_precision
        dtype = self.precision.compute_dtype
        if dtype is None or dtype == torch.float32:
            return MixedPrecisionPolicy()
        return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)

    def _mesh(self) -> Any:
        from torch.distributed.device_mesh import init_device_mesh

        device_type = self.root_device.type
        if self.sharding in _HYBRID:
            shape = (self.environment.num_nodes, self.environment.local_world_size)
            return init_device_mesh(device_type, shape, mesh_dim_names=("replicate", "shard"))
        if self.sharding == "no_shard":
            return init_device_mesh(device_type, (self.world_size, 1), mesh_dim_names=("replicate", "shard"))
        return init_device_mesh(device_type, (self.world_size,), mesh_dim_names=("shard",))

    def _shard_kwargs(self) -> dict[str, Any]:
        offload: OffloadPolicy = CPUOffloadPolicy(pin_memory=self.root_device.type == "cuda")
        return {
            "mesh": self._mesh(),
            "reshard_after_forward": self.reshard_after_forward,
            "mp_policy": self.mixed_precision_policy(),
            "offload_policy": offload if self.cpu_offload else OffloadPolicy(),
        }

    def setup_module(self, model: nn.Module) -> nn.Module:
        """Shard the wrap targets innermost first, then the root; fill every shard from rank 0's weights.

        The module is sharded in place (FSDP2 swaps its parameters for DTensors): build the optimizer
        from the returned module. Ranks other than 0 may hold the model on the meta device
        (``cpu_ram_efficient_loading``); rank 0's weights and buffers are broadcast into the shards.
        """
        if isinstance(model, FSDPModule):
            self._module = model
            return model
        module = self.precision.convert_module(model)
        full_state = self._rank0_state(module) if self.sync_module_states else None
        targets = wrap_targets(module, self.wrap_classes, self.min_num_params, self.auto_wrap)
        if self.activation_checkpointing:
            _checkpoint_activations(module, targets)
        kwargs = self._shard_kwargs()
        for target in targets:
            fully_shard(target, **kwargs)
        fully_shard(module, **kwargs)
        if self.forward_prefetch:
            _prefetch_forward(module, targets)
        self._materialize(module, full_state)
        self._module = module
        return module

    def _rank0_state(self, module: nn.Module) -> dict[str, Any]:
        on_meta = any(t.is_meta for t in [*module.parameters(), *module.buffers()])
        if self.global_rank == 0 and on_meta:
            raise ValueError(
                "FSDPStrategy: rank 0 must hold the real weights; only other ranks may use the meta device"
            )
        return module.state_dict() if self.global_rank == 0 else {}

    def _materialize(self, module: nn.Module, full_state: dict[str, Any] | None) -> None:
        if any(t.is_meta for t in [*module.parameters(), *module.buffers()]):
            if full_state is None:
                raise ValueError(
                    "FSDPStrategy: parameters on the meta device need sync_module_states=True "
                    "(rank 0's weights are broadcast into them)"
                )
            module.to_empty(device="cpu" if self.cpu_offload else self.root_device)
        if full_state is None:
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        set_model_state_dict(module, full_state, options=options)
        for buffer in module.buffers():  # non-persistent buffers are not in the state dict
            dist.broadcast(buffer.data, src=0)

    # --------------------------------------------------------------------- step
    def no_backward_sync(self, model: nn.Module, enabled: bool) -> contextlib.AbstractContextManager[Any]:
        """Keep unsharded gradients across non-final micro-batches; reduce-scatter once on the last."""
        module = self.unwrap_model(model)
        if not enabled or not isinstance(module, FSDPModule):
            return NULL_CONTEXT
        return _without_gradient_sync(module)

    def clip_gradients(self, model: nn.Module, optimizer: Optimizer, max_norm: float) -> torch.Tensor:
        """Clip by the global norm over every shard (``full_tensor`` of the sharded norm); return it."""
        self.precision.unscale_gradients(optimizer)
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norm = torch.nn.utils.get_total_norm([p.grad for p in params], norm_type=2.0)
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
        return norm

    # -------------------------------------------------------------------- state
    def model_state_dict(self, model: nn.Module) -> dict[str, Any]:
        """The full (consolidated) state dict on the CPU of the saving processes (rank 0, or each node's first with
        ``save_on_each_node``); ``{}`` on the others. Call it on every rank."""
        keep = self.is_local_zero if self.save_on_each_node else self.is_global_zero
        return gather_full_state(self.unwrap_model(model), keep)

    def load_model_state_dict(self, model: nn.Module, state: dict[str, Any], strict: bool = True) -> Any:
        """Load a full state dict held by rank 0 into every shard (other ranks may pass ``{}``)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=strict)
        return set_model_state_dict(self.unwrap_model(model), state, options=options)

    def optimizer_state_dict(self, optimizer: Optimizer) -> dict[str, Any]:
        """This rank's shards of the optimizer state of the module last set up, keyed by parameter name (every
        rank calls it)."""
        return sharded_optimizer_state(self._sharded_module(), optimizer)

    def load_optimizer_state_dict(self, optimizer: Optimizer, state: Any) -> None:
        """Load ``optimizer_state_dict``'s format, or a checkpoint's ``SavedShards`` (every rank calls it)."""
        _load_optimizer(self._sharded_module(), optimizer, state)

    def _sharded_module(self) -> nn.Module:
        if self._module is None:
            raise RuntimeError("FSDPStrategy: no module has been sharded yet; call setup_module(model) first")
        return self._module

    # -------------------------------------------------------------- checkpoints
    def checkpoint_parts(
        self, model: nn.Module, optimizer: Optimizer | None, include_optimizer: bool = True
    ) -> dict[str, Any]:
        """This rank's shards of the model and optimizer, written by every rank (DCP); with
        ``include_optimizer=False`` (``save_only_model``) the gathered weights, one ``model.safetensors``."""
        problem = per_node_checkpoint_problem(self.sharding, self.environment.num_nodes, self.save_on_each_node)
        if problem is not None:
            raise ValueError(problem)
        if not include_optimizer:
            return {PART_MODEL: self.model_state_dict(model)}
        module = self.unwrap_model(model)
        parts: dict[str, Any] = {PART_MODEL: ShardedStateDict(sharded_model_state(module), tied_aliases(module))}
        if optimizer is not None:
            parts[PART_OPTIMIZER] = ShardedStateDict(sharded_optimizer_state(module, optimizer))
        return parts

    def restore_checkpoint_parts(
        self, model: nn.Module, optimizer: Optimizer | None, parts: dict[str, Any], source: str = ""
    ) -> None:
        """Load the shards ``checkpoint_parts`` saved (or gathered weights) into the live model, and the optimizer's
        unless it is None; DCP reshards when the checkpoint was written by another number of ranks."""
        module = self.unwrap_model(model)
        weights = parts[PART_MODEL]
        if isinstance(weights, SavedShards):
            load_sharded_model(module, weights)
        else:
            super().restore_checkpoint_parts(model, None, parts, source)
        if optimizer is not None:
            _load_optimizer(module, optimizer, parts[PART_OPTIMIZER])

    def __repr__(self) -> str:
        return (
            f"FSDPStrategy({self.environment.describe()}, sharding={self.sharding!r}, backend={self.backend!r}, "
            f"device={str(self.root_device)!r}, precision={self.precision!r})"
        )


def _reshard(sharding: str, explicit: bool, reshard_after_forward: bool | int | None) -> bool | int | None:
    implied = SHARDINGS[sharding]
    if reshard_after_forward is None:
        return implied
    if (
        explicit
        and implied is not None
        and isinstance(reshard_after_forward, bool)
        and reshard_after_forward != implied
    ):
        raise ValueError(
            f"fsdp={sharding!r} means reshard_after_forward={implied}, but fsdp_config sets "
            f"reshard_after_forward={reshard_after_forward}: remove one of them"
        )
    return reshard_after_forward


def _load_optimizer(module: nn.Module, optimizer: Optimizer, state: Any) -> None:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    if isinstance(state, SavedShards):
        load_sharded_optimizer(module, optimizer, state)
        return
    if any(isinstance(key, int) for key in state.get("state", {})):
        raise ValueError(
            "FSDPStrategy: this optimizer state is keyed by parameter index (torch's optimizer.state_dict(), e.g. an "
            "optimizer.pt written without FSDP); FSDP loads the state it saved, keyed by parameter name"
        )
    set_optimizer_state_dict(module, optimizer, state)


@contextlib.contextmanager
def _without_gradient_sync(module: FSDPModule) -> Iterator[None]:
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


def _checkpoint_activations(root: nn.Module, targets: list[nn.Module]) -> None:
    """Recompute each wrap target's activations in backward (composable: parameter names do not change)."""
    if not targets:
        raise ValueError(
            "fsdp_config['activation_checkpointing'] needs the layers to checkpoint: set "
            "transformer_layer_cls_to_wrap or min_num_params (or 'auto_wrap' on a model with _no_split_modules)"
        )
    from torch.distributed._composable import checkpoint

    for target in targets:
        checkpoint(target)


def _prefetch_forward(root: nn.Module, targets: list[nn.Module]) -> None:
    """Each unit all-gathers the next one's parameters while it computes (FSDP1's ``forward_prefetch``)."""
    chosen = {id(t) for t in targets}
    in_order = [m for m in root.modules() if id(m) in chosen]
    for current, following in itertools.pairwise(in_order):
        current.set_modules_to_forward_prefetch([following])  # type: ignore[operator]
