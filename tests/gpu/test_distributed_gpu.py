"""DDP and FSDP2 on CUDA devices with nccl, one process per visible GPU (at most 2; skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch

from tests.integration.harness import run_spec
from tests.integration.scripts.scenarios import run_scenario
from tests.integration.test_ddp_training import TRAIN_ARGS, _max_diff

NPROC = min(torch.cuda.device_count(), 2) if torch.cuda.is_available() else 0

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(NPROC == 0, reason="needs a CUDA device")]

CASES = {  # name -> (extra TrainingArguments, tolerance on the weights against one process)
    "ddp": ({}, 1e-5),
    "fsdp": ({"fsdp": "full_shard"}, 1e-5),
    "fsdp_bf16": ({"fsdp": "shard_grad_op", "bf16": True}, 5e-3),
}


def _train(name: str, batch: int, **args: object) -> dict:
    args = {**TRAIN_ARGS, "use_cpu": False, "per_device_train_batch_size": batch, **args}
    return {"name": name, "task": "train", "train_size": 8, "args": args}


@pytest.fixture(scope="module")
def gpu_runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpu")
    run_spec({"scenarios": [_train(name, 4 // NPROC, **args) for name, (args, _) in CASES.items()]}, folder, NPROC)
    return folder


@pytest.mark.parametrize("name", list(CASES))
def test_nccl_processes_equal_one_gpu_process(gpu_runs, tmp_path, name):
    args, tolerance = CASES[name]
    one_process = {k: v for k, v in args.items() if k != "fsdp"}
    reference = run_scenario(_train("reference", 4, **one_process), tmp_path)
    distributed = torch.load(gpu_runs / f"{name}.pt", weights_only=False, map_location="cpu")
    assert _max_diff(distributed["state"], {k: v.cpu() for k, v in reference["state"].items()}) < tolerance
