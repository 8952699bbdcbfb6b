"""A DeepSpeed configuration as plain data: read it, check it, and fill transformers' ``"auto"`` values.

transformers lets a DeepSpeed config say ``"auto"`` where a value follows from
``TrainingArguments``; ``fill_auto`` puts that value there, and a value that is not ``"auto"``
must agree with the argument (an error names both). Keys that decide how the loop's arithmetic
meets the engine's (micro-batch size, accumulation, clipping, fp16/bf16) are filled when absent
too, so the engine never silently does something the arguments did not ask for. Nothing here
imports deepspeed or torch: the functions are tested on dicts.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "AUTO",
    "ConfigValue",
    "auto_keys",
    "check_config",
    "config_value",
    "fill_auto",
    "half_precision",
    "hidden_size_values",
    "read_config",
    "schedule_values",
    "set_config_value",
    "zero_stage",
]

AUTO = "auto"
ZERO_STAGES = (0, 1, 2, 3)
_OFFLOAD_DEVICES = ("cpu", "nvme", "none")
_MISSING = object()


@dataclass(frozen=True)
class ConfigValue:
    """What the arguments say a config key must hold, and where that comes from (for errors)."""

    key: str  # dotted path in the config, e.g. "optimizer.params.lr"
    value: Any
    source: str  # e.g. "TrainingArguments.learning_rate=0.001"
    fill_missing: bool = False  # an absent key is set too (not only "auto")
    must_match: bool = True  # a value that is not "auto" must equal ``value``


def read_config(value: Any, source: str = "TrainingArguments.deepspeed") -> dict[str, Any]:
    """A private copy of the configuration given as a dict, a JSON object string or a JSON file path."""
    if isinstance(value, Mapping):
        return copy.deepcopy(dict(value))
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{source} must be a dict, a JSON string or a path to a JSON file, got {type(value).__name__}")
    text = os.fspath(value).strip()
    if text.startswith("{"):
        return _parse(text, f"{source} (a JSON string)")
    path = os.path.expanduser(text)
    try:
        with open(path, encoding="utf-8") as handle:
            content = handle.read()
    except OSError as err:
        raise ValueError(f"{source}: cannot read the DeepSpeed config file {text!r}: {err.strerror}") from None
    return _parse(content, f"{source}: the file {text!r}")


def _parse(text: str, where: str) -> dict[str, Any]:
    try:
        loaded = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where} is not valid JSON: {err.msg} (line {err.lineno}, column {err.colno})") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"{where} must hold a JSON object (a dict of DeepSpeed settings), got {type(loaded).__name__}")
    return loaded


# ------------------------------------------------------------------------ access
def config_value(config: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """The value at the dotted ``key`` (``"zero_optimization.stage"``), or ``default`` when absent."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def set_config_value(config: dict[str, Any], key: str, value: Any) -> None:
    """Set the dotted ``key``, creating the dicts on the way."""
    *parents, last = key.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def auto_keys(config: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose value is still ``"auto"``."""
    found = []
    for name, value in config.items():
        key = f"{prefix}{name}"
        if value == AUTO:
            found.append(key)
        elif isinstance(value, Mapping):
            found.extend(auto_keys(value, f"{key}."))
    return found


def zero_stage(config: Mapping[str, Any]) -> int:
    """The ZeRO stage (0 when the config has no ``zero_optimization``)."""
    return int(config_value(config, "zero_optimization.stage", 0))


def half_precision(config: Mapping[str, Any]) -> str | None:
    """``"fp16"`` or ``"bf16"`` when the config enables one, else None (fp32)."""
    for name in ("fp16", "bf16"):
        if config_value(config, f"{name}.enabled") is True:
            return name
    return None


# ------------------------------------------------------------------------ checks
def check_config(config: Mapping[str, Any]) -> None:
    """Refuse what DeepSpeed would reject later or obscurely, naming the key and the value."""
    _check_section(config, "zero_optimization")
    stage = config_value(config, "zero_optimization.stage", 0)
    if isinstance(stage, bool) or stage not in ZERO_STAGES:
        raise ValueError(f"DeepSpeed config: zero_optimization.stage={stage!r} is not a ZeRO stage; use 0, 1, 2 or 3")
    for key in ("offload_optimizer", "offload_param"):
        _check_offload(config, key, stage)
    for name in ("optimizer", "scheduler"):
        _check_section(config, name)
        if name in config and not isinstance(config[name].get("type"), str):
            raise ValueError(f"DeepSpeed config: {name}.type must name the {name} (e.g. 'AdamW'), got {config[name]!r}")
        _check_section(config, f"{name}.params")
    for name in ("fp16", "bf16"):
        _check_section(config, name)
    if half_precision(config) == "fp16" and config_value(config, "bf16.enabled") is True:
        raise ValueError("DeepSpeed config: fp16.enabled and bf16.enabled are both true; choose one")
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size"):
        _check_number(config, key, integer=True)
    _check_number(config, "gradient_clipping", integer=False)


def _check_section(config: Mapping[str, Any], key: str) -> None:
    value = config_value(config, key, _MISSING)
    if value is not _MISSING and not isinstance(value, Mapping):
        raise ValueError(f"DeepSpeed config: {key} must be an object (a dict), got {value!r}")


def _check_offload(config: Mapping[str, Any], key: str, stage: int) -> None:
    path = f"zero_optimization.{key}"
    _check_section(config, path)
    device = config_value(config, f"{path}.device", "none")
    if device not in _OFFLOAD_DEVICES:
        raise ValueError(f"DeepSpeed config: {path}.device={device!r} must be one of {list(_OFFLOAD_DEVICES)}")
    needed = 3 if key == "offload_param" else 1
    if device != "none" and stage < needed:
        raise ValueError(
            f"DeepSpeed config: {path}.device={device!r} needs zero_optimization.stage >= {needed}, got stage {stage}"
        )


def _check_number(config: Mapping[str, Any], key: str, integer: bool) -> None:
    value: Any = config.get(key, AUTO)
    if value == AUTO:
        return
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or (integer and not isinstance(value, int)) or value < (1 if integer else 0):
        wanted = "a positive integer" if integer else "a number >= 0"
        raise ValueError(f"DeepSpeed config: {key} must be {wanted} or 'auto', got {value!r}")


# ----------------------------------------------------------------------- filling
def fill_auto(config: dict[str, Any], values: Iterable[ConfigValue]) -> None:
    """Fill ``values`` into ``config`` in place; raise one error listing every contradiction."""
    contradictions = []
    for wanted in values:
        current = config_value(config, wanted.key, _MISSING)
        if current == AUTO or (current is _MISSING and wanted.fill_missing):
            set_config_value(config, wanted.key, wanted.value)
        elif current is not _MISSING and wanted.must_match and not _same(current, wanted.value):
            contradictions.append(f"{wanted.key}={current!r} contradicts {wanted.source}")
    if contradictions:
        raise ValueError(
            "The DeepSpeed config contradicts the arguments: "
            + "; ".join(contradictions)
            + ". Set those config values to 'auto' (or to the same values), or change the arguments"
        )


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return bool(a == b)


def schedule_values(num_training_steps: int, num_warmup_steps: int) -> list[ConfigValue]:
    """The scheduler's step counts, known once the training length is (transformers' ``trainer_config_finalize``)."""
    return [
        ConfigValue("scheduler.params.total_num_steps", num_training_steps, f"the {num_training_steps} training steps"),
        ConfigValue(
            "scheduler.params.warmup_num_steps",
            num_warmup_steps,
            f"the {num_warmup_steps} warmup steps (TrainingArguments.warmup_steps / warmup_ratio)",
        ),
    ]


_HIDDEN_SIZE_KEYS = (
    "zero_optimization.reduce_bucket_size",
    "zero_optimization.stage3_prefetch_bucket_size",
    "zero_optimization.stage3_param_persistence_threshold",
)


def hidden_size_values(config: Mapping[str, Any], model_config: Any) -> list[ConfigValue]:
    """The bucket sizes transformers derives from the model's hidden size, for the keys set to ``"auto"``."""
    wanted = [key for key in _HIDDEN_SIZE_KEYS if config_value(config, key) == AUTO]
    if not wanted:
        return []
    hidden = _hidden_size(model_config) or _hidden_size(getattr(model_config, "text_config", None))
    if hidden is None:
        raise ValueError(
            f"DeepSpeed config: {wanted} are 'auto', which needs the model's config.hidden_size (or hidden_sizes); "
            "this model has none: set integers instead"
        )
    sizes = {
        "zero_optimization.reduce_bucket_size": hidden * hidden,
        "zero_optimization.stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
        "zero_optimization.stage3_param_persistence_threshold": 10 * hidden,
    }
    return [ConfigValue(key, sizes[key], f"the model's hidden size {hidden}", must_match=False) for key in wanted]


def _hidden_size(model_config: Any) -> int | None:
    if model_config is None:
        return None
    if getattr(model_config, "hidden_size", None) is not None:
        return int(model_config.hidden_size)
    sizes = getattr(model_config, "hidden_sizes", None)
    return int(max(sizes)) if sizes else None
