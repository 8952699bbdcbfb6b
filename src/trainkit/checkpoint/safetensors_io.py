"""``SafetensorsCheckpointIO`` (the default, ``save_safetensors=True``): the model as ``model.safetensors``."""

from __future__ import annotations

from typing import Any

from trainkit.checkpoint.file_io import FileCheckpointIO
from trainkit.checkpoint.layout import MODEL_SAFETENSORS_NAME
from trainkit.checkpoint.staging import StagingFolder
from trainkit.checkpoint.weights import save_state_dict_file

__all__ = ["SafetensorsCheckpointIO"]


class SafetensorsCheckpointIO(FileCheckpointIO):
    """HF's layout with safetensors weights (tied weights written once, restored tied)."""

    model_file_name = MODEL_SAFETENSORS_NAME

    def _save_model(self, state_dict: dict[str, Any], staging: StagingFolder, name: str) -> None:
        save_state_dict_file(state_dict, staging.file(name))
        staging.written(name)
