"""Seeding (python, numpy, torch, CUDA) and full determinism, with transformers' names."""

from __future__ import annotations

import os
import random

__all__ = ["enable_full_determinism", "set_seed"]


def set_seed(seed: int, deterministic: bool = False) -> None:
    """Seed python's ``random``, numpy, torch and every CUDA device; optionally demand deterministic kernels."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True)


def enable_full_determinism(seed: int, warn_only: bool = False) -> None:
    """``set_seed`` plus deterministic algorithms everywhere (cuBLAS, cuDNN, flash attention); slower."""
    import torch

    set_seed(seed)
    os.environ["CUDA_LAUNCH_BLOCKING"] = "1"
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":16:8"
    os.environ["FLASH_ATTENTION_DETERMINISTIC"] = "1"
    torch.use_deterministic_algorithms(True, warn_only=warn_only)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
