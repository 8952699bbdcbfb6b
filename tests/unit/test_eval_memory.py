"""Evaluation memory is bounded: 20x more sequences barely move the peak when nothing needs keeping."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainkit.loops.evaluate import HostBuffer

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "scripts" / "eval_memory.py"


def growth_mb(mode: str, n: int = 100) -> float:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    out = subprocess.run(
        [sys.executable, str(SCRIPT), mode, str(n)], capture_output=True, text=True, env=env, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mode", ["loss_only", "streaming"])
def test_loss_only_and_streaming_memory_is_bounded(mode):
    # 2,000 sequences of 32 tokens x 256 logits would be 64 MB of predictions if they were kept
    assert growth_mb(mode) < 5.0


def test_keeping_predictions_is_visible_to_the_measure():
    assert growth_mb("keep") > 30.0  # the measurement can see what keeping the logits costs


def test_host_buffer_moves_to_the_host_every_k_batches():
    buffer = HostBuffer(every=3, concat=True)
    for i in range(7):
        buffer.add(torch.full((2, i + 1), float(i)))
        assert buffer.pending < 3  # never more than k-1 batches wait on the device
    result = buffer.result(num_samples=14)
    assert result.shape == (14, 7)
    assert (result[0, 1:] == -100).all()
    assert (result[13] == 6).all()
