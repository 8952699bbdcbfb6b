"""Callbacks with transformers' events and semantics."""

from trainkit.callbacks.base import CallbackHandler, TrainerCallback
from trainkit.callbacks.early_stopping import EarlyStoppingCallback
from trainkit.callbacks.flow import DefaultFlowCallback
from trainkit.callbacks.progress import PrinterCallback, ProgressCallback

__all__ = [
    "CallbackHandler",
    "DefaultFlowCallback",
    "EarlyStoppingCallback",
    "PrinterCallback",
    "ProgressCallback",
    "TrainerCallback",
]
