"""DeepSpeed on 2 CPU processes (gloo, ``DS_ACCELERATOR=cpu``) against one process without DeepSpeed.

Every optimizer step covers the whole dataset (8 examples = 2 ranks x 2 per device x 2 micro-batches)
and the sequences have different numbers of label tokens, so a rank that normalised its loss alone,
or an engine that divided it again by the accumulation steps, would drift from the reference.
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import TokenModel
from tests.integration.harness import deepspeed_launcher, run_spec, shared_job_folder
from tests.integration.scripts.scenarios import run_scenario
from tests.integration.test_ddp_evaluation import COMPARED, EVAL_ARGS
from tests.integration.test_ddp_training import TRAIN_ARGS, _max_diff

pytest.importorskip("deepspeed", reason="the deepspeed extra is not installed")

pytestmark = pytest.mark.integration

DS_ENV = {"DS_ACCELERATOR": "cpu"}
# The first DeepSpeed run on a machine compiles its CPU communication op (about a minute), then it is cached.
TIMEOUT = 420
FILLED = {
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "train_batch_size": "auto",
    "gradient_clipping": "auto",
}
AUTO_OPTIMIZER = {
    "type": "AdamW",
    "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto", "torch_adam": True},
}
AUTO_SCHEDULER = {
    "type": "WarmupDecayLR",
    "params": {"warmup_min_lr": "auto", "warmup_max_lr": "auto", "warmup_num_steps": "auto", "total_num_steps": "auto"},
}
OFFLOAD = {"offload_optimizer": {"device": "cpu"}}
BEST = {
    "eval_strategy": "epoch",
    "per_device_eval_batch_size": 2,
    "save_strategy": "epoch",
    "save_total_limit": 2,
    "metric_for_best_model": "eval_loss",
    "greater_is_better": True,  # the first evaluation is the "best": loading it must change the weights
    "load_best_model_at_end": True,
}


def _zero(stage: int, **extra: object) -> dict:
    return {**FILLED, "zero_optimization": {"stage": stage, **extra.pop("zero", {})}, **extra}  # type: ignore[dict-item]


def _train(name: str, batch: int, model: str = "token", deepspeed: dict | None = None, **args: object) -> dict:
    spec = {
        "name": name,
        "task": "train",
        "model": model,
        "train_size": 8,
        "eval_size": 7,
        "args": {**TRAIN_ARGS, "per_device_train_batch_size": batch, **args},
    }
    if deepspeed is not None:
        spec["deepspeed"] = deepspeed
    return spec


PARITY = {
    "zero1": _zero(1),
    "zero2": _zero(2),
    "zero3": _zero(3),
    "zero2_config_optimizer": _zero(2, optimizer=AUTO_OPTIMIZER),
}
OFFLOADED = _zero(3, zero=OFFLOAD, zero_force_ds_cpu_optimizer=False)


@pytest.fixture(scope="module")
def ds_runs(tmp_path_factory):
    scenarios = [_train(name, 2, deepspeed=config) for name, config in PARITY.items()]
    scenarios[2]["save_model"] = True
    nan_at_step_2 = _train("zero2_nan", 2, deepspeed=_zero(2), lr_scheduler_type="constant")
    nan_at_step_2["nan_loss"] = {"rank": 1, "step": 2}
    resumed = _train("offload_resumed", 2, deepspeed=OFFLOADED, save_strategy="steps", save_steps=2)
    resumed["resume_from"] = "offload/checkpoint-2"
    scenarios += [
        _train("zero2_sum", 2, "sum_token", deepspeed=_zero(2)),
        nan_at_step_2,
        _train("zero2_config_scheduler", 2, deepspeed=_zero(2, scheduler=AUTO_SCHEDULER), warmup_steps=2),
        _train("zero2_bf16", 2, deepspeed=_zero(2), bf16=True),
        _train("zero3_best", 2, deepspeed=_zero(3), **BEST),
        _train("zero2_best", 2, deepspeed=_zero(2), **BEST),
        _train("zero3_best_model_only", 2, deepspeed=_zero(3), save_only_model=True, **BEST),
        _train("zero2_best_model_only", 2, deepspeed=_zero(2), save_only_model=True, **BEST),
        {
            "name": "evaluate",
            "task": "evaluate",
            "eval_size": 7,
            "metrics": "function",
            "deepspeed": _zero(3),
            "args": {**EVAL_ARGS, "per_device_eval_batch_size": 2},
        },
        _train("offload", 2, deepspeed=OFFLOADED, save_strategy="steps", save_steps=2),
        resumed,
    ]

    def launch(folder):
        run_spec({"scenarios": scenarios}, folder, timeout=TIMEOUT, env=DS_ENV)

    return shared_job_folder(tmp_path_factory, "deepspeed", launch)


def _load(folder, name):
    return torch.load(folder / f"{name}.pt", weights_only=False)


def _facts(folder, name, rank=0):
    return json.loads((folder / f"{name}.rank{rank}.json").read_text())


def _logged(run, key):
    return [h[key] for h in run["log_history"] if key in h and "train_runtime" not in h]


@pytest.mark.parametrize("name", list(PARITY))
def test_zero_stages_equal_one_process_without_deepspeed(ds_runs, tmp_path, name):
    reference = run_scenario(_train("reference", 4), tmp_path)
    distributed = _load(ds_runs, name)
    assert _max_diff(distributed["state"], reference["state"]) < 1e-4
    for key in ("loss", "grad_norm", "learning_rate"):
        assert _logged(distributed, key) == pytest.approx(_logged(reference, key), rel=1e-5)
    facts = _facts(ds_runs, name)
    assert (facts["strategy"], facts["precision"]) == ("DeepSpeedStrategy", "deepspeed-fp32")


def test_num_items_in_batch_models_match_too(ds_runs, tmp_path):
    reference = run_scenario(_train("reference", 4, "sum_token"), tmp_path)
    assert _max_diff(_load(ds_runs, "zero2_sum")["state"], reference["state"]) < 1e-4


def test_bf16_runs_in_the_engine_with_fp32_master_weights(ds_runs, tmp_path):
    reference = run_scenario(_train("reference", 4), tmp_path)
    run = _load(ds_runs, "zero2_bf16")
    assert _facts(ds_runs, "zero2_bf16")["precision"] == "deepspeed-bf16"
    assert {tensor.dtype for tensor in run["state"].values()} == {torch.bfloat16}  # the module computes in bf16
    assert _max_diff(run["state"], reference["state"]) < 2e-2  # bf16 rounding of weights and activations
    assert _logged(run, "loss") == pytest.approx(_logged(reference, "loss"), rel=1e-2)


def test_scheduler_from_the_config_follows_deepspeeds_curve(ds_runs):
    from deepspeed.runtime.lr_schedules import WarmupDecayLR

    facts = _facts(ds_runs, "zero2_config_scheduler")
    assert facts["scheduler"] == "WarmupDecayLR"
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = WarmupDecayLR(optimizer, total_num_steps=5, warmup_min_lr=0, warmup_max_lr=0.02, warmup_num_steps=2)
    expected = []
    for _ in range(5):
        expected.append(optimizer.param_groups[0]["lr"])
        schedule.step()
    assert _logged(_load(ds_runs, "zero2_config_scheduler"), "learning_rate") == pytest.approx(expected)


def test_a_nan_loss_on_one_rank_skips_the_step_on_every_rank(ds_runs, tmp_path):
    """Each step sees the whole dataset, so 5 epochs with step 2 skipped train like 4 epochs (constant lr)."""
    reference = run_scenario(_train("reference", 4, lr_scheduler_type="constant", num_train_epochs=4), tmp_path)
    run = _load(ds_runs, "zero2_nan")
    assert _max_diff(run["state"], reference["state"]) < 1e-4
    assert _logged(run, "skipped_steps") == [1, 1, 1, 1]  # logged from step 2 on
    step2 = run["log_history"][1]
    assert (step2["step"], step2["grad_norm"]) == (2, float("inf"))  # the engine's norm of the skipped step


def test_save_model_writes_full_weights_a_plain_model_loads(ds_runs):
    from safetensors.torch import load_file

    trained = _load(ds_runs, "zero3")["state"]
    plain = TokenModel(seed=5)
    plain.load_state_dict(load_file(str(ds_runs / "zero3" / "model.safetensors")))
    assert _max_diff(plain.state_dict(), trained) == 0.0


@pytest.mark.parametrize("name", ["zero3_best", "zero2_best", "zero3_best_model_only", "zero2_best_model_only"])
def test_the_best_model_is_loaded_into_the_live_engine(ds_runs, tmp_path, name):
    """From the engine's checkpoint, or (save_only_model) from model.safetensors through load_model_state_dict."""
    after_first_step = run_scenario(_train("reference", 4, max_steps=1, num_train_epochs=1), tmp_path)
    # max_steps=1 has a one-step linear schedule: the first step's learning rate is the same
    run = _load(ds_runs, name)
    assert _max_diff(run["state"], after_first_step["state"]) < 1e-4
    facts = _facts(ds_runs, name)
    assert facts["best_model_checkpoint"].endswith("checkpoint-1")
    assert facts["checkpoints"] == ["checkpoint-1", "checkpoint-5"]  # rotation kept the best and the latest
    held = json.loads((ds_runs / name / "checkpoint-1" / "manifest.json").read_text())["parts"]
    assert ("model" in held, "deepspeed" in held) == (("model_only" in name), ("model_only" not in name))


def test_evaluation_without_training_equals_one_process(ds_runs, tmp_path):
    spec = {"name": "reference", "task": "evaluate", "eval_size": 7, "metrics": "function"}
    reference = run_scenario({**spec, "args": {**EVAL_ARGS, "per_device_eval_batch_size": 2}}, tmp_path)
    distributed = _load(ds_runs, "evaluate")
    for where in ("eval_metrics", "pred_metrics"):
        expected = {k: v for k, v in reference[where].items() if k in COMPARED}
        assert {k: v for k, v in distributed[where].items() if k in COMPARED} == pytest.approx(expected)


def test_zero3_offload_resumes_exactly(ds_runs):
    full, resumed = _load(ds_runs, "offload"), _load(ds_runs, "offload_resumed")
    assert _max_diff(resumed["state"], full["state"]) == 0.0
    assert _logged(resumed, "loss") == _logged(full, "loss")  # steps 1-2 come from the restored trainer state
    files = sorted(p.name for p in (ds_runs / "offload" / "checkpoint-4").iterdir())
    assert {"global_step4", "latest", "manifest.json", "rng_state_0.pth", "rng_state_1.pth", "scheduler.pt"} <= set(
        files
    )


@pytest.fixture(scope="module")
def launcher_run(tmp_path_factory):
    """The same training started by DeepSpeed's own launcher (``deepspeed --num_gpus 2``) instead of torchrun."""

    def launch(folder):
        spec = folder / "spec.json"
        spec.write_text(json.dumps({"scenarios": [_train("launched", 2, deepspeed=_zero(3))]}))
        job = deepspeed_launcher("scenarios.py", str(spec), "--output", str(folder), timeout=TIMEOUT, env=DS_ENV)
        assert job.returncode == 0, f"deepspeed launcher failed ({job.returncode}):\n{job.output[-6000:]}"

    return shared_job_folder(tmp_path_factory, "deepspeed_launcher", launch)


def test_the_deepspeed_launcher_runs_the_same_training(launcher_run, tmp_path):
    reference = run_scenario(_train("reference", 4), tmp_path)
    assert _max_diff(_load(launcher_run, "launched")["state"], reference["state"]) < 1e-4
    facts = [_facts(launcher_run, "launched", rank) for rank in (0, 1)]
    assert [(f["rank"], f["world_size"], f["strategy"]) for f in facts] == [
        (0, 2, "DeepSpeedStrategy"),
        (1, 2, "DeepSpeedStrategy"),
    ]
