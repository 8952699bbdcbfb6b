"""``import trainkit`` pulls in no optional backend (timing lives in benchmarks/import_time.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[2] / "src")
OPTIONAL = ("deepspeed", "torch_xla", "apex", "transformers", "accelerate", "lightning")
WRITERS = ("torch.utils.tensorboard", "tensorboard.summary.writer", "tensorboardX")


def _modules_after(code: str) -> list[str]:
    script = f"import sys, json\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env={"PYTHONPATH": SRC}
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _offenders(modules: list[str]) -> list[str]:
    return [m for m in modules if m.split(".")[0] in OPTIONAL or m.startswith(WRITERS)]


def test_import_trainkit_loads_no_optional_backend():
    assert _offenders(_modules_after("import trainkit")) == []


def test_public_names_load_no_optional_backend():
    code = "import trainkit\nfor name in trainkit.__all__:\n    getattr(trainkit, name)"
    assert _offenders(_modules_after(code)) == []


def test_every_public_name_resolves():
    import trainkit

    for name in trainkit.__all__:
        assert getattr(trainkit, name) is not None
