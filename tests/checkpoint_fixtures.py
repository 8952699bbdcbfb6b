"""Small models and checkpoint states shared by the checkpoint tests."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from trainkit.checkpoint.rng import capture_rng_state


class TiedLM(nn.Module):
    """An embedding and an output layer that share one weight (like most language models)."""

    def __init__(self, vocab: int = 11, dim: int = 6) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.hidden = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("scale", torch.tensor(2.0))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.hidden(self.embed(ids))) * self.scale)


def trained_parts(seed: int = 0) -> tuple[TiedLM, torch.optim.Optimizer, Any]:
    """A TiedLM, its AdamW and a scheduler after two steps (so every state is non-trivial)."""
    torch.manual_seed(seed)
    model = TiedLM()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    for _ in range(2):
        model(torch.randint(0, 11, (4,))).logsumexp(-1).mean().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return model, optimizer, scheduler


def full_state(seed: int = 0, step: int = 2) -> dict[str, Any]:
    """Every part a Trainer checkpoint has, with a GradScaler-like scaler state."""
    model, optimizer, scheduler = trained_parts(seed)
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": {
            "scale": 65536.0,
            "growth_factor": 2.0,
            "backoff_factor": 0.5,
            "growth_interval": 2000,
            "_growth_tracker": 3,
        },
        "rng": capture_rng_state(),
        "trainer_state": {"global_step": step, "epoch": 0.5, "log_history": [{"loss": 1.25, "step": step}]},
        "training_args": {"output_dir": "out", "learning_rate": 0.01, "report_to": ["none"], "seed": seed},
    }


def assert_same(actual: Any, expected: Any, where: str = "state") -> None:
    """Recursive equality where tensors must match exactly (dtype, shape and bits)."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), where
        assert actual.dtype == expected.dtype, where
        assert actual.shape == expected.shape, where
        assert torch.equal(actual.cpu(), expected.cpu()), where
    elif isinstance(expected, dict):
        assert isinstance(actual, dict), where
        assert set(actual) == set(expected), f"{where}: {set(actual) ^ set(expected)}"
        for key, value in expected.items():
            assert_same(actual[key], value, f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert type(actual) is type(expected), where
        assert len(actual) == len(expected), where
        for index, (a, e) in enumerate(zip(actual, expected)):
            assert_same(a, e, f"{where}[{index}]")
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"
