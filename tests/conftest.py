"""Fixtures shared by the test folders."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture
def restore_numeric_flags() -> Iterator[None]:
    """Put torch's global numeric flags back after the test, even when it fails half-way."""
    from trainkit.precision.flags import GlobalFlags

    flags = GlobalFlags()
    yield
    flags.restore()
