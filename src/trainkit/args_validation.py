"""Normalisation and validation of TrainingArguments, as pure functions of the object.

``normalize_and_validate`` is idempotent (running it twice changes nothing), so a
normalised object survives ``to_dict`` -> JSON -> ``parse_dict`` unchanged. Every error
names the field(s) and the value(s) at fault.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import types
import typing
import warnings
from datetime import datetime
from enum import Enum
from typing import TYPE_CHECKING, Any

from trainkit.options import DebugOption, FSDPOption, HubStrategy, IntervalStrategy, SaveStrategy

if TYPE_CHECKING:
    from trainkit.args import TrainingArguments

__all__ = ["DICT_FIELDS", "default_logdir", "normalize_and_validate"]

DICT_FIELDS = (
    "lr_scheduler_kwargs",
    "fsdp_config",
    "deepspeed",
    "gradient_checkpointing_kwargs",
    "accelerator_config",
    "parallelism_config",
    "liger_kernel_config",
)
_STRING_OR_PATH_DICTS = ("fsdp_config", "deepspeed", "accelerator_config")
_UINT32 = 2**32 - 1

# (field, lower bound, inclusive?, upper bound, inclusive?) for numeric fields; None values pass.
_RANGES: tuple[tuple[str, float, bool, float, bool], ...] = (
    ("per_device_train_batch_size", 1, True, math.inf, False),
    ("per_device_eval_batch_size", 1, True, math.inf, False),
    ("gradient_accumulation_steps", 1, True, math.inf, False),
    ("eval_accumulation_steps", 1, True, math.inf, False),
    ("eval_delay", 0, True, math.inf, False),
    ("torch_empty_cache_steps", 1, True, math.inf, False),
    ("learning_rate", 0, True, math.inf, False),
    ("weight_decay", 0, True, math.inf, False),
    ("adam_beta1", 0, True, 1, False),
    ("adam_beta2", 0, True, 1, False),
    ("adam_epsilon", 0, True, math.inf, False),
    ("max_grad_norm", 0, True, math.inf, False),
    ("num_train_epochs", 0, True, math.inf, False),
    ("max_steps", -1, True, math.inf, False),
    ("warmup_ratio", 0, True, 1, True),
    ("warmup_steps", 0, True, math.inf, False),
    ("save_total_limit", 0, True, math.inf, False),
    ("seed", 0, True, _UINT32, True),
    ("data_seed", 0, True, _UINT32, True),
    ("dataloader_num_workers", 0, True, math.inf, False),
    ("dataloader_prefetch_factor", 1, True, math.inf, False),
    ("label_smoothing_factor", 0, True, 1, False),
    ("ddp_timeout", 0, False, math.inf, False),
    ("ddp_bucket_cap_mb", 0, False, math.inf, False),
    ("neftune_noise_alpha", 0, True, math.inf, False),
    ("local_rank", -1, True, math.inf, False),
    ("past_index", -1, True, math.inf, False),
)


def default_logdir() -> str:
    """``runs/<date>_<host>``, the folder name TensorBoard's SummaryWriter would pick."""
    import socket

    return os.path.join("runs", datetime.now().strftime("%b%d_%H-%M-%S") + "_" + socket.gethostname())


def normalize_and_validate(args: TrainingArguments) -> None:
    """Map deprecated names, parse JSON strings, convert enums, apply transformers' rules."""
    _check_types(args)
    _map_aliases(args)
    _parse_dict_fields(args)
    _normalize_strategies(args)
    _normalize_lists(args)
    _check_ranges(args)
    _check_intervals(args)
    _check_best_model(args)
    _check_precision(args)
    _check_fsdp(args)
    _check_misc(args)
    _check_optim(args)
    from trainkit.args_support import check_refused_fields

    check_refused_fields(args)


# --------------------------------------------------------------------------- types
_HINTS: dict[str, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    key = f"{cls.__module__}.{cls.__qualname__}"
    if key not in _HINTS:
        _HINTS[key] = typing.get_type_hints(cls)
    return _HINTS[key]


_SCALAR_CHECKS: dict[Any, Any] = {
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    type(None): lambda v: v is None,
}


def _matches(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, t) for t in typing.get_args(tp))
    if tp in _SCALAR_CHECKS:
        return bool(_SCALAR_CHECKS[tp](value))
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    if isinstance(tp, type) and issubclass(tp, Enum):
        return isinstance(value, (tp, str))
    return tp is Any or not isinstance(tp, type) or isinstance(value, tp)


def _type_name(tp: Any) -> str:
    return str(tp).replace("typing.", "").replace("trainkit.options.", "")


def _check_types(args: TrainingArguments) -> None:
    hints = _hints(type(args))
    for f in dataclasses.fields(args):
        if f.init and not _matches(getattr(args, f.name), hints[f.name]):
            raise TypeError(
                f"TrainingArguments.{f.name} must be {_type_name(hints[f.name])}, "
                f"got {getattr(args, f.name)!r} ({type(getattr(args, f.name)).__name__})"
            )


# ------------------------------------------------------------------------- aliases
def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"`{old}` is deprecated; use `{new}` instead.", FutureWarning, stacklevel=4)


def _move(args: TrainingArguments, old: str, new: str, reset: Any, new_default: Any) -> None:
    """Move a deprecated field's value to its new name, refusing two different explicit values."""
    value = getattr(args, old)
    if value == reset:
        return
    current = getattr(args, new)
    if current != new_default and current != value:
        raise ValueError(f"TrainingArguments: `{old}`={value!r} contradicts `{new}`={current!r}; set only `{new}`.")
    _deprecated(old, new)
    setattr(args, new, value)
    setattr(args, old, reset)


def _map_aliases(args: TrainingArguments) -> None:
    _move(args, "evaluation_strategy", "eval_strategy", None, "no")
    _move(args, "per_gpu_train_batch_size", "per_device_train_batch_size", None, 8)
    _move(args, "per_gpu_eval_batch_size", "per_device_eval_batch_size", None, 8)
    _move(args, "no_cuda", "use_cpu", False, False)
    _move(args, "fp16_backend", "half_precision_backend", "auto", "auto")
    _move(args, "torchdynamo", "torch_compile_backend", None, None)
    if args.adafactor:
        _deprecated("adafactor=True", "optim='adafactor'")
        args.optim, args.adafactor = "adafactor", False
    if args.include_inputs_for_metrics:
        _deprecated("include_inputs_for_metrics", "include_for_metrics=['inputs']")
        if "inputs" not in args.include_for_metrics:
            args.include_for_metrics = [*args.include_for_metrics, "inputs"]
        args.include_inputs_for_metrics = False
    if args.tpu_metrics_debug:
        _deprecated("tpu_metrics_debug", "debug='tpu_metrics_debug'")
        debug = args.debug
        args.debug = f"{debug} tpu_metrics_debug" if isinstance(debug, str) else [*debug, DebugOption.TPU_METRICS_DEBUG]
        args.tpu_metrics_debug = False
    if args.use_mps_device:
        import torch

        if not torch.backends.mps.is_available():
            raise ValueError("TrainingArguments.use_mps_device=True but this machine has no MPS device.")
        _deprecated("use_mps_device", "the automatic device choice")
        args.use_mps_device = False


# --------------------------------------------------------------------- dict fields
def _parse_dict_fields(args: TrainingArguments) -> None:
    for name in DICT_FIELDS:
        value = getattr(args, name)
        if not isinstance(value, str):
            continue
        text = value.strip()
        if text.startswith("{"):
            try:
                setattr(args, name, json.loads(text))
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"TrainingArguments.{name} is not valid JSON ({err.msg} at char {err.pos}): {value!r}"
                ) from None
        elif name == "fsdp_config" and text:
            setattr(args, name, _load_json_file(name, text))
        elif name not in _STRING_OR_PATH_DICTS and text:
            raise ValueError(f"TrainingArguments.{name} must be a dict or a JSON object string, got {value!r}")
    if args.lr_scheduler_kwargs is None or args.lr_scheduler_kwargs == "":
        args.lr_scheduler_kwargs = {}


def _load_json_file(name: str, path: str) -> dict[str, Any]:
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as fh:
            loaded = json.load(fh)
    except OSError as err:
        raise ValueError(f"TrainingArguments.{name}: cannot read the file {path!r}: {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"TrainingArguments.{name}: the file {path!r} is not valid JSON: {err.msg}") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"TrainingArguments.{name}: the file {path!r} must hold a JSON object")
    return loaded


# ---------------------------------------------------------------------- strategies
def _normalize_strategies(args: TrainingArguments) -> None:
    if args.output_dir is None:
        args.output_dir = "trainer_output"
    args.output_dir = os.path.expanduser(args.output_dir)
    if args.logging_dir is None:
        args.logging_dir = os.path.join(args.output_dir, default_logdir())
    args.logging_dir = os.path.expanduser(args.logging_dir)
    args.eval_strategy = _enum(IntervalStrategy, "eval_strategy", args.eval_strategy)
    args.logging_strategy = _enum(IntervalStrategy, "logging_strategy", args.logging_strategy)
    args.save_strategy = _enum(SaveStrategy, "save_strategy", args.save_strategy)
    args.hub_strategy = _enum(HubStrategy, "hub_strategy", args.hub_strategy)
    args.lr_scheduler_type = str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type))
    args.optim = str(getattr(args.optim, "value", args.optim))
    if args.eval_strategy != IntervalStrategy.NO:
        args.do_eval = True
    if args.disable_tqdm is None:
        args.disable_tqdm = logging.getLogger("trainkit").getEffectiveLevel() > logging.WARNING
    if args.torch_compile_mode is not None or args.torch_compile_backend is not None:
        args.torch_compile = True
    if args.torch_compile and args.torch_compile_backend is None:
        args.torch_compile_backend = "inductor"


def _enum(cls: type[Enum], name: str, value: Any) -> Any:
    try:
        return cls(value)
    except ValueError as err:
        raise ValueError(f"TrainingArguments.{name}: {err}") from None


def _normalize_lists(args: TrainingArguments) -> None:
    report = args.report_to
    if report is None:
        report = ["all"]
    elif isinstance(report, str):
        report = [report]
    report = [r for part in report for r in part.replace(",", " ").split()]
    args.report_to = [] if "none" in report else list(dict.fromkeys(report))
    debug = args.debug
    raw = [debug] if isinstance(debug, str) else [str(getattr(d, "value", d)) for d in debug]
    items = [part for d in raw for part in d.split()]
    args.debug = [_enum(DebugOption, "debug", d) for d in items]
    unknown = set(args.include_for_metrics) - {"inputs", "loss"}
    if unknown:
        raise ValueError(f"TrainingArguments.include_for_metrics accepts 'inputs' and 'loss', got {sorted(unknown)}")
    if isinstance(args.optim_target_modules, str):
        args.optim_target_modules = [args.optim_target_modules]


def _check_ranges(args: TrainingArguments) -> None:
    for name, low, low_inc, high, high_inc in _RANGES:
        value = getattr(args, name)
        if value is None:
            continue
        ok = (value >= low if low_inc else value > low) and (value <= high if high_inc else value < high)
        if not ok or (isinstance(value, float) and math.isnan(value)):
            lo, hi = ("[" if low_inc else "("), ("]" if high_inc else ")")
            raise ValueError(f"TrainingArguments.{name}={value!r} is out of range {lo}{low}, {high}{hi}")
    _check_choices(args)


def _check_choices(args: TrainingArguments) -> None:
    if args.fp16_opt_level not in ("O0", "O1", "O2", "O3"):
        raise ValueError(f"TrainingArguments.fp16_opt_level must be one of O0, O1, O2, O3, got {args.fp16_opt_level!r}")
    if args.half_precision_backend not in ("auto", "cuda_amp", "cpu_amp", "apex"):
        raise ValueError(
            "TrainingArguments.half_precision_backend must be 'auto', 'cuda_amp', 'cpu_amp' or 'apex', "
            f"got {args.half_precision_backend!r}"
        )
    from trainkit.args import LOG_LEVELS

    for name in ("log_level", "log_level_replica"):
        if getattr(args, name) not in LOG_LEVELS:
            raise ValueError(f"TrainingArguments.{name} must be one of {list(LOG_LEVELS)}, got {getattr(args, name)!r}")
    if isinstance(args.warmup_steps, float):
        if args.warmup_steps >= 1 and args.warmup_steps != int(args.warmup_steps):
            raise ValueError(
                f"TrainingArguments.warmup_steps={args.warmup_steps} must be an integer, or a float below 1 (a ratio)"
            )
        if args.warmup_steps >= 1:
            args.warmup_steps = int(args.warmup_steps)


# ----------------------------------------------------------------------- intervals
def _steps_value(args: TrainingArguments, name: str) -> None:
    value = getattr(args, name)
    if value is None:
        return
    if value <= 0 or math.isnan(value):
        raise ValueError(f"TrainingArguments.{name}={value!r} must be > 0 (an int, or a float in (0, 1) as a ratio)")
    if value > 1:
        if value != int(value):
            raise ValueError(f"TrainingArguments.{name}={value!r} must be an integer when greater than 1")
        setattr(args, name, int(value))


def _check_intervals(args: TrainingArguments) -> None:
    if args.eval_strategy == IntervalStrategy.STEPS and not args.eval_steps:
        if args.logging_steps <= 0:
            raise ValueError("TrainingArguments: eval_strategy='steps' needs a non-zero eval_steps or logging_steps")
        args.eval_steps = args.logging_steps
    for name in ("logging_steps", "save_steps", "eval_steps"):
        strategy = {"logging_steps": args.logging_strategy, "save_steps": args.save_strategy}.get(
            name, args.eval_strategy
        )
        if strategy == "steps" or (getattr(args, name) is not None and getattr(args, name) != 0):
            _steps_value(args, name)
    if args.lr_scheduler_type == "reduce_lr_on_plateau" and args.eval_strategy == IntervalStrategy.NO:
        raise ValueError(
            "TrainingArguments: lr_scheduler_type='reduce_lr_on_plateau' needs an eval_strategy other than 'no'"
        )


def _check_best_model(args: TrainingArguments) -> None:
    needs_metric = args.load_best_model_at_end or args.lr_scheduler_type == "reduce_lr_on_plateau"
    if needs_metric and args.metric_for_best_model is None:
        args.metric_for_best_model = "loss"
    if args.save_strategy == SaveStrategy.BEST:
        if args.metric_for_best_model is None:
            raise ValueError("TrainingArguments: save_strategy='best' needs metric_for_best_model (e.g. 'loss')")
        if args.eval_strategy == IntervalStrategy.NO:
            raise ValueError("TrainingArguments: save_strategy='best' needs an eval_strategy other than 'no'")
    if args.greater_is_better is None and args.metric_for_best_model is not None:
        args.greater_is_better = not args.metric_for_best_model.endswith("loss")
    if args.load_best_model_at_end and args.save_strategy != SaveStrategy.BEST:
        _check_load_best_intervals(args)


def _check_load_best_intervals(args: TrainingArguments) -> None:
    if str(args.eval_strategy) != str(args.save_strategy):
        raise ValueError(
            "TrainingArguments: load_best_model_at_end=True needs save_strategy and eval_strategy to match "
            f"(or save_strategy='best'), got eval_strategy={str(args.eval_strategy)!r}, "
            f"save_strategy={str(args.save_strategy)!r}"
        )
    if args.eval_strategy == IntervalStrategy.STEPS:
        save, ev = float(args.save_steps), float(args.eval_steps or 0)
        if (save < 1) != (ev < 1):
            raise ValueError(
                "TrainingArguments: load_best_model_at_end=True needs save_steps to be a multiple of eval_steps, "
                f"which mixing a ratio and a step count cannot guarantee (save_steps={args.save_steps}, "
                f"eval_steps={args.eval_steps})"
            )
        if round(save * 1_000_000) % round(ev * 1_000_000) != 0:
            raise ValueError(
                f"TrainingArguments: load_best_model_at_end=True needs save_steps ({args.save_steps}) to be a "
                f"multiple of eval_steps ({args.eval_steps})"
            )


def _check_precision(args: TrainingArguments) -> None:
    if args.fp16 and args.bf16:
        raise ValueError("TrainingArguments: fp16=True and bf16=True are exclusive; choose one")
    if args.fp16_full_eval and args.bf16_full_eval:
        raise ValueError("TrainingArguments: fp16_full_eval=True and bf16_full_eval=True are exclusive; choose one")
    if args.bf16 and args.half_precision_backend == "apex":
        raise ValueError("TrainingArguments: half_precision_backend='apex' does not support bf16=True")


def _fsdp_words(fsdp: Any) -> list[str]:
    if fsdp is None or fsdp is False:
        return []
    if fsdp is True:
        return ["full_shard"]
    items = [fsdp] if isinstance(fsdp, str) else fsdp
    return [part for o in items for part in str(getattr(o, "value", o)).split()]


def _check_fsdp(args: TrainingArguments) -> None:
    options = _fsdp_words(args.fsdp)
    args.fsdp = [_enum(FSDPOption, "fsdp", o) for o in dict.fromkeys(options)]
    if args.fsdp == [FSDPOption.OFFLOAD]:
        raise ValueError("TrainingArguments.fsdp: 'offload' needs 'full_shard' or 'shard_grad_op' with it")
    sharding = [o for o in args.fsdp if o not in (FSDPOption.OFFLOAD, FSDPOption.AUTO_WRAP)]
    if len(sharding) > 1:
        raise ValueError(f"TrainingArguments.fsdp: {[o.value for o in sharding]} are exclusive; choose one")
    _normalize_fsdp_config(args)
    if args.fsdp and args.deepspeed:
        raise ValueError("TrainingArguments: fsdp and deepspeed are exclusive; choose one")
    from trainkit.args_xla import check_xla_fsdp_config

    check_xla_fsdp_config(args)


def _normalize_fsdp_config(args: TrainingArguments) -> None:
    config = args.fsdp_config if isinstance(args.fsdp_config, dict) else {}
    config = {(k[5:] if k.startswith("fsdp_") else k): v for k, v in config.items()}
    if args.fsdp_min_num_params:
        _deprecated("fsdp_min_num_params", "fsdp_config['min_num_params']")
        config["min_num_params"] = max(int(config.get("min_num_params", 0)), args.fsdp_min_num_params)
        args.fsdp_min_num_params = 0
    if args.fsdp_transformer_layer_cls_to_wrap is not None:
        _deprecated("fsdp_transformer_layer_cls_to_wrap", "fsdp_config['transformer_layer_cls_to_wrap']")
        layers = config.get("transformer_layer_cls_to_wrap") or []
        config["transformer_layer_cls_to_wrap"] = [*_as_list(layers), args.fsdp_transformer_layer_cls_to_wrap]
        args.fsdp_transformer_layer_cls_to_wrap = None
    if isinstance(config.get("transformer_layer_cls_to_wrap"), str):
        config["transformer_layer_cls_to_wrap"] = [config["transformer_layer_cls_to_wrap"]]
    if config.get("min_num_params") and config.get("transformer_layer_cls_to_wrap"):
        raise ValueError(
            "TrainingArguments.fsdp_config: 'min_num_params' and 'transformer_layer_cls_to_wrap' are exclusive"
        )
    if _truthy(config.get("cpu_ram_efficient_loading")) and not _truthy(config.get("sync_module_states", True)):
        raise ValueError("TrainingArguments.fsdp_config: cpu_ram_efficient_loading=True needs sync_module_states=True")
    args.fsdp_config = config if (config or args.fsdp_config is not None) else None


def _as_list(value: Any) -> list[Any]:
    return [value] if isinstance(value, str) else list(value)


def _truthy(value: Any) -> bool:
    return str(value).lower() in ("true", "1", "yes")


def _check_misc(args: TrainingArguments) -> None:
    if args.dataloader_prefetch_factor is not None and args.dataloader_num_workers == 0:
        raise ValueError(
            "TrainingArguments: dataloader_prefetch_factor needs dataloader_num_workers > 0 "
            f"(got dataloader_prefetch_factor={args.dataloader_prefetch_factor}, dataloader_num_workers=0)"
        )
    if args.dataloader_persistent_workers and args.dataloader_num_workers == 0:
        raise ValueError("TrainingArguments: dataloader_persistent_workers=True needs dataloader_num_workers > 0")
    if args.metric_for_best_model is not None and not args.metric_for_best_model.strip():
        raise ValueError("TrainingArguments.metric_for_best_model must not be empty")


def _check_optim(args: TrainingArguments) -> None:
    """Registered ``optim`` / ``lr_scheduler_type``, 'k=v,...' ``optim_args``, known ``lr_scheduler_kwargs`` keys."""
    from trainkit.optim import OPTIMIZERS, SCHEDULERS, parse_optim_args  # torch-free: construction stays cheap
    from trainkit.optim.schedulers import check_scheduler_kwargs

    for name, registry in (("optim", OPTIMIZERS), ("lr_scheduler_type", SCHEDULERS)):
        value = getattr(args, name)
        if value not in registry:
            close = registry.closest(value)
            hint = f" Did you mean {close!r}?" if close else ""
            raise ValueError(
                f"TrainingArguments.{name}={value!r} is not a registered {registry.kind}.{hint} "
                f"Available: {', '.join(registry.available())}"
            )
    parse_optim_args(args.optim_args)
    if isinstance(args.lr_scheduler_kwargs, dict):
        check_scheduler_kwargs(
            args.lr_scheduler_type, args.lr_scheduler_kwargs, "TrainingArguments.lr_scheduler_kwargs"
        )
