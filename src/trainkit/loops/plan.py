"""How long training runs: steps per epoch, total optimizer steps, epochs (transformers' arithmetic)."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

__all__ = ["TrainingPlan", "plan_training", "resume_position"]


@dataclass(frozen=True)
class TrainingPlan:
    batches_per_epoch: int | None  # micro-batches per epoch on this rank; None for an IterableDataset
    updates_per_epoch: int | None  # optimizer steps per epoch
    max_steps: int
    num_epochs: int  # epochs the loop enters (the last may stop part-way)


def plan_training(
    batches_per_epoch: int | None, accumulation: int, num_train_epochs: float, max_steps: int
) -> TrainingPlan:
    """transformers' rules: ``max_steps > 0`` wins and cycles the data; else ceil(epochs * updates/epoch)."""
    if batches_per_epoch is None:
        if max_steps <= 0:
            raise ValueError(
                "The training dataset has no length (an IterableDataset), so the number of steps is unknown: "
                "set TrainingArguments.max_steps."
            )
        return TrainingPlan(None, None, max_steps, sys.maxsize)
    if batches_per_epoch == 0:
        raise ValueError("The training DataLoader is empty: the dataset has fewer examples than one batch?")
    updates = max(math.ceil(batches_per_epoch / accumulation), 1)
    if max_steps > 0:
        return TrainingPlan(batches_per_epoch, updates, max_steps, math.ceil(max_steps / updates))
    total = math.ceil(num_train_epochs * updates)
    if total <= 0:
        raise ValueError(
            f"num_train_epochs={num_train_epochs} gives no optimizer step ({updates} steps per epoch): "
            "raise num_train_epochs or set max_steps."
        )
    return TrainingPlan(batches_per_epoch, updates, total, math.ceil(num_train_epochs))


def resume_position(global_step: int, plan: TrainingPlan, accumulation: int) -> tuple[int, int]:
    """(epochs fully done, micro-batches of the current epoch already consumed) after ``global_step``."""
    if plan.updates_per_epoch is None:
        return 0, global_step * accumulation
    epochs_done = global_step // plan.updates_per_epoch
    steps_in_epoch = global_step % plan.updates_per_epoch
    return epochs_done, steps_in_epoch * accumulation
