"""One call of ``Trainer.train``: prepare the model and optimizer, run the FitLoop, report metrics."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from trainkit.loops.fit import FitLoop
from trainkit.loops.model_features import activate_neftune, enable_gradient_checkpointing
from trainkit.loops.plan import TrainingPlan, plan_training, resume_position
from trainkit.state import TrainerState
from trainkit.trainer_utils import TrainOutput, has_length, speed_metrics
from trainkit.utils.logging import get_logger

if TYPE_CHECKING:
    from trainkit.trainer import Trainer

__all__ = ["prepare_model_and_optimizer", "run_training"]

logger = get_logger(__name__)


def prepare_model_and_optimizer(trainer: Trainer, num_training_steps: int) -> None:
    """Checkpointing, NEFTune, the strategy's wrapping, optimizer, scheduler and torch.compile, once each."""
    args, strategy = trainer.args, trainer.strategy
    if args.gradient_checkpointing:
        enable_gradient_checkpointing(trainer.model, args.gradient_checkpointing_kwargs)
    if args.neftune_noise_alpha is not None and trainer._neftune_hook is None:
        trainer._neftune_hook = activate_neftune(trainer.model, args.neftune_noise_alpha)
    trainer._prepare_model()
    trainer._model_facts  # noqa: B018 (parameters counted before a strategy may partition them: ZeRO-3)
    trainer.create_optimizer_and_scheduler(num_training_steps=num_training_steps)
    wrapped, optimizer, scheduler = strategy.setup_optimizers(
        trainer.model_wrapped, trainer.optimizer, trainer.lr_scheduler
    )
    trainer.model_wrapped, trainer.optimizer, trainer.lr_scheduler = wrapped, optimizer, scheduler
    if scheduler is None:  # the strategy built the optimizer (builds_optimizer), the registry the schedule
        trainer.create_scheduler(num_training_steps=num_training_steps, optimizer=optimizer)
    if args.torch_compile and not trainer._compiled:
        compiled = torch.compile(
            trainer.model_wrapped, backend=args.torch_compile_backend, mode=args.torch_compile_mode
        )
        trainer.model_wrapped = cast(nn.Module, compiled)
        trainer._compiled = True
        logger.info(
            "Model compiled with torch.compile(backend=%r, mode=%r)",
            args.torch_compile_backend,
            args.torch_compile_mode,
        )
    handler = trainer.callback_handler
    handler.model, handler.optimizer, handler.lr_scheduler = trainer.model, trainer.optimizer, trainer.lr_scheduler


def _fresh_state(trainer: Trainer, plan: TrainingPlan) -> TrainerState:
    args = trainer.args
    state = TrainerState(
        is_local_process_zero=trainer.is_local_process_zero(),
        is_world_process_zero=trainer.is_world_process_zero(),
        stateful_callbacks=trainer.state.stateful_callbacks,
    )
    state.max_steps = plan.max_steps
    state.num_train_epochs = plan.num_epochs
    state.train_batch_size = args.per_device_train_batch_size
    state.compute_steps(args, plan.max_steps)
    return state


def run_training(trainer: Trainer, resume_from_checkpoint: str | None) -> TrainOutput:
    """Train from scratch or from ``resume_from_checkpoint`` (a checkpoint folder) to the planned end."""
    args, strategy = trainer.args, trainer.strategy
    trainer._memory_tracker.start("train")
    start_time = time.time()
    dataloader = trainer.get_train_dataloader()
    batches = len(dataloader) if has_length(dataloader) else None
    plan = plan_training(batches, args.gradient_accumulation_steps, args.num_train_epochs, args.max_steps)
    trainer.state = _fresh_state(trainer, plan)
    prepare_model_and_optimizer(trainer, plan.max_steps)
    on_first_step = None
    if resume_from_checkpoint is not None:
        on_first_step = trainer._restore_from_checkpoint(resume_from_checkpoint, plan)
    start_step = trainer.state.global_step
    epochs_done, batches_done = resume_position(start_step, plan, args.gradient_accumulation_steps)
    if args.ignore_data_skip:
        batches_done = 0
    trainer.callback_handler.train_dataloader = dataloader
    trainer._tokens_seen_this_run = 0
    trainer._samples_local = 0
    logger.info(
        "Training: %s optimizer steps, %s epochs, batch size %d x %d accumulation x %d processes",
        plan.max_steps,
        plan.num_epochs,
        args.per_device_train_batch_size,
        args.gradient_accumulation_steps,
        strategy.world_size,
    )
    loop = FitLoop(trainer, plan, strategy.process_dataloader(dataloader))
    loop.run(epochs_done, batches_done, on_first_step=on_first_step)
    train_loss = loop.mean_loss()
    metrics = _train_metrics(trainer, start_time, trainer.state.global_step - start_step, train_loss)
    trainer._after_training()
    trainer._memory_tracker.stop_and_update_metrics(metrics)
    trainer.log(metrics)
    trainer.control = trainer.callback_handler.on_train_end(args, trainer.state, trainer.control)
    trainer._remove_neftune()
    return TrainOutput(trainer.state.global_step, train_loss, metrics)


def _train_metrics(trainer: Trainer, start_time: float, steps: int, train_loss: float) -> dict[str, Any]:
    args, strategy = trainer.args, trainer.strategy
    local = torch.tensor(trainer._samples_local, device=strategy.root_device, dtype=torch.int64)
    samples = int(strategy.all_reduce(local, op="sum"))
    tokens = None
    if args.include_tokens_per_second:
        tokens = trainer._sync_input_tokens_seen(this_run=True)
    metrics: dict[str, Any] = speed_metrics(
        "train", start_time, num_samples=samples, num_steps=steps, num_tokens=tokens
    )
    trainer._sync_flos()
    metrics["total_flos"] = trainer.state.total_flos
    metrics["train_loss"] = train_loss
    return metrics
