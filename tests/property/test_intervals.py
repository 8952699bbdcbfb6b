"""Hypothesis: the steps at which log / evaluate / save fire follow transformers' documented rules.

The oracle below is written from the documentation (DefaultFlowCallback), independently of
trainkit's code; a real Trainer run records what its flow callback decided.
"""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import RegressionDataset, RegressionModel, quiet_args
from trainkit import Trainer, TrainerCallback


class Recorder(TrainerCallback):
    """Records the flow decisions, then clears evaluate/save (which other issues implement)."""

    def __init__(self) -> None:
        self.events: set[tuple[str, str, int]] = set()

    def _take(self, where, state, control):
        for kind in ("log", "evaluate", "save"):
            if getattr(control, f"should_{kind}"):
                self.events.add((where, kind, state.global_step))
        control.should_evaluate = False
        control.should_save = False

    def on_step_end(self, args, state, control, **kwargs):
        self._take("step", state, control)

    def on_epoch_end(self, args, state, control, **kwargs):
        self._take("epoch", state, control)


def resolve(value, max_steps):
    return math.ceil(max_steps * value) if value < 1 else int(value)


def oracle(n, batch, accum, epochs, max_steps_arg, log_s, log_n, first, eval_s, eval_n, delay, save_s, save_n):
    batches = math.ceil(n / batch)
    updates = math.ceil(batches / accum)
    max_steps = max_steps_arg if max_steps_arg > 0 else math.ceil(epochs * updates)
    log_n, save_n = resolve(log_n, max_steps), resolve(save_n, max_steps)
    eval_n = resolve(eval_n, max_steps)
    events = set()
    step = 0
    epoch = 0
    while True:
        consumed = 0
        for _ in range(updates):
            step += 1
            consumed = min(consumed + accum, batches)
            end = step >= max_steps
            if (log_s == "steps" and (step % log_n == 0 or end)) or (step == 1 and first):
                events.add(("step", "log", step))
            if eval_s == "steps" and step >= delay and (step % eval_n == 0 or end):
                events.add(("step", "evaluate", step))
            if save_s == "steps" and (step % save_n == 0 or end):
                events.add(("step", "save", step))
            if end:
                break
        state_epoch = epoch + consumed / batches
        if log_s == "epoch":
            events.add(("epoch", "log", step))
        if eval_s == "epoch" and delay <= state_epoch:
            events.add(("epoch", "evaluate", step))
        if save_s == "epoch":
            events.add(("epoch", "save", step))
        epoch += 1
        if step >= max_steps:
            return events


strategies_ = st.sampled_from(["no", "steps", "epoch"])
interval = st.one_of(st.integers(1, 7), st.sampled_from([0.1, 0.25, 0.5, 0.9]))


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 30),
    batch=st.integers(1, 4),
    accum=st.integers(1, 3),
    epochs=st.sampled_from([1, 2, 0.5, 1.5, 3]),
    max_steps=st.sampled_from([-1, -1, 1, 5, 9]),
    log_s=strategies_,
    log_n=interval,
    first=st.booleans(),
    eval_s=strategies_,
    eval_n=interval,
    delay=st.sampled_from([0, 0, 1, 2, 5]),
    save_s=strategies_,
    save_n=interval,
)
def test_flow_matches_documented_rules(
    tmp_path_factory, n, batch, accum, epochs, max_steps, log_s, log_n, first, eval_s, eval_n, delay, save_s, save_n
):
    recorder = Recorder()
    args = quiet_args(
        str(tmp_path_factory.mktemp("flow")),
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accum,
        num_train_epochs=epochs,
        max_steps=max_steps,
        logging_strategy=log_s,
        logging_steps=log_n,
        logging_first_step=first,
        save_strategy=save_s,
        save_steps=save_n,
    )
    # evaluation is configured on the args object directly (the eval loop is not needed to decide *when*)
    args.eval_strategy, args.eval_steps, args.eval_delay = eval_s, eval_n, delay
    model = RegressionModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    trainer = Trainer(
        model,
        args,
        train_dataset=RegressionDataset(n),
        eval_dataset=RegressionDataset(2),
        optimizers=(optimizer, scheduler),
        callbacks=[recorder],
    )
    trainer.train()
    expected = oracle(n, batch, accum, epochs, max_steps, log_s, log_n, first, eval_s, eval_n, delay, save_s, save_n)
    assert recorder.events == expected
