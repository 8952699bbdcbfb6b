"""Callbacks: handler dispatch and flag resets, early stopping, TensorBoard and JSON-lines logs."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import RegressionDataset, RegressionModel, quiet_args
from trainkit import EarlyStoppingCallback, Trainer, TrainerCallback, TrainerControl, TrainerState
from trainkit.callbacks.base import CallbackHandler
from trainkit.loggers import resolve_report_to
from trainkit.loggers.tensorboard import rewrite_logs


def test_handler_resets_flags_and_passes_kwargs():
    seen = {}

    class Spy(TrainerCallback):
        def on_log(self, args, state, control, **kwargs):
            seen.update(kwargs)

    handler = CallbackHandler([Spy()], model="m", optimizer="o")
    control = TrainerControl(should_log=True, should_save=True)
    control = handler.on_log(None, TrainerState(), control, logs={"a": 1})
    assert control.should_log is False
    assert control.should_save is True
    assert seen["logs"] == {"a": 1}
    assert seen["model"] == "m"
    assert seen["optimizer"] == "o"


def test_handler_add_pop_remove():
    class A(TrainerCallback):
        pass

    handler = CallbackHandler([A])
    assert handler.callback_list == "A"
    popped = handler.pop_callback(A)
    assert isinstance(popped, A)
    assert handler.callbacks == []
    handler.add_callback(popped)
    handler.remove_callback(popped)
    assert handler.callbacks == []


def test_callback_returning_control_replaces_it():
    class Stop(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            return TrainerControl(should_training_stop=True)

    control = CallbackHandler([Stop()]).on_step_end(None, TrainerState(), TrainerControl())
    assert control.should_training_stop


def _args(tmp_path, **kw):
    args = quiet_args(str(tmp_path), **kw)
    return args


def test_early_stopping_counts_evaluations_without_improvement(tmp_path):
    args = _args(tmp_path)
    args.metric_for_best_model, args.greater_is_better, args.eval_strategy = "loss", False, "steps"
    cb = EarlyStoppingCallback(early_stopping_patience=2, early_stopping_threshold=0.1)
    state, control = TrainerState(best_metric=1.0), TrainerControl()
    cb.on_evaluate(args, state, control, metrics={"eval_loss": 0.85})  # better by more than the threshold
    assert cb.early_stopping_patience_counter == 0
    cb.on_evaluate(args, state, control, metrics={"eval_loss": 0.95})  # better, but within the threshold
    assert cb.early_stopping_patience_counter == 1
    assert not control.should_training_stop
    cb.on_evaluate(args, state, control, metrics={"eval_loss": 1.5})
    assert control.should_training_stop
    assert cb.state()["attributes"]["early_stopping_patience_counter"] == 2


def test_early_stopping_needs_metric_and_eval(tmp_path):
    args = _args(tmp_path)
    with pytest.raises(ValueError, match="metric_for_best_model"):
        EarlyStoppingCallback().on_train_begin(args, TrainerState(), TrainerControl())
    with pytest.raises(ValueError, match="patience"):
        EarlyStoppingCallback(0)


def test_rewrite_logs():
    assert rewrite_logs({"loss": 1, "eval_loss": 2, "test_acc": 3}) == {"train/loss": 1, "eval/loss": 2, "test/acc": 3}


def test_report_to_resolution():
    assert resolve_report_to(["all"]) == ["jsonl", "tensorboard"]
    assert resolve_report_to(["jsonl"]) == ["jsonl"]
    with pytest.raises(ValueError, match=r"Unknown logger.*'wandb'.*Available: jsonl, tensorboard"):
        resolve_report_to(["wandb"])


def _sgd(model):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def test_tensorboard_event_files_hold_the_logged_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = RegressionModel()
    args = _args(
        tmp_path,
        report_to="tensorboard",
        logging_strategy="steps",
        logging_steps=2,
        max_steps=6,
        per_device_train_batch_size=4,
    )
    trainer = Trainer(model, args, train_dataset=RegressionDataset(16), optimizers=_sgd(model))
    trainer.train()
    events = EventAccumulator(args.logging_dir)
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss", "train/learning_rate", "train/grad_norm", "train/epoch", "train/train_loss"} <= set(tags)
    losses = [e.value for e in events.Scalars("train/loss")]
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses == pytest.approx(logged, rel=1e-6)
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4, 6]
    assert "args" in "".join(events.Tags()["tensors"])  # the arguments as text


def test_jsonl_log(tmp_path):
    model = RegressionModel()
    args = _args(
        tmp_path,
        report_to="jsonl",
        logging_strategy="steps",
        logging_steps=1,
        max_steps=3,
        per_device_train_batch_size=4,
    )
    Trainer(model, args, train_dataset=RegressionDataset(16), optimizers=_sgd(model)).train()
    lines = [json.loads(x) for x in (tmp_path / "log_history.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 3]
    assert "train_runtime" in lines[-1]
