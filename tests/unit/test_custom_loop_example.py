"""examples/custom_loop.py runs: a plain loop driving SingleDeviceStrategy and a precision by name."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "custom_loop.py"

pytestmark = pytest.mark.usefixtures("restore_numeric_flags")


@pytest.mark.parametrize(("precision", "full_eval"), [("fp16-mixed", "bf16"), ("bf16-true", None)])
def test_custom_loop_example_trains(monkeypatch, capsys, precision, full_eval):
    argv = [str(EXAMPLE), "--precision", precision, "--device", "cpu", "--steps", "4", "--batch-size", "8"]
    monkeypatch.setattr(sys, "argv", argv + (["--full-eval", full_eval] if full_eval else []))
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    out = capsys.readouterr().out
    assert f"{precision.split('-')[0]!r}" in out
    assert "step 4: loss" in out
    assert "held-out loss after training" in out
    assert "skipped steps:" in out
