"""Checkpoint format (CheckpointIO) and policy (CheckpointManager)."""

from trainkit.checkpoint.io import CheckpointError, CheckpointIO

__all__ = ["CheckpointError", "CheckpointIO"]
