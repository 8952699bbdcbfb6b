"""docs/optimizers.md and docs/schedulers.md name every built-in entry."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainkit.optim import OPTIMIZERS, SCHEDULERS

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.mark.parametrize(("registry", "doc"), [(OPTIMIZERS, "optimizers.md"), (SCHEDULERS, "schedulers.md")])
def test_every_registered_name_is_documented(registry, doc):
    text = (DOCS / doc).read_text()
    assert [name for name in registry.available() if f"`{name}`" not in text] == []
