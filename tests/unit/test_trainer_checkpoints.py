"""Trainer checkpoints: layout, best model, rotation, save_only_model, callbacks, errors, save_model."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

from tests.helpers import RegressionDataset, RegressionModel, TokenDataset, TokenModel, quiet_args
from trainkit import EarlyStoppingCallback, Trainer, TrainerCallback, get_last_checkpoint
from trainkit.checkpoint import CheckpointError


def args_for(tmp_path, **kw):
    defaults = dict(per_device_train_batch_size=4, learning_rate=0.05, save_strategy="steps", save_steps=2)
    defaults.update(kw)
    return quiet_args(str(tmp_path), **defaults)


def test_checkpoint_layout(tmp_path):
    model = RegressionModel()
    trainer = Trainer(model, args_for(tmp_path, max_steps=2), train_dataset=RegressionDataset(16))
    trainer.train()
    folder = tmp_path / "checkpoint-2"
    names = set(os.listdir(folder))
    assert {
        "model.safetensors",
        "optimizer.pt",
        "scheduler.pt",
        "rng_state.pth",
        "trainer_state.json",
        "training_args.json",
        "manifest.json",
    } <= names
    state = json.loads((folder / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert json.loads((folder / "training_args.json").read_text())["save_steps"] == 2
    assert get_last_checkpoint(str(tmp_path)) == str(folder)


def test_torch_format_with_save_safetensors_false(tmp_path):
    model = RegressionModel()
    Trainer(model, args_for(tmp_path, max_steps=2, save_safetensors=False), train_dataset=RegressionDataset(16)).train()
    assert "pytorch_model.bin" in os.listdir(tmp_path / "checkpoint-2")


class ScriptedLoss(TrainerCallback):
    """Replaces eval_loss by a script, to control which checkpoint is the best."""

    def __init__(self, values):
        self.values = list(values)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        metrics["eval_loss"] = self.values.pop(0)


def _best_model_run(tmp_path, values, **kw):
    model = RegressionModel()
    args = args_for(
        tmp_path, max_steps=2 * len(values), eval_strategy="steps", eval_steps=2, load_best_model_at_end=True, **kw
    )
    trainer = Trainer(
        model,
        args,
        train_dataset=RegressionDataset(32),
        eval_dataset=RegressionDataset(4),
        callbacks=[ScriptedLoss(values)],
    )
    trainer.train()
    return trainer, model


def test_load_best_model_at_end_and_rotation(tmp_path):
    from safetensors.torch import load_file

    trainer, model = _best_model_run(tmp_path, [3.0, 1.0, 2.0, 4.0], save_total_limit=2)
    assert trainer.state.best_model_checkpoint == str(tmp_path / "checkpoint-4")
    assert trainer.state.best_metric == 1.0
    assert sorted(p for p in os.listdir(tmp_path) if p.startswith("checkpoint-")) == ["checkpoint-4", "checkpoint-8"]
    best = load_file(str(tmp_path / "checkpoint-4" / "model.safetensors"))
    assert torch.equal(model.a.detach(), best["a"])  # the best weights are loaded at the end


def test_save_total_limit_one_keeps_only_the_best_at_the_end(tmp_path):
    _best_model_run(tmp_path, [3.0, 1.0, 2.0], save_total_limit=1)
    checkpoints = sorted(p for p in os.listdir(tmp_path) if p.startswith("checkpoint-"))
    assert checkpoints == ["checkpoint-4"]


def test_save_strategy_best(tmp_path):
    model = RegressionModel()
    args = args_for(
        tmp_path, max_steps=8, eval_strategy="steps", eval_steps=2, save_strategy="best", metric_for_best_model="loss"
    )
    trainer = Trainer(
        model,
        args,
        train_dataset=RegressionDataset(32),
        eval_dataset=RegressionDataset(4),
        callbacks=[ScriptedLoss([3.0, 1.0, 2.0, 0.5])],
    )
    trainer.train()
    # the first evaluation is a best too (there is none before it): saved at 2, 4 and 8, not at 6
    saved = sorted(p for p in os.listdir(tmp_path) if p.startswith("checkpoint-"))
    assert saved == ["checkpoint-2", "checkpoint-4", "checkpoint-8"]
    assert trainer.state.best_model_checkpoint == str(tmp_path / "checkpoint-8")


def test_save_only_model_cannot_resume(tmp_path):
    model = RegressionModel()
    Trainer(model, args_for(tmp_path, max_steps=2, save_only_model=True), train_dataset=RegressionDataset(16)).train()
    assert "optimizer.pt" not in os.listdir(tmp_path / "checkpoint-2")
    args = args_for(tmp_path, max_steps=4, save_only_model=True)
    trainer = Trainer(RegressionModel(), args, train_dataset=RegressionDataset(16))
    with pytest.raises(CheckpointError, match=r"cannot be resumed from.*save_only_model"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))


def test_resume_path_that_does_not_exist_lists_checkpoints(tmp_path):
    model = RegressionModel()
    Trainer(model, args_for(tmp_path, max_steps=4), train_dataset=RegressionDataset(16)).train()
    trainer = Trainer(RegressionModel(), args_for(tmp_path, max_steps=6), train_dataset=RegressionDataset(16))
    with pytest.raises(CheckpointError, match=r"does not exist.*checkpoint-2.*checkpoint-4"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-3"))


def test_checkpoint_that_does_not_fit_names_the_keys(tmp_path):
    Trainer(RegressionModel(), args_for(tmp_path, max_steps=2), train_dataset=RegressionDataset(16)).train()

    class Other(RegressionModel):
        def __init__(self):
            super().__init__()
            self.c = nn.Parameter(torch.tensor(0.0))

    trainer = Trainer(Other(), args_for(tmp_path, max_steps=4), train_dataset=RegressionDataset(16))
    with pytest.raises(CheckpointError, match=r"missing keys.*\bc\b"):
        trainer.train(resume_from_checkpoint=True)


def test_fresh_run_into_a_folder_with_checkpoints(tmp_path):
    Trainer(RegressionModel(), args_for(tmp_path, max_steps=2), train_dataset=RegressionDataset(16)).train()
    trainer = Trainer(RegressionModel(), args_for(tmp_path, max_steps=2), train_dataset=RegressionDataset(16))
    with pytest.raises(CheckpointError, match="overwrite_output_dir"):
        trainer.train()
    again = Trainer(
        RegressionModel(),
        args_for(tmp_path, max_steps=2, overwrite_output_dir=True),
        train_dataset=RegressionDataset(16),
    )
    assert again.train().global_step == 2


def test_callback_states_are_restored(tmp_path):
    stopper = EarlyStoppingCallback(early_stopping_patience=5)
    args = args_for(
        tmp_path,
        max_steps=6,
        eval_strategy="steps",
        eval_steps=2,
        metric_for_best_model="loss",
        restore_callback_states_from_checkpoint=True,
    )
    trainer = Trainer(
        RegressionModel(),
        args,
        train_dataset=RegressionDataset(32),
        eval_dataset=RegressionDataset(4),
        callbacks=[stopper, ScriptedLoss([1.0, 2.0, 3.0])],
    )
    trainer.train()
    assert stopper.early_stopping_patience_counter == 2
    fresh = EarlyStoppingCallback(early_stopping_patience=5)
    args = args_for(
        tmp_path,
        max_steps=8,
        eval_strategy="steps",
        eval_steps=2,
        metric_for_best_model="loss",
        restore_callback_states_from_checkpoint=True,
    )
    resumed = Trainer(
        RegressionModel(),
        args,
        train_dataset=RegressionDataset(32),
        eval_dataset=RegressionDataset(4),
        callbacks=[fresh, ScriptedLoss([4.0])],
    )
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-6"))
    assert fresh.early_stopping_patience_counter == 3


def test_ignore_data_skip_restarts_the_epoch(tmp_path):
    seen = {}

    class Watch(RegressionModel):
        def forward(self, input_x, labels=None):
            seen.setdefault(key, []).append(input_x.tolist())
            return super().forward(input_x, labels)

    key = "full"
    Trainer(Watch(), args_for(tmp_path / "a", max_steps=4), train_dataset=RegressionDataset(16)).train()
    key = "cut"
    Trainer(Watch(), args_for(tmp_path / "b", max_steps=2), train_dataset=RegressionDataset(16)).train()
    for mode, skip in (("resumed", False), ("ignored", True)):
        key = mode
        args = args_for(tmp_path / "b", max_steps=4, ignore_data_skip=skip)
        Trainer(Watch(), args, train_dataset=RegressionDataset(16)).train(
            resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-2")
        )
    assert seen["resumed"] == seen["full"][2:]
    assert seen["ignored"] == seen["full"][:2]


def test_save_model_ties_and_config(tmp_path):
    from safetensors.torch import safe_open

    class Config:
        def save_pretrained(self, folder):
            with open(os.path.join(folder, "config.json"), "w") as fh:
                fh.write("{}")

    class Tied(TokenModel):
        def __init__(self):
            super().__init__(vocab=8, dim=8)
            self.head.weight = self.embed.weight
            self.config = Config()

    model = Tied()
    trainer = Trainer(model, quiet_args(str(tmp_path)))
    trainer.save_model(str(tmp_path / "out"))
    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as fh:
        keys = set(fh.keys())
    assert ("embed.weight" in keys) != ("head.weight" in keys)  # the tied tensor is written once
    assert (tmp_path / "out" / "config.json").exists()
    assert (tmp_path / "out" / "training_args.json").exists()
    restored = Tied()
    from trainkit.checkpoint.weights import load_state_dict_file

    restored.load_state_dict(load_state_dict_file(tmp_path / "out" / "model.safetensors"))
    assert restored.head.weight is restored.embed.weight
    assert torch.equal(restored.embed.weight, model.embed.weight)


def test_resume_restores_scheduler_and_optimizer(tmp_path):
    args = args_for(tmp_path, max_steps=4, lr_scheduler_type="linear", warmup_steps=1)
    Trainer(TokenModel(), args, train_dataset=TokenDataset(16)).train()
    trainer = Trainer(
        TokenModel(),
        args_for(tmp_path, max_steps=6, lr_scheduler_type="linear", warmup_steps=1),
        train_dataset=TokenDataset(16),
    )
    trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-4"))
    assert trainer.state.global_step == 6
    assert trainer.lr_scheduler.last_epoch == 6


def test_resume_skips_batches_without_loading_their_samples(tmp_path):
    class Counting(RegressionDataset):
        loads: list = []

        def __getitem__(self, i):
            Counting.loads.append(i)
            return super().__getitem__(i)

    Trainer(RegressionModel(), args_for(tmp_path, max_steps=3), train_dataset=Counting(16)).train()
    Counting.loads = []
    trainer = Trainer(RegressionModel(), args_for(tmp_path, max_steps=4), train_dataset=Counting(16))
    trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert len(Counting.loads) == 2 * 4  # steps 3 and 4 only: the 8 examples of steps 1-2 are never read


def test_iterable_dataset_resume_skips_the_consumed_batches(tmp_path):
    from tests.helpers import StreamDataset

    def train(folder, max_steps, resume=None):
        model = RegressionModel()
        args = args_for(folder, max_steps=max_steps, lr_scheduler_type="constant", overwrite_output_dir=True)
        Trainer(model, args, train_dataset=StreamDataset(RegressionDataset(40))).train(resume_from_checkpoint=resume)
        return model

    full = train(tmp_path / "full", 6)
    train(tmp_path / "cut", 4)
    resumed = train(tmp_path / "cut", 6, resume=str(tmp_path / "cut" / "checkpoint-4"))
    assert torch.equal(full.a, resumed.a)
    assert torch.equal(full.b, resumed.b)
