"""A short Trainer run (train, evaluate, predict) shared by the XLA tests and the SPMD script.

Tolerances (measured on CPU PJRT, torch_xla 2.9.0, by benchmarks/xla_agreement.py; docs/xla.md):
fp32 runs on XLA agree with the CPU run to 4.8e-7 in the losses and 1.2e-7 in the weights, SPMD over
two virtual devices with one XLA device to the same order; bf16/fp16 mixed precision on XLA agree
with the CPU's to 1.6e-3 in the weights and 3.9e-3 in the predictions (one bf16 ulp near 1).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from tests.helpers import IGNORE, TokenDataset, TokenModel, quiet_args
from trainkit import TrainerCallback

FP32_TOLERANCE = 1e-5  # absolute, on losses, weights, predictions (measured: <= 4.8e-7)
HALF_TOLERANCE = 1e-2  # absolute and relative, bf16/fp16 mixed precision against the CPU's (measured: <= 3.9e-3)


class VariableLengthTokens(Dataset[dict[str, torch.Tensor]]):
    """Sequences of 2 to 6 tokens, so that predictions are padded with -100 across batches."""

    def __init__(self, length: int = 10, vocab: int = 11, seed: int = 3) -> None:
        g = torch.Generator().manual_seed(seed)
        sizes = torch.randint(2, 7, (length,), generator=g).tolist()
        self.items = [
            {
                "input_ids": torch.randint(0, vocab, (n,), generator=g),
                "labels": torch.randint(0, vocab, (n,), generator=g),
            }
            for n in sizes
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.items[i]


def pad_collate(examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sequence of the batch: input_ids with 0, labels with -100."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.zeros(len(examples), width, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for row, e in enumerate(examples):
        ids[row, : len(e["input_ids"])] = e["input_ids"]
        labels[row, : len(e["labels"])] = e["labels"]
    return {"input_ids": ids, "labels": labels}


@dataclass
class RunResult:
    losses: list[float]
    grad_norms: list[float]
    eval_loss: float
    predictions: np.ndarray
    label_ids: np.ndarray
    weights: dict[str, torch.Tensor]
    trainer: Any


TRAINING = {
    "per_device_train_batch_size": 4,
    "per_device_eval_batch_size": 4,
    "gradient_accumulation_steps": 2,
    "max_steps": 6,
    "learning_rate": 0.05,
    "warmup_steps": 2,
    "max_grad_norm": 1.0,
    "logging_strategy": "steps",
    "logging_steps": 1,
    "log_level": "error",
}


class StopAfter(TrainerCallback):
    """Ends training after optimizer step ``step`` (an interruption; the step's checkpoint is written first)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            control.should_training_stop = True


def _trainer(strategy: Any, output_dir: str, model: Any, callbacks: list[Any], **overrides: Any) -> Any:
    from trainkit import Trainer

    eval_dataset = overrides.pop("eval_dataset", None)
    args = quiet_args(output_dir, **{**TRAINING, **overrides})
    return Trainer(
        model,
        args,
        train_dataset=TokenDataset(48),
        eval_dataset=eval_dataset,
        data_collator=pad_collate,
        strategy=strategy,
        callbacks=callbacks,
    )


def _evaluate_predict(trainer: Any) -> RunResult:
    history = trainer.state.log_history
    eval_loss = trainer.evaluate(VariableLengthTokens())["eval_loss"]
    output = trainer.predict(VariableLengthTokens())
    weights = {k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()}
    return RunResult(
        losses=[h["loss"] for h in history if "loss" in h],
        grad_norms=[h["grad_norm"] for h in history if "grad_norm" in h],
        eval_loss=eval_loss,
        predictions=np.asarray(output.predictions),
        label_ids=np.asarray(output.label_ids),
        weights=weights,
        trainer=trainer,
    )


def train_evaluate_predict(strategy: Any, output_dir: str, **overrides: Any) -> RunResult:
    """Six optimizer steps of a token model (accumulation 2, clipping, warmup + linear decay), then
    evaluate and predict on variable-length sequences."""
    trainer = _trainer(strategy, output_dir, TokenModel(dropout=overrides.pop("dropout", 0.0)), [], **overrides)
    trainer.train()
    return _evaluate_predict(trainer)


def resume_evaluate_predict(
    make_strategy: Callable[[], Any], output_dir: str, stop_after: int, callbacks: Sequence[Any] = (), **overrides: Any
) -> RunResult:
    """``train_evaluate_predict`` interrupted after step ``stop_after`` (checkpointed), then resumed by a new
    Trainer with a new strategy and a model of other initial weights (the checkpoint must restore them).

    The losses are the whole run's: the resumed Trainer's history holds the interrupted one's.
    """
    dropout = overrides.pop("dropout", 0.0)
    overrides = {"save_strategy": "steps", "save_steps": stop_after, **overrides}
    first = _trainer(make_strategy(), output_dir, TokenModel(dropout=dropout), [StopAfter(stop_after)], **overrides)
    first.train()
    assert first.state.global_step == stop_after
    second = _trainer(make_strategy(), output_dir, TokenModel(seed=1, dropout=dropout), list(callbacks), **overrides)
    second.train(resume_from_checkpoint=os.path.join(output_dir, f"checkpoint-{stop_after}"))
    assert second.state.global_step == TRAINING["max_steps"]
    return _evaluate_predict(second)


def max_weight_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def assert_runs_agree(expected: RunResult, actual: RunResult, tolerance: float, relative: float = 0.0) -> None:
    """Same losses, gradient norms, evaluation loss, predictions (with the same -100 padding) and weights.

    ``relative`` loosens the predictions' comparison by that fraction of their size (half-precision logits).
    """
    assert len(actual.losses) == len(expected.losses) == 6
    np.testing.assert_allclose(actual.losses, expected.losses, rtol=0, atol=tolerance)
    np.testing.assert_allclose(actual.grad_norms, expected.grad_norms, rtol=0, atol=tolerance)
    assert abs(actual.eval_loss - expected.eval_loss) <= tolerance
    np.testing.assert_array_equal(actual.label_ids, expected.label_ids)
    assert actual.predictions.shape == expected.predictions.shape
    padded = expected.predictions == IGNORE
    np.testing.assert_array_equal(actual.predictions == IGNORE, padded)
    np.testing.assert_allclose(actual.predictions, expected.predictions, rtol=relative, atol=tolerance)
    assert max_weight_difference(expected.weights, actual.weights) <= tolerance


def cpu_devices_env(devices: int) -> dict[str, str]:
    """The environment of a subprocess on CPU PJRT with ``devices`` virtual devices."""
    src = os.path.join(os.path.dirname(__file__), "..", "..", "src")
    root = os.path.join(os.path.dirname(__file__), "..", "..")
    env = {k: v for k, v in os.environ.items() if k != "XLA_USE_SPMD"}
    env.update(
        {
            "PJRT_DEVICE": "CPU",
            "CPU_NUM_DEVICES": str(devices),
            "PYTHONPATH": os.pathsep.join([os.path.abspath(src), os.path.abspath(root)]),
        }
    )
    return env
