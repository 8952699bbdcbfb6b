"""What trainkit's optimizer/scheduler layer costs against the plain objects (ratios; 1.00 = no overhead).

- scheduler step: ``ScheduledLR`` (trainkit's schedules) vs transformers' ``LambdaLR`` (or a plain LambdaLR);
- Adafactor / HFAdamW step: trainkit's classes vs transformers' Adafactor and torch's AdamW;
- create_optimizer (parameter groups by module type + registry lookup) vs ``torch.optim.AdamW(model.parameters())``.

Usage: python benchmarks/optim_overhead.py [--repeats 5] [--width 512]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch
from torch import nn

from trainkit import TrainingArguments, get_scheduler
from trainkit.optim import Adafactor, HFAdamW, create_optimizer


def timed_pair(ours: Callable[[], object], reference: Callable[[], object], repeats: int) -> tuple[float, float, float]:
    """Medians of alternating runs of both, and the median of the per-pair ratios (robust on a shared machine)."""
    ours(), reference()  # warm up
    mine, theirs = [], []
    for i in range(repeats):
        pairs = ((ours, mine), (reference, theirs))
        for fn, samples in pairs if i % 2 == 0 else pairs[::-1]:  # alternate which runs first
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
    ratio = statistics.median(a / b for a, b in zip(mine, theirs))
    return statistics.median(mine), statistics.median(theirs), ratio


def model(width: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Embedding(1000, width)]
    for _ in range(4):
        layers += [nn.Linear(width, width), nn.LayerNorm(width)]
    return nn.Sequential(*layers)


def scheduler_steps(build: Callable[[torch.optim.Optimizer], object], steps: int = 5000) -> Callable[[], None]:
    def run() -> None:
        optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
        scheduler = build(optimizer)
        for _ in range(steps):
            scheduler.step()  # type: ignore[attr-defined]

    return run


def optimizer_steps(cls: Callable[..., torch.optim.Optimizer], width: int, steps: int = 5, **kwargs: object):
    net = model(width)
    for p in net.parameters():
        p.grad = torch.randn_like(p)
    optimizer = cls(net.parameters(), **kwargs)

    def run() -> None:
        for _ in range(steps):
            optimizer.step()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--width", type=int, default=512)
    opts = parser.parse_args()
    torch.set_num_threads(1)
    try:
        import transformers
    except ImportError:
        transformers = None

    def reference_scheduler(optimizer: torch.optim.Optimizer) -> object:
        if transformers is not None:
            return transformers.get_scheduler("cosine", optimizer, 100, 5000)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)

    rows = [
        (
            "scheduler step (cosine)",
            *timed_pair(
                scheduler_steps(lambda o: get_scheduler("cosine", o, 100, 5000)),
                scheduler_steps(reference_scheduler),
                opts.repeats,
            ),
            "transformers LambdaLR" if transformers else "torch LambdaLR",
        )
    ]
    factor_kwargs = {"lr": 1e-3, "relative_step": False, "scale_parameter": False}
    if transformers is not None:
        rows.append(
            (
                "Adafactor step",
                *timed_pair(
                    optimizer_steps(Adafactor, opts.width, **factor_kwargs),
                    optimizer_steps(transformers.Adafactor, opts.width, **factor_kwargs),
                    opts.repeats,
                ),
                "transformers Adafactor",
            )
        )
    rows.append(
        (
            "HFAdamW step",
            *timed_pair(
                optimizer_steps(HFAdamW, opts.width, lr=1e-3),
                optimizer_steps(torch.optim.AdamW, opts.width, lr=1e-3),
                opts.repeats,
            ),
            "torch AdamW (default impl.)",
        )
    )
    net = model(opts.width)
    args = TrainingArguments(output_dir="out", report_to="none", weight_decay=0.01)
    rows.append(
        (
            "create_optimizer",
            *timed_pair(
                lambda: create_optimizer(net, args),
                lambda: torch.optim.AdamW(net.parameters(), lr=args.learning_rate),
                opts.repeats,
            ),
            "torch.optim.AdamW(model.parameters())",
        )
    )
    print(f"{'what':<26}{'trainkit s':>12}{'reference s':>13}{'ratio':>8}  reference (ratio: median of pairs)")
    for what, ours, reference, ratio, name in rows:
        print(f"{what:<26}{ours:>12.5f}{reference:>13.5f}{ratio:>8.2f}  {name}")


if __name__ == "__main__":
    main()
