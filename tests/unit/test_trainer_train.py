"""Trainer.train on small models: callback order, the NaN policy, the loop's options and its errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from tests.helpers import (
    RegressionDataset,
    RegressionModel,
    StreamDataset,
    TokenDataset,
    TokenModel,
    params_of,
    quiet_args,
)
from trainkit import Trainer, TrainerCallback, TrainingArguments


def sgd(model, lr=0.1):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


class EventRecorder(TrainerCallback):
    def __init__(self):
        self.events = []

    def __getattribute__(self, name):
        if name.startswith("on_"):
            events = object.__getattribute__(self, "events")

            def record(args, state, control, **kwargs):
                events.append(name)
                assert {"model", "optimizer", "lr_scheduler", "train_dataloader"} <= set(kwargs)

            return record
        return object.__getattribute__(self, name)


def test_callback_events_in_transformers_order(tmp_path):
    recorder = EventRecorder()
    model = RegressionModel()
    args = quiet_args(str(tmp_path), per_device_train_batch_size=1, gradient_accumulation_steps=2, num_train_epochs=1)
    Trainer(model, args, train_dataset=RegressionDataset(4), optimizers=sgd(model), callbacks=[recorder]).train()
    step = ["on_step_begin", "on_substep_end", "on_pre_optimizer_step", "on_optimizer_step", "on_step_end"]
    assert recorder.events == [
        "on_init_end",
        "on_train_begin",
        "on_epoch_begin",
        *step,
        *step,
        "on_epoch_end",
        "on_log",
        "on_train_end",
    ]


class NaNAtStep(TrainerCallback):
    """Makes the loss NaN during optimizer step ``k`` and records the weights around it."""

    def __init__(self, k):
        self.k = k
        self.before = None
        self.after = None

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        model.poison = state.global_step + 1 == self.k
        if model.poison:
            self.before = params_of(model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.k:
            self.after = params_of(model)


class PoisonableModel(RegressionModel):
    poison = False

    def forward(self, input_x, labels=None):
        out = super().forward(input_x, labels)
        if self.poison:
            out["loss"] = out["loss"] * float("nan")
        return out


@pytest.mark.parametrize("k", [1, 3, 5])
def test_nan_loss_skips_the_step_and_is_counted(tmp_path, k):
    model = PoisonableModel()
    watcher = NaNAtStep(k)
    args = quiet_args(
        str(tmp_path), per_device_train_batch_size=4, max_steps=6, logging_strategy="steps", logging_steps=1
    )
    trainer = Trainer(model, args, train_dataset=RegressionDataset(16), optimizers=sgd(model), callbacks=[watcher])
    out = trainer.train()
    for name, value in watcher.before.items():
        assert torch.equal(watcher.after[name], value), "weights changed at the NaN step"
    assert trainer.state.skipped_steps == 1
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged[k - 1]["skipped_steps"] == 1
    assert math.isnan(logged[k - 1]["loss"])  # nothing finite to average in that logging window
    assert all(math.isfinite(h["loss"]) for i, h in enumerate(logged) if i != k - 1)
    assert math.isfinite(out.training_loss)
    assert out.global_step == 6


def test_nan_filter_off_shows_nan_in_train_loss(tmp_path):
    model = PoisonableModel()
    args = quiet_args(str(tmp_path), per_device_train_batch_size=4, max_steps=3, logging_nan_inf_filter=False)
    trainer = Trainer(model, args, train_dataset=RegressionDataset(16), optimizers=sgd(model), callbacks=[NaNAtStep(2)])
    assert math.isnan(trainer.train().training_loss)
    assert trainer.state.skipped_steps == 1


def test_fractional_epochs_stop_part_way(tmp_path):
    model = RegressionModel()
    args = quiet_args(str(tmp_path), per_device_train_batch_size=2, num_train_epochs=1.5)
    trainer = Trainer(model, args, train_dataset=RegressionDataset(20), optimizers=sgd(model))
    out = trainer.train()
    assert out.global_step == 15  # ceil(1.5 * 10)
    assert trainer.state.epoch == pytest.approx(1.5)
    assert out.metrics["epoch"] == pytest.approx(1.5)


def test_max_steps_overrides_epochs_and_cycles_data(tmp_path):
    model = RegressionModel()
    args = quiet_args(str(tmp_path), per_device_train_batch_size=4, num_train_epochs=1, max_steps=7)
    trainer = Trainer(model, args, train_dataset=RegressionDataset(8), optimizers=sgd(model, 0.01))
    out = trainer.train()
    assert out.global_step == 7
    assert trainer.state.epoch == pytest.approx(3.5)
    assert set(out.metrics) >= {
        "train_runtime",
        "train_samples_per_second",
        "train_steps_per_second",
        "train_loss",
        "epoch",
        "total_flos",
    }
    assert out.metrics["train_steps_per_second"] > 0


def test_iterable_dataset_needs_max_steps(tmp_path):
    model = RegressionModel()
    args = quiet_args(str(tmp_path), per_device_train_batch_size=4)
    with pytest.raises(ValueError, match="max_steps"):
        Trainer(model, args, train_dataset=StreamDataset(RegressionDataset(8)), optimizers=sgd(model)).train()


def test_iterable_dataset_with_max_steps(tmp_path):
    model = RegressionModel()
    args = quiet_args(str(tmp_path), per_device_train_batch_size=4, max_steps=5)
    out = Trainer(model, args, train_dataset=StreamDataset(RegressionDataset(8)), optimizers=sgd(model, 0.01)).train()
    assert out.global_step == 5


def test_training_reduces_the_loss(tmp_path):
    model = RegressionModel()
    args = quiet_args(str(tmp_path), per_device_train_batch_size=8, num_train_epochs=20, logging_strategy="epoch")
    trainer = Trainer(model, args, train_dataset=RegressionDataset(64), optimizers=sgd(model, 0.05))
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < losses[0] / 10
    assert float(model.a.detach()) == pytest.approx(2.0, abs=0.1)


# --------------------------------------------------------------------- errors
def test_train_without_dataset(tmp_path):
    model = RegressionModel()
    with pytest.raises(ValueError, match="needs a train_dataset"):
        Trainer(model, quiet_args(str(tmp_path)), optimizers=sgd(model)).train()


class NoLossModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.l = nn.Linear(1, 1)

    def forward(self, input_x):
        return {"logits": self.l(input_x[:, None])}


def test_model_without_loss_says_what_to_return(tmp_path):
    model = NoLossModel()
    data = [{"input_x": torch.tensor(1.0)}] * 4
    trainer = Trainer(model, quiet_args(str(tmp_path), max_steps=1), train_dataset=data, optimizers=sgd(model))
    with pytest.raises(ValueError, match=r"did not return a loss.*keys \[logits\].*Return a dict with 'loss'"):
        trainer.train()


def test_eval_strategy_without_eval_dataset_fails_at_construction(tmp_path):
    model = RegressionModel()
    args = quiet_args(str(tmp_path))
    args.eval_strategy = "steps"
    with pytest.raises(ValueError, match="needs an eval_dataset"):
        Trainer(model, args, train_dataset=RegressionDataset(4), optimizers=sgd(model))


def test_unknown_train_kwarg(tmp_path):
    model = RegressionModel()
    trainer = Trainer(model, quiet_args(str(tmp_path)), train_dataset=RegressionDataset(4), optimizers=sgd(model))
    with pytest.raises(TypeError, match="model_path"):
        trainer.train(model_path="x")


# ------------------------------------------------------------------- options
def test_remove_unused_columns_drops_extra_keys(tmp_path, caplog):
    data = [{"input_x": torch.tensor(float(i)), "labels": torch.tensor(2.0 * i), "note": i} for i in range(8)]
    model = RegressionModel()
    trainer = Trainer(model, quiet_args(str(tmp_path), max_steps=2), train_dataset=data, optimizers=sgd(model, 0.001))
    with caplog.at_level("INFO", logger="trainkit"):
        trainer.train()
    assert "note" in caplog.text


def test_remove_unused_columns_false_passes_everything(tmp_path):
    data = [{"input_x": torch.tensor(1.0), "labels": torch.tensor(2.0), "note": 1}] * 4
    model = RegressionModel()
    args = quiet_args(str(tmp_path), max_steps=1, remove_unused_columns=False)
    with pytest.raises(TypeError, match="note"):
        Trainer(model, args, train_dataset=data, optimizers=sgd(model)).train()


def test_label_smoothing_changes_the_loss(tmp_path):
    losses = {}
    for eps in (0.0, 0.2):
        torch.manual_seed(0)
        model = TokenModel()
        args = quiet_args(str(tmp_path), max_steps=1, label_smoothing_factor=eps, per_device_train_batch_size=4)
        losses[eps] = Trainer(model, args, train_dataset=TokenDataset(8), optimizers=sgd(model)).train().training_loss
    assert losses[0.2] != pytest.approx(losses[0.0])


def test_neftune_adds_noise_only_while_training(tmp_path):
    torch.manual_seed(0)
    model = TokenModel()
    args = quiet_args(str(tmp_path), max_steps=1, neftune_noise_alpha=5.0)
    trainer = Trainer(model, args, train_dataset=TokenDataset(8), optimizers=sgd(model, 0.0))
    ids = torch.tensor([[1, 2, 3]])
    clean = model.embed(ids)
    trainer.train()
    assert trainer._neftune_hook is None  # removed after training
    assert torch.equal(model.embed(ids), clean)


def test_gradient_checkpointing_needs_model_support(tmp_path):
    model = RegressionModel()
    args = quiet_args(str(tmp_path), max_steps=1, gradient_checkpointing=True)
    with pytest.raises(ValueError, match="gradient_checkpointing_enable"):
        Trainer(model, args, train_dataset=RegressionDataset(4), optimizers=sgd(model)).train()


def test_gradient_checkpointing_calls_the_model(tmp_path):
    class Checkpointable(RegressionModel):
        enabled_with = None

        def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
            self.enabled_with = gradient_checkpointing_kwargs

    model = Checkpointable()
    args = quiet_args(
        str(tmp_path), max_steps=1, gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False}
    )
    Trainer(model, args, train_dataset=RegressionDataset(4), optimizers=sgd(model)).train()
    assert model.enabled_with == {"use_reentrant": False}


def test_tokens_seen_and_tokens_per_second(tmp_path):
    torch.manual_seed(0)
    model = TokenModel()
    args = quiet_args(
        str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=2,
        include_num_input_tokens_seen=True,
        include_tokens_per_second=True,
        logging_strategy="steps",
        logging_steps=1,
    )
    trainer = Trainer(model, args, train_dataset=TokenDataset(8, seq=6), optimizers=sgd(model))
    out = trainer.train()
    assert trainer.state.num_input_tokens_seen == 3 * 2 * 6
    assert [h["num_input_tokens_seen"] for h in trainer.state.log_history[:3]] == [12, 24, 36]
    assert out.metrics["train_tokens_per_second"] > 0


def test_memory_metrics(tmp_path):
    model = RegressionModel()
    args = quiet_args(str(tmp_path), max_steps=2, skip_memory_metrics=False)
    out = Trainer(model, args, train_dataset=RegressionDataset(8), optimizers=sgd(model)).train()
    for key in (
        "init_mem_cpu_alloc_delta",
        "init_mem_cpu_peaked_delta",
        "train_mem_cpu_alloc_delta",
        "train_mem_cpu_peaked_delta",
        "before_init_mem_cpu",
    ):
        assert isinstance(out.metrics[key], int), key


def test_model_init_is_called_per_train(tmp_path):
    calls = []

    def init():
        calls.append(1)
        return RegressionModel()

    args = quiet_args(str(tmp_path), max_steps=1)
    args.learning_rate = 0.01
    trainer = Trainer(model_init=init, args=args, train_dataset=RegressionDataset(4))
    assert len(calls) == 1
    pytest.importorskip("trainkit.optim", reason="needs the optimizer registry")
    if not hasattr(__import__("trainkit.optim", fromlist=["x"]), "create_optimizer"):
        pytest.skip("needs the optimizer registry")
    trainer.train()
    trainer.train()
    assert len(calls) == 3


def test_past_index_feeds_mems(tmp_path):
    class Memory(RegressionModel):
        seen = []

        def forward(self, input_x, labels=None, mems=None):
            self.seen.append(mems is not None)
            out = super().forward(input_x, labels)
            return (out["loss"], out["logits"], input_x.detach())

    model = Memory()
    args = quiet_args(str(tmp_path), max_steps=4, past_index=2, per_device_train_batch_size=4)
    Trainer(model, args, train_dataset=RegressionDataset(12), optimizers=sgd(model)).train()
    assert model.seen == [False, True, True, False]  # reset at each epoch, as transformers


def test_log_metrics_save_metrics_save_state(tmp_path, capsys):
    model = RegressionModel()
    args = quiet_args(str(tmp_path), max_steps=2)
    trainer = Trainer(model, args, train_dataset=RegressionDataset(8), optimizers=sgd(model))
    out = trainer.train()
    trainer.log_metrics("train", out.metrics)
    printed = capsys.readouterr().out
    assert "***** train metrics *****" in printed
    assert "train_runtime" in printed
    trainer.save_metrics("train", out.metrics)
    trainer.save_state()
    assert json.loads((tmp_path / "train_results.json").read_text())["train_loss"] == out.metrics["train_loss"]
    assert "train_loss" in json.loads((tmp_path / "all_results.json").read_text())
    assert json.loads((tmp_path / "trainer_state.json").read_text())["global_step"] == 2


def test_save_model_writes_safetensors(tmp_path):
    from safetensors.torch import load_file

    model = RegressionModel(a=1.5)
    trainer = Trainer(model, quiet_args(str(tmp_path)), optimizers=sgd(model))
    trainer.save_model(str(tmp_path / "final"))
    weights = load_file(str(tmp_path / "final" / "model.safetensors"))
    assert float(weights["a"]) == 1.5
    assert json.loads((tmp_path / "final" / "training_args.json").read_text())["output_dir"] == str(tmp_path)


def test_default_args_and_properties(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = RegressionModel()
    trainer = Trainer(model, optimizers=sgd(model))
    assert isinstance(trainer.args, TrainingArguments)
    assert trainer.args.output_dir == "tmp_trainer"
    assert trainer.is_world_process_zero()
    assert trainer.is_local_process_zero()
    assert trainer.model is model
    assert trainer.model_wrapped is model
    assert trainer.tokenizer is None


def test_group_by_length_reduces_padding(tmp_path):
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 40, (64,), generator=g).tolist()
    data = [{"input_ids": torch.ones(n, dtype=torch.long), "labels": torch.ones(n, dtype=torch.long)} for n in lengths]
    spreads = {}

    def pad(features):
        longest = max(len(f["input_ids"]) for f in features)
        spreads.setdefault(key, []).append(longest - min(len(f["input_ids"]) for f in features))
        ids = torch.stack(
            [torch.nn.functional.pad(f["input_ids"], (0, longest - len(f["input_ids"]))) for f in features]
        )
        return {"input_ids": ids, "labels": torch.where(ids > 0, ids, -100)}

    for key in (False, True):
        torch.manual_seed(0)
        model = TokenModel()
        args = quiet_args(str(tmp_path), per_device_train_batch_size=4, group_by_length=key, num_train_epochs=1)
        Trainer(model, args, data_collator=pad, train_dataset=data, optimizers=sgd(model)).train()
    assert sum(spreads[True]) < sum(spreads[False]) / 3


def test_torch_compile_is_applied_once(tmp_path, caplog):
    model = RegressionModel()
    args = quiet_args(
        str(tmp_path), max_steps=2, torch_compile=True, torch_compile_backend="eager", per_device_train_batch_size=4
    )
    trainer = Trainer(model, args, train_dataset=RegressionDataset(8), optimizers=sgd(model))
    with caplog.at_level("INFO", logger="trainkit"):
        trainer.train()
    assert "torch.compile" in caplog.text
    assert trainer.model_wrapped is not model
    assert trainer.strategy.unwrap_model(trainer.model_wrapped) is model
    wrapped = trainer.model_wrapped
    trainer.train()
    assert trainer.model_wrapped is wrapped


def test_data_seed_controls_the_order(tmp_path):
    orders = []
    for data_seed in (1, 1, 2):

        class Watch(RegressionModel):
            seen: list = []

            def forward(self, input_x, labels=None):
                Watch.seen.append(input_x.tolist())
                return super().forward(input_x, labels)

        Watch.seen = []
        model = Watch()
        args = quiet_args(str(tmp_path), per_device_train_batch_size=4, max_steps=2, data_seed=data_seed)
        Trainer(model, args, train_dataset=RegressionDataset(16), optimizers=sgd(model)).train()
        orders.append(Watch.seen)
    assert orders[0] == orders[1]
    assert orders[0] != orders[2]


def test_dataloader_workers(tmp_path):
    model = RegressionModel()
    args = quiet_args(
        str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=4,
        dataloader_num_workers=2,
        dataloader_persistent_workers=True,
        dataloader_prefetch_factor=2,
        dataloader_drop_last=True,
    )
    out = Trainer(model, args, train_dataset=RegressionDataset(10), optimizers=sgd(model, 0.01)).train()
    assert out.global_step == 4
    assert trainer_epoch_length(RegressionDataset(10), args) == 2  # 10 examples, batches of 4, the last dropped


def trainer_epoch_length(dataset, args):
    trainer = Trainer(RegressionModel(), args, train_dataset=dataset, optimizers=sgd(RegressionModel()))
    return len(trainer.get_train_dataloader())
