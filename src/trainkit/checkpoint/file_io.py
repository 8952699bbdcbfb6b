"""``FileCheckpointIO``: one file per part, each in a safe format (the base of the safetensors and torch IOs).

Files: the model as the subclass says (``model.safetensors`` or ``pytorch_model.bin``);
``optimizer.pt``, ``scheduler.pt``, ``scaler.pt`` (only when the scaler has state) and the RNG
state (``rng_state.pth``, or ``rng_state_<rank>.pth`` with several processes) as weights-only
torch files; ``trainer_state.json``, ``training_args.json`` and ``checkpoint_manager.json`` as
JSON; any other part ``<name>`` as ``<name>.pt``. A part whose value is None is not written.
Reading picks the format from each file's extension, so either IO reads the other's checkpoints.

With several processes (``set_group`` with a group of more than one rank, as DDP and FSDP set
it), ``save`` is collective: every rank calls it with its own parts, writes its own RNG file into
the coordinator's staging folder (so each rank restores its own generators on resume), and the
coordinator writes the parts all ranks share and commits (the protocol of ``io.py``).
"""

from __future__ import annotations

import shutil
from abc import abstractmethod
from pathlib import Path
from typing import Any

from trainkit.checkpoint.collective import CheckpointGroup, on_every_rank
from trainkit.checkpoint.errors import CheckpointError
from trainkit.checkpoint.io import CheckpointIO, PathLike
from trainkit.checkpoint.layout import (
    JSON_PARTS,
    PART_FILE_NAMES,
    PART_MODEL,
    PART_RNG,
    PART_SCALER,
    extra_part_file_name,
    rng_file_name,
    staging_path,
)
from trainkit.checkpoint.serialization import load_json, load_torch, save_json, save_torch
from trainkit.checkpoint.staging import StagingFolder
from trainkit.checkpoint.weights import load_state_dict_file
from trainkit.utils.logging import get_logger

__all__ = ["FileCheckpointIO"]

logger = get_logger(__name__)

_TORCH_SUFFIXES = frozenset({".pt", ".pth", ".bin"})
# Parts every rank writes for itself; the group's coordinator writes all the others.
_PER_RANK_PARTS = frozenset({PART_RNG})


class FileCheckpointIO(CheckpointIO):
    """One file per part; subclasses choose how the model part is written."""

    model_file_name: str = ""

    def set_group(self, group: CheckpointGroup | None) -> None:
        """With more than one rank in ``group``, ``save`` becomes collective (every rank of the group calls it)."""
        super().set_group(group)
        if group is not None and group.size > 1:
            self.collective = True
        else:
            vars(self).pop("collective", None)

    def per_rank_parts(self, state: dict[str, Any]) -> frozenset[str]:
        """The parts of ``state`` that every rank writes for itself (its RNG state); the coordinator writes the rest."""
        return _PER_RANK_PARTS.intersection(state)

    @property
    def writes_shared_parts(self) -> bool:
        """Whether this process writes the parts the ranks share (alone, or as its group's coordinator)."""
        return self.group is None or self.group.is_coordinator

    # --------------------------------------------------------------------- save
    def save(self, state: dict[str, Any], path: PathLike) -> None:
        """Write ``checkpoint-<N>`` (all or nothing); collective when the group has several ranks."""
        group = self.group
        if group is None or group.size == 1:
            super().save(state, path)
            return
        target = Path(path)
        staging = staging_path(target)
        what = f"saving {target}"

        def prepare() -> None:
            if group.is_coordinator:
                self.prepare_staging(target)

        def remove_staging() -> None:
            if group.is_coordinator:
                shutil.rmtree(staging, ignore_errors=True)  # the previous checkpoints are untouched

        on_every_rank(group, what, prepare, remove_staging)
        on_every_rank(group, what, lambda: _check_visible(staging, group), remove_staging)
        staged = on_every_rank(group, what, lambda: self.write_parts(state, staging), remove_staging)
        on_every_rank(group, what, lambda: self._commit_if_coordinator(staging, target, staged), remove_staging)

    def _commit_if_coordinator(self, staging: Path, target: Path, staged: list[Any]) -> None:
        if self.group is not None and self.group.is_coordinator:
            self.commit(staging, target, staged)

    def file_name(self, part: str) -> str:
        """The file a part is written to by this process."""
        if part == PART_MODEL:
            return self.model_file_name
        if part == PART_RNG:
            return rng_file_name(self.rank, self.world_size)
        return PART_FILE_NAMES.get(part) or extra_part_file_name(part)

    def _save(self, state: dict[str, Any], staging: StagingFolder) -> dict[str, list[str]]:
        if not self.writes_shared_parts:
            mine = self.per_rank_parts(state)
            state = {part: value for part, value in state.items() if part in mine}
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
                hint = " (a sharded part: read it with ShardedCheckpointIO)" if any("/" in f for f in files) else ""
                raise CheckpointError(f"{folder}: part {part!r} should be one file, the manifest lists {files}{hint}")
            return files[0]
        own = rng_file_name(self.rank, self.world_size)
        if own in files:
            return own
        single = rng_file_name(0, 1)
        if single in files:  # one process saved it (or a DDP checkpoint of trainkit < issue 8 phase B)
            logger.warning(
                "%s holds one RNG state (%s) for %d processes: every process restores it, so ranks whose random "
                "streams differed before the checkpoint do not continue them",
                folder,
                single,
                self.world_size,
            )
            return single
        logger.warning(
            "%s holds RNG states %s but none for process %d of %d: RNG states are not restored, so the resumed run "
            "will not reproduce an uninterrupted one",
            folder,
            files,
            self.rank,
            self.world_size,
        )
        return None


def _check_visible(staging: Path, group: CheckpointGroup) -> None:
    """Every rank must see the staging folder before any writes (a rank that does not would fail alone)."""
    if not staging.is_dir():
        raise CheckpointError(
            f"{staging}, which the coordinator of this checkpoint created, is not visible to {group.describe()}: "
            "every rank writes its own files into the checkpoint, so output_dir must be on storage that these "
            "processes share (with storage local to each node, set save_on_each_node=True)"
        )


def _read_file(file: Path, map_location: Any) -> Any:
    if file.suffix == ".safetensors":
        return load_state_dict_file(file, map_location)
    if file.suffix == ".json":
        return load_json(file)
    if file.suffix in _TORCH_SUFFIXES:
        return load_torch(file, map_location)
    raise CheckpointError(f"{file}: unknown checkpoint file type {file.suffix!r}")
