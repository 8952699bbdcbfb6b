"""The Trainer's checkpoints: what goes into one, resuming from one, the best model, ``save_model``.

Policy (naming, rotation, best tracking, resume discovery) is the CheckpointManager's; the
format and atomicity are the Strategy's CheckpointIO's. This mixin only assembles the parts
(model, optimizer, scheduler, scaler, RNG, TrainerState, arguments) and restores them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from trainkit.checkpoint.layout import (
    PART_RNG,
    PART_SCALER,
    PART_SCHEDULER,
    PART_TRAINER_STATE,
    PART_TRAINING_ARGS,
)
from trainkit.checkpoint.manager import CheckpointManager
from trainkit.checkpoint.rng import capture_rng_state, restore_rng_state
from trainkit.checkpoint.weights import save_weights_file
from trainkit.state import ExportableState, TrainerState
from trainkit.utils.logging import get_logger

__all__ = ["CheckpointingMixin"]

logger = get_logger(__name__)


class CheckpointingMixin:
    """Checkpoint saving and resuming for ``Trainer``."""

    args: Any
    state: TrainerState
    control: Any
    strategy: Any
    model: nn.Module
    model_wrapped: nn.Module
    optimizer: Any
    lr_scheduler: Any
    processing_class: Any
    callback_handler: Any
    _checkpoints: CheckpointManager | None

    def is_world_process_zero(self) -> bool:
        raise NotImplementedError

    @property
    def checkpoint_manager(self) -> CheckpointManager:
        """The manager of ``output_dir``'s checkpoints (built on first use, with the strategy's IO)."""
        if self._checkpoints is None:
            self._checkpoints = CheckpointManager.from_args(self.args, self.strategy.checkpoint_io)
            self._checkpoints.global_rank = self.strategy.global_rank
            self._checkpoints.local_rank = self.strategy.local_rank
        return self._checkpoints

    # -------------------------------------------------------------------- best
    def _record_best_metric(self, metrics: dict[str, float] | None) -> bool:
        """Track ``metric_for_best_model``; True when ``metrics`` hold a new best (``save_strategy="best"``)."""
        if not metrics or self.args.metric_for_best_model is None:
            return False
        manager = self.checkpoint_manager
        if not manager.record_metric(self.state.global_step, manager.metric_value(metrics)):
            return False
        self.state.best_metric = manager.best_metric
        self.state.best_global_step = self.state.global_step
        return True

    # -------------------------------------------------------------------- save
    def _save_checkpoint(self, metrics: dict[str, float] | None = None) -> None:
        """Write ``checkpoint-<global_step>`` (every rank gathers; the writing ranks write)."""
        manager = self.checkpoint_manager
        step = self.state.global_step
        if self.state.best_global_step == step:
            self.state.best_model_checkpoint = str(manager.checkpoint_path(step))
        manager.save(step, self._checkpoint_parts())
        if manager.best_checkpoint is not None:
            self.state.best_model_checkpoint = str(manager.best_checkpoint)

    def _checkpoint_parts(self) -> dict[str, Any]:
        self._sync_counters()
        self.state.stateful_callbacks = self._callback_states()
        full = not self.args.save_only_model
        parts: dict[str, Any] = {
            **self.strategy.checkpoint_parts(self.model_wrapped, self.optimizer, include_optimizer=full),
            PART_TRAINER_STATE: self.state.to_dict(),
            PART_TRAINING_ARGS: self.args.to_dict(),
        }
        if full:
            parts[PART_SCHEDULER] = self.lr_scheduler.state_dict()
            parts[PART_RNG] = {**capture_rng_state(), **self.strategy.rng_state()}
            scaler = self.strategy.precision.state_dict()
            if scaler:
                parts[PART_SCALER] = scaler
        return parts

    def _sync_counters(self) -> None:
        """Fold per-rank counters into the state before it is written (tokens seen, FLOPs)."""

    def _callback_states(self) -> dict[str, Any]:
        states: dict[str, Any] = {}
        for callback in [*self.callback_handler.callbacks, self.control]:
            if isinstance(callback, ExportableState) and not isinstance(callback, type):
                states.setdefault(type(callback).__name__, callback.state())
        return states

    # ------------------------------------------------------------------ resume
    def _resolve_resume(self, resume_from_checkpoint: str | bool | None) -> str | None:
        """The checkpoint folder to resume from (``True``: the newest complete one), or None."""
        if resume_from_checkpoint in (None, False) and str(self.args.save_strategy) == "no":
            return None
        path = self.checkpoint_manager.resolve_resume(resume_from_checkpoint)
        return None if path is None else str(path)

    def _restore_from_checkpoint(self, path: str, plan: Any) -> Callable[[], None]:
        """Restore model, optimizer, scheduler, scaler and state; return the RNG restore for the first step."""
        parts = self.checkpoint_manager.resume(path, required=self.strategy.resume_parts())
        self.strategy.restore_checkpoint_parts(self.model_wrapped, self.optimizer, parts, source=path)
        if PART_SCHEDULER in parts:
            self.lr_scheduler.load_state_dict(parts[PART_SCHEDULER])
        self.strategy.precision.load_state_dict(parts.get(PART_SCALER, {}))
        self._restore_state(TrainerState.from_dict(parts[PART_TRAINER_STATE]))
        logger.info("Resumed from %s at step %d", path, self.state.global_step)
        rng = parts.get(PART_RNG)
        return (lambda: self._restore_rng(rng)) if rng is not None else (lambda: None)

    def _restore_rng(self, state: dict[str, Any]) -> None:
        restore_rng_state(state)
        self.strategy.load_rng_state(state)

    def _restore_state(self, saved: TrainerState) -> None:
        """Take the saved progress; keep this run's plan (max_steps and intervals come from the arguments)."""
        current = self.state
        for name in (
            "max_steps",
            "num_train_epochs",
            "train_batch_size",
            "logging_steps",
            "eval_steps",
            "save_steps",
            "is_local_process_zero",
            "is_world_process_zero",
        ):
            setattr(saved, name, getattr(current, name))
        self.state = saved
        if self.args.restore_callback_states_from_checkpoint:
            self._restore_callback_states(saved.stateful_callbacks)

    def _restore_callback_states(self, states: dict[str, Any]) -> None:
        for callback in [*self.callback_handler.callbacks, self.control]:
            saved = states.get(type(callback).__name__)
            if saved is None or not isinstance(callback, ExportableState):
                continue
            for name, value in {**saved.get("args", {}), **saved.get("attributes", {})}.items():
                setattr(callback, name, value)

    def _load_best_weights(self, manager: CheckpointManager) -> None:
        """The best checkpoint's weights into the live model (a strategy's engine is not rebuilt)."""
        best = str(manager.best_checkpoint)
        preferred = self.strategy.weights_parts()
        held = manager.parts_of(best)
        part = next((name for name in preferred if name in held), preferred[0])
        self.strategy.restore_checkpoint_parts(self.model_wrapped, None, manager.load_best(parts=[part]), source=best)

    # --------------------------------------------------------------- the end
    def _after_training(self) -> None:
        """``load_best_model_at_end``, then transformers' ``save_total_limit=1`` clean-up."""
        if self._checkpoints is None:
            return
        manager = self._checkpoints
        if self.args.load_best_model_at_end and manager.best_checkpoint is not None:
            logger.info(
                "Loading the best model from %s (%s=%s)",
                manager.best_checkpoint,
                self.args.metric_for_best_model,
                manager.best_metric,
            )
            self._load_best_weights(manager)
        manager.finalize()

    def _is_saving_process(self) -> bool:
        """The world's main process, or each node's with ``save_on_each_node`` (transformers' ``should_save``)."""
        return self.strategy.is_local_zero if self.args.save_on_each_node else self.strategy.is_global_zero

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Write the full weights as ``model.safetensors`` (gathered from every rank), with the model's
        config, the processing class and ``training_args.json``."""
        folder = Path(output_dir or self.args.output_dir)
        state_dict = self.strategy.model_state_dict(self.model_wrapped)  # a collective on sharded strategies
        if self._is_saving_process():
            folder.mkdir(parents=True, exist_ok=True)
            save_weights_file(state_dict, folder, safe_serialization=self.args.save_safetensors is not False)
            model = self.strategy.unwrap_model(self.model_wrapped)
            config = getattr(model, "config", None)
            if config is not None and hasattr(config, "save_pretrained"):
                config.save_pretrained(str(folder))
            if self.processing_class is not None and hasattr(self.processing_class, "save_pretrained"):
                self.processing_class.save_pretrained(str(folder))
            with open(folder / "training_args.json", "w", encoding="utf-8") as fh:
                json.dump(self.args.to_dict(), fh, indent=2)
                fh.write("\n")
        self.strategy.barrier("save_model")

    def _output_dir(self) -> str:
        return os.fspath(self.args.output_dir)
