"""``HFAdamW``: transformers' own (deprecated, pre-4.47) AdamW, the optimizer behind ``optim="adamw_hf"``.

It differs from ``torch.optim.AdamW`` in two places, which is why it is kept: epsilon is added to
``sqrt(v)`` before the bias correction is folded into the step size, and the decoupled weight decay
is applied after the Adam update (to the updated weights), not before it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from trainkit.optim.per_parameter import PerParameterOptimizer

__all__ = ["HFAdamW"]


class HFAdamW(PerParameterOptimizer):
    """AdamW with transformers' legacy update order; ``correct_bias=False`` drops the bias correction (BERT)."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        correct_bias: bool = True,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"HFAdamW: lr must be >= 0, got {lr}")
        for i, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"HFAdamW: betas[{i}] must be in [0, 1), got {beta}")
        if eps < 0.0:
            raise ValueError(f"HFAdamW: eps must be >= 0, got {eps}")
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "correct_bias": correct_bias}
        super().__init__(params, defaults)

    def _update(self, param: torch.Tensor, group: dict[str, Any]) -> None:
        grad = param.grad
        assert grad is not None
        if grad.is_sparse:
            raise RuntimeError("HFAdamW does not support sparse gradients; use torch.optim.SparseAdam")
        state = self.state[param]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(param)
            state["exp_avg_sq"] = torch.zeros_like(param)
        beta1, beta2 = group["betas"]
        state["step"] += 1
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        step_size = group["lr"]
        if group["correct_bias"]:
            step_size *= math.sqrt(1.0 - beta2 ** state["step"]) / (1.0 - beta1 ** state["step"])
        param.addcdiv_(exp_avg, exp_avg_sq.sqrt().add_(group["eps"]), value=-step_size)
        if group["weight_decay"] > 0.0:
            param.add_(param, alpha=-group["lr"] * group["weight_decay"])
