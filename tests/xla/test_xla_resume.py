"""Checkpoints and resume on XLA (CPU PJRT): a run resumed from a checkpoint equals the uninterrupted one.

Resumed runs are compared bit for bit with the uninterrupted XLA run (measured: equal), and with the
single-device CPU run within the tolerances of tests/xla/helpers (the device's own rounding).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

torch_xla = pytest.importorskip("torch_xla")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from tests.helpers import StreamDataset, TokenDataset, TokenModel, quiet_args  # noqa: E402
from tests.xla.helpers import (  # noqa: E402
    FP32_TOLERANCE,
    HALF_TOLERANCE,
    RunResult,
    StopAfter,
    VariableLengthTokens,
    assert_runs_agree,
    max_weight_difference,
    pad_collate,
    resume_evaluate_predict,
    train_evaluate_predict,
)
from trainkit import Trainer, TrainerCallback  # noqa: E402
from trainkit.precision.amp import MixedPrecision  # noqa: E402
from trainkit.strategies.single_device import SingleDeviceStrategy  # noqa: E402
from trainkit.strategies.xla import XLAStrategy  # noqa: E402

pytestmark = pytest.mark.xla

EXACT = 0.0
DROPOUT = 0.3


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    return train_evaluate_predict(SingleDeviceStrategy("cpu"), str(tmp_path_factory.mktemp("cpu")))


@pytest.fixture(scope="module")
def xla_run(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    return train_evaluate_predict(XLAStrategy(), str(tmp_path_factory.mktemp("xla")))


@pytest.fixture(scope="module")
def dropout_run(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    return train_evaluate_predict(XLAStrategy(), str(tmp_path_factory.mktemp("dropout")), dropout=DROPOUT)


# ------------------------------------------------------------------ resume equals the uninterrupted run
def test_resumed_run_equals_the_uninterrupted_xla_run_and_the_cpu_run(
    cpu_run: RunResult, xla_run: RunResult, tmp_path: Path
):
    resumed = resume_evaluate_predict(XLAStrategy, str(tmp_path), stop_after=3)
    assert next(resumed.trainer.model.parameters()).device.type == "xla"
    assert_runs_agree(xla_run, resumed, EXACT)
    assert_runs_agree(cpu_run, resumed, FP32_TOLERANCE)


@pytest.mark.parametrize("flag", ["bf16", "fp16"])
def test_mixed_precision_resume_equals_the_uninterrupted_run(flag: str, tmp_path: Path):
    cpu = train_evaluate_predict(SingleDeviceStrategy("cpu"), str(tmp_path / "cpu"), **{flag: True})
    full = train_evaluate_predict(XLAStrategy(), str(tmp_path / "full"), **{flag: True})
    resumed = resume_evaluate_predict(XLAStrategy, str(tmp_path / "cut"), stop_after=3, **{flag: True})
    assert resumed.trainer.strategy.precision.name == f"{flag}-mixed"
    assert_runs_agree(full, resumed, EXACT)
    assert_runs_agree(cpu, resumed, HALF_TOLERANCE, relative=HALF_TOLERANCE)


def _state_devices(optimizer: torch.optim.Optimizer) -> list[dict[str, str]]:
    return [{k: v.device.type for k, v in s.items() if isinstance(v, torch.Tensor)} for s in optimizer.state.values()]


def test_adamw_torch_xla_resumes_its_state_onto_the_device(cpu_run: RunResult, xla_run: RunResult, tmp_path: Path):
    from torch_xla.amp.syncfree import AdamW

    resumed = resume_evaluate_predict(XLAStrategy, str(tmp_path), stop_after=3, optim="adamw_torch_xla")
    optimizer = resumed.trainer.optimizer
    assert type(optimizer) is AdamW
    # where the uninterrupted run keeps each tensor: the moments on the device, torch's step counter on the host
    assert _state_devices(optimizer) == _state_devices(xla_run.trainer.optimizer)
    assert _state_devices(optimizer)[0] == {"exp_avg": "xla", "exp_avg_sq": "xla", "step": "cpu"}
    assert_runs_agree(cpu_run, resumed, FP32_TOLERANCE)


class ScaleRecorder(TrainerCallback):
    def __init__(self, scaler: torch.amp.GradScaler) -> None:
        self.scaler = scaler
        self.scales: list[float] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.scales.append(self.scaler.get_scale())


def _overflowing_scaler_strategy() -> XLAStrategy:
    """fp16 whose GradScaler starts so high that the first steps overflow: it halves its scale at each of them
    (a resume that forgot it would start high again and skip the steps the uninterrupted run takes).

    Its growth settings stay torch's defaults: torch_xla 2.9 caches the scale-update graph without
    ``growth_interval`` and ``growth_factor``, so a GradScaler with others would run the graph an
    earlier test compiled (docs/xla.md).
    """
    scaler = torch.amp.GradScaler("xla", init_scale=2.0**20)
    return XLAStrategy(precision=MixedPrecision("fp16", scaler=scaler))


def _token_model(seed: int = 0) -> nn.Module:
    return TokenModel(seed=seed)


def _cpu_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def _short_run(folder: Path, strategy: Any, seed: int = 0, callbacks: Any = (), resume: str | None = None) -> Trainer:
    args = quiet_args(
        str(folder), per_device_train_batch_size=4, max_steps=6, learning_rate=0.05, save_strategy="steps", save_steps=3
    )
    trainer = Trainer(
        _token_model(seed), args, train_dataset=TokenDataset(48), strategy=strategy, callbacks=list(callbacks)
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def test_resume_restores_the_grad_scaler_on_xla(tmp_path: Path):
    full_strategy = _overflowing_scaler_strategy()
    full_scales = ScaleRecorder(full_strategy.precision.scaler)
    full = _short_run(tmp_path / "full", full_strategy, callbacks=[full_scales])
    # the first two steps overflow and halve the scale; the other four update the weights
    assert full_scales.scales == [2.0**19] + [2.0**18] * 5
    assert full.state.skipped_steps == 2
    _short_run(tmp_path / "cut", _overflowing_scaler_strategy(), callbacks=[StopAfter(3)])
    saved = torch.load(tmp_path / "cut" / "checkpoint-3" / "scaler.pt", weights_only=True)
    assert (saved["scale"], saved["_growth_tracker"]) == (2.0**18, 1)
    resumed_strategy = _overflowing_scaler_strategy()
    resumed_scales = ScaleRecorder(resumed_strategy.precision.scaler)
    resumed = _short_run(
        tmp_path / "cut",
        resumed_strategy,
        seed=1,
        callbacks=[resumed_scales],
        resume=str(tmp_path / "cut" / "checkpoint-3"),
    )
    assert resumed_scales.scales == full_scales.scales[3:]
    assert max_weight_difference(_cpu_weights(full.model), _cpu_weights(resumed.model)) == 0.0


class DeviceCopiesAtStepEnd(TrainerCallback):
    def __init__(self, strategy: XLAStrategy) -> None:
        self.strategy = strategy
        self.counts: list[int] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.counts.append(len(self.strategy._device_copies))


def test_iterable_dataset_resume_equals_the_uninterrupted_run_and_drops_the_skipped_batches(tmp_path: Path):
    """An IterableDataset is skipped by reading its batches: the device loader sends them, nobody takes them."""

    def run(folder: Path, seed: int = 0, stop: int | None = None, resume: str | None = None) -> Any:
        strategy = XLAStrategy(prefetch=2)
        copies = DeviceCopiesAtStepEnd(strategy)
        args = quiet_args(
            str(folder),
            per_device_train_batch_size=2,
            max_steps=8,
            learning_rate=0.05,
            save_strategy="steps",
            save_steps=5,
        )
        callbacks = [copies] + ([StopAfter(stop)] if stop else [])
        data = StreamDataset(TokenDataset(40))
        trainer = Trainer(_token_model(seed), args, train_dataset=data, strategy=strategy, callbacks=callbacks)
        trainer.train(resume_from_checkpoint=resume)
        return _cpu_weights(trainer.model), copies.counts

    full, _ = run(tmp_path / "full")
    run(tmp_path / "cut", stop=5)
    resumed, counts = run(tmp_path / "cut", seed=1, resume=str(tmp_path / "cut" / "checkpoint-5"))
    assert max_weight_difference(full, resumed) == 0.0
    assert counts == [2, 2, 2]  # only the two batches sent ahead; the five skipped ones are dropped


# ------------------------------------------------------------------ the device generator (dropout)
def test_resume_with_dropout_draws_the_uninterrupted_runs_random_numbers(dropout_run: RunResult, tmp_path: Path):
    resumed = resume_evaluate_predict(XLAStrategy, str(tmp_path), stop_after=3, dropout=DROPOUT)
    assert_runs_agree(dropout_run, resumed, EXACT)
    rng = torch.load(tmp_path / "checkpoint-3" / "rng_state.pth", weights_only=True)  # ints and tensors only
    assert {"python", "numpy", "cpu", "xla"} <= set(rng)
    assert isinstance(rng["xla"], int)


def test_without_the_xla_generator_state_the_resumed_dropout_differs(
    dropout_run: RunResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The test above has power: dropout draws on the device, so a resume that ignores its state drifts."""
    monkeypatch.setattr(XLAStrategy, "load_rng_state", lambda self, state: None)
    resumed = resume_evaluate_predict(XLAStrategy, str(tmp_path), stop_after=3, dropout=DROPOUT)
    assert resumed.losses[:3] == dropout_run.losses[:3]
    assert resumed.losses[3:] != dropout_run.losses[3:]


def test_evaluation_and_checkpoints_between_steps_leave_the_training_random_numbers_alone(
    dropout_run: RunResult, tmp_path: Path
):
    """Their step marks advance XLA's generator; each window starts from where the last optimizer step left it."""
    busy = train_evaluate_predict(
        XLAStrategy(),
        str(tmp_path),
        dropout=DROPOUT,
        eval_strategy="steps",
        eval_steps=1,
        eval_dataset=VariableLengthTokens(),
        save_strategy="steps",
        save_steps=2,
    )
    assert busy.losses == dropout_run.losses
    assert max_weight_difference(busy.weights, dropout_run.weights) == 0.0


def test_seed_sets_the_xla_generator(dropout_run: RunResult, tmp_path: Path):
    """torch.manual_seed does not reach XLA's generator: the strategy seeds it at setup from the run's seed."""
    again = train_evaluate_predict(XLAStrategy(), str(tmp_path / "again"), dropout=DROPOUT)
    other = train_evaluate_predict(XLAStrategy(), str(tmp_path / "other"), dropout=DROPOUT, seed=43)
    assert again.losses == dropout_run.losses
    assert other.losses != dropout_run.losses


# ------------------------------------------------------------------ weights on the CPU: tied, save_model, best model
class TiedTokenModel(nn.Module):
    """Embedding and output layer share one weight, as in most language models."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.embed = nn.Embedding(11, 8)
        self.head = nn.Linear(8, 11, bias=False)
        self.head.weight = self.embed.weight
        with torch.no_grad():
            self.embed.weight.copy_(torch.randn(11, 8, generator=g) * 0.3)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
        logits = self.head(self.embed(input_ids))
        out: dict[str, Any] = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits.reshape(-1, 11), labels.reshape(-1), ignore_index=-100)
        return out


def test_tied_weights_stay_tied_on_xla_train_as_on_the_cpu_and_are_saved_once(tmp_path: Path):
    from safetensors import safe_open

    def run(strategy: Any, folder: str) -> Trainer:
        args = quiet_args(
            folder, per_device_train_batch_size=4, max_steps=3, learning_rate=0.05, save_strategy="steps", save_steps=3
        )
        trainer = Trainer(TiedTokenModel(), args, train_dataset=TokenDataset(24), strategy=strategy)
        trainer.train()
        return trainer

    cpu = run(SingleDeviceStrategy("cpu"), str(tmp_path / "cpu"))
    xla = run(XLAStrategy(), str(tmp_path / "xla"))
    model = xla.model
    assert model.head.weight is model.embed.weight  # moving to XLA replaces parameters: re-tied
    assert len(list(model.parameters())) == 1
    assert max_weight_difference(_cpu_weights(cpu.model), _cpu_weights(model)) <= FP32_TOLERANCE
    xla.save_model(str(tmp_path / "saved"))
    for file in (tmp_path / "xla" / "checkpoint-3" / "model.safetensors", tmp_path / "saved" / "model.safetensors"):
        with safe_open(str(file), framework="pt") as handle:
            assert list(handle.keys()) == ["embed.weight"]
            assert json.loads(handle.metadata()["trainkit_aliases"]) == {"head.weight": "embed.weight"}
            assert torch.equal(handle.get_tensor("embed.weight"), model.embed.weight.cpu())


def test_save_model_writes_the_device_weights_from_the_cpu(xla_run: RunResult, tmp_path: Path):
    from safetensors.torch import load_file

    trainer = xla_run.trainer
    trainer.save_model(str(tmp_path))
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert saved.keys() == xla_run.weights.keys()
    for name, value in trainer.model.state_dict().items():
        assert value.device.type == "xla"
        assert torch.equal(saved[name], value.cpu())
    assert json.loads((tmp_path / "training_args.json").read_text())["max_steps"] == 6
    fresh = _token_model(seed=1)
    fresh.load_state_dict(saved)  # strict: the file is a plain CPU state dict
    batch = pad_collate([VariableLengthTokens()[0]])
    expected = trainer.model(**trainer.strategy.batch_to_device(batch))["logits"].cpu()
    assert torch.allclose(fresh(**batch)["logits"], expected, atol=FP32_TOLERANCE)


class ScriptedEvalLoss(TrainerCallback):
    """Replaces eval_loss by a script, so that the best checkpoint is known."""

    def __init__(self, values: list[float]) -> None:
        self.values = list(values)

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None, **kwargs: Any) -> None:
        metrics["eval_loss"] = self.values.pop(0)


def test_load_best_model_at_end_puts_the_best_weights_on_the_device(tmp_path: Path):
    from safetensors.torch import load_file

    args = quiet_args(
        str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=6,
        learning_rate=0.05,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        load_best_model_at_end=True,
    )
    trainer = Trainer(
        _token_model(),
        args,
        train_dataset=TokenDataset(48),
        eval_dataset=TokenDataset(8),
        strategy=XLAStrategy(),
        callbacks=[ScriptedEvalLoss([3.0, 1.0, 2.0])],
    )
    trainer.train()
    assert trainer.state.best_model_checkpoint == str(tmp_path / "checkpoint-4")
    best = load_file(str(tmp_path / "checkpoint-4" / "model.safetensors"))
    for name, value in trainer.model.state_dict().items():
        assert value.device.type == "xla"
        assert torch.equal(value.cpu(), best[name])
