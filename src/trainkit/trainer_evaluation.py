"""The Trainer's evaluation API with transformers' names: ``evaluate``, ``predict``, ``prediction_step``, ..."""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from trainkit.data.loaders import build_eval_dataloader
from trainkit.loops.evaluate import EvaluationLoop
from trainkit.loops.nested import nested_detach
from trainkit.trainer_utils import EvalLoopOutput, PredictionOutput, speed_metrics

__all__ = ["EvaluationMixin", "metric_key"]


def metric_key(name: str, prefix: str = "eval") -> str:
    """``metric_for_best_model`` with the ``eval_`` prefix transformers adds when it is missing."""
    return name if name.startswith(f"{prefix}_") else f"{prefix}_{name}"


class EvaluationMixin:
    """``evaluate`` / ``predict`` over the shared EvaluationLoop; mixed into ``Trainer``."""

    args: Any
    state: Any
    control: Any
    strategy: Any
    model: nn.Module
    model_wrapped: nn.Module
    eval_dataset: Any
    label_names: list[str]
    callback_handler: Any
    compute_metrics: Any
    lr_scheduler: Any
    _memory_tracker: Any
    _past: Any

    def _collator(self, dataset: Any, description: str) -> Any:
        raise NotImplementedError

    def _prepare_model(self) -> None:
        raise NotImplementedError

    def compute_loss(
        self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        raise NotImplementedError

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ loaders
    def get_eval_dataloader(self, eval_dataset: Any = None) -> DataLoader[Any]:
        if isinstance(eval_dataset, str):
            eval_dataset = self.eval_dataset[eval_dataset]
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            raise ValueError("Trainer.evaluate() needs an eval_dataset: pass one to the Trainer or to evaluate().")
        return self._eval_loader(dataset, "evaluation")

    def get_test_dataloader(self, test_dataset: Any) -> DataLoader[Any]:
        return self._eval_loader(test_dataset, "test")

    def _eval_loader(self, dataset: Any, description: str) -> DataLoader[Any]:
        return build_eval_dataloader(
            dataset,
            self.args,
            self._collator(dataset, description),
            self.strategy.root_device,
            self.strategy.distributed_sampler_kwargs,
        )

    # ------------------------------------------------------------------ public
    def evaluate(
        self, eval_dataset: Any = None, ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        """Evaluate on ``eval_dataset`` (a dict of datasets evaluates each, named in the metric keys)."""
        datasets = eval_dataset if eval_dataset is not None else self.eval_dataset
        if isinstance(datasets, dict):
            metrics: dict[str, float] = {}
            for name, dataset in datasets.items():
                metrics.update(self.evaluate(dataset, ignore_keys, f"{metric_key_prefix}_{name}"))
            return metrics
        self._memory_tracker.start("eval")
        dataloader = self.get_eval_dataloader(datasets)
        start = time.time()
        output = self.evaluation_loop(
            dataloader,
            description="Evaluation",
            prediction_loss_only=True if self.compute_metrics is None else None,
            ignore_keys=ignore_keys,
            metric_key_prefix=metric_key_prefix,
        )
        metrics = dict(output.metrics or {})
        metrics.update(self._speed(metric_key_prefix, start, output.num_samples))
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics=metrics)
        self._memory_tracker.stop_and_update_metrics(metrics, "eval")
        return metrics

    def predict(
        self, test_dataset: Any, ignore_keys: list[str] | None = None, metric_key_prefix: str = "test"
    ) -> PredictionOutput:
        """Predictions (padded with -100 across batches), labels and metrics on ``test_dataset``."""
        self._memory_tracker.start("test")
        dataloader = self.get_test_dataloader(test_dataset)
        start = time.time()
        output = self.evaluation_loop(
            dataloader, description="Prediction", ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix
        )
        metrics = dict(output.metrics or {})
        metrics.update(self._speed(metric_key_prefix, start, output.num_samples))
        self.control = self.callback_handler.on_predict(self.args, self.state, self.control, metrics=metrics)
        self._memory_tracker.stop_and_update_metrics(metrics, "test")
        return PredictionOutput(predictions=output.predictions, label_ids=output.label_ids, metrics=metrics)

    def _speed(self, prefix: str, start: float, num_samples: int | None) -> dict[str, float]:
        batch = self.args.per_device_eval_batch_size * self.strategy.world_size
        steps = math.ceil((num_samples or 0) / batch)
        return speed_metrics(prefix, start, num_samples=num_samples, num_steps=steps)

    def evaluation_loop(
        self,
        dataloader: DataLoader[Any],
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> EvalLoopOutput:
        """The loop shared by ``evaluate`` and ``predict`` (override to change how batches are run)."""
        self._prepare_model()
        return EvaluationLoop(self).run(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)  # type: ignore[arg-type]

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor | None, Any, Any]:
        """(loss, logits, labels) of one batch, without gradients."""
        has_labels = bool(self.label_names) and all(inputs.get(k) is not None for k in self.label_names)
        inputs = self.strategy.batch_to_device(inputs)
        if ignore_keys is None:
            config = getattr(self.strategy.unwrap_model(model), "config", None)
            ignore_keys = list(getattr(config, "keys_to_ignore_at_inference", []) or [])
        labels = None
        if has_labels:
            labels = nested_detach(tuple(inputs.get(name) for name in self.label_names))
            labels = labels[0] if len(labels) == 1 else labels
        with torch.no_grad():
            if has_labels:
                loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
                loss = loss.detach().mean()
                skip = [*ignore_keys, "loss"]
                logits = _without(outputs, skip, drop_first=True)
            else:
                loss = None
                outputs = model(**inputs)
                logits = _without(outputs, ignore_keys, drop_first=False)
                if self.args.past_index >= 0:
                    self._past = outputs[self.args.past_index - 1]
        if prediction_loss_only:
            return loss, None, None
        logits = nested_detach(logits)
        if isinstance(logits, tuple) and len(logits) <= 1:
            logits = logits[0] if logits else None
        return loss, logits, labels

    # ------------------------------------------------------- during training
    def _evaluate_during_training(self, skip_scheduler: bool = False) -> dict[str, float] | None:
        """Evaluate at an interval of the fit loop; step a plateau schedule with the tracked metric."""
        metrics = self.evaluate(ignore_keys=getattr(self, "_ignore_keys_for_eval", None))
        if not skip_scheduler and isinstance(self.lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            key = metric_key(self.args.metric_for_best_model)
            if key not in metrics:
                raise KeyError(
                    f"metric_for_best_model={self.args.metric_for_best_model!r}: the evaluation returned no {key!r} "
                    f"(it returned {sorted(metrics)}); reduce_lr_on_plateau needs it."
                )
            self.lr_scheduler.step(metrics[key])
        return metrics


def _without(outputs: Any, skip: list[str], drop_first: bool) -> Any:
    """Model outputs as a tuple of predictions: dict values not in ``skip``, or the tuple minus its loss."""
    if isinstance(outputs, dict):
        return tuple(v for k, v in outputs.items() if k not in skip)
    if isinstance(outputs, (tuple, list)):
        return tuple(outputs[1:] if drop_first else outputs)
    return (outputs,)
