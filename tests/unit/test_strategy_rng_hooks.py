"""The Strategy's RNG hooks in the Trainer: extra generator states travel in rng_state.pth, come back before
the first step of a resumed run, and ``begin_window`` opens every accumulation window (XLA's use of them is
tested in tests/xla). Also the re-tying of parameters a device move replaced."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tests.helpers import TokenDataset, TokenModel, quiet_args
from trainkit import SingleDeviceStrategy, Trainer, TrainerCallback
from trainkit.strategies.base import Strategy
from trainkit.strategies.tied_parameters import retie_parameters, tied_parameter_names


class GeneratorStrategy(SingleDeviceStrategy):
    """A CPU strategy with a generator of its own (a counter drawn once per window), like XLA's device one."""

    def __init__(self) -> None:
        super().__init__("cpu")
        self.counter = 0
        self.events: list[str] = []

    def begin_window(self) -> None:
        self.counter += 1
        self.events.append(f"window {self.counter}")

    def rng_state(self) -> dict[str, Any]:
        return {"counter": self.counter, "counter_tensor": torch.tensor([self.counter])}

    def load_rng_state(self, state: dict[str, Any]) -> None:
        self.events.append(f"load {state['counter']}")
        self.counter = int(state["counter"])


class StepEvents(TrainerCallback):
    def __init__(self, strategy: GeneratorStrategy) -> None:
        self.strategy = strategy

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.strategy.events.append(f"step {state.global_step + 1}")


class StopAfter(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            control.should_training_stop = True


def _trainer(folder: str, strategy: Strategy, callbacks: list[Any]) -> Trainer:
    args = quiet_args(
        folder,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        max_steps=4,
        save_strategy="steps",
        save_steps=2,
    )
    return Trainer(TokenModel(), args, train_dataset=TokenDataset(16), strategy=strategy, callbacks=callbacks)


def test_strategy_generator_states_are_saved_with_the_rng_part_and_restored_before_the_first_step(tmp_path):
    first = GeneratorStrategy()
    _trainer(str(tmp_path), first, [StopAfter(2)]).train()
    assert first.events == ["window 1", "window 2"]  # one window per optimizer step, not per micro-batch
    saved = torch.load(tmp_path / "checkpoint-2" / "rng_state.pth", weights_only=True)
    assert {"python", "numpy", "cpu"} <= set(saved)  # the base states stay
    assert saved["counter"] == 2
    assert torch.equal(saved["counter_tensor"], torch.tensor([2]))

    resumed = GeneratorStrategy()
    trainer = _trainer(str(tmp_path), resumed, [StepEvents(resumed)])
    trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert resumed.events == ["load 2", "window 3", "step 3", "window 4", "step 4"]


def test_the_base_strategy_adds_no_generator_state(tmp_path):
    _trainer(str(tmp_path), SingleDeviceStrategy("cpu"), [StopAfter(2)]).train()
    saved = torch.load(tmp_path / "checkpoint-2" / "rng_state.pth", weights_only=True)
    assert set(saved) == {"python", "numpy", "cpu"} | ({"cuda"} if torch.cuda.is_available() else set())


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(5, 3)
        self.block = nn.Sequential(nn.Linear(3, 3))
        self.head = nn.Linear(3, 5, bias=False)
        self.head.weight = self.embed.weight


def test_tied_parameter_names_and_retying_after_a_move_that_replaced_them():
    model = Tied()
    groups = tied_parameter_names(model)
    assert groups == [["embed.weight", "head.weight"]]
    # what Module.to does on XLA: each holder gets a new Parameter
    model.head.weight = nn.Parameter(model.embed.weight.detach().clone())
    model.embed.weight = nn.Parameter(model.embed.weight.detach().clone())
    assert model.head.weight is not model.embed.weight
    retie_parameters(model, groups)
    assert model.head.weight is model.embed.weight
    assert tied_parameter_names(model) == groups
    assert len(list(model.parameters())) == 3  # embed (= head), block.0's weight and bias
