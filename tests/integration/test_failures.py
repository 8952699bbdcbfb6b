"""A rank that raises or hangs ends the whole job with a non-zero exit, naming the failing rank; no hang."""

from __future__ import annotations

import json

import pytest

from tests.integration.harness import torchrun
from tests.integration.test_ddp_training import TRAIN_ARGS

pytestmark = pytest.mark.integration

TIMEOUT = 5  # ddp_timeout in seconds: short, so a hung rank is detected quickly
STARTUP = 60  # generous bound for starting two interpreters and importing torch on a loaded machine


def _spec(folder, mode: str) -> str:
    args = {**TRAIN_ARGS, "per_device_train_batch_size": 2, "num_train_epochs": 4, "ddp_timeout": TIMEOUT}
    scenario = {
        "name": mode,
        "task": "train",
        "train_size": 8,
        "args": args,
        "fail": {"rank": 1, "step": 2, "mode": mode},
    }
    path = folder / "spec.json"
    path.write_text(json.dumps({"scenarios": [scenario]}))
    return str(path)


def test_a_rank_that_raises_fails_the_job_and_is_named(tmp_path):
    job = torchrun("scenarios.py", _spec(tmp_path, "raise"), "--output", str(tmp_path), timeout=STARTUP + 60)
    assert job.returncode != 0
    assert "[rank1]: RuntimeError: injected failure on rank 1 at step 2" in job.output
    assert "Rank 1 of 2 failed at step 2" in job.output
    assert job.seconds < STARTUP + TIMEOUT


def test_a_hung_rank_fails_the_others_within_ddp_timeout(tmp_path):
    job = torchrun("scenarios.py", _spec(tmp_path, "hang"), "--output", str(tmp_path), timeout=STARTUP + 60)
    assert job.returncode != 0
    assert "Rank 0 of 2 failed at step 2" in job.output  # rank 0 waited ddp_timeout for rank 1, then gave up
    assert f"Timed out waiting {TIMEOUT * 1000}ms" in job.output
    assert job.seconds < STARTUP + TIMEOUT
