"""``CheckpointIO``: how a checkpoint's state is written to and read from a folder (the format).

The state is a dict of named parts (``model``, ``optimizer``, ``scheduler``, ``scaler``,
``rng``, ``trainer_state``, ``training_args``, ...). Implementations decide the files. The
public methods are guards around protected hooks, so an implementation cannot skip them:
``save`` writes into a staging folder, fsyncs, records the manifest and renames (atomicity);
``load`` checks the manifest and every file's hash before the hook reads anything (safety).
*Which* checkpoints exist, rotate or resume is the CheckpointManager's business (policy).

Save protocol (one process does all of it today; the steps are public so that a multi-process
strategy can spread them without a redesign):

1. ``prepare_staging(path)``: one coordinator (global rank 0, or each node's local rank 0 with
   ``save_on_each_node``) creates ``.checkpoint-<N>.staging`` beside ``path``; barrier.
2. ``write_parts(state, staging)``: every rank writes the parts it owns (its
   ``rng_state_<rank>.pth``, its shards); each file is fsynced and hashed by the rank that wrote
   it; the returned ``StagedParts`` are gathered on the coordinator; barrier.
3. ``commit(staging, path, staged)``: the coordinator writes ``manifest.json`` last, fsyncs the
   folder, renames it onto ``path`` (the commit point) and fsyncs the parent; barrier.
"""

from __future__ import annotations

import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainkit.checkpoint import atomic
from trainkit.checkpoint.errors import CheckpointError
from trainkit.checkpoint.layout import validate_part_name
from trainkit.checkpoint.manifest import (
    DEFAULT_HASH,
    FileEntry,
    Manifest,
    check_hash_algorithm,
    find_manifest_problem,
    read_manifest,
    verify_file,
    write_manifest,
)
from trainkit.checkpoint.staging import StagingFolder

__all__ = ["CheckpointError", "CheckpointIO", "PathLike", "StagedParts"]

PathLike = str | os.PathLike[str]


@dataclass
class StagedParts:
    """What one process wrote into a staging folder: its parts' files, with sizes and hashes."""

    parts: dict[str, list[str]] = field(default_factory=dict)
    files: dict[str, FileEntry] = field(default_factory=dict)


class CheckpointIO(ABC):
    """Writes and reads one checkpoint folder, all or nothing, and never unpickles arbitrary objects."""

    # Capability: True when every process calls ``save`` (each with its own parts) and the IO
    # coordinates the staging protocol across them (DeepSpeed: each rank writes its shards);
    # False when only the writing process calls it.
    collective = False

    def __init__(self, hash_algorithm: str = DEFAULT_HASH) -> None:
        self.hash_algorithm = check_hash_algorithm(hash_algorithm)
        self.rank = 0
        self.world_size = 1

    def set_process(self, rank: int, world_size: int) -> None:
        """Which process this IO runs in (per-rank files such as ``rng_state_<rank>.pth``)."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        self.rank, self.world_size = rank, world_size

    # --------------------------------------------------------------------- save
    def save(self, state: dict[str, Any], path: PathLike) -> None:
        """Write ``state`` as the checkpoint folder ``path`` (all or nothing)."""
        target = Path(path)
        staging = self.prepare_staging(target)
        try:
            staged = self.write_parts(state, staging)
            self.commit(staging, target, [staged])
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)  # the previous checkpoints are untouched
            raise

    def prepare_staging(self, path: PathLike) -> Path:
        """Create the empty hidden folder the checkpoint ``path`` is written into (step 1)."""
        return atomic.prepare_staging(Path(path))

    def write_parts(self, state: dict[str, Any], staging: Path) -> StagedParts:
        """Write this process's parts into ``staging``, each file fsynced and hashed (step 2)."""
        if not isinstance(state, dict):
            raise TypeError(f"{type(self).__name__}.save: state must be a dict of parts, got {type(state).__name__}")
        for name in state:
            validate_part_name(name)
        with StagingFolder(staging, self.hash_algorithm) as folder:
            parts = {part: list(files) for part, files in self._save(state, folder).items()}
            names = [name for files in parts.values() for name in files]
            missing = [name for name in names if not folder.file(name).is_file()]
            if missing:
                raise CheckpointError(f"{type(self).__name__} said it wrote {missing} but they are not in {staging}")
            return StagedParts(parts=parts, files=folder.entries(names))

    def commit(self, staging: Path, path: PathLike, staged: Sequence[StagedParts]) -> None:
        """Write the manifest last, then rename ``staging`` onto ``path`` (step 3, one process)."""
        manifest = Manifest(self.hash_algorithm, {}, {}, {"io": type(self).__name__, "world_size": self.world_size})
        for piece in staged:
            for part, files in piece.parts.items():
                manifest.parts.setdefault(part, []).extend(files)
            manifest.files.update(piece.files)
        write_manifest(staging, manifest)
        atomic.commit_folder(staging, Path(path))

    # --------------------------------------------------------------------- load
    def load(self, path: PathLike, map_location: Any = None, parts: Collection[str] | None = None) -> dict[str, Any]:
        """Read the checkpoint ``path`` (all parts, or only ``parts``) after checking every file it reads.

        Raises CheckpointError when the folder is absent, incomplete or damaged, or lacks a part.
        """
        folder = Path(path)
        if not folder.is_dir():
            raise CheckpointError(f"no checkpoint folder at {folder}")
        manifest = read_manifest(folder)
        wanted = list(manifest.parts) if parts is None else list(parts)
        absent = [part for part in wanted if part not in manifest.parts]
        if absent:
            raise CheckpointError(f"{folder} has no part {absent} (it holds: {', '.join(sorted(manifest.parts))})")
        selected = {part: manifest.parts[part] for part in wanted}
        names = [name for files in selected.values() for name in files]
        with ThreadPoolExecutor(max_workers=min(4, max(1, len(names)))) as pool:
            list(pool.map(lambda name: verify_file(folder, name, manifest), names))  # hashing releases the GIL
        return self._load(folder, selected, map_location)

    def exists(self, path: PathLike) -> bool:
        """Whether ``path`` holds a complete checkpoint (manifest and file sizes; hashes are checked on load)."""
        folder = Path(path)
        return folder.is_dir() and find_manifest_problem(folder) is None and self._is_complete(folder)

    def remove(self, path: PathLike) -> None:
        """Delete the checkpoint folder ``path`` (no error when it is already gone)."""
        self._remove(Path(path))

    def teardown(self) -> None:
        """Release resources (threads, handles)."""

    # -------------------------------------------------------------------- hooks
    @abstractmethod
    def _save(self, state: dict[str, Any], staging: StagingFolder) -> dict[str, list[str]]:
        """Write the parts into ``staging.path``; return each part's files (names relative to it).

        Writing through ``staging.open(name)``, or calling ``staging.written(name)`` once a file is
        complete, lets hashing and fsync overlap with the next file; files left unregistered are
        hashed and fsynced afterwards.
        """

    @abstractmethod
    def _load(self, folder: Path, parts: dict[str, list[str]], map_location: Any) -> dict[str, Any]:
        """Read the given parts (their files already verified) into a dict of parts."""

    def _is_complete(self, folder: Path) -> bool:
        """Extra completeness checks of an implementation (the manifest has been checked)."""
        return True

    def _remove(self, path: Path) -> None:
        atomic.remove_folder(path)
