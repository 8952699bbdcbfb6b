"""``ProgressCallback`` (tqdm bars for training and evaluation) and ``PrinterCallback``."""

from __future__ import annotations

from collections.abc import Sized
from typing import Any

from trainkit.callbacks.base import TrainerCallback
from trainkit.state import TrainerControl, TrainerState

__all__ = ["PrinterCallback", "ProgressCallback"]


def _shown(logs: dict[str, Any]) -> dict[str, Any]:
    shown = {k: v for k, v in logs.items() if k != "total_flos"}
    if isinstance(shown.get("epoch"), float):
        shown["epoch"] = round(shown["epoch"], 2)
    return shown


class ProgressCallback(TrainerCallback):
    """A training bar over the optimizer steps and an evaluation bar over the eval batches."""

    def __init__(self) -> None:
        self.training_bar: Any = None
        self.prediction_bar: Any = None
        self.current_step = 0

    def on_train_begin(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> Any:
        if state.is_world_process_zero:
            from tqdm.auto import tqdm

            self.training_bar = tqdm(total=state.max_steps, initial=state.global_step, dynamic_ncols=True)
        self.current_step = state.global_step

    def on_step_end(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> Any:
        if self.training_bar is not None:
            self.training_bar.update(state.global_step - self.current_step)
            self.current_step = state.global_step

    def on_prediction_step(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> Any:
        loader = kwargs.get("eval_dataloader")
        if not state.is_world_process_zero or not isinstance(loader, Sized):
            return
        if self.prediction_bar is None:
            from tqdm.auto import tqdm

            self.prediction_bar = tqdm(total=len(loader), leave=self.training_bar is None, dynamic_ncols=True)
        self.prediction_bar.update(1)

    def _close_prediction_bar(self) -> None:
        if self.prediction_bar is not None:
            self.prediction_bar.close()
            self.prediction_bar = None

    def on_evaluate(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> Any:
        self._close_prediction_bar()

    def on_predict(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> Any:
        self._close_prediction_bar()

    def on_log(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> Any:
        if self.training_bar is not None:
            self.training_bar.write(str(_shown(kwargs.get("logs") or {})))

    def on_train_end(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> Any:
        if self.training_bar is not None:
            self.training_bar.close()
            self.training_bar = None


class PrinterCallback(TrainerCallback):
    """Prints each log (used instead of progress bars when ``disable_tqdm=True``)."""

    def on_log(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> Any:
        if state.is_world_process_zero:
            print(_shown(kwargs.get("logs") or {}))
