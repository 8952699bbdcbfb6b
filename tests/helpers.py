"""Small models and datasets shared by the tests (generated, never downloaded)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, IterableDataset

IGNORE = -100


class RegressionModel(nn.Module):
    """y = a * x + b with an MSE loss (transformers' test model, as a plain module)."""

    def __init__(self, a: float = 0.0, b: float = 0.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a))
        self.b = nn.Parameter(torch.tensor(b))
        self.dropout = nn.Dropout(dropout)

    def forward(self, input_x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
        y = self.dropout(input_x * self.a + self.b)
        out: dict[str, Any] = {"logits": y}
        if labels is not None:
            out["loss"] = nn.functional.mse_loss(y, labels)
        return out


class RegressionDataset(Dataset[dict[str, torch.Tensor]]):
    def __init__(self, length: int = 64, a: float = 2.0, b: float = 3.0, seed: int = 42) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(length, generator=g)
        self.y = a * self.x + b + 0.1 * torch.randn(length, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_x": self.x[i], "labels": self.y[i]}


class TokenModel(nn.Module):
    """A tiny token classifier returning the mean cross entropy over non-ignored labels."""

    def __init__(self, vocab: int = 11, dim: int = 8, seed: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.embed = nn.Embedding(vocab, dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)
        self.dropout = nn.Dropout(dropout)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.norm(self.embed(input_ids))))

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
        logits = self.logits(input_ids)
        out: dict[str, Any] = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE
            )
        return out


class TiedTokenModel(TokenModel):
    """TokenModel whose output layer shares the embedding matrix (tied weights, as language models)."""

    def __init__(self, vocab: int = 11, dim: int = 8, seed: int = 0, dropout: float = 0.0) -> None:
        super().__init__(vocab, dim, seed, dropout)
        self.head.weight = self.embed.weight


class SumLossTokenModel(TokenModel):
    """The same model, normalising its summed loss by the ``num_items_in_batch`` it receives."""

    def forward(  # type: ignore[override]
        self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, num_items_in_batch: Any = None
    ) -> dict[str, Any]:
        logits = self.logits(input_ids)
        out: dict[str, Any] = {"logits": logits}
        if labels is not None:
            loss = nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE, reduction="sum"
            )
            out["loss"] = loss / (num_items_in_batch if num_items_in_batch is not None else (labels != IGNORE).sum())
        return out


class TokenDataset(Dataset[dict[str, torch.Tensor]]):
    """Fixed-length sequences whose label counts vary (trailing labels set to -100)."""

    def __init__(self, length: int = 24, seq: int = 6, vocab: int = 11, seed: int = 1, pad: list[int] | None = None):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, vocab, (length, seq), generator=g)
        self.labels = torch.randint(0, vocab, (length, seq), generator=g)
        pads = pad if pad is not None else torch.randint(0, seq, (length,), generator=g).tolist()
        for i, p in enumerate(pads):
            if p:
                self.labels[i, seq - p :] = IGNORE

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


class StreamDataset(IterableDataset[dict[str, torch.Tensor]]):
    """An IterableDataset (no length) over a RegressionDataset."""

    def __init__(self, base: Dataset[dict[str, torch.Tensor]]) -> None:
        self.base = base

    def __iter__(self):  # type: ignore[no-untyped-def]
        for i in range(len(self.base)):  # type: ignore[arg-type]
            yield self.base[i]


def params_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def quiet_args(output_dir: str, **kwargs: Any) -> Any:
    """TrainingArguments for tests: no loggers, no progress bars, no checkpoints unless asked."""
    from trainkit import TrainingArguments

    kwargs.setdefault("report_to", "none")
    kwargs.setdefault("disable_tqdm", True)
    kwargs.setdefault("save_strategy", "no")
    kwargs.setdefault("logging_strategy", "no")
    return TrainingArguments(output_dir=output_dir, **kwargs)
