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
    "get_scheduler": "trainkit.optim",
    "set_seed": "trainkit.utils.seed",
    "enable_full_determinism": "trainkit.utils.seed",
    "IntervalStrategy": "trainkit.options",
    "SaveStrategy": "trainkit.options",
    "SchedulerType": "trainkit.options",
    "OptimizerNames": "trainkit.options",
    "FSDPOption": "trainkit.options",
    "HubStrategy": "trainkit.options",
    "UnsupportedArgumentError": "trainkit.args_support",
    "Trainer": "trainkit.trainer",
    "TrainerState": "trainkit.state",
    "TrainerControl": "trainkit.state",
    "TrainerCallback": "trainkit.callbacks.base",
    "CallbackHandler": "trainkit.callbacks.base",
    "DefaultFlowCallback": "trainkit.callbacks.flow",
    "ProgressCallback": "trainkit.callbacks.progress",
    "PrinterCallback": "trainkit.callbacks.progress",
    "EarlyStoppingCallback": "trainkit.callbacks.early_stopping",
    "TrainOutput": "trainkit.trainer_utils",
    "PredictionOutput": "trainkit.trainer_utils",
    "EvalPrediction": "trainkit.trainer_utils",
    "default_data_collator": "trainkit.data.collators",
    "DataCollatorWithPadding": "trainkit.data.collators",
    "Strategy": "trainkit.strategies.base",
    "Precision": "trainkit.precision",
    "MixedPrecision": "trainkit.precision",
    "HalfPrecision": "trainkit.precision",
    "SingleDeviceStrategy": "trainkit.strategies",
    "DDPStrategy": "trainkit.strategies.ddp",
    "FSDPStrategy": "trainkit.strategies.fsdp",
    "get_last_checkpoint": "trainkit.checkpoint.discovery",
    "XLAStrategy": "trainkit.strategies",
    "XLASPMDStrategy": "trainkit.strategies",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:
    from trainkit.args import TrainingArguments
    from trainkit.args_support import UnsupportedArgumentError
    from trainkit.callbacks.base import CallbackHandler, TrainerCallback
    from trainkit.callbacks.early_stopping import EarlyStoppingCallback
    from trainkit.callbacks.flow import DefaultFlowCallback
    from trainkit.callbacks.progress import PrinterCallback, ProgressCallback
    from trainkit.checkpoint.discovery import get_last_checkpoint
    from trainkit.data.collators import DataCollatorWithPadding, default_data_collator
    from trainkit.optim import get_scheduler
    from trainkit.options import (
        FSDPOption,
        HubStrategy,
        IntervalStrategy,
        OptimizerNames,
        SaveStrategy,
        SchedulerType,
    )
    from trainkit.parser import ArgumentParser, HfArgumentParser
    from trainkit.precision import HalfPrecision, MixedPrecision, Precision
    from trainkit.registry import Registry
    from trainkit.state import TrainerControl, TrainerState
    from trainkit.strategies import SingleDeviceStrategy, XLASPMDStrategy, XLAStrategy
    from trainkit.strategies.base import Strategy
    from trainkit.strategies.ddp import DDPStrategy
    from trainkit.strategies.fsdp import FSDPStrategy
    from trainkit.trainer import Trainer
    from trainkit.trainer_utils import EvalPrediction, PredictionOutput, TrainOutput
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
