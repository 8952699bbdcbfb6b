"""The ``trainkit`` logger hierarchy."""

from __future__ import annotations

import logging

__all__ = ["get_logger"]

_ROOT = "trainkit"


def get_logger(name: str | None = None) -> logging.Logger:
    """A logger under ``trainkit`` (``trainkit.<name>`` for a module name outside the package)."""
    if name is None or name == _ROOT:
        return logging.getLogger(_ROOT)
    return logging.getLogger(name if name.startswith(_ROOT + ".") else f"{_ROOT}.{name}")
