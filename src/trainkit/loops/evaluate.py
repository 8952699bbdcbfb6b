"""``EvaluationLoop``: the one loop behind ``evaluate`` and ``predict``, with bounded memory.

Under ``torch.no_grad`` and the precision's eval context (full fp16/bf16 evaluation), each batch
goes through the Trainer's ``prediction_step``. What is kept depends on what is needed:
nothing but the loss with ``prediction_loss_only`` or streaming metrics (``batch_eval_metrics``
or a torchmetrics object); else predictions and labels moved to the host every
``eval_accumulation_steps`` batches (every batch by default) and concatenated there, padded
with -100 where lengths differ. The loss is the mean over label tokens (over examples when
there are no labels), summed across ranks.

On several ranks (``gather.py``) the distributed sampler's padding repeats are cut from each
rank's last batch before the forward pass, so the loss and torchmetrics count every example
once; predictions, labels and inputs are gathered from every rank at each move to the host
and interleaved back into dataset order; ``batch_eval_metrics`` functions get the gathered
batch (all ranks), as in transformers. ``eval_use_gather_object`` gathers per-example python
objects instead of tensors and returns them as lists.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from trainkit.loops.gather import EvalSharding, RankGather, eval_sharding, take_rows
from trainkit.loops.metrics import MetricsAdapter
from trainkit.loops.nested import PAD_INDEX, nested_apply, nested_concat, nested_numpify, nested_truncate
from trainkit.loops.step import batch_size_of, count_label_tokens
from trainkit.trainer_utils import EvalLoopOutput, has_length

if TYPE_CHECKING:
    from trainkit.trainer import Trainer

__all__ = ["EvaluationLoop", "HostBuffer", "ObjectBuffer", "with_last"]


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
    """Batches kept on the device, gathered from every rank and moved to the host every ``every`` batches."""

    def __init__(self, every: int, concat: bool, gather: RankGather | None = None) -> None:
        self.every = every
        self.concat = concat
        self.gather = gather
        self.device_part: Any = None
        self.pending = 0
        self.host: Any = None if concat else []

    def _gathered(self, value: Any) -> Any:
        return self.gather.tensors(value) if self.gather is not None else value

    def add(self, value: Any) -> None:
        if value is None:
            return
        if not self.concat:
            self.host.append(nested_numpify(self._gathered(value)))
            return
        self.device_part = nested_concat(self.device_part, value, PAD_INDEX)
        self.pending += 1
        if self.pending >= self.every:
            self.flush()

    def flush(self) -> None:
        if self.device_part is not None:
            self.host = nested_concat(self.host, nested_numpify(self._gathered(self.device_part)), PAD_INDEX)
            self.device_part, self.pending = None, 0

    def result(self, num_samples: int | None) -> Any:
        self.flush()
        if self.concat and self.host is not None and num_samples is not None:
            return nested_truncate(self.host, num_samples)
        return self.host or None


class ObjectBuffer:
    """Per-example python objects of every rank (``eval_use_gather_object``), gathered batch by batch."""

    def __init__(self, gather: RankGather) -> None:
        self.gather = gather
        self.items: list[Any] | None = None

    def add(self, value: Any) -> None:
        if value is not None:
            self.items = [*(self.items or []), *self.gather.objects(value)]

    def result(self, num_samples: int | None) -> list[Any] | None:
        if self.items is None or num_samples is None:
            return self.items
        return self.items[:num_samples]


@dataclass
class _Accumulators:
    every: int
    concat: bool
    gather: RankGather
    objects: bool = False
    preds: Any = field(init=False)
    labels: Any = field(init=False)
    inputs: Any = field(init=False)
    losses: Any = field(init=False)
    loss_sum: Any = 0.0
    loss_weight: int = 0
    observed: int = 0  # real examples evaluated on this rank
    rows_seen: int = 0  # rows the sampler gave this rank, padding included

    def __post_init__(self) -> None:
        def buffer() -> HostBuffer | ObjectBuffer:
            if self.objects:
                return ObjectBuffer(self.gather)
            return HostBuffer(self.every, self.concat, self.gather if self.gather.active else None)

        self.preds, self.labels, self.inputs, self.losses = (buffer() for _ in range(4))


class EvaluationLoop:
    """Runs ``prediction_step`` over a DataLoader and builds an ``EvalLoopOutput``."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.strategy = trainer.strategy
        self.sharding = EvalSharding()
        self.gather = RankGather(self.strategy, self.sharding)

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
        self.sharding = eval_sharding(dataloader, self.strategy.world_size)
        self.gather = RankGather(self.strategy, self.sharding)
        every = args.eval_accumulation_steps or 1
        acc = _Accumulators(every, args.eval_do_concat_batches, self.gather, objects=args.eval_use_gather_object)
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
        loss = self._mean_loss(acc)
        if loss is not None:
            metrics["loss"] = loss
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
        valid = self.sharding.valid_rows(acc.rows_seen, size)
        acc.rows_seen += size
        if 0 < valid < size:  # the rest are the sampler's padding repeats
            inputs = take_rows(inputs, valid, size)
        tokens = count_label_tokens(inputs, t.label_names)
        main_inputs = self._main_inputs(inputs)
        loss, logits, labels = t.prediction_step(model, inputs, loss_only, ignore_keys=ignore_keys)
        self.strategy.mark_step()  # a lazy backend (XLA) runs the batch once, before anything is read
        if not valid:  # padding only: the forward ran so every rank joins FSDP's collectives; nothing counts
            logits, labels, main_inputs = (_first_rows(v, 0) for v in (logits, labels, main_inputs))
        acc.observed += valid
        losses = None
        if loss is not None:
            if valid:
                weight = tokens if tokens else valid
                acc.loss_sum = acc.loss_sum + loss.detach().double() * weight
                acc.loss_weight += weight
            losses = loss.detach().reshape(1).repeat(valid)
            if "loss" in t.args.include_for_metrics and not adapter.streaming:
                acc.losses.add(losses)
        if loss_only or (not adapter.enabled and logits is None):
            return
        if logits is not None and t.preprocess_logits_for_metrics is not None:
            logits = t.preprocess_logits_for_metrics(logits, labels)
        if adapter.streaming:
            self._stream(adapter, (logits, labels, main_inputs, losses), valid, last)
            return
        acc.preds.add(logits)
        acc.labels.add(labels)
        acc.inputs.add(main_inputs)

    def _stream(self, adapter: MetricsAdapter, batch: tuple[Any, Any, Any, Any], valid: int, last: bool) -> None:
        """torchmetrics update this rank's rows (they synchronise in compute); functions get every rank's rows."""
        step = self.trainer.state.global_step
        if adapter.torchmetrics:
            if valid:
                adapter.update(*batch, last, step)
            return
        logits, labels, inputs, losses = (self.gather.tensors(v) for v in batch)
        adapter.update(logits, labels, inputs, losses, last, step)

    def _mean_loss(self, acc: _Accumulators) -> float | None:
        """Token-weighted mean loss over every rank (one collective), None when no batch had a loss."""
        if self.strategy.world_size == 1:
            return float(acc.loss_sum) / acc.loss_weight if acc.loss_weight else None
        local = torch.tensor([float(acc.loss_sum), float(acc.loss_weight)], dtype=torch.float64)
        total, weight = self.strategy.all_reduce(local, op="sum").tolist()
        return total / weight if weight > 0 else None

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


def _first_rows(value: Any, rows: int) -> Any:
    """Every tensor of a nested structure cut to its first ``rows`` rows."""
    return nested_apply(value, lambda t: t[:rows] if isinstance(t, torch.Tensor) and t.ndim else t)
