"""Checkpoint format (CheckpointIO) and policy (CheckpointManager).

Names are imported lazily: discovery (``get_last_checkpoint``) works without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from trainkit.checkpoint.errors import CheckpointError
from trainkit.checkpoint.io import CheckpointIO

_EXPORTS: dict[str, str] = {
    "CheckpointEntry": "trainkit.checkpoint.discovery",
    "get_last_checkpoint": "trainkit.checkpoint.discovery",
    "list_checkpoints": "trainkit.checkpoint.discovery",
    "list_complete_checkpoints": "trainkit.checkpoint.discovery",
    "CheckpointManager": "trainkit.checkpoint.manager",
    "SafetensorsCheckpointIO": "trainkit.checkpoint.safetensors_io",
    "ShardedCheckpointIO": "trainkit.checkpoint.sharded_io",
    "consolidate_checkpoint": "trainkit.checkpoint.consolidate",
    "TorchCheckpointIO": "trainkit.checkpoint.torch_io",
    "capture_rng_state": "trainkit.checkpoint.rng",
    "restore_rng_state": "trainkit.checkpoint.rng",
    "select_checkpoints_to_delete": "trainkit.checkpoint.rotation",
    "load_model_state": "trainkit.checkpoint.weights",
    "save_weights_file": "trainkit.checkpoint.weights",
}

__all__ = [
    "CheckpointEntry",
    "CheckpointError",
    "CheckpointIO",
    "CheckpointManager",
    "SafetensorsCheckpointIO",
    "ShardedCheckpointIO",
    "TorchCheckpointIO",
    "capture_rng_state",
    "consolidate_checkpoint",
    "get_last_checkpoint",
    "list_checkpoints",
    "list_complete_checkpoints",
    "load_model_state",
    "restore_rng_state",
    "save_weights_file",
    "select_checkpoints_to_delete",
]

if TYPE_CHECKING:
    from trainkit.checkpoint.consolidate import consolidate_checkpoint
    from trainkit.checkpoint.discovery import (
        CheckpointEntry,
        get_last_checkpoint,
        list_checkpoints,
        list_complete_checkpoints,
    )
    from trainkit.checkpoint.manager import CheckpointManager
    from trainkit.checkpoint.rng import capture_rng_state, restore_rng_state
    from trainkit.checkpoint.rotation import select_checkpoints_to_delete
    from trainkit.checkpoint.safetensors_io import SafetensorsCheckpointIO
    from trainkit.checkpoint.sharded_io import ShardedCheckpointIO
    from trainkit.checkpoint.torch_io import TorchCheckpointIO
    from trainkit.checkpoint.weights import load_model_state, save_weights_file


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'trainkit.checkpoint' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
