"""``ScheduledLR``: a ``LambdaLR`` driven by a pure ``Schedule``, with a checkpoint-safe state_dict."""

from __future__ import annotations

from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from trainkit.optim.schedules import Schedule
from trainkit.utils.logging import get_logger

__all__ = ["ScheduledLR"]

logger = get_logger(__name__)


class ScheduledLR(LambdaLR):
    """``lr = base_lr * schedule(step)`` for every parameter group, as transformers' schedules.

    Its ``state_dict`` holds plain numbers and strings only (it survives ``torch.load(weights_only=True)``)
    and has the keys of a ``LambdaLR``'s, plus the schedule's description: a transformers checkpoint's
    ``scheduler.pt`` loads into it and its own loads into a transformers ``LambdaLR``. On load the
    step count is restored and the schedule stays the one built from the current arguments (as in
    transformers); a warning says so when the checkpoint was written with a different schedule.
    """

    def __init__(self, optimizer: Optimizer, schedule: Schedule, last_epoch: int = -1) -> None:
        self.schedule = schedule
        super().__init__(optimizer, schedule, last_epoch)

    def state_dict(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "lr_lambdas", "schedule")}
        state["lr_lambdas"] = [None] * len(self.lr_lambdas)
        state["schedule"] = self.schedule.describe()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = {k: v for k, v in state_dict.items() if k not in ("lr_lambdas", "schedule")}
        saved = state_dict.get("schedule")
        if saved is not None and saved != self.schedule.describe():
            logger.warning(
                "The checkpoint's learning-rate schedule %s differs from the current arguments' %s; "
                "resuming at step %s with the current one.",
                saved,
                self.schedule.describe(),
                state.get("last_epoch"),
            )
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.schedule!r}, last_epoch={self.last_epoch})"
