"""Hypothesis: valid TrainingArguments survive JSON and the command line; invalid values name the field."""

from __future__ import annotations

import dataclasses
import json
import warnings
from typing import Any

import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from trainkit import HfArgumentParser, TrainingArguments
from trainkit.args_support import FIELD_SUPPORT, field_status
from trainkit.parser import to_cli_args

_text = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_./", min_size=1, max_size=12).filter(
    lambda s: not s.startswith("-")
)
_small_float = st.floats(min_value=0.0, max_value=10.0, allow_nan=False, allow_infinity=False)
_ratio_or_steps = st.one_of(st.integers(1, 10_000), st.floats(0.001, 0.999))
_json_value = st.one_of(st.integers(-100, 100), st.booleans(), _text, st.floats(-1e3, 1e3, allow_nan=False))
_json_dict = st.dictionaries(_text, _json_value, max_size=3)
_opt = st.none
# lr_scheduler_kwargs that each sampled lr_scheduler_type takes (other keys are refused at construction).
_SCHEDULER_KWARGS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "linear": st.just({}),
    "constant": st.just({}),
    "constant_with_warmup": st.just({}),
    "cosine": st.fixed_dictionaries({}, optional={"num_cycles": st.floats(0.0, 3.0)}),
    "polynomial": st.fixed_dictionaries({}, optional={"power": st.floats(0.1, 3.0), "lr_end": st.floats(0.0, 1e-6)}),
}

# Valid values of every non-alias field. Fields whose status is "refused" keep their default.
VALID: dict[str, st.SearchStrategy[Any]] = {
    "output_dir": _text,
    "overwrite_output_dir": st.booleans(),
    "do_train": st.booleans(),
    "do_eval": st.booleans(),
    "do_predict": st.booleans(),
    "eval_strategy": st.sampled_from(["no", "steps", "epoch"]),
    "prediction_loss_only": st.booleans(),
    "per_device_train_batch_size": st.integers(1, 512),
    "per_device_eval_batch_size": st.integers(1, 512),
    "gradient_accumulation_steps": st.integers(1, 64),
    "eval_accumulation_steps": _opt() | st.integers(1, 100),
    "eval_delay": _opt() | _small_float,
    "torch_empty_cache_steps": _opt() | st.integers(1, 1000),
    "learning_rate": st.floats(0.0, 1.0),
    "weight_decay": st.floats(0.0, 1.0),
    "adam_beta1": st.floats(0.0, 0.999),
    "adam_beta2": st.floats(0.0, 0.9999),
    "adam_epsilon": st.floats(0.0, 1e-3),
    "max_grad_norm": _small_float,
    "num_train_epochs": _small_float,
    "max_steps": st.integers(-1, 10_000),
    "lr_scheduler_type": st.sampled_from(["linear", "cosine", "constant", "constant_with_warmup", "polynomial"]),
    "lr_scheduler_kwargs": st.just({}),  # drawn to match lr_scheduler_type in valid_kwargs
    "warmup_ratio": st.floats(0.0, 1.0),
    "warmup_steps": st.integers(0, 1000) | st.floats(0.01, 0.99),
    "log_level": st.sampled_from(["debug", "info", "warning", "error", "critical", "passive"]),
    "log_level_replica": st.sampled_from(["debug", "info", "warning", "error", "critical", "passive"]),
    "log_on_each_node": st.booleans(),
    "logging_dir": _text,
    "logging_strategy": st.sampled_from(["no", "steps", "epoch"]),
    "logging_first_step": st.booleans(),
    "logging_steps": _ratio_or_steps,
    "logging_nan_inf_filter": st.booleans(),
    "save_strategy": st.sampled_from(["no", "steps", "epoch"]),
    "save_steps": _ratio_or_steps,
    "save_total_limit": _opt() | st.integers(0, 10),
    "save_safetensors": st.booleans(),
    "save_on_each_node": st.booleans(),
    "save_only_model": st.booleans(),
    "restore_callback_states_from_checkpoint": st.booleans(),
    "use_cpu": st.booleans(),
    "seed": st.integers(0, 2**32 - 1),
    "data_seed": _opt() | st.integers(0, 2**32 - 1),
    "jit_mode_eval": st.booleans(),
    "bf16": st.booleans(),
    "fp16": st.booleans(),
    "fp16_opt_level": st.sampled_from(["O0", "O1", "O2", "O3"]),
    "half_precision_backend": st.sampled_from(["auto", "cpu_amp", "cuda_amp"]),
    "bf16_full_eval": st.booleans(),
    "fp16_full_eval": st.booleans(),
    "tf32": _opt() | st.booleans(),
    "local_rank": st.integers(-1, 7),
    "ddp_backend": _opt() | st.sampled_from(["gloo", "nccl"]),
    "dataloader_drop_last": st.booleans(),
    "eval_steps": _opt() | _ratio_or_steps,
    "dataloader_num_workers": st.integers(0, 8),
    "dataloader_prefetch_factor": _opt() | st.integers(1, 8),
    "past_index": st.integers(-1, 3),
    "run_name": _opt() | _text,
    "disable_tqdm": st.booleans(),
    "remove_unused_columns": st.booleans(),
    "label_names": _opt() | st.lists(_text, min_size=1, max_size=3),
    "metric_for_best_model": _opt() | st.sampled_from(["loss", "eval_loss", "accuracy"]),
    "greater_is_better": _opt() | st.booleans(),
    "load_best_model_at_end": st.booleans(),
    "ignore_data_skip": st.booleans(),
    "fsdp": st.sampled_from(["", "full_shard", "shard_grad_op auto_wrap", "full_shard offload"]),
    "fsdp_config": _opt() | st.fixed_dictionaries({}, optional={"min_num_params": st.integers(1, 10**6)}),
    "deepspeed": _opt() | st.just({"zero_optimization": {"stage": 2}}),
    "label_smoothing_factor": st.floats(0.0, 0.99),
    "optim": st.sampled_from(["adamw_torch", "sgd", "adafactor", "adagrad", "rmsprop"]),
    "optim_args": _opt() | st.just("foo=1,bar=2"),
    "group_by_length": st.booleans(),
    "length_column_name": _text,
    "report_to": st.sampled_from([None, "none", "all", "tensorboard", ["tensorboard", "jsonl"], "jsonl"]),
    "ddp_find_unused_parameters": _opt() | st.booleans(),
    "ddp_bucket_cap_mb": _opt() | st.integers(1, 100),
    "ddp_broadcast_buffers": _opt() | st.booleans(),
    "dataloader_pin_memory": st.booleans(),
    "dataloader_persistent_workers": st.booleans(),
    "skip_memory_metrics": st.booleans(),
    "resume_from_checkpoint": _opt() | _text,
    "gradient_checkpointing": st.booleans(),
    "gradient_checkpointing_kwargs": _opt() | st.just({"use_reentrant": False}),
    "include_for_metrics": st.sampled_from([[], ["inputs"], ["loss"], ["inputs", "loss"]]),
    "eval_do_concat_batches": st.booleans(),
    "full_determinism": st.booleans(),
    "ddp_timeout": _opt() | st.integers(1, 10_000),
    "torch_compile": st.booleans(),
    "torch_compile_backend": _opt() | st.sampled_from(["inductor", "eager"]),
    "torch_compile_mode": _opt() | st.sampled_from(["default", "reduce-overhead"]),
    "include_tokens_per_second": st.booleans(),
    "include_num_input_tokens_seen": st.booleans(),
    "neftune_noise_alpha": _opt() | _small_float,
    "batch_eval_metrics": st.booleans(),
    "eval_on_start": st.booleans(),
    "eval_use_gather_object": st.booleans(),
    "average_tokens_across_devices": st.booleans(),
}


def _supported(name: str) -> bool:
    return field_status(name)[0] == "supported"


@st.composite
def valid_kwargs(draw: st.DrawFn) -> dict[str, Any]:
    kwargs = {name: draw(strategy) for name, strategy in VALID.items() if _supported(name)}
    if "lr_scheduler_type" in kwargs:
        kwargs["lr_scheduler_kwargs"] = draw(_SCHEDULER_KWARGS[kwargs["lr_scheduler_type"]])
    # keep each draw inside transformers' cross-field rules rather than rejecting it
    if kwargs.get("fp16") and kwargs.get("bf16"):
        kwargs["bf16"] = False
    if kwargs.get("fp16_full_eval") and kwargs.get("bf16_full_eval"):
        kwargs["bf16_full_eval"] = False
    if kwargs.get("dataloader_num_workers", 0) == 0:
        kwargs.pop("dataloader_prefetch_factor", None)
        kwargs.pop("dataloader_persistent_workers", None)
    if kwargs.get("fsdp") and kwargs.get("deepspeed"):
        kwargs["deepspeed"] = None
    if kwargs.get("load_best_model_at_end"):
        kwargs["save_strategy"] = "best" if _supported("save_strategy") else kwargs.get("save_strategy")
        kwargs["eval_strategy"] = "steps"
    return kwargs


def _build(kwargs: dict[str, Any]) -> TrainingArguments:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return TrainingArguments(**kwargs)
        except ValueError:
            reject()


PARSER = HfArgumentParser(TrainingArguments)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])


def test_every_supported_field_has_a_valid_strategy():
    supported = {n for n, s in FIELD_SUPPORT.items() if s.kind == "supported"}
    assert supported - set(VALID) == set()


@SETTINGS
@given(valid_kwargs())
def test_json_round_trip(kwargs):
    args = _build(kwargs)
    data = json.loads(args.to_json_string())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (back,) = PARSER.parse_dict(data)
    assert back == args
    assert back.to_dict() == args.to_dict()


@SETTINGS
@given(valid_kwargs())
def test_command_line_round_trip(kwargs):
    args = _build(kwargs)
    argv = to_cli_args(args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (back,) = PARSER.parse_args_into_dataclasses(argv, look_for_args_file=False)
    assert back == args


# ------------------------------------------------------------------ invalid values
_BAD_TYPE: dict[type, st.SearchStrategy[Any]] = {
    bool: st.sampled_from(["yes", 1, 0.0, [True]]),
    int: st.sampled_from(["3", 2.5, [1], {"a": 1}]),
    float: st.sampled_from(["0.1", [0.1], {"x": 1}]),
    str: st.sampled_from([3, 1.5, True]),
}

_OUT_OF_RANGE: dict[str, st.SearchStrategy[Any]] = {
    "per_device_train_batch_size": st.integers(max_value=0),
    "per_device_eval_batch_size": st.integers(max_value=0),
    "gradient_accumulation_steps": st.integers(max_value=0),
    "learning_rate": st.floats(max_value=-1e-9, allow_infinity=False),
    "adam_beta1": st.floats(1.0, 10.0) | st.floats(-10.0, -1e-9),
    "adam_beta2": st.floats(1.0, 10.0),
    "warmup_ratio": st.floats(1.0001, 100.0),
    "seed": st.integers(min_value=2**32) | st.integers(max_value=-1),
    "max_steps": st.integers(max_value=-2),
    "label_smoothing_factor": st.floats(1.0, 5.0),
    "dataloader_num_workers": st.integers(max_value=-1),
    "logging_steps": st.floats(1.01, 1e6).filter(lambda x: x != int(x)) | st.floats(max_value=0.0),
    "save_steps": st.floats(1.01, 1e6).filter(lambda x: x != int(x)),
}


def _scalar_fields() -> list[tuple[str, type]]:
    out = []
    for f in dataclasses.fields(TrainingArguments):
        if f.init and _supported(f.name) and f.type in ("bool", "int", "float", "str"):
            out.append((f.name, {"bool": bool, "int": int, "float": float, "str": str}[f.type]))
    return out


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_wrong_types_raise_type_error_naming_field(data):
    fields = _scalar_fields()
    if not fields:
        pytest.skip("no supported scalar field yet")
    name, tp = data.draw(st.sampled_from(fields))
    value = data.draw(_BAD_TYPE[tp])
    with pytest.raises(TypeError, match=name):
        TrainingArguments(**{name: value})


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_out_of_range_values_raise_value_error_naming_field(data):
    names = [n for n in _OUT_OF_RANGE if _supported(n)]
    if not names:
        pytest.skip("no supported numeric field yet")
    name = data.draw(st.sampled_from(names))
    value = data.draw(_OUT_OF_RANGE[name])
    with pytest.raises(ValueError, match=name):
        TrainingArguments(**{name: value})
