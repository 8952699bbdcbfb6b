"""docs/arguments.md lists every field with its current status."""

from __future__ import annotations

from pathlib import Path

from trainkit.args_support import TABLE_MARKER, render_arguments_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "arguments.md"


def test_field_table_is_current():
    text = DOC.read_text()
    assert TABLE_MARKER in text
    table = text.split(TABLE_MARKER, 1)[1].strip() + "\n"
    assert table == render_arguments_markdown(), (
        "docs/arguments.md is stale: run `python -m trainkit.args_support --write docs/arguments.md`"
    )
