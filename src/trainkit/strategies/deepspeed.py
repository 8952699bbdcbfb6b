"""``DeepSpeedStrategy``: a DeepSpeed engine (ZeRO stages 0-3, CPU/NVMe offload) behind the Strategy interface.

DeepSpeed's engine owns more of the step than any other backend: backward (loss scaling), the
gradient reduction, clipping, the overflow check and the optimizer step. The strategy adapts it
so the loops stay the same:

- ``backward`` -> ``engine.backward(loss, scale_wrt_gas=False)``: the loop has already normalised
  the loss over the whole accumulation window, so the engine must not divide it again;
- ``no_backward_sync(enabled)`` -> ``engine.set_gradient_accumulation_boundary(not enabled)``: the
  loop, not the engine's micro-step counter, decides where a window ends (a short last window too);
- ``clip_gradients`` returns None and ``optimizer_step`` runs ``engine.step()``, which clips to the
  config's ``gradient_clipping`` (= ``max_grad_norm``) and reports a skipped (overflowing) step;
  ``step_grad_norm`` is the engine's global norm of that step, which the loop logs;
- a window whose loss is inf/NaN: its gradients are made NaN in ``backward`` (a factor of 1 or NaN on
  the loss, with no host synchronisation), so the engine's own overflow check skips the step on
  every rank and clears its gradient buffers;
- the config's ``scheduler`` is built here (not by the engine) on the engine's optimizer and stepped by
  the loop like any scheduler; the registry's scheduler is too. Both travel in ``scheduler.pt``;
- checkpoints are the engine's own (``DeepSpeedCheckpointIO``: every rank writes its shards inside
  trainkit's atomic, manifest-checked folder), read back by ``engine.load_checkpoint`` with every
  ``torch.load`` weights-only; ``model_state_dict`` gathers the full weights (ZeRO-3:
  ``_zero3_consolidated_16bit_state_dict``) and ``load_model_state_dict`` loads them into the live
  engine (ZeRO-3: ``GatheredParameters`` with rank 0 as the modifier), no rebuild.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator, Mapping
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import nn
from torch.optim import Optimizer

from trainkit.checkpoint.deepspeed_io import DeepSpeedCheckpointIO, SavedEngine
from trainkit.checkpoint.io import CheckpointIO
from trainkit.checkpoint.layout import PART_DEEPSPEED, PART_MODEL
from trainkit.checkpoint.weights import describe_state_mismatch
from trainkit.precision.base import NULL_CONTEXT, Precision
from trainkit.precision.deepspeed import DeepSpeedPrecision
from trainkit.strategies.deepspeed_config import (
    auto_keys,
    check_config,
    config_value,
    fill_auto,
    half_precision,
    hidden_size_values,
    read_config,
    schedule_values,
    zero_stage,
)
from trainkit.strategies.deepspeed_weights import full_shapes, load_partitioned, load_replicated, safe_engine_loads
from trainkit.strategies.parallel import ParallelStrategy
from trainkit.utils.imports import require

__all__ = ["DeepSpeedStrategy", "engine_precision"]


def engine_precision(config: Mapping[str, Any], tf32: bool | None = None) -> DeepSpeedPrecision:
    """The precision a DeepSpeed engine runs with this (filled) config."""
    half = half_precision(config)
    checks_overflow = half == "fp16" or (half == "bf16" and config_value(config, "bf16.check_grad_overflow", True))
    return DeepSpeedPrecision(
        half, skips_nonfinite_gradients=zero_stage(config) > 0 or bool(checks_overflow), tf32=tf32
    )


class DeepSpeedStrategy(ParallelStrategy):
    """A DeepSpeed engine over the process group of torchrun or of the ``deepspeed`` launcher.

    ``config`` is a dict, a JSON string or a JSON file path; values left ``"auto"`` are an error at
    setup, except the scheduler's step counts (filled from ``set_training_steps``) and the bucket
    sizes derived from the model's hidden size. Through ``TrainingArguments(deepspeed=...)`` the
    factory fills the others from the arguments first (``deepspeed_options.py``).
    """

    configures_precision = True

    def __init__(
        self,
        config: Mapping[str, Any] | str,
        *,
        precision: Precision | None = None,
        checkpoint_io: CheckpointIO | None = None,
        **kwargs: Any,
    ) -> None:
        require("deepspeed", "DeepSpeedStrategy (TrainingArguments.deepspeed)")
        self.config = read_config(config, "DeepSpeedStrategy(config=...)")
        check_config(self.config)
        self.zero_stage = zero_stage(self.config)
        self.shards_parameters = self.zero_stage == 3
        self.builds_optimizer = "optimizer" in self.config
        self.builds_scheduler = "scheduler" in self.config
        expected = engine_precision(self.config)
        if precision is not None and precision.compute_dtype != expected.compute_dtype:
            raise ValueError(
                f"DeepSpeedStrategy: the config runs {expected.name} (fp16/bf16 blocks), but the precision passed is "
                f"{precision!r}: the engine owns the dtype, change the config"
            )
        super().__init__(precision=precision if precision is not None else expected, **kwargs)
        self.checkpoint_io = checkpoint_io if checkpoint_io is not None else DeepSpeedCheckpointIO()
        self.engine: Any = None
        self._training_steps: tuple[int, int] | None = None

    # --------------------------------------------------------------- components
    @property
    def checkpoint_io(self) -> CheckpointIO:
        assert self._checkpoint_io is not None
        return self._checkpoint_io

    @checkpoint_io.setter
    def checkpoint_io(self, io: CheckpointIO) -> None:
        if not io.collective:
            raise ValueError(
                f"DeepSpeedStrategy writes its engine's checkpoint from every rank: its checkpoint_io must be "
                f"collective (DeepSpeedCheckpointIO), got {type(io).__name__}"
            )
        self._checkpoint_io = io

    # -------------------------------------------------------------------- setup
    def setup_environment(self) -> None:
        """Start (or join) the process group; checkpoint files are named by this rank."""
        super().setup_environment()
        self.checkpoint_io.set_process(self.global_rank, self.world_size)

    def setup_module(self, model: nn.Module) -> nn.Module:
        """Cast to the engine's dtype and move to the device; the engine itself is built in ``setup_optimizers``."""
        if self.engine is not None and model is self.engine:
            return model
        return super().setup_module(model)

    def set_training_steps(self, num_training_steps: int, num_warmup_steps: int) -> None:
        """Fill the config scheduler's ``"auto"`` ``total_num_steps`` / ``warmup_num_steps``."""
        self._training_steps = (num_training_steps, num_warmup_steps)

    def setup_optimizers(
        self, model: nn.Module, optimizer: Optimizer | None, scheduler: Any
    ) -> tuple[nn.Module, Optimizer | None, Any]:
        """Build the engine around the module; return it, the optimizer it steps, and the scheduler (the
        config's, built here, or the one passed; None when the Trainer should create the registry's)."""
        if self.engine is not None and model is self.engine:
            return model, optimizer, scheduler
        self._check_given(optimizer, scheduler)
        import deepspeed

        module = self.unwrap_model(model)
        config = self.engine_config(module)
        engine_config = {key: value for key, value in config.items() if key != "scheduler"}
        params = None
        if optimizer is None:
            params = _param_groups(module, config_value(config, "optimizer.params.weight_decay"))
        else:
            engine_config.setdefault("zero_allow_untested_optimizer", True)
        engine, *_ = deepspeed.initialize(
            model=module, optimizer=optimizer, model_parameters=params, config=engine_config, dist_init_required=False
        )
        self.engine = engine
        basic = engine.basic_optimizer  # the torch optimizer inside ZeRO's wrapper: it holds the learning rates
        if self.builds_scheduler:
            scheduler = _scheduler_from_config(config["scheduler"], basic)
        return engine, basic, scheduler

    def _check_given(self, optimizer: Optimizer | None, scheduler: Any) -> None:
        if self.builds_optimizer and optimizer is not None:
            raise ValueError(
                f"The DeepSpeed config defines an optimizer ({self.config['optimizer']['type']!r}) and an optimizer "
                f"was passed too ({type(optimizer).__name__}): remove one of the two"
            )
        if not self.builds_optimizer and optimizer is None:
            raise ValueError("DeepSpeedStrategy needs an optimizer, or an 'optimizer' block in the DeepSpeed config")
        if self.builds_scheduler and scheduler is not None:
            raise ValueError(
                f"The DeepSpeed config defines a scheduler ({self.config['scheduler']['type']!r}) and a scheduler "
                f"was passed too ({type(scheduler).__name__}): remove one of the two"
            )

    def engine_config(self, module: nn.Module) -> dict[str, Any]:
        """The config given to ``deepspeed.initialize``: ``"auto"`` values filled, none left."""
        config = copy.deepcopy(self.config)
        if self._training_steps is not None:
            fill_auto(config, schedule_values(*self._training_steps))
        fill_auto(config, hidden_size_values(config, getattr(module, "config", None)))
        left = auto_keys(config)
        if left:
            raise ValueError(
                f"DeepSpeed config: {left} are still 'auto'. TrainingArguments(deepspeed=...) fills them from the "
                "arguments (and the Trainer fills the scheduler's steps); a DeepSpeedStrategy built by hand needs "
                "values (and set_training_steps() before setup_optimizers for the scheduler's)"
            )
        return config

    def unwrap_model(self, model: nn.Module) -> nn.Module:
        """The user's module inside the engine (and torch's wrappers)."""
        if self.engine is not None and model is self.engine:
            return super().unwrap_model(cast(nn.Module, self.engine.module))
        return super().unwrap_model(model)

    # --------------------------------------------------------------------- step
    def backward(self, loss: torch.Tensor, model: nn.Module) -> None:
        """``engine.backward`` without the engine's division by the accumulation steps (the loop normalised).

        A non-finite loss is multiplied by NaN (a finite one by exactly 1), so every gradient is NaN and
        the engine's overflow check skips the step: the loop's non-finite guard without a host sync.
        """
        engine = self._require_engine()
        finite = torch.isfinite(loss.detach())
        guard = torch.where(finite, torch.ones_like(loss), torch.full_like(loss, math.nan))
        engine.backward(loss * guard, scale_wrt_gas=False)

    def no_backward_sync(self, model: nn.Module, enabled: bool) -> contextlib.AbstractContextManager[Any]:
        """Mark the micro-batch as (not) ending the accumulation window: the engine reduces and steps on the last."""
        if self.engine is None:
            return NULL_CONTEXT
        return _boundary(self.engine, is_boundary=not enabled)

    def clip_gradients(self, model: nn.Module, optimizer: Optimizer, max_norm: float) -> torch.Tensor | None:
        """None: the engine clips inside its step (``gradient_clipping``); ``step_grad_norm`` gives the norm.

        ZeRO stage 0 in fp32 steps a plain torch optimizer that checks nothing: there the norm is
        measured (and clipped) here, so the loop's non-finite guard sees it before the step.
        """
        if self.precision.skips_nonfinite_gradients:
            return None
        return super().clip_gradients(model, optimizer, max_norm)

    def optimizer_step(self, optimizer: Optimizer, model: nn.Module | None = None) -> bool:
        """``engine.step()``; False when the engine skipped it (inf/NaN gradients, fp16 overflow)."""
        engine = self._require_engine()
        boundary = engine.is_gradient_accumulation_boundary()  # elsewhere step() only counts a micro-batch
        engine.step()
        applied = bool(engine.was_step_applied())
        if boundary and not applied:
            self.precision.skipped_steps += 1
        return applied

    def skip_optimizer_step(self, optimizer: Optimizer, model: nn.Module | None = None) -> bool:
        """Drop this window's gradients without an update (the loop found a non-finite loss)."""
        engine = self._require_engine()
        if not self.precision.skips_nonfinite_gradients:
            engine.zero_grad()  # stage 0, fp32: the gradients live on the parameters only
            self.precision.skipped_steps += 1
            return False
        engine.step()  # the gradients are NaN (see backward): the engine skips the step and clears them
        if engine.was_step_applied():
            raise RuntimeError("DeepSpeed applied a step whose loss was not finite; its overflow check missed it")
        self.precision.skipped_steps += 1
        return False

    def step_grad_norm(self) -> torch.Tensor | None:
        """The engine's global gradient norm of its last step (inf when it overflowed)."""
        norm = None if self.engine is None else self.engine.get_global_grad_norm()
        return None if norm is None else torch.as_tensor(norm, dtype=torch.float32)

    def zero_grad(self, optimizer: Optimizer, model: nn.Module | None = None) -> None:
        """Nothing: the engine clears its gradients in ``step()``."""

    # -------------------------------------------------------------------- state
    def model_state_dict(self, model: nn.Module) -> dict[str, Any]:
        """The full weights (ZeRO-3: gathered onto rank 0, ``{}`` on the others). Call it on every rank."""
        if self.engine is None or self.zero_stage < 3:
            return super().model_state_dict(model)
        state = self.engine._zero3_consolidated_16bit_state_dict()
        return dict(state) if state is not None else {}

    def load_model_state_dict(self, model: nn.Module, state: dict[str, Any], strict: bool = True) -> Any:
        """Load rank 0's full ``state`` into every rank's engine (other ranks may pass ``{}``), then refresh the
        optimizer's fp32 master weights from them. Call it on every rank."""
        if self.engine is None:
            return super().load_model_state_dict(model, state, strict)
        module = self.engine.module
        problem = describe_state_mismatch(full_shapes(module), state, strict) if self.is_global_zero else None
        problem = self.broadcast(problem)
        if problem is not None:
            raise RuntimeError(f"the state dict does not fit {type(module).__name__}: {problem}")
        if self.zero_stage == 3:
            load_partitioned(module, state, self.is_global_zero)
        else:
            load_replicated(module, state, self.is_global_zero, strict)
        refresh = getattr(self.engine.optimizer, "refresh_fp32_params", None)
        if callable(refresh):
            refresh()
        return None

    def optimizer_state_dict(self, optimizer: Optimizer) -> dict[str, Any]:
        raise NotImplementedError(_SHARDED_OPTIMIZER)

    def load_optimizer_state_dict(self, optimizer: Optimizer, state: dict[str, Any]) -> None:
        raise NotImplementedError(_SHARDED_OPTIMIZER)

    # -------------------------------------------------------------- checkpoints
    def checkpoint_parts(
        self, model: nn.Module, optimizer: Optimizer | None, include_optimizer: bool = True
    ) -> dict[str, Any]:
        """The engine itself (its checkpoint holds model, optimizer shards, loss scaler); with
        ``include_optimizer=False`` (``save_only_model``) the gathered full weights instead."""
        if not include_optimizer:
            return {PART_MODEL: self.model_state_dict(model)}
        return {PART_DEEPSPEED: self._require_engine()}

    def resume_parts(self) -> tuple[str, ...]:
        return (PART_DEEPSPEED,)

    def weights_parts(self) -> tuple[str, ...]:
        return (PART_DEEPSPEED, PART_MODEL)

    def restore_checkpoint_parts(
        self, model: nn.Module, optimizer: Optimizer | None, parts: dict[str, Any], source: str = ""
    ) -> None:
        """Resume the engine from its checkpoint (model, optimizer, loss scaler); with ``optimizer=None`` load
        the weights only, into the live engine."""
        saved = parts.get(PART_DEEPSPEED)
        if not isinstance(saved, SavedEngine):
            self.load_model_state_dict(model, parts[PART_MODEL])
            return
        engine = self._require_engine()
        weights_only = optimizer is None
        with safe_engine_loads(saved.folder):
            path, _ = engine.load_checkpoint(
                str(saved.folder),
                tag=saved.tag,
                load_optimizer_states=not weights_only,
                load_lr_scheduler_states=False,
                load_module_only=weights_only,
            )
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load its checkpoint {saved.tag!r} from {source or saved.folder}")

    # ------------------------------------------------------------------ helpers
    def _require_engine(self) -> Any:
        if self.engine is None:
            raise RuntimeError("DeepSpeedStrategy: the engine does not exist yet; call setup_optimizers first")
        return self.engine

    def teardown(self) -> None:
        """Release the engine (its hooks and buffers), then the process group when this strategy started it."""
        if self.engine is not None and dist.is_initialized():  # its hooks' clean-up talks to the group
            self.engine.destroy()
        self.engine = None
        super().teardown()

    def __repr__(self) -> str:
        return (
            f"DeepSpeedStrategy({self.environment.describe()}, zero_stage={self.zero_stage}, backend={self.backend!r}, "
            f"device={str(self.root_device)!r}, precision={self.precision!r})"
        )


_SHARDED_OPTIMIZER = (
    "DeepSpeed's optimizer state is partitioned inside its engine: it is saved and restored with the engine's "
    "checkpoint (checkpoint_parts / restore_checkpoint_parts, what Trainer checkpoints use)"
)


@contextlib.contextmanager
def _boundary(engine: Any, is_boundary: bool) -> Iterator[None]:
    engine.set_gradient_accumulation_boundary(is_boundary)
    yield


def _param_groups(module: nn.Module, weight_decay: Any) -> Any:
    """transformers' decay / no-decay groups when the config sets a weight decay, else the trainable parameters."""
    if weight_decay is None:
        return [p for p in module.parameters() if p.requires_grad]
    from trainkit.optim.param_groups import build_param_groups

    return build_param_groups(module, float(weight_decay))


def _scheduler_from_config(section: Mapping[str, Any], optimizer: Optimizer) -> Any:
    """The config's scheduler as DeepSpeed builds it: ``deepspeed.runtime.lr_schedules.<type>``, else torch's."""
    from deepspeed.runtime import lr_schedules

    name, params = section["type"], dict(section.get("params", {}))
    if name in lr_schedules.VALID_LR_SCHEDULES:
        factory = getattr(lr_schedules, name)
    else:
        factory = getattr(torch.optim.lr_scheduler, name, None)
    if not isinstance(factory, type):
        raise ValueError(
            f"DeepSpeed config: scheduler.type={name!r} is neither a DeepSpeed schedule "
            f"({', '.join(lr_schedules.VALID_LR_SCHEDULES)}) nor a torch.optim.lr_scheduler class"
        )
    return factory(optimizer, **params)
