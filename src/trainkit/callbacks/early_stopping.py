"""``EarlyStoppingCallback``: stop when the tracked metric stops improving (transformers semantics)."""

from __future__ import annotations

import operator
from typing import Any

from trainkit.callbacks.base import TrainerCallback
from trainkit.state import TrainerControl, TrainerState
from trainkit.utils.logging import get_logger

__all__ = ["EarlyStoppingCallback"]

logger = get_logger(__name__)


def metric_key(name: str) -> str:
    """``metric_for_best_model`` with the ``eval_`` prefix transformers adds when it is missing."""
    return name if name.startswith("eval_") else f"eval_{name}"


class EarlyStoppingCallback(TrainerCallback):
    """Stop training after ``early_stopping_patience`` evaluations without an improvement.

    An improvement beats the best metric so far by more than ``early_stopping_threshold``.
    Needs ``metric_for_best_model`` and an evaluation strategy.
    """

    def __init__(self, early_stopping_patience: int = 1, early_stopping_threshold: float = 0.0) -> None:
        if early_stopping_patience < 1:
            raise ValueError(f"early_stopping_patience must be >= 1, got {early_stopping_patience}")
        if early_stopping_threshold < 0:
            raise ValueError(f"early_stopping_threshold must be >= 0, got {early_stopping_threshold}")
        self.early_stopping_patience = early_stopping_patience
        self.early_stopping_threshold = early_stopping_threshold
        self.early_stopping_patience_counter = 0

    def on_train_begin(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> Any:
        if args.metric_for_best_model is None:
            raise ValueError("EarlyStoppingCallback needs TrainingArguments.metric_for_best_model to be set")
        if str(args.eval_strategy) == "no":
            raise ValueError("EarlyStoppingCallback needs an eval_strategy other than 'no'")
        if not args.load_best_model_at_end:
            logger.warning(
                "EarlyStoppingCallback without load_best_model_at_end=True: the best model will not be loaded "
                "at the end of training."
            )

    def on_evaluate(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> Any:
        metrics = kwargs.get("metrics") or {}
        key = metric_key(args.metric_for_best_model)
        value = metrics.get(key)
        if value is None:
            logger.warning("Early stopping needs the metric %r, which the evaluation did not return.", key)
            return
        better = operator.gt if args.greater_is_better else operator.lt
        best = state.best_metric
        if best is None or (better(value, best) and abs(value - best) > self.early_stopping_threshold):
            self.early_stopping_patience_counter = 0
        else:
            self.early_stopping_patience_counter += 1
        if self.early_stopping_patience_counter >= self.early_stopping_patience:
            control.should_training_stop = True

    def state(self) -> dict[str, Any]:
        return {
            "args": {
                "early_stopping_patience": self.early_stopping_patience,
                "early_stopping_threshold": self.early_stopping_threshold,
            },
            "attributes": {"early_stopping_patience_counter": self.early_stopping_patience_counter},
        }
