"""``FitLoop``: epochs -> accumulation windows -> micro-batches, driven only through the Strategy.

It reads top to bottom: begin; for each epoch, for each window: forward/backward every
micro-batch (gradient sync on the last only), then one optimizer step with clipping, the
non-finite guard, the scheduler, and the log/evaluate/save decisions; end. The loss stays on
the device and is read only when logging. The Trainer's overridable hooks (``training_step``,
``compute_loss``, ``log``, ``evaluate``) are called through the trainer passed in.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch

from trainkit.loops.plan import TrainingPlan
from trainkit.loops.step import Window, iter_windows, make_window
from trainkit.utils.logging import get_logger

if TYPE_CHECKING:
    from trainkit.trainer import Trainer

__all__ = ["FitLoop"]

logger = get_logger(__name__)


class FitLoop:
    """Runs ``trainer``'s training from its current state to ``plan.max_steps``."""

    def __init__(self, trainer: Trainer, plan: TrainingPlan, dataloader: Iterable[Any]) -> None:
        self.trainer = trainer
        self.plan = plan
        self.dataloader = dataloader
        self.strategy = trainer.strategy
        self._loss_sum = 0.0  # this rank's share of the window losses since the last log
        self._loss_steps = 0
        self.total_loss = 0.0
        self.total_loss_steps = 0
        self._last_grad_norm: torch.Tensor | None = None
        self._last_learning_rate: float | None = None
        self._last_logged_step = trainer.state.global_step
        self._on_first_step: Any = None
        args = trainer.args
        self._max_grad_norm = args.max_grad_norm if args.max_grad_norm and args.max_grad_norm > 0 else 0.0
        self._empty_cache_every = args.torch_empty_cache_steps or 0
        self._per_epoch = plan.batches_per_epoch or plan.max_steps * args.gradient_accumulation_steps
        self._count_tokens = bool(args.include_num_input_tokens_seen or args.include_tokens_per_second)

    # ------------------------------------------------------------------- run
    def run(self, epochs_done: int, batches_done: int, on_first_step: Any = None) -> None:
        """Train from (``epochs_done``, ``batches_done`` of the next epoch); ``on_first_step`` runs once first."""
        t = self.trainer
        if t.optimizer is None:
            raise RuntimeError("FitLoop.run needs the trainer's optimizer to be created first")
        self.optimizer: torch.optim.Optimizer = t.optimizer
        self._plateau = isinstance(t.lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
        self._on_first_step = on_first_step
        t.control = t.callback_handler.on_train_begin(t.args, t.state, t.control)
        if t.args.eval_on_start:
            t._evaluate_during_training(skip_scheduler=True)
        for epoch in range(epochs_done, self.plan.num_epochs):
            self._run_epoch(epoch, batches_done if epoch == epochs_done else 0)
            if t.control.should_training_stop:
                break

    def _run_epoch(self, epoch: int, start: int) -> None:
        t = self.trainer
        batch_sampler = getattr(self.dataloader, "batch_sampler", None)
        set_epoch = getattr(batch_sampler, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)
        skip_next = getattr(batch_sampler, "skip_next", None)
        if start and skip_next is not None:
            skip_next(start)  # the sampler skips the indices: no sample of those batches is loaded
        generator = getattr(self.dataloader, "generator", None)
        if isinstance(generator, torch.Generator):  # worker seeds depend only on the epoch
            generator.manual_seed(_loader_seed(t.args) + epoch)
        t.control = t.callback_handler.on_epoch_begin(t.args, t.state, t.control)
        t._past = None
        consumed = start
        batches = iter(self.dataloader)
        if start and skip_next is None:  # an IterableDataset: its batches must be read to be skipped
            for _ in range(start):
                next(batches, None)
        for batches_of_window in iter_windows(batches, self.plan.batches_per_epoch, t.args.gradient_accumulation_steps):
            consumed += len(batches_of_window)
            self._train_window(self._window(batches_of_window), epoch, consumed)
            if t.control.should_epoch_stop or t.control.should_training_stop:
                break
        if consumed == start:
            logger.warning("Epoch %d yielded no batch: stopping at step %d.", epoch, t.state.global_step)
            t.control.should_training_stop = True
        t.control = t.callback_handler.on_epoch_end(t.args, t.state, t.control)
        self._log_save_evaluate(self._last_grad_norm, self._last_learning_rate)

    def _window(self, batches: list[Any]) -> Window:
        t = self.trainer
        world = self.strategy.world_size
        reduce = None
        if t.args.average_tokens_across_devices and world > 1:
            device = self.strategy.root_device

            def reduce(values: list[int]) -> list[int]:
                summed = self.strategy.all_reduce(torch.tensor(values, device=device, dtype=torch.int64), op="sum")
                return [int(v) for v in summed.tolist()]

        need_counts = (
            len(batches) > 1 or reduce is not None or t.model_accepts_loss_kwargs or t.compute_loss_func is not None
        )
        return make_window(batches, t.label_names, reduce, world, need_counts=need_counts)

    # ------------------------------------------------------------ one window
    def _train_window(self, window: Window, epoch: int, consumed: int) -> None:
        t = self.trainer
        if self._on_first_step is not None:
            self._on_first_step()
            self._on_first_step = None
        self.strategy.begin_window()
        t._current_window = window
        num_items = self._num_items_tensor(window)
        window_loss: torch.Tensor | None = None
        last = len(window.batches) - 1
        for i, batch in enumerate(window.batches):
            if i == 0:
                t.control = t.callback_handler.on_step_begin(t.args, t.state, t.control)
            if self._count_tokens:
                t._count_input_tokens(batch)
            with self.strategy.no_backward_sync(t.model_wrapped, enabled=i != last):
                loss = t.training_step(t.model_wrapped, batch, num_items)
            window_loss = loss if window_loss is None else window_loss + loss
            if i != last:
                t.control = t.callback_handler.on_substep_end(t.args, t.state, t.control)
        if window_loss is not None:
            self._optimizer_step(window_loss, epoch, consumed)

    def _num_items_tensor(self, window: Window) -> torch.Tensor | None:
        if window.num_items is None:
            return None
        return torch.tensor(window.num_items, device=self.strategy.root_device, dtype=torch.int64)

    def _optimizer_step(self, window_loss: torch.Tensor, epoch: int, consumed: int) -> None:
        t, args, strategy, handler = self.trainer, self.trainer.args, self.strategy, self.trainer.callback_handler
        grad_norm = None
        if self._max_grad_norm:
            grad_norm = strategy.clip_gradients(t.model_wrapped, self.optimizer, self._max_grad_norm)
        strategy.mark_step()  # a lazy backend (XLA) runs forward/backward here, before the loss is read
        loss_value, loss_finite, step_ok = self._finite_flags(window_loss, grad_norm)
        t.control = handler.on_pre_optimizer_step(args, t.state, t.control)
        if step_ok:
            stepped = strategy.optimizer_step(self.optimizer, t.model_wrapped)
        else:
            stepped = strategy.skip_optimizer_step(self.optimizer, t.model_wrapped)
        if self._max_grad_norm and grad_norm is None:
            grad_norm = strategy.step_grad_norm()  # measured (and clipped) inside the step (DeepSpeed)
        t.control = handler.on_optimizer_step(args, t.state, t.control)
        learning_rate = t._get_learning_rate()
        if stepped and not self._plateau:
            t.lr_scheduler.step()
        if not stepped:
            t.state.skipped_steps += 1
            logger.warning(
                "Step %d skipped: non-finite %s (skipped so far: %d).",
                t.state.global_step + 1,
                "loss" if not loss_finite else "gradients",
                t.state.skipped_steps,
            )
        strategy.zero_grad(self.optimizer, t.model_wrapped)
        if loss_finite or not args.logging_nan_inf_filter:
            self._loss_sum += loss_value
            self._loss_steps += 1
        t.state.global_step += 1
        t.state.epoch = epoch + consumed / self._per_epoch
        self._last_grad_norm, self._last_learning_rate = grad_norm, learning_rate
        t.control = handler.on_step_end(args, t.state, t.control)
        self._log_save_evaluate(grad_norm, learning_rate)
        if self._empty_cache_every and t.state.global_step % self._empty_cache_every == 0:
            _empty_cache(strategy.root_device)

    def _finite_flags(self, window_loss: torch.Tensor, grad_norm: torch.Tensor | None) -> tuple[float, bool, bool]:
        """(loss value, loss finite, step may proceed): the one host synchronisation of an optimizer step."""
        loss_value = float(window_loss)
        loss_finite = math.isfinite(loss_value)
        ok = loss_finite
        if ok and grad_norm is not None and not self.strategy.precision.skips_nonfinite_gradients:
            ok = math.isfinite(float(grad_norm))
        if self.strategy.world_size > 1:
            loss_finite = self.strategy.reduce_boolean_decision(loss_finite, all=True)
            ok = self.strategy.reduce_boolean_decision(ok, all=True)
        return loss_value, loss_finite, ok

    # --------------------------------------------------------------- logging
    def _log_save_evaluate(self, grad_norm: torch.Tensor | None, learning_rate: float | None) -> None:
        t = self.trainer
        if t.control.should_log and t.state.global_step > self._last_logged_step:
            t.log(self._train_logs(grad_norm, learning_rate))
        metrics = None
        if t.control.should_evaluate:
            metrics = t._evaluate_during_training()
            is_new_best = t._record_best_metric(metrics)
            if t.args.save_strategy == "best":
                t.control.should_save = is_new_best
        if t.control.should_save:
            t._save_checkpoint(metrics)
            t.control = t.callback_handler.on_save(t.args, t.state, t.control)

    def _reduce_loss_sum(self) -> float:
        t = self.trainer
        if self.strategy.world_size == 1:
            return self._loss_sum
        op = "sum" if t.args.average_tokens_across_devices else "mean"
        value = torch.tensor(self._loss_sum, device=self.strategy.root_device, dtype=torch.float64)
        return float(self.strategy.all_reduce(value, op=op))

    def _train_logs(self, grad_norm: torch.Tensor | None, learning_rate: float | None) -> dict[str, float]:
        t = self.trainer
        total, steps = self._reduce_loss_sum(), self._loss_steps
        logs: dict[str, float] = {"loss": total / steps if steps else float("nan")}
        self.total_loss += total
        self.total_loss_steps += steps
        self._loss_sum, self._loss_steps = 0.0, 0
        self._last_logged_step = t.state.global_step
        if grad_norm is not None:
            logs["grad_norm"] = float(grad_norm)
        logs["learning_rate"] = learning_rate if learning_rate is not None else t._get_learning_rate()
        if t.state.skipped_steps:
            logs["skipped_steps"] = t.state.skipped_steps
        return logs

    def mean_loss(self) -> float:
        """The mean training loss per optimizer step of this run (non-finite steps left out when filtered)."""
        self.total_loss += self._reduce_loss_sum()
        self.total_loss_steps += self._loss_steps
        self._loss_sum, self._loss_steps = 0.0, 0
        return self.total_loss / self.total_loss_steps if self.total_loss_steps else float("nan")


def _loader_seed(args: Any) -> int:
    return int(args.data_seed if args.data_seed is not None else args.seed)


def _empty_cache(device: torch.device) -> None:
    module = getattr(torch, device.type, None)
    empty = getattr(module, "empty_cache", None)
    if callable(empty):
        empty()
