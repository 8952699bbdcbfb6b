"""evaluate/predict on 2 processes with a dataset size not divisible by 2: one process's metrics and predictions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.integration.harness import run_spec, shared_job_folder
from tests.integration.scripts.scenarios import run_scenario

pytestmark = pytest.mark.integration

EVAL_ARGS = {"use_cpu": True, "disable_tqdm": True, "save_strategy": "no", "report_to": "none"}
# name -> (eval_size, metrics kind, extra TrainingArguments)
CASES = {
    "function": (7, "function", {}),
    "accumulated_lists": (7, "function", {"eval_accumulation_steps": 2, "eval_do_concat_batches": False}),
    "inputs_and_losses": (7, "function", {"include_for_metrics": ["inputs", "loss"]}),
    "batch_metrics": (7, "batch", {"batch_eval_metrics": True}),
    "torchmetrics": (7, "torchmetrics", {}),
    "objects": (7, "objects", {"eval_use_gather_object": True}),
    "padding_only_batch": (5, "function", {}),  # rank 1's last batch holds nothing but the sampler's padding
}
COMPARED = {
    f"{split}_{name}" for split in ("eval", "test") for name in ("loss", "accuracy", "examples", "multiclass_accuracy")
}


def _scenario(name: str, batch: int) -> dict:
    size, metrics, extra = CASES[name]
    args = {**EVAL_ARGS, "per_device_eval_batch_size": batch, **extra}
    return {"name": name, "task": "evaluate", "eval_size": size, "metrics": metrics, "args": args}


@pytest.fixture(scope="module")
def eval_runs(tmp_path_factory):
    spec = {"scenarios": [_scenario(name, 2) for name in CASES]}
    return shared_job_folder(tmp_path_factory, "ddp_eval", lambda folder: run_spec(spec, folder))


def _rows(name, value):
    """Predictions as a list of per-example arrays, whatever their container."""
    if name == "objects":  # eval_use_gather_object: already one item per example
        return [np.asarray(v) for v in value]
    if isinstance(value, list):  # eval_do_concat_batches=False: one array per batch
        return [row for batch in value for row in np.asarray(batch)]
    return list(np.asarray(value))


@pytest.mark.parametrize("name", list(CASES))
def test_two_ranks_give_one_process_metrics_and_predictions(eval_runs, tmp_path, name):
    reference = run_scenario(_scenario(name, 4), tmp_path)
    distributed = torch.load(eval_runs / f"{name}.pt", weights_only=False)
    for where in ("eval_metrics", "pred_metrics"):
        expected = {k: v for k, v in reference[where].items() if k in COMPARED}
        got = {k: v for k, v in distributed[where].items() if k in COMPARED}
        assert len(got) >= 2
        assert got == pytest.approx(expected, rel=1e-6), where
    size = CASES[name][0]
    for key in ("predictions", "label_ids"):
        if reference[key] is None:  # streaming metrics keep no predictions
            assert distributed[key] is None
            continue
        got, expected = _rows(name, distributed[key]), _rows(name, reference[key])
        assert len(got) == len(expected) == size
        for a, b in zip(got, expected):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
