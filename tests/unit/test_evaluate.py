"""Trainer.evaluate / predict: metrics, padding, streaming metrics, errors, evaluation inside training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from tests.helpers import (
    IGNORE,
    RegressionDataset,
    RegressionModel,
    StreamDataset,
    TokenDataset,
    TokenModel,
    quiet_args,
)
from trainkit import EvalPrediction, Trainer, TrainerCallback


def sgd(model, lr=0.1):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


class Classifier(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        torch.manual_seed(0)
        self.l = nn.Linear(2, classes)

    def forward(self, x, labels=None):
        logits = self.l(x)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


class Points(Dataset):
    def __init__(self, n=23, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 2, generator=g)
        self.y = torch.randint(0, 3, (n,), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


def accuracy(p: EvalPrediction):
    return {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())}


def test_metrics_equal_hand_computation(tmp_path):
    model, data = Classifier(), Points()
    args = quiet_args(str(tmp_path), per_device_eval_batch_size=4)
    metrics = Trainer(model, args, eval_dataset=data, compute_metrics=accuracy).evaluate()
    with torch.no_grad():
        logits = model.l(data.x)
        loss = nn.functional.cross_entropy(logits, data.y).item()
        acc = (logits.argmax(-1) == data.y).float().mean().item()
    assert metrics["eval_accuracy"] == pytest.approx(acc)
    assert metrics["eval_loss"] == pytest.approx(loss, rel=1e-6)
    assert {"eval_runtime", "eval_samples_per_second", "eval_steps_per_second"} <= set(metrics)


def test_torchmetrics_accuracy_equals_accuracy_of_predict(tmp_path):
    torchmetrics = pytest.importorskip("torchmetrics")
    model, data = Classifier(), Points(37)
    args = quiet_args(str(tmp_path), per_device_eval_batch_size=5)
    metric = torchmetrics.classification.MulticlassAccuracy(num_classes=3, average="micro")
    trainer = Trainer(model, args, eval_dataset=data, compute_metrics=metric)
    streamed = trainer.evaluate()["eval_multiclass_accuracy"]
    out = Trainer(model, args).predict(data)
    assert streamed == pytest.approx(float((out.predictions.argmax(-1) == out.label_ids).mean()))


def test_metric_collection_keys(tmp_path):
    torchmetrics = pytest.importorskip("torchmetrics")
    metrics = torchmetrics.MetricCollection({"acc": torchmetrics.classification.MulticlassAccuracy(num_classes=3)})
    result = Trainer(Classifier(), quiet_args(str(tmp_path)), eval_dataset=Points(), compute_metrics=metrics).evaluate()
    assert "eval_acc" in result


def test_eval_loss_is_token_weighted(tmp_path):
    data = TokenDataset(length=10, seq=6)
    model = TokenModel()
    metrics = Trainer(model, quiet_args(str(tmp_path), per_device_eval_batch_size=3), eval_dataset=data).evaluate()
    with torch.no_grad():
        logits = model.logits(data.ids)
        total = nn.functional.cross_entropy(
            logits.reshape(-1, 11), data.labels.reshape(-1), ignore_index=IGNORE, reduction="sum"
        )
    assert metrics["eval_loss"] == pytest.approx(float(total / (data.labels != IGNORE).sum()), rel=1e-6)


class VarLenModel(nn.Module):
    """Returns one prediction per token of a variable-length input (no loss: no labels)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(2.0))

    def forward(self, input_ids):
        return {"logits": input_ids.float() * self.w}


def test_predictions_across_batches_are_padded_with_minus_100(tmp_path):
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=25, deadline=None)
    @given(lengths=st.lists(st.integers(1, 7), min_size=1, max_size=12), batch=st.integers(1, 4))
    def check(lengths, batch):
        def collate(rows):
            longest = max(len(r) for r in rows)
            return {
                "input_ids": torch.stack([torch.nn.functional.pad(r, (0, longest - len(r)), value=0) for r in rows])
            }

        data = [torch.arange(1, n + 1) for n in lengths]
        args = quiet_args(str(tmp_path), per_device_eval_batch_size=batch, remove_unused_columns=False)
        out = Trainer(VarLenModel(), args, data_collator=collate).predict(data)
        width = max(max(lengths[i : i + batch]) for i in range(0, len(lengths), batch))
        expected = np.full((len(lengths), width), -100.0)
        for i, n in enumerate(lengths):
            start = i - i % batch
            row_width = max(lengths[start : start + batch])
            expected[i, :row_width] = 0.0
            expected[i, :n] = 2.0 * np.arange(1, n + 1)
        np.testing.assert_array_equal(out.predictions, expected)

    check()


def test_predict_output_and_prefix(tmp_path):
    model, data = Classifier(), Points(9)
    out = Trainer(model, quiet_args(str(tmp_path)), compute_metrics=accuracy).predict(data)
    assert out.predictions.shape == (9, 3)
    assert out.label_ids.tolist() == data.y.tolist()
    assert set(out.metrics) >= {"test_loss", "test_accuracy", "test_runtime"}
    custom = Trainer(model, quiet_args(str(tmp_path))).predict(data, metric_key_prefix="holdout")
    assert "holdout_loss" in custom.metrics


def test_dict_of_eval_datasets(tmp_path):
    model = Classifier()
    trainer = Trainer(model, quiet_args(str(tmp_path)), eval_dataset={"a": Points(5), "b": Points(7, seed=1)})
    metrics = trainer.evaluate()
    assert {"eval_a_loss", "eval_b_loss"} <= set(metrics)
    assert trainer.evaluate(eval_dataset={"c": Points(3)})["eval_c_loss"] > 0


def test_compute_metrics_error_names_dataset_and_step(tmp_path):
    def broken(p):
        raise KeyError("f1")

    trainer = Trainer(Classifier(), quiet_args(str(tmp_path)), eval_dataset={"dev": Points(5)}, compute_metrics=broken)
    with pytest.raises(RuntimeError, match=r"compute_metrics raised.*'eval_dev'.*global step 0.*KeyError"):
        trainer.evaluate()


def test_iterable_eval_dataset_is_supported(tmp_path):
    model = RegressionModel(a=2.0, b=3.0)
    metrics = Trainer(model, quiet_args(str(tmp_path), per_device_eval_batch_size=4)).evaluate(
        StreamDataset(RegressionDataset(10))
    )
    assert metrics["eval_loss"] < 0.1
    assert metrics["eval_samples_per_second"] > 0


def test_batch_eval_metrics_are_called_per_batch(tmp_path):
    calls = []

    def per_batch(p, compute_result):
        calls.append((p.predictions.shape[0], compute_result))
        return {"batches": len(calls)}

    args = quiet_args(str(tmp_path), per_device_eval_batch_size=4, batch_eval_metrics=True)
    metrics = Trainer(Classifier(), args, eval_dataset=Points(10), compute_metrics=per_batch).evaluate()
    assert calls == [(4, False), (4, False), (2, True)]
    assert metrics["eval_batches"] == 3


def test_include_for_metrics_and_no_concat(tmp_path):
    seen = {}

    def record(p):
        seen["inputs"], seen["losses"] = p.inputs, p.losses
        return {}

    args = quiet_args(str(tmp_path), per_device_eval_batch_size=4, include_for_metrics=["inputs", "loss"])
    args.eval_do_concat_batches = True
    trainer = Trainer(TokenModel(), args, compute_metrics=record)
    trainer.model.main_input_name = "input_ids"
    trainer.predict(TokenDataset(6))
    assert seen["inputs"].shape == (6, 6)
    assert seen["losses"].shape == (6,)
    args.eval_do_concat_batches = False
    out = trainer.predict(TokenDataset(6))
    assert isinstance(out.predictions, list)
    assert [p.shape[0] for p in out.predictions] == [4, 2]


def test_preprocess_logits_and_ignore_keys(tmp_path):
    def argmax(logits, labels):
        return logits.argmax(-1)

    trainer = Trainer(Classifier(), quiet_args(str(tmp_path)), preprocess_logits_for_metrics=argmax)
    out = trainer.predict(Points(5))
    assert out.predictions.shape == (5,)
    out = Trainer(Classifier(), quiet_args(str(tmp_path))).predict(Points(5), ignore_keys=["logits"])
    assert out.predictions is None


def test_prediction_loss_only(tmp_path):
    args = quiet_args(str(tmp_path), prediction_loss_only=True)
    out = Trainer(Classifier(), args).predict(Points(5))
    assert out.predictions is None
    assert out.label_ids is None
    assert "test_loss" in out.metrics


def test_label_names(tmp_path):
    class Targets(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return {"x": torch.ones(2), "target": torch.tensor(i % 3)}

    class TargetModel(Classifier):
        def forward(self, x, target=None):
            return super().forward(x, target)

    args = quiet_args(str(tmp_path), label_names=["target"])
    out = Trainer(TargetModel(), args).predict(Targets())
    assert out.label_ids.tolist() == [0, 1, 2, 0]


class EvalRecorder(TrainerCallback):
    def __init__(self):
        self.evaluations = []

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.evaluations.append((state.global_step, metrics["eval_loss"]))


def test_evaluation_inside_training(tmp_path):
    recorder = EvalRecorder()
    model = RegressionModel()
    args = quiet_args(
        str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=10,
        eval_strategy="steps",
        eval_steps=4,
        eval_on_start=True,
    )
    trainer = Trainer(
        model,
        args,
        train_dataset=RegressionDataset(32),
        eval_dataset=RegressionDataset(8, seed=1),
        optimizers=sgd(model, 0.05),
        callbacks=[recorder],
    )
    trainer.train()
    assert [step for step, _ in recorder.evaluations] == [0, 4, 8, 10]  # on start, every 4, and at the end
    assert recorder.evaluations[-1][1] < recorder.evaluations[0][1]
    logged = [h for h in trainer.state.log_history if "eval_loss" in h]
    assert [h["step"] for h in logged] == [0, 4, 8, 10]
    assert model.training is True


def test_eval_delay_in_epochs(tmp_path):
    recorder = EvalRecorder()
    model = RegressionModel()
    args = quiet_args(
        str(tmp_path), per_device_train_batch_size=4, num_train_epochs=3, eval_strategy="epoch", eval_delay=2
    )
    Trainer(
        model,
        args,
        train_dataset=RegressionDataset(8),
        eval_dataset=RegressionDataset(4),
        optimizers=sgd(model),
        callbacks=[recorder],
    ).train()
    assert [step for step, _ in recorder.evaluations] == [4, 6]


def test_plateau_scheduler_steps_with_the_metric(tmp_path):
    model = RegressionModel()
    args = quiet_args(
        str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=6,
        eval_strategy="steps",
        eval_steps=2,
        lr_scheduler_type="reduce_lr_on_plateau",
        learning_rate=0.01,
        metric_for_best_model="loss",
        lr_scheduler_kwargs={"patience": 0, "factor": 0.5},
    )
    trainer = Trainer(model, args, train_dataset=RegressionDataset(8), eval_dataset=RegressionDataset(4))
    seen = []
    original = trainer.evaluate

    def evaluate(*a, **k):
        metrics = original(*a, **k)
        metrics["eval_loss"] = 1.0  # never improves: the learning rate must halve after each evaluation
        seen.append(trainer.optimizer.param_groups[0]["lr"])
        return metrics

    trainer.evaluate = evaluate
    trainer.train()
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.01 / 4)
