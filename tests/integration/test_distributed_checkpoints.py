"""Checkpoints on 2 processes (gloo, CPU): FSDP2 sharded through DCP and DDP, each rank with its own RNG stream.

Every scenario trains 5 steps with dropout and a different seed on each rank (so the ranks' random
streams differ), saving every 2 steps; the resumed runs start from the step-2 checkpoint on 2 ranks
and must end bit-identical to the uninterrupted ones.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, load_model

from tests.integration.harness import run_spec, shared_job_folder, torchrun
from tests.integration.scripts.scenarios import MODELS
from tests.integration.test_ddp_training import TRAIN_ARGS, _max_diff
from trainkit.checkpoint import consolidate_checkpoint, get_last_checkpoint
from trainkit.checkpoint.manifest import read_manifest

pytestmark = pytest.mark.integration

SAVING = {"save_strategy": "steps", "save_steps": 2}
# name -> (model, TrainingArguments)
RUNS = {
    "fsdp": ("token", {"fsdp": "full_shard"}),
    "offloaded_fp16": (
        "sum_token",
        {"fsdp": "shard_grad_op offload auto_wrap", "fsdp_config": {"min_num_params": 50}, "fp16": True},
    ),
    "tied": ("tied_token", {"fsdp": "full_shard"}),
    "ddp": ("token", {}),
}


def _train(name: str, model: str = "token", **args: object) -> dict:
    return {
        "name": name,
        "task": "train",
        "model": model,
        "train_size": 8,
        "dropout": 0.3,
        "per_rank_seed": 100,
        "args": {**TRAIN_ARGS, "per_device_train_batch_size": 2, **SAVING, **args},
    }


def _scenarios() -> list[dict]:
    scenarios = []
    for name, (model, args) in RUNS.items():
        scenarios.append({**_train(f"{name}_saved", model, **args), "save_model": True})
        resumed = _train(f"{name}_resumed", model, **args)
        scenarios.append({**resumed, "resume_from": {"name": f"{name}_saved", "step": 2}, "save_model": True})
    best = {"load_best_model_at_end": True, "metric_for_best_model": "eval_loss", "greater_is_better": True}
    evaluation = {"eval_strategy": "steps", "eval_steps": 2, "per_device_eval_batch_size": 2, "save_total_limit": 1}
    scenarios.append(_train("fsdp_best", fsdp="full_shard", **evaluation, **best))
    scenarios.append(_train("fsdp_model_only", fsdp="full_shard", save_only_model=True))
    return scenarios


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    spec = {"scenarios": _scenarios()}
    return shared_job_folder(tmp_path_factory, "dist_checkpoints", lambda folder: run_spec(spec, folder, timeout=300))


def _load(folder, name):
    return torch.load(folder / f"{name}.pt", weights_only=False)


def _logged(result: dict, key: str) -> list[float]:
    return [h[key] for h in result["log_history"] if key in h]


@pytest.mark.parametrize("name", list(RUNS))
def test_a_run_resumed_on_two_ranks_is_bit_identical_to_the_uninterrupted_one(runs, name):
    uninterrupted, resumed = _load(runs, f"{name}_saved"), _load(runs, f"{name}_resumed")
    assert _max_diff(resumed["state"], uninterrupted["state"]) == 0
    assert _logged(resumed, "loss") == _logged(uninterrupted, "loss")
    assert _logged(resumed, "grad_norm") == _logged(uninterrupted, "grad_norm")


@pytest.mark.parametrize("name", list(RUNS))
def test_each_rank_saves_its_own_random_state(runs, name):
    checkpoint = runs / f"{name}_saved" / "checkpoint-2"
    assert read_manifest(checkpoint).parts["rng"] == ["rng_state_0.pth", "rng_state_1.pth"]
    states = [torch.load(checkpoint / f"rng_state_{rank}.pth", weights_only=True) for rank in range(2)]
    assert not torch.equal(states[0]["cpu"], states[1]["cpu"])  # the streams differ: restoring rank 0's would not do


def test_fsdp_checkpoints_hold_every_ranks_shards(runs):
    checkpoint = runs / "fsdp_saved" / "checkpoint-4"
    manifest = read_manifest(checkpoint)
    for part, folder in (("model", "pytorch_model_fsdp_0"), ("optimizer", "optimizer_0")):
        expected = [f"{folder}/.metadata", f"{folder}/__0_0.distcp", f"{folder}/__1_0.distcp"]
        assert sorted(manifest.parts[part]) == expected
    assert manifest.metadata == {"io": "ShardedCheckpointIO", "world_size": 2}
    assert not (checkpoint / "model.safetensors").exists()
    assert "scaler" in read_manifest(runs / "offloaded_fp16_saved" / "checkpoint-4").parts  # ShardedGradScaler
    assert sorted(p.name for p in (runs / "fsdp_saved").glob("*checkpoint-*")) == [
        "checkpoint-2",
        "checkpoint-4",
        "checkpoint-5",
    ]


@pytest.mark.parametrize(
    ("name", "model"), [("fsdp", "token"), ("offloaded_fp16", "sum_token"), ("tied", "tied_token")]
)
def test_consolidated_weights_load_into_a_plain_model(runs, tmp_path, name, model):
    final = _load(runs, f"{name}_saved")["state"]
    merged = consolidate_checkpoint(runs / f"{name}_saved" / "checkpoint-5", tmp_path / "merged")
    for weights in (merged, runs / f"{name}_resumed" / "model.safetensors"):  # consolidated; the resumed save_model
        plain = MODELS[model](seed=5)
        load_model(plain, str(weights))  # strict: every key, no extra one
        assert _max_diff(plain.state_dict(), final) == 0
    if name == "tied":
        assert "head.weight" not in load_file(str(merged))  # tied to the embedding: written once


def test_load_best_model_at_end_loads_the_best_shards(runs, tmp_path):
    best = _load(runs, "fsdp_best")
    assert [p.name for p in (runs / "fsdp_best").glob("*checkpoint-*")] == ["checkpoint-2"]  # save_total_limit=1
    plain = MODELS["token"](seed=5)
    load_model(plain, str(consolidate_checkpoint(runs / "fsdp_best" / "checkpoint-2", tmp_path)))
    assert _max_diff(best["state"], plain.state_dict()) == 0
    assert _max_diff(best["state"], _load(runs, "fsdp_saved")["state"]) > 1e-3  # not simply the last weights


def test_save_only_model_with_fsdp_writes_the_gathered_weights(runs):
    checkpoint = runs / "fsdp_model_only" / "checkpoint-4"
    assert sorted(read_manifest(checkpoint).parts) == ["checkpoint_manager", "model", "trainer_state", "training_args"]
    plain = MODELS["token"](seed=5)
    load_model(plain, str(checkpoint / "model.safetensors"))
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == 4


def test_a_save_failing_on_one_rank_leaves_the_last_complete_checkpoint(tmp_path):
    spec = {"scenarios": [{**_train("failing", fsdp="full_shard"), "fail_save": {"rank": 1, "step": 4}}]}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    job = torchrun("scenarios.py", str(tmp_path / "spec.json"), "--output", str(tmp_path), timeout=300)
    assert job.returncode != 0
    assert "OSError: disk full (injected on rank 1)" in job.output
    assert "failed on another rank of the 2 writing it: rank 1: OSError" in job.output  # rank 0's error
    assert sorted(p.name for p in (tmp_path / "failing").iterdir()) == ["checkpoint-2"]  # no staging folder left
    assert get_last_checkpoint(tmp_path / "failing") == str(tmp_path / "failing" / "checkpoint-2")
