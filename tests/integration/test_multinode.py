"""Two "nodes" on this machine (one torchrun each, --nnodes 2): node-level roles, hybrid sharding, per-node checkpoints.

With ``per_node_output`` each node has its own output_dir, as nodes with their own disks would.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_model

from tests.integration.harness import shared_job_folder, torchrun_nodes
from tests.integration.scripts.scenarios import MODELS, run_scenario
from tests.integration.test_ddp_training import TRAIN_ARGS, _max_diff
from trainkit.checkpoint import consolidate_checkpoint
from trainkit.checkpoint.manifest import read_manifest

pytestmark = pytest.mark.integration


def _train(name: str, batch: int, **args: object) -> dict:
    return {
        "name": name,
        "task": "train",
        "train_size": 8,
        "args": {**TRAIN_ARGS, "per_device_train_batch_size": batch, **args},
    }


def _saved_and_resumed(name: str, batch: int, **args: object) -> list[dict]:
    """A run saving every 2 steps into each node's own output_dir, and its resumption from step 2 on every node."""
    each_node = {"save_strategy": "steps", "save_steps": 2, "save_on_each_node": True}
    saved = {**_train(f"{name}_saved", batch, **each_node, **args), "per_node_output": True}
    saved.update(dropout=0.3, per_rank_seed=100)  # every rank its own random stream
    return [saved, {**saved, "name": f"{name}_resumed", "resume_from": {"name": saved["name"], "step": 2}}]


def _launch(scenarios: list[dict], nproc: int = 1):
    def launch(folder):
        spec = folder / "spec.json"
        spec.write_text(json.dumps({"scenarios": scenarios}))
        for job in torchrun_nodes("scenarios.py", str(spec), "--output", str(folder), nproc=nproc, timeout=300):
            assert job.returncode == 0, job.output[-6000:]

    return launch


@pytest.fixture(scope="module")
def nodes_run(tmp_path_factory):
    roles = {"log_level": "info", "save_on_each_node": True}
    scenarios = [
        {**_train("each_node", 4, **roles), "save_model": True, "per_node_output": True},
        {
            **_train("main_node_only", 4, log_level="info", log_on_each_node=False),
            "save_model": True,
            "per_node_output": True,
        },
        _train("hybrid", 4, fsdp="hybrid_shard"),
        _train("hybrid_zero2", 4, fsdp="hybrid_shard_zero2"),
        *_saved_and_resumed("ddp", 4),
    ]
    return shared_job_folder(tmp_path_factory, "nodes", _launch(scenarios))


@pytest.fixture(scope="module")
def hybrid_nodes_run(tmp_path_factory):
    """2 nodes x 2 processes: each node writes its replica's shards with its own two ranks."""
    scenarios = _saved_and_resumed("hybrid", 2, fsdp="hybrid_shard")
    return shared_job_folder(tmp_path_factory, "hybrid_nodes", _launch(scenarios, nproc=2))


def _facts(folder, name):
    return [json.loads((folder / f"{name}.rank{r}.json").read_text()) for r in range(2)]


def test_each_nodes_main_process_saves_and_logs_with_save_on_each_node(nodes_run):
    facts = _facts(nodes_run, "each_node")
    assert [(f["is_world_zero"], f["is_local_zero"]) for f in facts] == [(True, True), (False, True)]
    assert [f["log_level"] for f in facts] == [20, 20]  # log_on_each_node (default): both nodes' main processes
    assert [(nodes_run / "each_node" / f"node{n}" / "model.safetensors").exists() for n in range(2)] == [True, True]


def test_only_the_main_node_saves_and_logs_by_default(nodes_run):
    facts = _facts(nodes_run, "main_node_only")
    assert [f["log_level"] for f in facts] == [20, 30]  # log_on_each_node=False: node 1 gets log_level_replica
    saved = [(nodes_run / "main_node_only" / f"node{n}" / "model.safetensors").exists() for n in range(2)]
    assert saved == [True, False]


@pytest.mark.parametrize("name", ["hybrid", "hybrid_zero2"])
def test_hybrid_sharding_across_nodes_equals_one_process(nodes_run, tmp_path, name):
    reference = run_scenario(_train("reference", 8), tmp_path)
    assert _max_diff(torch.load(nodes_run / f"{name}.pt", weights_only=False)["state"], reference["state"]) < 1e-5


def _same_run(folder, name):
    saved, resumed = (torch.load(folder / f"{name}_{kind}.pt", weights_only=False) for kind in ("saved", "resumed"))
    assert _max_diff(resumed["state"], saved["state"]) == 0
    losses = [[h["loss"] for h in run["log_history"] if "loss" in h] for run in (saved, resumed)]
    assert losses[0] == losses[1]
    return saved


def test_ddp_nodes_resume_from_their_own_checkpoints(nodes_run):
    _same_run(nodes_run, "ddp")
    for node in range(2):
        checkpoint = nodes_run / "ddp_saved" / f"node{node}" / "checkpoint-2"
        assert read_manifest(checkpoint).parts["rng"] == [f"rng_state_{node}.pth"]  # its own rank's stream
        assert (checkpoint / "model.safetensors").is_file()


def test_hybrid_sharded_nodes_write_whole_checkpoints_of_their_own(hybrid_nodes_run, tmp_path):
    saved = _same_run(hybrid_nodes_run, "hybrid")
    for node in range(2):
        checkpoint = hybrid_nodes_run / "hybrid_saved" / f"node{node}" / "checkpoint-5"
        parts = read_manifest(checkpoint).parts
        assert parts["rng"] == [f"rng_state_{2 * node}.pth", f"rng_state_{2 * node + 1}.pth"]
        assert sorted(parts["model"])[1:] == ["pytorch_model_fsdp_0/__0_0.distcp", "pytorch_model_fsdp_0/__1_0.distcp"]
        plain = MODELS["token"](seed=5)
        load_model(plain, str(consolidate_checkpoint(checkpoint, tmp_path / f"node{node}")))
        assert _max_diff(plain.state_dict(), saved["state"]) == 0  # each node's folder holds the whole model
