"""examples/quickstart.py under torchrun with FSDP (the command docs/distributed.md gives), shortened."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

from tests.integration.harness import ROOT, torchrun

pytestmark = pytest.mark.integration


def test_quickstart_trains_with_fsdp_and_saves_consolidated_weights(tmp_path):
    out = tmp_path / "q_fsdp"
    shorter = ["--max_steps", "4", "--eval_steps", "2", "--logging_steps", "2", "--d_model", "32", "--n_layer", "2"]
    fsdp = [
        "--fsdp",
        "full_shard auto_wrap",
        "--fsdp_config",
        '{"transformer_layer_cls_to_wrap": ["TransformerEncoderLayer"]}',
    ]
    job = torchrun(
        str(ROOT / "examples" / "quickstart.py"),
        "--output_dir",
        str(out),
        "--use_cpu",
        "--save_strategy",
        "no",
        *fsdp,
        *shorter,
    )
    assert job.returncode == 0, job.output[-6000:]
    assert job.output.count("Evaluation loss") == 2  # the script's own report, printed by both ranks
    weights = load_file(str(out / "model.safetensors"))
    assert "embed.weight" in weights
    assert "head.weight" not in weights  # tied to the embedding: saved once
