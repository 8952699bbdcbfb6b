"""Two "nodes" on this machine (one torchrun each, --nnodes 2): node-level roles and hybrid sharding."""

from __future__ import annotations

import json

import pytest
import torch

from tests.integration.harness import shared_job_folder, torchrun_nodes
from tests.integration.scripts.scenarios import run_scenario
from tests.integration.test_ddp_training import TRAIN_ARGS, _max_diff

pytestmark = pytest.mark.integration


def _train(name: str, batch: int, **args: object) -> dict:
    return {
        "name": name,
        "task": "train",
        "train_size": 8,
        "args": {**TRAIN_ARGS, "per_device_train_batch_size": batch, **args},
    }


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
    ]

    def launch(folder):
        spec = folder / "spec.json"
        spec.write_text(json.dumps({"scenarios": scenarios}))
        for job in torchrun_nodes("scenarios.py", str(spec), "--output", str(folder)):
            assert job.returncode == 0, job.output[-6000:]

    return shared_job_folder(tmp_path_factory, "nodes", launch)


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
