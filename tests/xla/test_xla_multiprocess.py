"""XLAStrategy across PJRT processes (``xmp.spawn``): collectives, and training equal to one process.

These need an XLA accelerator (a TPU); run this file on its own there (``pytest
tests/xla/test_xla_multiprocess.py``): a pytest process that used the device holds it. On CPU
PJRT, ``xmp.spawn`` starts the processes and each reports the world size, but every collective
waits for all local devices of the CPU client in each process and XLA aborts after its
rendezvous timeout: the process group never forms.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch_xla")

import torch

from tests.helpers import TokenDataset, TokenModel, quiet_args
from tests.xla.helpers import FP32_TOLERANCE, max_weight_difference, pad_collate
from tests.xla.multiprocess_run import PER_DEVICE_BATCH

pytestmark = [
    pytest.mark.xla,
    pytest.mark.xla_accelerator,
    pytest.mark.skipif(
        os.environ.get("PJRT_DEVICE", "CPU").upper() == "CPU",
        reason="multi-process PJRT needs an XLA accelerator: on CPU the processes never form a group "
        "(each process's collectives wait for all its local devices; see docs/xla.md)",
    ),
]

SCRIPT = Path(__file__).with_name("multiprocess_run.py")
ROOT = Path(__file__).resolve().parents[2]


def _spawn(kind: str, out: Path, prefix: str) -> int:
    """Run ``kind`` on every device's process; the number of processes that wrote a result."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    done = subprocess.run([sys.executable, str(SCRIPT), kind, str(out)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    world = len(list(out.glob(f"{prefix}*")))
    assert world > 1
    return world


def test_collectives_across_processes(tmp_path: Path):
    world = _spawn("collectives", tmp_path, "rank")
    ranks = [pickle.loads((tmp_path / f"rank{r}.pkl").read_bytes()) for r in range(world)]
    total = world * (world + 1) / 2
    for r, result in enumerate(ranks):
        assert (result["world"], result["rank"]) == (world, r)
        assert result["sum"] == total
        assert result["mean"] == total / world
        assert result["max"] == world
        assert result["gather"] == [float(i + 1) for i in range(world)]
        assert result["objects"] == [{"rank": i, "payload": "x" * (i * 7)} for i in range(world)]
        assert result["broadcast"] == f"from {world - 1}"
        assert result["any"] is True
        assert result["all"] is False
        assert result["sampler"] == {"num_replicas": world, "rank": r}


def test_training_on_every_process_equals_one_process_on_the_global_batch(tmp_path: Path):
    from trainkit import Trainer
    from trainkit.strategies.single_device import SingleDeviceStrategy

    world = _spawn("train", tmp_path, "weights")
    weights = [torch.load(tmp_path / f"weights{r}.pt") for r in range(world)]
    for other in weights[1:]:
        assert max_weight_difference(weights[0], other) == 0.0  # one update, applied on every process
    model = TokenModel()
    args = quiet_args(
        str(tmp_path / "one"),
        per_device_train_batch_size=PER_DEVICE_BATCH * world,
        gradient_accumulation_steps=2,
        max_steps=4,
    )
    single = Trainer(
        model, args, train_dataset=TokenDataset(64), data_collator=pad_collate, strategy=SingleDeviceStrategy("cpu")
    )
    single.train()
    assert max_weight_difference(weights[0], model.state_dict()) <= FP32_TOLERANCE
