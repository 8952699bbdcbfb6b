"""Filesystem steps that make a checkpoint appear all at once or not at all.

The commit point of a save is one ``rename`` of the staging folder onto ``checkpoint-<step>``.
Before it, every file and the staging folder are fsynced, so after a crash the renamed folder
holds complete data; after it, the parent folder is fsynced, so the rename survives a power
loss. A crash leaves at worst hidden siblings, which ``recover_output_dir`` tidies up.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from trainkit.checkpoint.layout import checkpoint_step, deleting_path, replaced_path, staging_path
from trainkit.checkpoint.manifest import find_manifest_problem
from trainkit.utils.logging import get_logger

__all__ = [
    "commit_folder",
    "fsync_dir",
    "fsync_file",
    "prepare_staging",
    "recover_output_dir",
    "remove_folder",
]

logger = get_logger(__name__)


def fsync_file(path: Path) -> None:
    """Flush a file's data to stable storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (new names, renames) to stable storage; a no-op where folders cannot be opened."""
    if os.name == "nt":  # Windows cannot open a directory; NTFS journals renames itself
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def prepare_staging(path: Path) -> Path:
    """Create an empty staging folder for the checkpoint ``path`` (removing one left by a crash)."""
    staging = staging_path(path)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def commit_folder(staging: Path, path: Path) -> None:
    """Rename the (fsynced) staging folder onto ``path``; an existing checkpoint there is replaced."""
    fsync_dir(staging)
    old = replaced_path(path)
    if path.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(path, old)
    os.replace(staging, path)
    fsync_dir(path.parent)
    if old.exists():
        shutil.rmtree(old)


def remove_folder(path: Path) -> None:
    """Delete a checkpoint folder: first renamed to a hidden name, so it never looks half deleted."""
    if not path.exists():
        return
    doomed = deleting_path(path)
    if doomed.exists():
        shutil.rmtree(doomed)
    os.replace(path, doomed)
    fsync_dir(path.parent)
    shutil.rmtree(doomed, ignore_errors=True)


def recover_output_dir(output_dir: Path) -> list[str]:
    """Tidy what interrupted saves left in ``output_dir``; return what was done, one line per action.

    A staging or deleting folder is removed. A replaced checkpoint whose replacement never
    arrived is renamed back (the save it belonged to did not commit), otherwise removed.
    """
    actions: list[str] = []
    if not output_dir.is_dir():
        return actions
    for entry in sorted(output_dir.iterdir()):
        name = entry.name
        if not (name.startswith(".") and entry.is_dir()):
            continue
        target_name, _, kind = name[1:].rpartition(".")
        if checkpoint_step(target_name) is None or kind not in ("staging", "replaced", "deleting"):
            continue
        target = output_dir / target_name
        if kind == "replaced" and not target.exists() and find_manifest_problem(entry) is None:
            os.replace(entry, target)
            actions.append(f"restored {target_name} (its replacement was interrupted)")
            continue
        shutil.rmtree(entry, ignore_errors=True)
        actions.append(f"removed {name} (left by an interrupted save or deletion)")
    if actions:
        fsync_dir(output_dir)
        for action in actions:
            logger.info("checkpoint recovery in %s: %s", output_dir, action)
    return actions
