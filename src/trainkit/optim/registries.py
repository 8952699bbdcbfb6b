"""The ``OPTIMIZERS`` and ``SCHEDULERS`` registries, looked up by ``TrainingArguments.optim`` / ``lr_scheduler_type``.

This module imports nothing heavy, so that ``TrainingArguments`` can check names at construction
without importing torch. The built-in entries live in ``optimizers.py`` and ``schedulers.py`` (also
torch-free at import: each entry imports what it builds when it is called).

Entry signatures (see docs/optimizers.md and docs/schedulers.md):

- optimizer: ``(params, args, **optim_args) -> torch.optim.Optimizer``; ``params`` are the parameter
  groups (decay / no-decay), ``args`` the TrainingArguments, ``optim_args`` the parsed ``optim_args``
  string. An entry that also declares ``model`` receives the model.
- scheduler: ``(optimizer, num_warmup_steps, num_training_steps, **lr_scheduler_kwargs) -> LRScheduler``;
  an entry receives only the step counts its signature names, and one it names without a default is
  required (``get_scheduler`` raises transformers' error when it is missing).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainkit.registry import Registry

if TYPE_CHECKING:
    from torch.optim import Optimizer
    from torch.optim.lr_scheduler import LRScheduler

__all__ = ["OPTIMIZERS", "SCHEDULERS"]

OPTIMIZERS: Registry[Optimizer] = Registry("optimizer")
SCHEDULERS: Registry[LRScheduler] = Registry("lr scheduler")
