"""Shared helpers of the scheduler tests: a one-parameter optimizer, its lr curve, random schedule cases."""

from __future__ import annotations

import io
from typing import Any

import torch
from hypothesis import strategies as st

LR = 0.1
Case = tuple[int, int, dict[str, Any]]


def one_param_optimizer(lr: float = 0.1) -> torch.optim.Optimizer:
    """An SGD over one parameter: enough to drive a scheduler."""
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def lr_curve(optimizer: torch.optim.Optimizer, scheduler: Any, steps: int) -> list[float]:
    """The lr before each of ``steps`` training steps, then after the last (``steps + 1`` values)."""
    out = [optimizer.param_groups[0]["lr"]]
    for _ in range(steps):
        optimizer.step()  # a no-op without gradients; keeps torch's step-order check quiet
        scheduler.step()
        out.append(optimizer.param_groups[0]["lr"])
    return out


def safe_round_trip(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` after ``torch.save`` and ``torch.load(weights_only=True)``, as checkpoints are loaded."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


# Keyword arguments of each schedule, within the ranges its entry accepts.
unit = st.floats(0.0, 1.0)
KWARGS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "linear": st.just({}),
    "cosine": st.fixed_dictionaries({}, optional={"num_cycles": st.floats(0.0, 3.0)}),
    "cosine_with_restarts": st.fixed_dictionaries({}, optional={"num_cycles": st.integers(0, 5)}),
    "polynomial": st.fixed_dictionaries(
        {}, optional={"lr_end": st.floats(0.0, LR * 0.99), "power": st.floats(0.1, 4.0)}
    ),
    "constant": st.just({}),
    "constant_with_warmup": st.just({}),
    "inverse_sqrt": st.fixed_dictionaries({}, optional={"timescale": st.integers(1, 500)}),
    "cosine_with_min_lr": st.one_of(
        st.fixed_dictionaries({"min_lr_rate": unit}, optional={"num_cycles": st.floats(0.0, 2.0)}),
        st.fixed_dictionaries({"min_lr": st.floats(0.0, LR)}),
    ),
    "cosine_warmup_with_min_lr": st.fixed_dictionaries(
        {"min_lr_rate": unit}, optional={"warmup_lr_rate": unit, "num_cycles": st.floats(0.0, 2.0)}
    ),
}


@st.composite
def scheduler_cases(draw: st.DrawFn, name: str) -> Case:
    """(num_warmup_steps, num_training_steps, kwargs) for ``name``, with warmup shorter than the run."""
    total = draw(st.integers(1, 120))
    warmup = draw(st.integers(0, total - 1))
    if name == "warmup_stable_decay":
        kwargs = draw(
            st.fixed_dictionaries(
                {"num_decay_steps": st.integers(0, total - warmup)},
                optional={
                    "warmup_type": st.sampled_from(["linear", "cosine", "1-sqrt"]),
                    "decay_type": st.sampled_from(["linear", "cosine", "1-sqrt"]),
                    "min_lr_ratio": unit,
                    "num_cycles": st.floats(0.0, 1.0),
                },
            )
        )
    else:
        kwargs = draw(KWARGS[name])
    return warmup, total, kwargs


def install_fake_bitsandbytes(monkeypatch: Any) -> dict[str, list[Any]]:
    """Stand-ins for ``bitsandbytes.optim`` (not installable on CPU-only CI) that record what they are given.

    Returns ``{"optimizers": [(class name, kwargs)], "overrides": [(module, attribute, config)]}``.
    """
    import sys
    import types

    calls: dict[str, list[Any]] = {"optimizers": [], "overrides": []}

    def recorder(class_name: str) -> type:
        def __init__(self: torch.optim.SGD, params: Any, **kwargs: Any) -> None:
            calls["optimizers"].append((class_name, kwargs))
            torch.optim.SGD.__init__(self, params, lr=kwargs["lr"])

        return type(class_name, (torch.optim.SGD,), {"__init__": __init__})

    class GlobalOptimManager:
        @classmethod
        def get_instance(cls) -> GlobalOptimManager:
            return cls()

        def register_module_override(self, module: Any, attribute: str, config: dict[str, Any]) -> None:
            calls["overrides"].append((module, attribute, config))

    optim = types.ModuleType("bitsandbytes.optim")
    for name in ("AdamW", "Lion", "RMSprop", "AdEMAMix"):
        setattr(optim, name, recorder(name))
    optim.GlobalOptimManager = GlobalOptimManager  # type: ignore[attr-defined]
    package = types.ModuleType("bitsandbytes")
    package.optim = optim  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "bitsandbytes", package)
    monkeypatch.setitem(sys.modules, "bitsandbytes.optim", optim)
    monkeypatch.setattr("trainkit.utils.imports.package_available", lambda requirement: True)
    return calls
