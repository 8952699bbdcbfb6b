"""Result types and small helpers with transformers' names (``TrainOutput``, ``EvalPrediction``, ...)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, NamedTuple

__all__ = [
    "EvalLoopOutput",
    "EvalPrediction",
    "PredictionOutput",
    "TrainOutput",
    "has_length",
    "speed_metrics",
]


class TrainOutput(NamedTuple):
    global_step: int
    training_loss: float
    metrics: dict[str, float]


class PredictionOutput(NamedTuple):
    predictions: Any
    label_ids: Any
    metrics: dict[str, float] | None


class EvalLoopOutput(NamedTuple):
    predictions: Any
    label_ids: Any
    metrics: dict[str, float] | None
    num_samples: int | None


class EvalPrediction:
    """What ``compute_metrics`` receives: predictions, label_ids, and inputs/losses when asked for.

    It unpacks like a tuple, ``preds, labels = eval_pred``, as in transformers.
    """

    def __init__(self, predictions: Any, label_ids: Any, inputs: Any = None, losses: Any = None) -> None:
        self.predictions = predictions
        self.label_ids = label_ids
        self.inputs = inputs
        self.losses = losses
        self.elements = tuple(
            e
            for e, keep in (
                (predictions, True),
                (label_ids, True),
                (inputs, inputs is not None),
                (losses, losses is not None),
            )
            if keep
        )

    def __iter__(self) -> Iterator[Any]:
        return iter(self.elements)

    def __getitem__(self, idx: int) -> Any:
        if idx < 0 or idx >= len(self.elements):
            raise IndexError("EvalPrediction index out of range")
        return self.elements[idx]

    def __len__(self) -> int:
        return len(self.elements)


def has_length(obj: Any) -> bool:
    """Whether ``len(obj)`` works (an IterableDataset's DataLoader raises TypeError)."""
    try:
        return len(obj) is not None
    except (TypeError, NotImplementedError):
        return False


def speed_metrics(
    split: str,
    start_time: float,
    num_samples: int | None = None,
    num_steps: int | None = None,
    num_tokens: int | None = None,
) -> dict[str, float]:
    """``<split>_runtime`` and the per-second rates, rounded as transformers rounds them."""
    runtime = time.time() - start_time
    result = {f"{split}_runtime": round(runtime, 4)}
    if runtime == 0:
        return result
    if num_samples is not None:
        result[f"{split}_samples_per_second"] = round(num_samples / runtime, 3)
    if num_steps is not None:
        result[f"{split}_steps_per_second"] = round(num_steps / runtime, 3)
    if num_tokens is not None:
        result[f"{split}_tokens_per_second"] = round(num_tokens / runtime, 3)
    return result
