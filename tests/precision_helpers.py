"""Shared pieces of the precision tests: a small model, data, and a probe of torch's global numeric state."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def make_model(seed: int = 0, width: int = 32) -> nn.Module:
    """A small regression MLP with a LayerNorm, a BatchNorm (buffers) and a dropout-free path."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(8, width), nn.BatchNorm1d(width), nn.Tanh(), nn.LayerNorm(width), nn.Linear(width, 1)
    )


def make_batches(n: int, batch_size: int = 16, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` (x, y) batches of a smooth nonlinear target, generated from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n):
        x = torch.randn(batch_size, 8, generator=gen)
        y = torch.sin(x[:, :1] * 2) + 0.5 * x[:, 1:2] * x[:, 2:3]
        batches.append((x, y))
    return batches


def _guarded(read: Any) -> Any:
    try:
        return read()
    except RuntimeError as err:  # torch refuses to read a legacy flag in a mixed legacy/new state
        return f"unreadable: {str(err)[:40]}"


def numeric_state() -> dict[str, Any]:
    """Every process-global numeric setting a precision could touch, read without changing anything."""
    state: dict[str, Any] = {
        "default_dtype": torch.get_default_dtype(),
        "autocast_cache": torch.is_autocast_cache_enabled(),
        "matmul_precision": _guarded(torch.get_float32_matmul_precision),
        "matmul_allow_tf32": _guarded(lambda: torch.backends.cuda.matmul.allow_tf32),
        "cudnn_allow_tf32": _guarded(lambda: torch.backends.cudnn.allow_tf32),
    }
    for device_type in ("cpu", "cuda"):
        state[f"autocast_enabled[{device_type}]"] = torch.is_autocast_enabled(device_type)
        state[f"autocast_dtype[{device_type}]"] = torch.get_autocast_dtype(device_type)
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        nodes = {
            "generic": torch.backends,
            "cudnn": torch.backends.cudnn,
            "cuda.matmul": torch.backends.cuda.matmul,
            "cudnn.conv": torch.backends.cudnn.conv,
            "cudnn.rnn": torch.backends.cudnn.rnn,
            "mkldnn": torch.backends.mkldnn,
            "mkldnn.matmul": torch.backends.mkldnn.matmul,
            "mkldnn.conv": torch.backends.mkldnn.conv,
            "mkldnn.rnn": torch.backends.mkldnn.rnn,
        }
        state.update({f"fp32_precision[{k}]": node.fp32_precision for k, node in nodes.items()})
    return state


def params_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every parameter and buffer."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
