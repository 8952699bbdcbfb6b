"""Optimizers and learning-rate schedulers by name, as transformers' ``optim`` and ``lr_scheduler_type``.

``OPTIMIZERS`` and ``SCHEDULERS`` hold the built-in entries and any the user registers;
``create_optimizer(model, args)`` and ``create_scheduler(args, optimizer, num_training_steps)`` build
what ``TrainingArguments`` names; ``get_scheduler`` is transformers' function of the same name.
Importing this package does not import torch (the entries do, when called).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from trainkit.optim import optional_optimizers as _optional_optimizers  # noqa: F401  (registers entries)
from trainkit.optim.optim_args import parse_optim_args
from trainkit.optim.optimizers import create_optimizer
from trainkit.optim.param_groups import build_param_groups, get_decay_parameter_names, is_normalization_module
from trainkit.optim.registries import OPTIMIZERS, SCHEDULERS
from trainkit.optim.schedulers import create_scheduler, get_scheduler

if TYPE_CHECKING:
    from trainkit.optim.adafactor import Adafactor
    from trainkit.optim.hf_adamw import HFAdamW
    from trainkit.optim.lr_scheduler import ScheduledLR

__all__ = [
    "OPTIMIZERS",
    "SCHEDULERS",
    "Adafactor",
    "HFAdamW",
    "ScheduledLR",
    "build_param_groups",
    "create_optimizer",
    "create_scheduler",
    "get_decay_parameter_names",
    "get_scheduler",
    "is_normalization_module",
    "parse_optim_args",
]

# Classes that import torch are loaded on first access.
_LAZY = {
    "Adafactor": "trainkit.optim.adafactor",
    "HFAdamW": "trainkit.optim.hf_adamw",
    "ScheduledLR": "trainkit.optim.lr_scheduler",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'trainkit.optim' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
