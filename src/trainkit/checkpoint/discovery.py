"""Finding checkpoints in an output folder: ``get_last_checkpoint`` returns the newest *complete* one.

transformers' ``get_last_checkpoint`` picks the highest ``checkpoint-<N>`` folder even when its
save was interrupted; here a folder counts only when its manifest and file sizes check out.
Importing this module does not import torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from trainkit.checkpoint.layout import checkpoint_step
from trainkit.checkpoint.manifest import find_manifest_problem

__all__ = ["CheckpointEntry", "get_last_checkpoint", "list_checkpoints", "list_complete_checkpoints"]


@dataclass(frozen=True)
class CheckpointEntry:
    """A ``checkpoint-<step>`` folder and, when it is not complete, why."""

    step: int
    path: Path
    problem: str | None

    @property
    def complete(self) -> bool:
        return self.problem is None


def list_checkpoints(folder: str | os.PathLike[str]) -> list[CheckpointEntry]:
    """Every ``checkpoint-<step>`` folder in ``folder``, complete or not, sorted by step."""
    root = Path(folder)
    if not root.is_dir():
        return []
    entries = []
    for path in root.iterdir():
        step = checkpoint_step(path)
        if step is not None and path.is_dir():
            entries.append(CheckpointEntry(step, path, find_manifest_problem(path)))
    return sorted(entries, key=lambda entry: entry.step)


def list_complete_checkpoints(folder: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoints in ``folder``, oldest step first."""
    return [entry.path for entry in list_checkpoints(folder) if entry.complete]


def get_last_checkpoint(folder: str | os.PathLike[str]) -> str | None:
    """The newest complete checkpoint in ``folder`` (by step number), or None (transformers' name)."""
    complete = list_complete_checkpoints(folder)
    return str(complete[-1]) if complete else None
