"""``CheckpointIO``: how a checkpoint's state is written to and read from a folder (the format).

The state is a dict of named parts (``model``, ``optimizer``, ``scheduler``, ``scaler``,
``rng``, ``trainer_state``, ``training_args``, ...). Implementations decide the files. The
public methods are guards (validation, atomicity, safe loading) around protected hooks, so an
implementation cannot skip them. *Which* checkpoints exist, rotate or resume is the
CheckpointManager's business (policy), not the IO's.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

__all__ = ["CheckpointError", "CheckpointIO", "PathLike"]

PathLike = str | os.PathLike[str]


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, corrupted, or does not fit what loads it."""


class CheckpointIO(ABC):
    """Writes and reads one checkpoint folder."""

    def save(self, state: dict[str, Any], path: PathLike) -> None:
        """Write ``state`` as the checkpoint folder ``path`` (all or nothing)."""
        if not isinstance(state, dict):
            raise TypeError(f"{type(self).__name__}.save: state must be a dict of parts, got {type(state).__name__}")
        self._save(state, Path(path))

    def load(self, path: PathLike, map_location: Any = None) -> dict[str, Any]:
        """Read the checkpoint folder ``path``; raise CheckpointError when it is absent or damaged."""
        folder = Path(path)
        if not folder.is_dir():
            raise CheckpointError(f"no checkpoint folder at {folder}")
        return self._load(folder, map_location)

    def exists(self, path: PathLike) -> bool:
        """Whether ``path`` holds a complete checkpoint written by this IO."""
        return Path(path).is_dir() and self._is_complete(Path(path))

    def remove(self, path: PathLike) -> None:
        """Delete the checkpoint folder ``path`` (no error when it is already gone)."""
        self._remove(Path(path))

    def teardown(self) -> None:
        """Release resources (threads, handles)."""

    @abstractmethod
    def _save(self, state: dict[str, Any], path: Path) -> None: ...

    @abstractmethod
    def _load(self, path: Path, map_location: Any) -> dict[str, Any]: ...

    @abstractmethod
    def _is_complete(self, path: Path) -> bool: ...

    def _remove(self, path: Path) -> None:
        import shutil

        shutil.rmtree(path, ignore_errors=True)
