"""``TrainerCallback`` and ``CallbackHandler``: transformers' events, order and keyword arguments.

Callbacks decide *when* (by setting ``TrainerControl`` flags); Trainer subclass hooks decide
*what*. Every event receives ``args, state, control`` and the keyword arguments ``model``,
``processing_class``, ``optimizer``, ``lr_scheduler``, ``train_dataloader``, ``eval_dataloader``
(plus ``metrics``/``logs`` where transformers passes them).
"""

from __future__ import annotations

from typing import Any

from trainkit.state import TrainerControl, TrainerState
from trainkit.utils.logging import get_logger

__all__ = ["CallbackHandler", "TrainerCallback"]

logger = get_logger(__name__)

EVENTS = (
    "on_init_end",
    "on_train_begin",
    "on_train_end",
    "on_epoch_begin",
    "on_epoch_end",
    "on_step_begin",
    "on_pre_optimizer_step",
    "on_optimizer_step",
    "on_substep_end",
    "on_step_end",
    "on_evaluate",
    "on_predict",
    "on_save",
    "on_log",
    "on_prediction_step",
)


class TrainerCallback:
    """Base class of callbacks; every event is a no-op returning None (control unchanged)."""

    def on_init_end(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> Any:
        """At the end of the Trainer's ``__init__``."""

    def on_train_begin(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> Any:
        """At the beginning of training."""

    def on_train_end(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> Any:
        """At the end of training."""

    def on_epoch_begin(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> Any:
        """At the beginning of an epoch."""

    def on_epoch_end(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> Any:
        """At the end of an epoch."""

    def on_step_begin(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> Any:
        """At the beginning of an optimizer step (before its first micro-batch)."""

    def on_pre_optimizer_step(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> Any:
        """After gradient clipping, before the optimizer step."""

    def on_optimizer_step(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> Any:
        """After the optimizer step, before the gradients are zeroed."""

    def on_substep_end(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> Any:
        """At the end of a micro-batch that is not the last of its accumulation window."""

    def on_step_end(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> Any:
        """At the end of an optimizer step."""

    def on_evaluate(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> Any:
        """After an evaluation (``metrics`` in kwargs)."""

    def on_predict(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> Any:
        """After a prediction (``metrics`` in kwargs)."""

    def on_save(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> Any:
        """After a checkpoint save."""

    def on_log(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> Any:
        """After logging (``logs`` in kwargs)."""

    def on_prediction_step(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> Any:
        """After an evaluation or prediction step."""


_RESETS: dict[str, tuple[str, ...]] = {
    "on_train_begin": ("should_training_stop",),
    "on_epoch_begin": ("should_epoch_stop",),
    "on_step_begin": ("should_log", "should_evaluate", "should_save"),
    "on_evaluate": ("should_evaluate",),
    "on_save": ("should_save",),
    "on_log": ("should_log",),
}


class CallbackHandler(TrainerCallback):
    """Calls every registered callback, in order, for each event."""

    def __init__(
        self,
        callbacks: list[Any],
        model: Any = None,
        processing_class: Any = None,
        optimizer: Any = None,
        lr_scheduler: Any = None,
    ) -> None:
        self.callbacks: list[TrainerCallback] = []
        self._cached_count = -1
        self._cache: dict[str, list[TrainerCallback]] = {}
        for cb in callbacks:
            self.add_callback(cb)
        self.model = model
        self.processing_class = processing_class
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.train_dataloader: Any = None
        self.eval_dataloader: Any = None

    def add_callback(self, callback: TrainerCallback | type[TrainerCallback]) -> None:
        cb = callback() if isinstance(callback, type) else callback
        cb_class = type(cb)
        if any(type(c) is cb_class for c in self.callbacks):
            logger.warning("You are adding a %s to the callbacks but there is already one.", cb_class.__name__)
        self.callbacks.append(cb)
        self._cached_count = -1

    def pop_callback(self, callback: TrainerCallback | type[TrainerCallback]) -> TrainerCallback | None:
        for cb in self.callbacks:
            if cb is callback or (isinstance(callback, type) and type(cb) is callback):
                self.callbacks.remove(cb)
                self._cached_count = -1
                return cb
        return None

    def remove_callback(self, callback: TrainerCallback | type[TrainerCallback]) -> None:
        self.pop_callback(callback)

    @property
    def callback_list(self) -> str:
        return "\n".join(type(cb).__name__ for cb in self.callbacks)

    def _targets(self, event: str) -> list[TrainerCallback]:
        """The callbacks that implement ``event`` (base-class no-ops are skipped: the loop stays cheap)."""
        if self._cached_count != len(self.callbacks):
            self._cache, self._cached_count = {}, len(self.callbacks)
        targets = self._cache.get(event)
        if targets is None:
            base = getattr(TrainerCallback, event)
            targets = [cb for cb in self.callbacks if getattr(type(cb), event, None) is not base or _dynamic(cb)]
            self._cache[event] = targets
        return targets

    def call_event(self, event: str, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> Any:
        for name in _RESETS.get(event, ()):
            setattr(control, name, False)
        targets = self._targets(event)
        if not targets:
            return control
        kwargs = {
            "model": self.model,
            "processing_class": self.processing_class,
            "optimizer": self.optimizer,
            "lr_scheduler": self.lr_scheduler,
            "train_dataloader": self.train_dataloader,
            "eval_dataloader": self.eval_dataloader,
            **kwargs,
        }
        for cb in targets:
            result = getattr(cb, event)(args, state, control, **kwargs)
            if result is not None:
                control = result
        return control


def _dynamic(callback: Any) -> bool:
    """A callback that resolves its event methods dynamically must always be called."""
    cls = type(callback)
    return cls.__getattribute__ is not object.__getattribute__ or hasattr(cls, "__getattr__")


def _make_event(event: str) -> Any:
    def handler(self: CallbackHandler, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> Any:
        return self.call_event(event, args, state, control, **kwargs)

    handler.__name__ = event
    handler.__doc__ = f"Dispatch ``{event}`` to every callback."
    return handler


for _event in EVENTS:
    setattr(CallbackHandler, _event, _make_event(_event))
