"""Loggers selected by ``report_to``: a registry of logging callbacks."""

from __future__ import annotations

from typing import Any

from trainkit.callbacks.base import TrainerCallback
from trainkit.loggers.jsonl import JSONLinesCallback
from trainkit.loggers.tensorboard import TensorBoardCallback
from trainkit.registry import Registry

__all__ = ["LOGGERS", "JSONLinesCallback", "TensorBoardCallback", "build_logger_callbacks", "resolve_report_to"]

LOGGERS: Registry[TrainerCallback] = Registry("logger (report_to)", base=TrainerCallback)
LOGGERS.register("tensorboard", TensorBoardCallback, requires="tensorboard", description="TensorBoard event files")
LOGGERS.register("jsonl", JSONLinesCallback, description="output_dir/log_history.jsonl")


def resolve_report_to(names: list[str]) -> list[str]:
    """Expand ``"all"`` into every installed logger; check every name against the registry."""
    resolved: list[str] = []
    for name in names:
        if name == "all":
            resolved += [n for n in LOGGERS.available(installed_only=True) if n not in resolved]
        elif name not in resolved:
            LOGGERS.entry(name, check_requirements=False)
            resolved.append(name)
    return resolved


def build_logger_callbacks(args: Any) -> list[TrainerCallback]:
    return [LOGGERS.get(name) for name in resolve_report_to(list(args.report_to))]
