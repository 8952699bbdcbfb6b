"""``compute_metrics`` in its three forms: a function of the whole set, a per-batch function
(``batch_eval_metrics``), or a torchmetrics ``Metric`` / ``MetricCollection`` updated on the device.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch

from trainkit.trainer_utils import EvalPrediction

__all__ = ["MetricsAdapter", "plain_metrics"]


def plain_metrics(metrics: Any) -> dict[str, Any]:
    """Metric values as python numbers (numpy scalars and 0-d tensors unwrapped)."""
    if not isinstance(metrics, dict):
        raise TypeError(f"compute_metrics must return a dict of metric names to values, got {type(metrics).__name__}")
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor):
            value = value.item() if value.numel() == 1 else value.tolist()
        elif isinstance(value, np.generic):
            value = value.item()
        elif isinstance(value, np.ndarray):
            value = value.item() if value.size == 1 else value.tolist()
        out[str(key)] = value
    return out


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _is_torchmetrics(fn: Any) -> bool:
    if not (hasattr(fn, "update") and hasattr(fn, "compute") and hasattr(fn, "reset")):
        return False
    import torchmetrics

    return isinstance(fn, (torchmetrics.Metric, torchmetrics.MetricCollection))


class MetricsAdapter:
    """One interface over the forms of ``compute_metrics``; errors name the dataset and the step."""

    def __init__(self, fn: Any, args: Any, device: torch.device, prefix: str) -> None:
        self.fn = fn
        self.prefix = prefix
        self.include = set(args.include_for_metrics)
        self.enabled = fn is not None
        self.torchmetrics = self.enabled and _is_torchmetrics(fn)
        self.streaming = self.torchmetrics or (self.enabled and bool(args.batch_eval_metrics))
        self._last: dict[str, Any] = {}
        self._batch = 0
        if self.torchmetrics:
            fn.to(device)
            fn.reset()

    def _prediction(self, preds: Any, labels: Any, inputs: Any, losses: Any) -> EvalPrediction:
        return EvalPrediction(
            preds,
            labels,
            inputs=inputs if "inputs" in self.include else None,
            losses=losses if "loss" in self.include else None,
        )

    def _failure(self, where: str, step: int, err: Exception) -> RuntimeError:
        return RuntimeError(
            f"compute_metrics raised during {where} of the dataset with metric prefix {self.prefix!r} "
            f"(global step {step}): {type(err).__name__}: {err}"
        )

    def update(self, logits: Any, labels: Any, inputs: Any, loss: Any, last: bool, step: int) -> None:
        """Feed one batch (torchmetrics: ``update`` on the device; else ``fn(..., compute_result=last)``)."""
        self._batch += 1
        try:
            if self.torchmetrics:
                self.fn.update(logits, labels)
            else:
                losses = loss.reshape(1) if isinstance(loss, torch.Tensor) and loss.ndim == 0 else loss
                result = self.fn(self._prediction(logits, labels, inputs, losses), compute_result=last)
                if last:
                    self._last = plain_metrics(result)
        except Exception as err:
            raise self._failure(f"evaluation batch {self._batch}", step, err) from err

    def result(self, description: str, step: int) -> dict[str, Any]:
        """The streamed metrics of the whole set (torchmetrics: computed and synchronised once)."""
        if not self.torchmetrics:
            return self._last
        try:
            value = self.fn.compute()
        except Exception as err:
            raise self._failure(f"{description} (compute)", step, err) from err
        finally:
            self.fn.reset()
        if isinstance(value, dict):
            return plain_metrics(value)
        return plain_metrics({_snake(type(self.fn).__name__): value})

    def compute(self, preds: Any, labels: Any, inputs: Any, losses: Any, description: str, step: int) -> dict[str, Any]:
        """``compute_metrics(EvalPrediction)`` over the whole set."""
        try:
            return plain_metrics(self.fn(self._prediction(preds, labels, inputs, losses)))
        except Exception as err:
            raise self._failure(description, step, err) from err
