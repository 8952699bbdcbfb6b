"""DDP on 2 processes (gloo, CPU) against one process with the doubled batch: the same weights."""

from __future__ import annotations

import json

import pytest
import torch

from tests.integration.harness import run_spec, shared_job_folder
from tests.integration.scripts.scenarios import run_scenario

pytestmark = pytest.mark.integration

TRAIN_ARGS = {
    "gradient_accumulation_steps": 2,
    "num_train_epochs": 5,  # 8 examples = 2 ranks x 2 per device x 2 micro-batches: one step per epoch
    "learning_rate": 0.02,
    "logging_steps": 1,
    "use_cpu": True,
    "disable_tqdm": True,
    "save_strategy": "no",
    "report_to": "none",
}


EVAL_EACH_EPOCH = {"eval_strategy": "epoch", "per_device_eval_batch_size": 2}
CHECKPOINTS = {"save_strategy": "steps", "save_steps": 2}
CASES = {"mean": ("token", {}), "sum": ("sum_token", EVAL_EACH_EPOCH)}  # name -> (model, extra arguments)


def _scenario(name: str, model: str, batch: int, **args: object) -> dict:
    return {
        "name": name,
        "task": "train",
        "model": model,
        "train_size": 8,
        "args": {**TRAIN_ARGS, "per_device_train_batch_size": batch, **args},
    }


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    ranked = {**TRAIN_ARGS, "report_to": "jsonl", "log_level": "info"}
    spec = {
        "scenarios": [
            {
                **_scenario("mean", "token", 2),
                "args": {**ranked, "per_device_train_batch_size": 2},
                "main_process_first": True,
                "save_model": True,
            },
            _scenario("sum", "sum_token", 2, **EVAL_EACH_EPOCH),
            _scenario("per_rank_tokens", "token", 2, average_tokens_across_devices=False),
            _scenario("checkpointed", "token", 2, **CHECKPOINTS),
            {**_scenario("resumed", "token", 2, **CHECKPOINTS), "resume_from": {"name": "checkpointed", "step": 2}},
        ]
    }
    return shared_job_folder(tmp_path_factory, "ddp", lambda folder: run_spec(spec, folder))


def _load(folder, name):
    return torch.load(folder / f"{name}.pt", weights_only=False)


@pytest.mark.parametrize("name", list(CASES))
def test_two_ranks_equal_one_process_with_the_doubled_batch(ddp_runs, tmp_path, name):
    model, extra = CASES[name]
    reference = run_scenario(_scenario(name, model, 4, **extra), tmp_path)
    distributed = _load(ddp_runs, name)
    assert _max_diff(distributed["state"], reference["state"]) < 1e-5
    for key in ("loss", "grad_norm", "eval_loss"):
        logged = [h[key] for h in distributed["log_history"] if key in h]
        assert len(logged) == (5 if key != "eval_loss" or extra else 0)
        assert logged == pytest.approx([h[key] for h in reference["log_history"] if key in h], rel=1e-5)
    assert distributed["train_metrics"]["train_loss"] == pytest.approx(reference["train_metrics"]["train_loss"])


def test_per_rank_token_normalisation_is_measurably_different(ddp_runs, tmp_path):
    """average_tokens_across_devices=False (transformers 4.x's default) drifts: the parity above is not luck."""
    reference = run_scenario(_scenario("mean", "token", 4), tmp_path)
    assert _max_diff(_load(ddp_runs, "per_rank_tokens")["state"], reference["state"]) > 1e-4


def test_only_rank_zero_logs_and_writes(ddp_runs):
    facts = [json.loads((ddp_runs / f"mean.rank{r}.json").read_text()) for r in range(2)]
    assert [f["strategy"] for f in facts] == ["DDPStrategy", "DDPStrategy"]
    assert [f["is_world_zero"] for f in facts] == [True, False]
    assert [f["log_level"] for f in facts] == [20, 30]  # log_level='info' on rank 0, log_level_replica='warning'
    assert facts[1]["main_first"] is True  # rank 1 entered main_process_first after rank 0 had finished
    lines = (ddp_runs / "mean" / "log_history.jsonl").read_text().splitlines()
    assert len(lines) == 6  # 5 steps + the train summary, written once
    assert (ddp_runs / "mean" / "model.safetensors").exists()


def test_ddp_resumes_from_a_checkpoint_like_the_uninterrupted_run(ddp_runs):
    """DDP uses the one-process checkpoints (rank 0 writes); resuming on 2 ranks continues exactly."""
    written = sorted(p.name for p in (ddp_runs / "checkpointed").glob("checkpoint-*"))
    assert written == ["checkpoint-2", "checkpoint-4", "checkpoint-5"]  # every 2 steps, and the last
    resumed, uninterrupted = _load(ddp_runs, "resumed"), _load(ddp_runs, "checkpointed")
    assert _max_diff(resumed["state"], uninterrupted["state"]) == 0
    assert [h["loss"] for h in resumed["log_history"] if "loss" in h] == [
        h["loss"] for h in uninterrupted["log_history"] if "loss" in h
    ]
