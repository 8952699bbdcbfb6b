"""``PerParameterOptimizer``: the ``step`` shared by optimizers written as one update per parameter."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import Any

import torch
from torch.optim import Optimizer


class PerParameterOptimizer(Optimizer):
    """An optimizer whose step updates each parameter with a gradient on its own (``_update``)."""

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self._update(param, group)
        return loss

    @abstractmethod
    def _update(self, param: torch.Tensor, group: dict[str, Any]) -> None:
        """Update ``param`` (whose ``grad`` is set) with its group's hyperparameters."""
