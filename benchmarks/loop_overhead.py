"""Steps per second of ``Trainer.train`` against a plain PyTorch loop with the same semantics.

Both loops: AdamW, a linear schedule, gradient clipping at 1.0, the same DataLoader
(dataset, sampler order, collate function), fp32 on the CPU, no logging or checkpoints.
Runs alternate (plain, trainer, plain, ...); the medians are compared, and the fastest runs
(steadier where other work shares the cores: the fastest run is the one least disturbed). Two workloads:
an overhead-bound MLP (64-128-10, batch 32) and a compute-bound small transformer.

Usage: python benchmarks/loop_overhead.py [--repeats 7] [--steps 300] [--workload mlp|transformer|both]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from trainkit import Trainer, TrainingArguments, default_data_collator
from trainkit.data.samplers import EpochSampler, SkippableBatchSampler


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.net(x)
        return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}


class TinyTransformer(nn.Module):
    def __init__(self, vocab: int = 256, dim: int = 256, layers: int = 4, seq: int = 128) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.zeros(seq, dim))
        layer = nn.TransformerEncoderLayer(dim, 4, 4 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers)
        self.head = nn.Linear(dim, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(seq), persistent=False)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.embed(input_ids) + self.pos[: input_ids.shape[1]]
        logits = self.head(self.blocks(h, mask=self.mask, is_causal=True))
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        return {"loss": loss, "logits": logits}


def make_data(workload: str, n: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    if workload == "mlp":
        x, y = torch.randn(n, 64, generator=g), torch.randint(0, 10, (n,), generator=g)
        return [{"x": x[i], "labels": y[i]} for i in range(n)]
    ids = torch.randint(0, 256, (n, 129), generator=g)
    return [{"input_ids": ids[i, :-1], "labels": ids[i, 1:]} for i in range(n)]


def make_model(workload: str) -> nn.Module:
    torch.manual_seed(0)
    return MLP() if workload == "mlp" else TinyTransformer()


def optimizer_and_schedule(model: nn.Module, steps: int) -> tuple[torch.optim.Optimizer, Any]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, (steps - s) / steps))
    return optimizer, schedule


def plain_loop(workload: str, data: list[Any], batch: int, steps: int) -> float:
    model = make_model(workload)
    optimizer, schedule = optimizer_and_schedule(model, steps)
    sampler = SkippableBatchSampler(EpochSampler(len(data), seed=42), batch, False)
    loader = DataLoader(data, batch_sampler=sampler, collate_fn=default_data_collator)
    model.train()
    start = time.perf_counter()
    done = 0
    epoch = 0
    while done < steps:
        sampler.set_epoch(epoch)
        for inputs in loader:
            loss = model(**inputs)["loss"]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            done += 1
            if done == steps:
                break
        epoch += 1
    return steps / (time.perf_counter() - start)


def trainer_loop(workload: str, data: list[Any], batch: int, steps: int, tmp: str) -> float:
    model = make_model(workload)
    args = TrainingArguments(
        output_dir=tmp,
        per_device_train_batch_size=batch,
        max_steps=steps,
        max_grad_norm=1.0,
        learning_rate=1e-3,
        optim="adamw_torch",
        lr_scheduler_type="linear",
        logging_strategy="no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=42,
    )
    trainer = Trainer(model, args, train_dataset=data)
    start = time.perf_counter()
    trainer.train()
    return steps / (time.perf_counter() - start)


def run(workload: str, repeats: int, steps: int) -> None:
    batch = 32 if workload == "mlp" else 16
    data = make_data(workload, 4096 if workload == "mlp" else 512)
    plain_loop(workload, data, batch, min(steps, 20))  # warm-up
    plain_rates, trainer_rates = [], []
    with tempfile.TemporaryDirectory() as tmp:
        trainer_loop(workload, data, batch, min(steps, 20), tmp)
        for _ in range(repeats):
            plain_rates.append(plain_loop(workload, data, batch, steps))
            trainer_rates.append(trainer_loop(workload, data, batch, steps, tmp))
    plain, trainer = statistics.median(plain_rates), statistics.median(trainer_rates)
    print(
        f"{workload:12s} plain {plain:9.1f} steps/s   trainer {trainer:9.1f} steps/s   "
        f"ratio {trainer / plain:.3f}   (median of {repeats}, {steps} steps each); "
        f"fastest runs: ratio {max(trainer_rates) / max(plain_rates):.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--workload", choices=["mlp", "transformer", "both"], default="both")
    opts = parser.parse_args()
    for workload in ("mlp", "transformer") if opts.workload == "both" else (opts.workload,):
        run(workload, opts.repeats, opts.steps if workload == "mlp" else max(opts.steps // 10, 10))


if __name__ == "__main__":
    main()
