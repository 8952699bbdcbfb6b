"""Random number generator states (python, numpy, torch CPU, every CUDA device), bit-exact through a file.

The captured state holds only tensors, ints, floats and tuples, so it is written with
``torch.save`` and read back with ``torch.load(weights_only=True)``: numpy's key array becomes
an int64 tensor (transformers stores the numpy tuple itself, which torch >= 2.6 refuses to
load without extra allow-lists, transformers#34631).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from trainkit.checkpoint.errors import CheckpointError
from trainkit.utils.logging import get_logger

__all__ = ["capture_rng_state", "restore_rng_state"]

logger = get_logger(__name__)


def capture_rng_state() -> dict[str, Any]:
    """The state of every generator a training step may draw from."""
    algorithm, keys, position, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "algorithm": str(algorithm),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "cpu": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_numpy(numpy_state: dict[str, Any]) -> None:
    keys = numpy_state["keys"].numpy().astype(np.uint32)
    np.random.set_state(
        (
            numpy_state["algorithm"],
            keys,
            int(numpy_state["pos"]),
            int(numpy_state["has_gauss"]),
            float(numpy_state["cached_gaussian"]),
        )
    )


def _restore_cuda(cuda_states: list[torch.Tensor]) -> None:
    if not torch.cuda.is_available():
        logger.warning("the checkpoint holds CUDA RNG states but CUDA is not available: they are not restored")
        return
    count = torch.cuda.device_count()
    if count != len(cuda_states):
        logger.warning(
            "the checkpoint holds RNG states of %d CUDA devices, this process sees %d: restoring the first %d",
            len(cuda_states),
            count,
            min(count, len(cuda_states)),
        )
    for device, device_state in enumerate(cuda_states[:count]):
        torch.cuda.set_rng_state(device_state.cpu(), device)


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put every generator back where ``capture_rng_state`` found it."""
    missing = [key for key in ("python", "numpy", "cpu") if key not in state]
    if missing:
        raise CheckpointError(f"RNG state lacks {missing} (keys present: {sorted(state)})")
    version, internal, gauss_next = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss_next))
    _restore_numpy(state["numpy"])
    torch.set_rng_state(state["cpu"].cpu())
    if "cuda" in state:
        _restore_cuda(list(state["cuda"]))
