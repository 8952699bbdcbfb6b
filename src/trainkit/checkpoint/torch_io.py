"""``TorchCheckpointIO`` (``save_safetensors=False``): the model as ``pytorch_model.bin`` (read weights-only)."""

from __future__ import annotations

from typing import Any

from trainkit.checkpoint.file_io import FileCheckpointIO
from trainkit.checkpoint.layout import MODEL_TORCH_NAME, PART_MODEL
from trainkit.checkpoint.serialization import save_torch
from trainkit.checkpoint.staging import StagingFolder

__all__ = ["TorchCheckpointIO"]


class TorchCheckpointIO(FileCheckpointIO):
    """HF's layout with the model as a torch file (keeps non-tensor entries such as ``_extra_state``)."""

    model_file_name = MODEL_TORCH_NAME

    def _save_model(self, state_dict: dict[str, Any], staging: StagingFolder, name: str) -> None:
        with staging.open(name) as handle:
            save_torch(state_dict, handle, PART_MODEL)
