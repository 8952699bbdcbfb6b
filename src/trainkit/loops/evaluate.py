"""``EvaluationLoop``: the one loop behind ``evaluate`` and ``predict``, with bounded memory.

Under ``torch.no_grad`` and the precision's eval context (full fp16/bf16 evaluation), each batch
goes through the Trainer's ``prediction_step``. What is kept depends on what is needed:
nothing but the loss with ``prediction_loss_only`` or streaming metrics (``batch_eval_metrics``
or a torchmetrics object); else predictions and labels moved to the host every
``eval_accumulation_steps`` batches (every batch by default) and concatenated there, padded
with -100 where lengths differ. The loss is the mean over label tokens (over examples when
there are no labels), summed across ranks.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from trainkit.loops.metrics import MetricsAdapter
from trainkit.loops.nested import PAD_INDEX, nested_concat, nested_numpify, nested_truncate
from trainkit.loops.step import batch_size_of, count_label_tokens
from trainkit.trainer_utils import EvalLoopOutput, has_length

if TYPE_CHECKING:
    from trainkit.trainer import Trainer

__all__ = ["EvaluationLoop", "HostBuffer", "with_last"]


def with_last(iterable: Iterable[Any]) -> Iterator[tuple[Any, bool]]:
    """Yield (item, is_last) with one item of look-ahead (works without a length)."""
    iterator = iter(iterable)
    sentinel = object()
    current = next(iterator, sentinel)
    while current is not sentinel:
        following = next(iterator, sentinel)
        yield current, following is sentinel
        current = following


class HostBuffer:
    """Batches gathered on the device, moved to the host every ``every`` batches and concatenated there."""

    def __init__(self, every: int, concat: bool) -> None:
        self.every = every
        self.concat = concat
        self.device_part: Any = None
        self.pending = 0
        self.host: Any = None if concat else []

    def add(self, value: Any) -> None:
        if value is None:
            return
        if not self.concat:
            self.host.append(nested_numpify(value))
            return
        self.device_part = nested_concat(self.device_part, value, PAD_INDEX)
        self.pending += 1
        if self.pending >= self.every:
            self.flush()

    def flush(self) -> None:
        if self.device_part is not None:
            self.host = nested_concat(self.host, nested_numpify(self.device_part), PAD_INDEX)
            self.device_part, self.pending = None, 0

    def result(self, num_samples: int | None) -> Any:
        self.flush()
        if self.concat and self.host is not None and num_samples is not None:
            return nested_truncate(self.host, num_samples)
        return self.host or None


@dataclass
class _Accumulators:
    every: int
    concat: bool
    preds: HostBuffer = field(init=False)
    labels: HostBuffer = field(init=False)
    inputs: HostBuffer = field(init=False)
    losses: HostBuffer = field(init=False)
    loss_sum: Any = 0.0
    loss_weight: int = 0
    observed: int = 0

    def __post_init__(self) -> None:
        self.preds, self.labels, self.inputs, self.losses = (HostBuffer(self.every, self.concat) for _ in range(4))


class EvaluationLoop:
    """Runs ``prediction_step`` over a DataLoader and builds an ``EvalLoopOutput``."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.strategy = trainer.strategy

    def run(
        self,
        dataloader: Iterable[Any],
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> EvalLoopOutput:
        t, args = self.trainer, self.trainer.args
        loss_only = args.prediction_loss_only if prediction_loss_only is None else prediction_loss_only
        adapter = MetricsAdapter(t.compute_metrics, args, self.strategy.root_device, metric_key_prefix)
        acc = _Accumulators(args.eval_accumulation_steps or 1, args.eval_do_concat_batches)
        model = t.model_wrapped
        was_training = model.training
        model.eval()
        t.callback_handler.eval_dataloader = dataloader
        try:
            with torch.no_grad(), self.strategy.eval_context(model):
                for inputs, last in with_last(self.strategy.process_dataloader(dataloader)):
                    self._step(model, inputs, last, loss_only, ignore_keys, adapter, acc)
                    t.control = t.callback_handler.on_prediction_step(args, t.state, t.control)
        finally:
            model.train(was_training)
        num_samples = self._num_samples(dataloader, acc.observed)
        preds, labels = acc.preds.result(num_samples), acc.labels.result(num_samples)
        metrics: dict[str, Any] = {}
        if adapter.enabled and not loss_only:
            metrics = self._metrics(adapter, acc, preds, labels, num_samples, description)
        if acc.loss_weight:
            metrics["loss"] = float(self.strategy.all_reduce(torch.as_tensor(acc.loss_sum), op="sum")) / float(
                self.strategy.all_reduce(torch.tensor(acc.loss_weight, dtype=torch.float64), op="sum")
            )
        prefix = f"{metric_key_prefix}_"
        metrics = {k if k.startswith(prefix) else prefix + k: v for k, v in metrics.items()}
        return EvalLoopOutput(preds, labels, metrics, num_samples)

    def _step(
        self,
        model: torch.nn.Module,
        inputs: Any,
        last: bool,
        loss_only: bool,
        ignore_keys: list[str] | None,
        adapter: MetricsAdapter,
        acc: _Accumulators,
    ) -> None:
        t = self.trainer
        size = batch_size_of(inputs)
        tokens = count_label_tokens(inputs, t.label_names)
        main_inputs = self._main_inputs(inputs)
        loss, logits, labels = t.prediction_step(model, inputs, loss_only, ignore_keys=ignore_keys)
        self.strategy.mark_step()  # a lazy backend (XLA) runs the batch once, before anything is read
        acc.observed += size
        if loss is not None:
            weight = tokens if tokens else size
            acc.loss_sum = acc.loss_sum + loss.detach().double() * weight
            acc.loss_weight += weight
            if "loss" in t.args.include_for_metrics and not adapter.streaming:
                acc.losses.add(loss.detach().reshape(1).repeat(size))
        if loss_only or (not adapter.enabled and logits is None):
            return
        if logits is not None and t.preprocess_logits_for_metrics is not None:
            logits = t.preprocess_logits_for_metrics(logits, labels)
        if adapter.streaming:
            adapter.update(logits, labels, main_inputs, loss, last, t.state.global_step)
            return
        acc.preds.add(logits)
        acc.labels.add(labels)
        acc.inputs.add(main_inputs)

    def _main_inputs(self, inputs: Any) -> Any:
        if "inputs" not in self.trainer.args.include_for_metrics or not isinstance(inputs, dict):
            return None
        name = getattr(self.trainer.model, "main_input_name", "input_ids")
        value = inputs.get(name)
        return value.to(self.strategy.root_device) if isinstance(value, torch.Tensor) else value

    def _num_samples(self, dataloader: Any, observed: int) -> int:
        dataset = getattr(dataloader, "dataset", None)
        if dataset is not None and has_length(dataset) and not isinstance(dataset, torch.utils.data.IterableDataset):
            return len(dataset)
        return int(self.strategy.all_reduce(torch.tensor(observed), op="sum"))

    def _metrics(
        self, adapter: MetricsAdapter, acc: _Accumulators, preds: Any, labels: Any, num_samples: int, description: str
    ) -> dict[str, Any]:
        step = self.trainer.state.global_step
        if adapter.streaming:
            return adapter.result(description, step)
        if preds is None or labels is None:
            return {}
        inputs, losses = acc.inputs.result(num_samples), acc.losses.result(num_samples)
        return adapter.compute(preds, labels, inputs, losses, description, step)
