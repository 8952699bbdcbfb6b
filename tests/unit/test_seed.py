"""set_seed / enable_full_determinism."""

from __future__ import annotations

import random

import numpy as np
import torch

from trainkit import enable_full_determinism, set_seed


def _draw():
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_set_seed_makes_python_numpy_torch_repeatable():
    set_seed(123)
    first = _draw()
    set_seed(123)
    assert _draw() == first
    set_seed(124)
    assert _draw() != first


def test_enable_full_determinism(monkeypatch):
    for var in ("CUBLAS_WORKSPACE_CONFIG", "CUDA_LAUNCH_BLOCKING", "FLASH_ATTENTION_DETERMINISTIC"):
        monkeypatch.delenv(var, raising=False)
    try:
        enable_full_determinism(7)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic
        import os

        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
