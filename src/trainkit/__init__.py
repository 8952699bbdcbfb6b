"""trainkit: a PyTorch training library with transformers' Trainer API, built from swappable parts.

Public names are imported lazily so that ``import trainkit`` stays cheap; optional backends
(deepspeed, torch_xla, apex, tensorboard's writer) are only imported when used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "TrainingArguments": "trainkit.args",
    "ArgumentParser": "trainkit.parser",
    "HfArgumentParser": "trainkit.parser",
    "Registry": "trainkit.registry",
    "set_seed": "trainkit.utils.seed",
    "enable_full_determinism": "trainkit.utils.seed",
    "IntervalStrategy": "trainkit.options",
    "SaveStrategy": "trainkit.options",
    "SchedulerType": "trainkit.options",
    "OptimizerNames": "trainkit.options",
    "FSDPOption": "trainkit.options",
    "HubStrategy": "trainkit.options",
    "UnsupportedArgumentError": "trainkit.args_support",
    "get_last_checkpoint": "trainkit.checkpoint.discovery",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:
    from trainkit.args import TrainingArguments
    from trainkit.args_support import UnsupportedArgumentError
    from trainkit.checkpoint.discovery import get_last_checkpoint
    from trainkit.options import (
        FSDPOption,
        HubStrategy,
        IntervalStrategy,
        OptimizerNames,
        SaveStrategy,
        SchedulerType,
    )
    from trainkit.parser import ArgumentParser, HfArgumentParser
    from trainkit.registry import Registry
    from trainkit.utils.seed import enable_full_determinism, set_seed


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'trainkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
