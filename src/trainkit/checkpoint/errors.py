"""``CheckpointError``: the one error type for checkpoints that are missing, incomplete, damaged or misfit."""

from __future__ import annotations

__all__ = ["CheckpointError"]


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, corrupted, or does not fit what loads it."""
