"""RNG states: a bit-exact round trip through a checkpoint file that loads with weights_only=True."""

from __future__ import annotations

import logging
import random

import numpy as np
import pytest
import torch

from trainkit.checkpoint import CheckpointError, SafetensorsCheckpointIO, capture_rng_state, restore_rng_state


def _draw() -> tuple:
    return (
        random.random(),
        random.gauss(0, 1),  # leaves python's cached gaussian set
        np.random.rand(3).tolist(),
        float(np.random.randn()),  # leaves numpy's cached gaussian set
        torch.rand(3).tolist(),
        torch.randn(2).tolist(),
    )


def test_round_trip_through_a_checkpoint_file_is_bit_exact(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    _draw()
    SafetensorsCheckpointIO().save({"rng": capture_rng_state()}, tmp_path / "c")
    expected = _draw()
    _draw()  # move every generator on
    restore_rng_state(SafetensorsCheckpointIO().load(tmp_path / "c")["rng"])
    assert _draw() == expected


def test_the_rng_file_needs_no_unsafe_unpickling(tmp_path):
    SafetensorsCheckpointIO().save({"rng": capture_rng_state()}, tmp_path / "c")
    state = torch.load(tmp_path / "c" / "rng_state.pth", weights_only=True)
    assert set(state) >= {"python", "numpy", "cpu"}
    assert state["numpy"]["keys"].dtype == torch.int64


def test_numpy_key_words_above_2_31_survive():
    np.random.seed(123)
    state = capture_rng_state()
    assert int(state["numpy"]["keys"].max()) > 2**31  # would overflow an int32 tensor
    expected = np.random.rand(4).tolist()
    restore_rng_state(state)
    assert np.random.rand(4).tolist() == expected


def test_missing_generators_are_named():
    with pytest.raises(CheckpointError, match=r"lacks \['numpy', 'cpu'\]"):
        restore_rng_state({"python": random.getstate()})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only fallback")
def test_cuda_states_without_cuda_are_skipped_with_a_warning(caplog):
    state = capture_rng_state()
    state["cuda"] = [torch.zeros(16, dtype=torch.uint8)]
    expected = torch.get_rng_state()
    with caplog.at_level(logging.WARNING, logger="trainkit"):
        restore_rng_state(state)
    assert "CUDA is not available" in caplog.text
    assert torch.equal(torch.get_rng_state(), expected)
