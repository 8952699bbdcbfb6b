"""``Adafactor`` with transformers' semantics (fairseq's algorithm), the optimizer behind ``optim="adafactor"``.

``torch.optim.Adafactor`` is a different variant (relative step capped by lr, no update clipping,
no first moment), so a run that used transformers' Adafactor would change under it. This one follows
transformers: factored second moments for tensors of 2+ dims, update clipping at ``clip_threshold``,
optional first moment (``beta1``), and the relative-step / parameter-scale options. The Trainer
builds it as transformers does: ``lr=learning_rate, scale_parameter=False, relative_step=False``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from trainkit.optim.per_parameter import PerParameterOptimizer

__all__ = ["Adafactor"]


def _rms(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.norm(2) / (tensor.numel() ** 0.5)


class Adafactor(PerParameterOptimizer):
    """Adafactor (Shazeer & Stern, 2018) as in transformers and fairseq; see the module docstring."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | None = None,
        eps: tuple[float, float] = (1e-30, 1e-3),
        clip_threshold: float = 1.0,
        decay_rate: float = -0.8,
        beta1: float | None = None,
        weight_decay: float = 0.0,
        scale_parameter: bool = True,
        relative_step: bool = True,
        warmup_init: bool = False,
    ) -> None:
        if lr is not None and relative_step:
            raise ValueError("Adafactor: a manual lr needs relative_step=False")
        if lr is None and not relative_step:
            raise ValueError("Adafactor: relative_step=False needs an lr")
        if warmup_init and not relative_step:
            raise ValueError("Adafactor: warmup_init=True needs relative_step=True")
        defaults = {
            "lr": lr,
            "eps": eps,
            "clip_threshold": clip_threshold,
            "decay_rate": decay_rate,
            "beta1": beta1,
            "weight_decay": weight_decay,
            "scale_parameter": scale_parameter,
            "relative_step": relative_step,
            "warmup_init": warmup_init,
        }
        super().__init__(params, defaults)

    @staticmethod
    def step_size(group: dict[str, Any], step: int, param_rms: float | torch.Tensor) -> float | torch.Tensor:
        """The effective lr of a step: the external or relative step, times the parameter's RMS if scaled."""
        size = group["lr"]
        if group["relative_step"]:
            ceiling = 1e-6 * step if group["warmup_init"] else 1e-2
            size = min(ceiling, 1.0 / math.sqrt(step))
        if group["scale_parameter"]:
            return torch.clamp(torch.as_tensor(param_rms), min=group["eps"][1]) * size
        return size

    def _update(self, param: torch.Tensor, group: dict[str, Any]) -> None:
        assert param.grad is not None
        if param.grad.is_sparse:
            raise RuntimeError("Adafactor does not support sparse gradients")
        grad = param.grad.float() if param.grad.dtype in (torch.float16, torch.bfloat16) else param.grad
        state = self._state(param, grad, group)
        state["step"] += 1
        weights = param.float() if param.dtype in (torch.float16, torch.bfloat16) else param
        lr = self.step_size(group, state["step"], _rms(weights))

        update = self._scaled_gradient(state, grad, group)
        update.div_((_rms(update) / group["clip_threshold"]).clamp_(min=1.0))
        update.mul_(lr)
        if group["beta1"] is not None:
            update = state["exp_avg"].mul_(group["beta1"]).add_(update, alpha=1 - group["beta1"])
        if group["weight_decay"] != 0:
            if isinstance(lr, torch.Tensor):
                weights.add_(weights * (-group["weight_decay"] * lr))
            else:
                weights.add_(weights, alpha=-group["weight_decay"] * lr)
        weights.add_(-update)
        if weights is not param:
            param.copy_(weights)

    def _state(self, param: torch.Tensor, grad: torch.Tensor, group: dict[str, Any]) -> dict[str, Any]:
        """The parameter's state, created on first use and moved to the gradient's dtype and device."""
        state = self.state[param]
        shape = grad.shape
        if not state:
            state["step"] = 0
            if group["beta1"] is not None:
                state["exp_avg"] = torch.zeros_like(grad)
            if len(shape) >= 2:
                state["exp_avg_sq_row"] = torch.zeros(shape[:-1], dtype=grad.dtype, device=grad.device)
                state["exp_avg_sq_col"] = torch.zeros(shape[:-2] + shape[-1:], dtype=grad.dtype, device=grad.device)
            else:
                state["exp_avg_sq"] = torch.zeros_like(grad)
        for key in ("exp_avg", "exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_sq"):
            if key in state:
                state[key] = state[key].to(grad)
        return state

    @staticmethod
    def _scaled_gradient(state: dict[str, Any], grad: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        """The gradient divided by the root of its running second moment (factored for matrices)."""
        beta2t = 1.0 - math.pow(state["step"], group["decay_rate"])
        squared = grad**2 + group["eps"][0]
        if "exp_avg_sq" in state:
            state["exp_avg_sq"].mul_(beta2t).add_(squared, alpha=1.0 - beta2t)
            return state["exp_avg_sq"].rsqrt().mul_(grad)
        row, col = state["exp_avg_sq_row"], state["exp_avg_sq_col"]
        row.mul_(beta2t).add_(squared.mean(dim=-1), alpha=1.0 - beta2t)
        col.mul_(beta2t).add_(squared.mean(dim=-2), alpha=1.0 - beta2t)
        row_factor = (row / row.mean(dim=-1, keepdim=True)).rsqrt_().unsqueeze(-1)
        col_factor = col.unsqueeze(-2).rsqrt()
        return torch.mul(row_factor, col_factor).mul_(grad)
