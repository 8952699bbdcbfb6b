"""FSDP2 (fully_shard) on 2 processes (gloo, CPU) against one process with the doubled batch."""

from __future__ import annotations

import json

import pytest
import torch

from tests.integration.harness import run_spec, shared_job_folder
from tests.integration.scripts.scenarios import run_scenario
from tests.integration.test_ddp_evaluation import COMPARED
from tests.integration.test_ddp_training import TRAIN_ARGS, _max_diff

pytestmark = pytest.mark.integration

# name -> (TrainingArguments of FSDP, FSDP units expected: wrapped submodules + the root)
SHARDINGS = {
    "full_shard": ({"fsdp": "full_shard"}, 1),
    "shard_grad_op": ({"fsdp": "shard_grad_op"}, 1),
    "layers_checkpointed": (
        {
            "fsdp": "full_shard auto_wrap",
            "fsdp_config": {
                "transformer_layer_cls_to_wrap": ["Linear", "Embedding"],
                "activation_checkpointing": True,
                "forward_prefetch": True,
            },
        },
        3,
    ),
    "by_size_offloaded": ({"fsdp": "shard_grad_op offload auto_wrap", "fsdp_config": {"min_num_params": 50}}, 3),
    "no_shard": ({"fsdp": "no_shard"}, 1),
}
MIXED = {"bf16": ("token", {"bf16": True}), "fp16": ("sum_token", {"fp16": True})}


def _train(name: str, batch: int, model: str = "token", **args: object) -> dict:
    return {
        "name": name,
        "task": "train",
        "model": model,
        "train_size": 8,
        "args": {**TRAIN_ARGS, "per_device_train_batch_size": batch, **args},
    }


def _evaluate(name: str, batch: int, **args: object) -> dict:
    base = {"use_cpu": True, "disable_tqdm": True, "save_strategy": "no", "report_to": "none"}
    args = {**base, "per_device_eval_batch_size": batch, **args}
    return {"name": name, "task": "evaluate", "eval_size": 5, "metrics": "function", "args": args}


@pytest.fixture(scope="module")
def fsdp_runs(tmp_path_factory):
    scenarios = [_train(name, 2, **args) for name, (args, _) in SHARDINGS.items()]
    scenarios[0]["save_model"] = True
    scenarios.append({**_train("tied", 2, "tied_token", fsdp="full_shard"), "save_model": True})
    scenarios += [
        _train("rank0_weights_only", 2, fsdp="full_shard", fsdp_config={"cpu_ram_efficient_loading": True}),
        {**_train("synced_from_rank0", 2, fsdp="full_shard"), "other_ranks": "different_weights"},
        _train("evaluated_in_training", 2, fsdp="full_shard", eval_strategy="epoch", per_device_eval_batch_size=2),
    ]
    scenarios[-3]["other_ranks"] = "meta"
    scenarios += [_train(name, 2, model, fsdp="full_shard", **args) for name, (model, args) in MIXED.items()]
    scenarios.append(_evaluate("evaluate", 2, fsdp="full_shard"))
    return shared_job_folder(tmp_path_factory, "fsdp", lambda folder: run_spec({"scenarios": scenarios}, folder))


def _load(folder, name):
    return torch.load(folder / f"{name}.pt", weights_only=False)


def _facts(folder, name, rank=0):
    return json.loads((folder / f"{name}.rank{rank}.json").read_text())


@pytest.mark.parametrize("name", list(SHARDINGS))
def test_fsdp_equals_one_process_with_the_doubled_batch(fsdp_runs, tmp_path, name):
    reference = run_scenario(_train("reference", 4), tmp_path)
    distributed = _load(fsdp_runs, name)
    assert _max_diff(distributed["state"], reference["state"]) < 1e-5
    norms = [h["grad_norm"] for h in distributed["log_history"] if "grad_norm" in h]
    assert norms == pytest.approx([h["grad_norm"] for h in reference["log_history"] if "grad_norm" in h], rel=1e-5)
    facts = _facts(fsdp_runs, name, rank=1)
    assert facts["strategy"] == "FSDPStrategy"
    assert facts["fsdp_units"] == SHARDINGS[name][1]


@pytest.mark.parametrize("name", ["rank0_weights_only", "synced_from_rank0"])
def test_shards_are_filled_from_rank_zeros_weights(fsdp_runs, tmp_path, name):
    """Other ranks start on the meta device (cpu_ram_efficient_loading) or with other weights: rank 0's win."""
    reference = run_scenario(_train("reference", 4), tmp_path)
    assert _max_diff(_load(fsdp_runs, name)["state"], reference["state"]) < 1e-5


def test_evaluation_during_fsdp_training_matches_one_process(fsdp_runs, tmp_path):
    args = {"eval_strategy": "epoch", "per_device_eval_batch_size": 4}
    reference = run_scenario(_train("reference", 4, **args), tmp_path)
    distributed = _load(fsdp_runs, "evaluated_in_training")
    assert _max_diff(distributed["state"], reference["state"]) < 1e-5
    losses = [h["eval_loss"] for h in distributed["log_history"] if "eval_loss" in h]
    assert len(losses) == 5
    assert losses == pytest.approx([h["eval_loss"] for h in reference["log_history"] if "eval_loss" in h], rel=1e-5)


@pytest.mark.parametrize("name", list(MIXED))
def test_fsdp_mixed_precision_stays_close_to_one_process(fsdp_runs, tmp_path, name):
    """Parameters are all-gathered in half (MixedPrecisionPolicy): close to, not equal to, autocast alone."""
    model, args = MIXED[name]
    reference = run_scenario(_train("reference", 4, model, **args), tmp_path)
    assert _max_diff(_load(fsdp_runs, name)["state"], reference["state"]) < 5e-3
    expected_scaler = "ShardedGradScaler" if name == "fp16" else "NoneType"
    assert _facts(fsdp_runs, name)["scaler"] == expected_scaler


def test_fsdp_evaluate_and_predict_match_one_process(fsdp_runs, tmp_path):
    reference = run_scenario(_evaluate("reference", 4), tmp_path)
    distributed = _load(fsdp_runs, "evaluate")
    for where in ("eval_metrics", "pred_metrics"):
        expected = {k: v for k, v in reference[where].items() if k in COMPARED}
        assert {k: v for k, v in distributed[where].items() if k in COMPARED} == pytest.approx(expected, rel=1e-6)
    torch.testing.assert_close(torch.as_tensor(distributed["predictions"]), torch.as_tensor(reference["predictions"]))


@pytest.mark.parametrize(("name", "model"), [("full_shard", "token"), ("tied", "tied_token")])
def test_save_model_writes_the_consolidated_weights_for_a_plain_model(fsdp_runs, tmp_path, name, model):
    from safetensors.torch import load_model

    from tests.integration.scripts.scenarios import MODELS

    plain = MODELS[model](seed=5)
    load_model(plain, str(fsdp_runs / name / "model.safetensors"))  # strict: every key, no extra one
    reference = run_scenario(_train("reference", 4, model), tmp_path)
    assert _max_diff(plain.state_dict(), reference["state"]) < 1e-5
