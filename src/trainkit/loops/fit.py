"""``FitLoop``: epochs -> accumulation windows -> micro-batches, driven only through the Strategy.

It reads top to bottom: begin; for each epoch, for each window: forward/backward every
micro-batch (gradient sync on the last only), then one optimizer step with clipping, the
non-finite guard, the scheduler, and the log/evaluate/save decisions; end. The loss stays on
the device and is read only when logging. The Trainer's overridable hooks (``training_step``,
``compute_loss``, ``log``, ``evaluate``) are called through the trainer passed in.
"""

from __future__ import annotations

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
        device = self.strategy.root_device
        self._loss_sum = torch.zeros((), device=device, dtype=torch.float64 if device.type == "cpu" else torch.float32)
        self._loss_steps = 0
        self.total_loss = 0.0
        self.total_loss_steps = 0
        self._last_grad_norm: torch.Tensor | None = None
        self._last_learning_rate: float | None = None
        self._last_logged_step = trainer.state.global_step
        self._on_first_step: Any = None

    # ------------------------------------------------------------------- run
    def run(self, epochs_done: int, batches_done: int, on_first_step: Any = None) -> None:
        """Train from (``epochs_done``, ``batches_done`` of the next epoch); ``on_first_step`` runs once first."""
        t = self.trainer
        if t.optimizer is None:
            raise RuntimeError("FitLoop.run needs the trainer's optimizer to be created first")
        self.optimizer: torch.optim.Optimizer = t.optimizer
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
        set_epoch = getattr(getattr(self.dataloader, "batch_sampler", None), "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)
        if start:
            self._skip_batches(start)
        generator = getattr(self.dataloader, "generator", None)
        if isinstance(generator, torch.Generator):  # worker seeds depend only on the epoch
            generator.manual_seed(_loader_seed(t.args) + epoch)
        t.control = t.callback_handler.on_epoch_begin(t.args, t.state, t.control)
        t._past = None
        consumed = start
        batches = iter(self.dataloader)
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

    def _skip_batches(self, start: int) -> None:
        skip_next = getattr(getattr(self.dataloader, "batch_sampler", None), "skip_next", None)
        if skip_next is not None:
            skip_next(start)  # the sampler skips indices: no sample is loaded
            return
        iterator = iter(self.dataloader)  # an IterableDataset: the batches must be read to be skipped
        for _ in range(start):
            next(iterator, None)

    def _window(self, batches: list[Any]) -> Window:
        t = self.trainer
        world = self.strategy.world_size
        reduce = None
        if t.args.average_tokens_across_devices and world > 1:
            device = self.strategy.root_device

            def reduce(values: list[int]) -> list[int]:
                summed = self.strategy.all_reduce(torch.tensor(values, device=device, dtype=torch.int64), op="sum")
                return [int(v) for v in summed.tolist()]

        return make_window(batches, t.label_names, reduce, world)

    # ------------------------------------------------------------ one window
    def _train_window(self, window: Window, epoch: int, consumed: int) -> None:
        t = self.trainer
        if self._on_first_step is not None:
            self._on_first_step()
            self._on_first_step = None
        t._current_window = window
        num_items = self._num_items_tensor(window)
        window_loss: torch.Tensor | None = None
        last = len(window.batches) - 1
        for i, batch in enumerate(window.batches):
            if i == 0:
                t.control = t.callback_handler.on_step_begin(t.args, t.state, t.control)
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
        t, args, strategy = self.trainer, self.trainer.args, self.strategy
        grad_norm = None
        if args.max_grad_norm and args.max_grad_norm > 0:
            grad_norm = strategy.clip_gradients(t.model_wrapped, self.optimizer, args.max_grad_norm)
        loss_finite, step_ok = self._finite_flags(window_loss, grad_norm)
        t.control = t.callback_handler.on_pre_optimizer_step(t.args, t.state, t.control)
        if step_ok:
            stepped = strategy.optimizer_step(self.optimizer, t.model_wrapped)
        else:
            stepped = strategy.skip_optimizer_step(self.optimizer, t.model_wrapped)
        t.control = t.callback_handler.on_optimizer_step(t.args, t.state, t.control)
        learning_rate = t._get_learning_rate()
        if stepped and not isinstance(t.lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
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
        self._accumulate_loss(window_loss, loss_finite)
        t.state.global_step += 1
        per_epoch = self.plan.batches_per_epoch or self.plan.max_steps * args.gradient_accumulation_steps
        t.state.epoch = epoch + consumed / per_epoch
        self._last_grad_norm, self._last_learning_rate = grad_norm, learning_rate
        t.control = t.callback_handler.on_step_end(t.args, t.state, t.control)
        self._log_save_evaluate(grad_norm, learning_rate)
        if args.torch_empty_cache_steps and t.state.global_step % args.torch_empty_cache_steps == 0:
            _empty_cache(strategy.root_device)

    def _finite_flags(self, window_loss: torch.Tensor, grad_norm: torch.Tensor | None) -> tuple[bool, bool]:
        """(loss finite, step may proceed): the one host synchronisation of an optimizer step."""
        checks = [torch.isfinite(window_loss.detach().float())]
        if grad_norm is not None and not self.strategy.precision.skips_nonfinite_gradients:
            checks.append(torch.isfinite(grad_norm.detach().float()))
        flags = [bool(v) for v in torch.stack(checks).tolist()]
        loss_finite, ok = flags[0], all(flags)
        if self.strategy.world_size > 1:
            ok = self.strategy.reduce_boolean_decision(ok, all=True)
            loss_finite = self.strategy.reduce_boolean_decision(loss_finite, all=True)
        return loss_finite, ok

    # --------------------------------------------------------------- logging
    def _accumulate_loss(self, window_loss: torch.Tensor, finite: bool) -> None:
        if finite or not self.trainer.args.logging_nan_inf_filter:
            self._loss_sum += window_loss.detach().to(self._loss_sum.dtype)
            self._loss_steps += 1

    def _log_save_evaluate(self, grad_norm: torch.Tensor | None, learning_rate: float | None) -> None:
        t = self.trainer
        if t.control.should_log and t.state.global_step > self._last_logged_step:
            t.log(self._train_logs(grad_norm, learning_rate))
        metrics = None
        if t.control.should_evaluate:
            metrics = t._evaluate_during_training()
        if t.control.should_save:
            t._save_checkpoint(metrics)
            t.control = t.callback_handler.on_save(t.args, t.state, t.control)

    def _train_logs(self, grad_norm: torch.Tensor | None, learning_rate: float | None) -> dict[str, float]:
        t = self.trainer
        op = "sum" if (t.args.average_tokens_across_devices or self.strategy.world_size == 1) else "mean"
        total = float(self.strategy.all_reduce(self._loss_sum.clone(), op=op))
        steps = self._loss_steps
        logs: dict[str, float] = {"loss": total / steps if steps else float("nan")}
        self.total_loss += total
        self.total_loss_steps += steps
        self._loss_sum.zero_()
        self._loss_steps = 0
        self._last_logged_step = t.state.global_step
        if grad_norm is not None:
            logs["grad_norm"] = float(grad_norm)
        logs["learning_rate"] = learning_rate if learning_rate is not None else t._get_learning_rate()
        if t.state.skipped_steps:
            logs["skipped_steps"] = t.state.skipped_steps
        return logs

    def mean_loss(self) -> float:
        """The mean training loss per optimizer step of this run (non-finite steps left out when filtered)."""
        t = self.trainer
        op = "sum" if (t.args.average_tokens_across_devices or self.strategy.world_size == 1) else "mean"
        self.total_loss += float(self.strategy.all_reduce(self._loss_sum.clone(), op=op))
        self.total_loss_steps += self._loss_steps
        self._loss_sum.zero_()
        self._loss_steps = 0
        return self.total_loss / self.total_loss_steps if self.total_loss_steps else float("nan")


def _loader_seed(args: Any) -> int:
    return int(args.data_seed if args.data_seed is not None else args.seed)


def _empty_cache(device: torch.device) -> None:
    module = getattr(torch, device.type, None)
    empty = getattr(module, "empty_cache", None)
    if callable(empty):
        empty()
