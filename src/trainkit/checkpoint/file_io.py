"""``FileCheckpointIO``: one file per part, each in a safe format (the base of the safetensors and torch IOs).

Files: the model as the subclass says (``model.safetensors`` or ``pytorch_model.bin``);
``optimizer.pt``, ``scheduler.pt``, ``scaler.pt`` (only when the scaler has state) and the RNG
state (``rng_state.pth``, or ``rng_state_<rank>.pth`` with several processes) as weights-only
torch files; ``trainer_state.json``, ``training_args.json`` and ``checkpoint_manager.json`` as
JSON; any other part ``<name>`` as ``<name>.pt``. A part whose value is None is not written.
Reading picks the format from each file's extension, so either IO reads the other's checkpoints.
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Any

from trainkit.checkpoint.errors import CheckpointError
from trainkit.checkpoint.io import CheckpointIO
from trainkit.checkpoint.layout import (
    JSON_PARTS,
    PART_FILE_NAMES,
    PART_MODEL,
    PART_RNG,
    PART_SCALER,
    extra_part_file_name,
    rng_file_name,
)
from trainkit.checkpoint.serialization import load_json, load_torch, save_json, save_torch
from trainkit.checkpoint.staging import StagingFolder
from trainkit.checkpoint.weights import load_state_dict_file
from trainkit.utils.logging import get_logger

__all__ = ["FileCheckpointIO"]

logger = get_logger(__name__)

_TORCH_SUFFIXES = frozenset({".pt", ".pth", ".bin"})


class FileCheckpointIO(CheckpointIO):
    """One file per part; subclasses choose how the model part is written."""

    model_file_name: str = ""

    def file_name(self, part: str) -> str:
        """The file a part is written to by this process."""
        if part == PART_MODEL:
            return self.model_file_name
        if part == PART_RNG:
            return rng_file_name(self.rank, self.world_size)
        return PART_FILE_NAMES.get(part) or extra_part_file_name(part)

    def _save(self, state: dict[str, Any], staging: StagingFolder) -> dict[str, list[str]]:
        written: dict[str, list[str]] = {}
        for part, value in state.items():
            if value is None or (part == PART_SCALER and not value):
                continue
            name = self.file_name(part)
            if part == PART_MODEL:
                self._save_model(value, staging, name)
            elif part in JSON_PARTS:
                save_json(value, staging.file(name), part)
                staging.written(name)
            else:
                with staging.open(name) as handle:
                    save_torch(value, handle, part)
            written[part] = [name]
        return written

    @abstractmethod
    def _save_model(self, state_dict: dict[str, Any], staging: StagingFolder, name: str) -> None:
        """Write the model's state dict as the file ``name`` of ``staging``."""

    def _load(self, folder: Path, parts: dict[str, list[str]], map_location: Any) -> dict[str, Any]:
        state: dict[str, Any] = {}
        for part, files in parts.items():
            name = self._file_to_read(part, files, folder)
            if name is not None:
                state[part] = _read_file(folder / name, map_location)
        return state

    def _file_to_read(self, part: str, files: list[str], folder: Path) -> str | None:
        if part != PART_RNG:
            if len(files) != 1:
                raise CheckpointError(f"{folder}: part {part!r} should be one file, the manifest lists {files}")
            return files[0]
        own = rng_file_name(self.rank, self.world_size)
        if own in files:
            return own
        logger.warning(
            "%s holds RNG states %s but none for process %d of %d: RNG states are not restored, so the resumed run "
            "will not reproduce an uninterrupted one",
            folder,
            files,
            self.rank,
            self.world_size,
        )
        return None


def _read_file(file: Path, map_location: Any) -> Any:
    if file.suffix == ".safetensors":
        return load_state_dict_file(file, map_location)
    if file.suffix == ".json":
        return load_json(file)
    if file.suffix in _TORCH_SUFFIXES:
        return load_torch(file, map_location)
    raise CheckpointError(f"{file}: unknown checkpoint file type {file.suffix!r}")
