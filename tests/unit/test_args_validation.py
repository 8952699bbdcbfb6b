"""TrainingArguments: validation rules, aliases, methods, and the absence of side effects."""

from __future__ import annotations

import json
import os
import warnings

import pytest

from trainkit import IntervalStrategy, SaveStrategy, TrainingArguments, UnsupportedArgumentError
from trainkit.args_support import FIELD_SUPPORT, IMPLEMENTED_ISSUES, field_status


def make(**kw):
    kw.setdefault("output_dir", "out")
    return TrainingArguments(**kw)


def _needs(issue: int) -> None:
    if issue not in IMPLEMENTED_ISSUES:
        pytest.skip(f"needs issue {issue}")


def _needs_field(*names: str) -> None:
    for name in names:
        _needs(FIELD_SUPPORT[name].issue)


# ------------------------------------------------------------------- unknown names
def test_unknown_keyword_names_it_and_suggests():
    with pytest.raises(TypeError, match=r"'lerning_rate' \(did you mean 'learning_rate'\?\)"):
        TrainingArguments(output_dir="x", lerning_rate=1e-3)


def test_unknown_keyword_without_close_match():
    with pytest.raises(TypeError, match="'zzz'"):
        TrainingArguments(zzz=1)


# ------------------------------------------------------------------- types/ranges
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("per_device_train_batch_size", "8"),
        ("per_device_train_batch_size", 2.5),
        ("fp16", "yes"),
        ("seed", True),
        ("label_names", "labels"),
        ("include_for_metrics", "inputs"),
    ],
)
def test_wrong_type_names_field(field, value):
    _needs_field(field)
    with pytest.raises(TypeError, match=field):
        make(**{field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("per_device_train_batch_size", 0),
        ("gradient_accumulation_steps", 0),
        ("seed", -1),
        ("seed", 2**32),
        ("warmup_ratio", 1.5),
        ("dataloader_num_workers", -1),
        ("max_steps", -2),
    ],
)
def test_out_of_range_names_field(field, value):
    _needs_field(field)
    with pytest.raises(ValueError, match=field):
        make(**{field: value})


# ---------------------------------------------------------------- transformers' rules
def test_fp16_and_bf16_are_exclusive():
    _needs(4)
    with pytest.raises(ValueError, match="fp16=True and bf16=True"):
        make(fp16=True, bf16=True)


def test_full_eval_modes_are_exclusive():
    _needs(6)
    with pytest.raises(ValueError, match="fp16_full_eval=True and bf16_full_eval=True"):
        make(fp16_full_eval=True, bf16_full_eval=True)


def test_apex_refuses_bf16():
    _needs(4)
    with pytest.raises(ValueError, match="apex"):
        make(bf16=True, half_precision_backend="apex")


def test_load_best_needs_matching_strategies():
    _needs(7)
    with pytest.raises(ValueError, match="eval_strategy='epoch', save_strategy='steps'"):
        make(load_best_model_at_end=True, eval_strategy="epoch", save_strategy="steps")


def test_load_best_needs_save_steps_multiple_of_eval_steps():
    _needs(7)
    with pytest.raises(ValueError, match=r"save_steps \(300\) to be a multiple of eval_steps \(200\)"):
        make(load_best_model_at_end=True, eval_strategy="steps", eval_steps=200, save_steps=300)
    ok = make(load_best_model_at_end=True, eval_strategy="steps", eval_steps=100, save_steps=300)
    assert ok.metric_for_best_model == "loss"
    assert ok.greater_is_better is False


def test_load_best_with_save_strategy_best_needs_no_match():
    _needs(7)
    args = make(load_best_model_at_end=True, eval_strategy="steps", eval_steps=7, save_strategy="best")
    assert args.save_strategy == SaveStrategy.BEST


def test_load_best_ratio_steps():
    _needs(7)
    with pytest.raises(ValueError, match="mixing a ratio"):
        make(load_best_model_at_end=True, eval_strategy="steps", eval_steps=0.1, save_steps=10)
    make(load_best_model_at_end=True, eval_strategy="steps", eval_steps=0.1, save_steps=0.3)


@pytest.mark.parametrize("field", ["logging_steps", "save_steps"])
def test_steps_above_one_must_be_integers(field):
    _needs_field(field)
    with pytest.raises(ValueError, match=f"{field}=2.5 must be an integer"):
        make(**{field: 2.5})


@pytest.mark.parametrize("field", ["logging_steps", "save_steps"])
def test_steps_must_be_positive(field):
    _needs_field(field)
    with pytest.raises(ValueError, match=f"{field}=0"):
        make(**{field: 0})


def test_steps_ratios_are_kept_and_integers_converted():
    _needs_field("logging_steps", "save_steps")
    args = make(logging_steps=0.25, save_steps=10.0)
    assert args.logging_steps == 0.25
    assert args.save_steps == 10
    assert isinstance(args.save_steps, int)


def test_eval_steps_defaults_to_logging_steps():
    _needs(6)
    args = make(eval_strategy="steps", logging_steps=17)
    assert args.eval_steps == 17
    assert args.do_eval is True


def test_reduce_on_plateau_needs_eval():
    _needs(3)
    with pytest.raises(ValueError, match="reduce_lr_on_plateau"):
        make(lr_scheduler_type="reduce_lr_on_plateau")


def test_save_best_needs_eval_strategy():
    _needs(7)
    with pytest.raises(ValueError, match="save_strategy='best' needs an eval_strategy"):
        make(save_strategy="best", metric_for_best_model="loss")


def test_prefetch_factor_needs_workers():
    _needs(5)
    with pytest.raises(ValueError, match="dataloader_prefetch_factor needs dataloader_num_workers > 0"):
        make(dataloader_prefetch_factor=2)


def test_fsdp_rules():
    _needs(8)
    with pytest.raises(ValueError, match="'offload' needs"):
        make(fsdp="offload")
    with pytest.raises(ValueError, match="exclusive"):
        make(fsdp="full_shard shard_grad_op")
    with pytest.raises(ValueError, match="min_num_params' and 'transformer_layer_cls_to_wrap"):
        make(fsdp="full_shard auto_wrap", fsdp_config={"min_num_params": 10, "transformer_layer_cls_to_wrap": "X"})
    with pytest.raises(ValueError, match="cpu_ram_efficient_loading"):
        make(fsdp="full_shard", fsdp_config={"cpu_ram_efficient_loading": True, "sync_module_states": False})


def test_fsdp_and_deepspeed_exclusive():
    _needs(8)
    _needs(9)
    with pytest.raises(ValueError, match="fsdp and deepspeed"):
        make(fsdp="full_shard", deepspeed={"zero_optimization": {"stage": 2}})


def test_bad_enum_value_lists_choices_and_closest():
    with pytest.raises(ValueError, match=r"logging_strategy.*Did you mean 'steps'"):
        make(logging_strategy="stepz")


def test_dict_field_from_json_string_and_error():
    _needs(3)
    args = make(lr_scheduler_type="cosine", lr_scheduler_kwargs='{"num_cycles": 2}')
    assert args.lr_scheduler_kwargs == {"num_cycles": 2}
    with pytest.raises(ValueError, match="lr_scheduler_kwargs is not valid JSON"):
        make(lr_scheduler_type="cosine", lr_scheduler_kwargs="{num_cycles: 2}")


def test_bad_dict_string_names_field():
    with pytest.raises(ValueError, match="gradient_checkpointing_kwargs must be a dict"):
        make(gradient_checkpointing_kwargs="use_reentrant=False")


# ------------------------------------------------------------------------ aliases
def test_evaluation_strategy_alias():
    _needs(6)
    with pytest.warns(FutureWarning, match="evaluation_strategy"):
        args = make(evaluation_strategy="epoch")
    assert args.eval_strategy == IntervalStrategy.EPOCH
    assert args.evaluation_strategy is None


def test_alias_contradiction_names_both():
    _needs(6)
    with pytest.raises(ValueError, match="`evaluation_strategy`='epoch' contradicts `eval_strategy`='steps'"):
        make(evaluation_strategy="epoch", eval_strategy="steps")


def test_per_gpu_alias_and_no_cuda():
    _needs(5)
    _needs(4)
    with pytest.warns(FutureWarning):
        args = make(per_gpu_train_batch_size=4, no_cuda=True)
    assert args.per_device_train_batch_size == 4
    assert args.use_cpu is True
    assert args.per_gpu_train_batch_size is None


def test_adafactor_flag_maps_to_optim():
    _needs(3)
    with pytest.warns(FutureWarning):
        args = make(adafactor=True)
    assert args.optim == "adafactor"
    assert args.adafactor is False


def test_include_inputs_for_metrics_alias():
    _needs(6)
    with pytest.warns(FutureWarning):
        args = make(include_inputs_for_metrics=True)
    assert args.include_for_metrics == ["inputs"]


# ------------------------------------------------------------------ refused fields
def test_refused_field_names_field_and_reason():
    with pytest.raises(UnsupportedArgumentError, match=r"push_to_hub=True .*does not upload"):
        make(push_to_hub=True)


@pytest.mark.parametrize("name", sorted(n for n, s in FIELD_SUPPORT.items() if s.kind == "refused"))
def test_every_permanently_refused_field_raises(name):
    import dataclasses

    f = next(f for f in dataclasses.fields(TrainingArguments) if f.name == name)
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    value = {bool: True, int: 3, str: "x y", float: 0.5}.get(type(default), "something")
    if default is None:
        value = "x"
    value = {"debug": "underflow_overflow", "hub_strategy": "end"}.get(name, value)
    if name.endswith("_config"):
        value = {"a": 1}
    with pytest.raises((UnsupportedArgumentError, TypeError), match=name):
        make(**{name: value})


def test_every_field_has_a_status():
    import dataclasses

    names = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    assert names == set(FIELD_SUPPORT)
    assert {field_status(n)[0] for n in names} <= {"supported", "alias", "refused"}


# ------------------------------------------------------------------ serialisation
def test_to_dict_masks_tokens_and_is_json():
    args = make()
    d = args.to_dict()
    json.dumps(d)
    assert d["eval_strategy"] == "no"
    assert d["hub_token"] is None
    args.hub_token = "secret"
    assert args.to_dict()["hub_token"] == "<HUB_TOKEN>"
    assert "secret" not in args.to_json_string()
    assert "secret" not in str(args)


def test_to_sanitized_dict_has_only_scalars():
    d = make().to_sanitized_dict()
    assert all(type(v) in (bool, int, float, str) for v in d.values())
    assert d["train_batch_size"] == 8


# --------------------------------------------------------------------- methods
def test_setters_return_self_and_set_fields():
    _needs(3)
    _needs(5)
    args = make()
    assert args.set_training(batch_size=16, gradient_accumulation_steps=2) is args
    assert args.per_device_train_batch_size == 16
    assert args.gradient_accumulation_steps == 2
    if True:
        assert args.set_optimizer(name="sgd", beta1=0.8) is args
        assert args.optim == "sgd"
        assert args.adam_beta1 == 0.8
        assert args.set_lr_scheduler(name="cosine", warmup_ratio=0.05) is args
        assert args.lr_scheduler_type == "cosine"
    if 6 in IMPLEMENTED_ISSUES:
        assert args.set_evaluate(strategy="steps", steps=100) is args
        assert args.eval_steps == 100
        assert args.do_eval
        assert args.set_testing(batch_size=32).per_device_eval_batch_size == 32
    if 7 in IMPLEMENTED_ISSUES:
        assert args.set_save(strategy="steps", steps=100).save_steps == 100
    if 5 in IMPLEMENTED_ISSUES:
        assert args.set_logging(strategy="steps", steps=10).logging_steps == 10
        assert args.set_dataloader(train_batch_size=4).per_device_train_batch_size == 4


def test_setter_revalidates():
    args = make()
    with pytest.raises(UnsupportedArgumentError, match="push_to_hub"):
        args.set_push_to_hub("me/model")


def test_get_warmup_steps():
    _needs(3)
    assert make(warmup_ratio=0.1).get_warmup_steps(95) == 10  # ceil, as transformers
    assert make(warmup_steps=7, warmup_ratio=0.5).get_warmup_steps(100) == 7
    assert make(warmup_steps=0.25).get_warmup_steps(10) == 3


def test_properties_without_distributed(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    args = make()
    assert (args.world_size, args.process_index, args.local_process_index) == (1, 0, 0)
    assert args.should_log
    assert args.should_save
    assert args.eval_batch_size == 8
    assert args.n_gpu in (0, 1)
    assert str(args.device) in ("cpu", "cuda:0", "mps")


def test_properties_read_torchrun_environment(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    args = make()
    assert (args.world_size, args.process_index, args.local_process_index) == (4, 3, 1)
    assert not args.should_log  # log_on_each_node=True: local rank 1 is not a logging process
    assert not args.should_save


def test_process_log_level(monkeypatch):
    _needs_field("log_level", "log_level_replica")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    import logging

    assert make(log_level="error").get_process_log_level() == logging.ERROR
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert make(log_level="error", log_level_replica="info").get_process_log_level() == logging.INFO


def test_main_process_first_without_distributed_runs_block():
    ran = []
    with make().main_process_first(desc="x"):
        ran.append(1)
    assert ran == [1]


# ----------------------------------------------------------------- no side effects
def test_construction_has_no_side_effects():
    import torch

    env_before = dict(os.environ)
    tf32_before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    precision_before = torch.get_float32_matmul_precision()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make(torch_compile=False, report_to="none")
    assert dict(os.environ) == env_before
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == tf32_before
    assert torch.get_float32_matmul_precision() == precision_before
    assert not torch.distributed.is_initialized()
    assert not os.path.exists("out")


def test_report_to_normalisation():
    assert make().report_to == ["all"]
    assert make(report_to="none").report_to == []
    assert make(report_to="tensorboard").report_to == ["tensorboard"]
    assert make(report_to=["tensorboard", "none"]).report_to == []


def test_output_dir_default_and_logging_dir():
    args = TrainingArguments()
    assert args.output_dir == "trainer_output"
    assert args.logging_dir.startswith(os.path.join("trainer_output", "runs"))
    assert TrainingArguments("~/x").output_dir == os.path.expanduser("~/x")


def test_normalisation_is_idempotent():
    from trainkit.args_validation import normalize_and_validate

    args = make(report_to="none", do_eval=True)
    before = args.to_dict()
    normalize_and_validate(args)
    assert args.to_dict() == before


# ------------------------------------------------------------ optimizer and scheduler names
@pytest.mark.parametrize(
    ("field", "value", "closest"), [("optim", "adamw_torc", "adamw_torch"), ("lr_scheduler_type", "linar", "linear")]
)
def test_unknown_optim_or_scheduler_names_field_closest_and_available(field, value, closest):
    _needs(3)
    with pytest.raises(
        ValueError, match=rf"TrainingArguments\.{field}='{value}' .*Did you mean '{closest}'\? Available: "
    ):
        make(**{field: value})


def test_enum_values_for_optim_and_scheduler_become_strings():
    _needs(3)
    from trainkit import OptimizerNames, SchedulerType

    args = make(optim=OptimizerNames.SGD, lr_scheduler_type=SchedulerType.COSINE)
    assert (args.optim, args.lr_scheduler_type) == ("sgd", "cosine")
    assert type(args.optim) is str


@pytest.mark.parametrize("value", ["momentum", "momentum=0.9,", "a=1,a=2"])
def test_bad_optim_args_format_names_the_field(value):
    _needs(3)
    with pytest.raises(ValueError, match=r"TrainingArguments\.optim_args"):
        make(optim="sgd", optim_args=value)


def test_optim_fields_normalisation_is_idempotent():
    _needs(3)
    from trainkit.args_validation import normalize_and_validate

    with pytest.warns(FutureWarning):
        args = make(
            adafactor=True, optim_args="beta1=0.9", lr_scheduler_type="cosine", lr_scheduler_kwargs='{"num_cycles": 1}'
        )
    before = args.to_dict()
    normalize_and_validate(args)
    assert args.to_dict() == before
    assert (args.optim, args.adafactor, args.lr_scheduler_kwargs) == ("adafactor", False, {"num_cycles": 1})


def test_lr_scheduler_kwargs_the_schedule_does_not_take_are_refused_at_construction():
    _needs(3)
    with pytest.raises(TypeError, match=r"lr scheduler 'linear' does not accept 'num_cycles' \(from TrainingArguments"):
        make(lr_scheduler_kwargs={"num_cycles": 2})
    with pytest.raises(TypeError, match=r"TrainingArguments\.lr_scheduler_kwargs must not set 'num_warmup_steps'"):
        make(lr_scheduler_type="cosine", lr_scheduler_kwargs={"num_warmup_steps": 2})
