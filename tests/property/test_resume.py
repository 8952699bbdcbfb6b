"""Hypothesis: a run interrupted at step k and resumed in a new Trainer equals the uninterrupted run, bit for bit."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import TokenDataset, TokenModel, quiet_args
from trainkit import Trainer, TrainerCallback

TOTAL = 8


class StopAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def run(tmp, accumulation, stop=None, resume=None, seed_model=0):
    torch.manual_seed(seed_model)  # a resumed run starts from other weights: the checkpoint must restore them
    model = TokenModel(seed=seed_model, dropout=0.3)
    args = quiet_args(
        tmp,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=accumulation,
        max_steps=TOTAL,
        learning_rate=0.05,
        warmup_steps=2,
        weight_decay=0.01,
        logging_strategy="steps",
        logging_steps=1,
        save_strategy="steps",
        save_steps=1,
        seed=3,
        overwrite_output_dir=True,
    )
    callbacks = [StopAt(stop)] if stop else []
    trainer = Trainer(model, args, train_dataset=TokenDataset(length=9, seq=5), callbacks=callbacks)
    trainer.train(resume_from_checkpoint=resume)
    losses = {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}
    return model.state_dict(), losses, trainer


@settings(max_examples=12, deadline=None)
@given(accumulation=st.integers(1, 3), stop=st.integers(1, TOTAL - 1))
def test_resume_is_bit_identical(tmp_path_factory, accumulation, stop):
    full_weights, full_losses, _ = run(str(tmp_path_factory.mktemp("full")), accumulation)
    tmp = str(tmp_path_factory.mktemp("cut"))
    run(tmp, accumulation, stop=stop)
    weights, losses, trainer = run(tmp, accumulation, resume=f"{tmp}/checkpoint-{stop}", seed_model=1)
    assert trainer.state.global_step == TOTAL
    for name, value in full_weights.items():
        assert torch.equal(weights[name], value), name
    assert {s: v for s, v in losses.items() if s > stop} == {s: v for s, v in full_losses.items() if s > stop}


def test_resume_true_takes_the_last_checkpoint(tmp_path):
    run(str(tmp_path), 1, stop=3)
    _, _, trainer = run(str(tmp_path), 1, resume=True, seed_model=1)
    assert trainer.state.global_step == TOTAL
