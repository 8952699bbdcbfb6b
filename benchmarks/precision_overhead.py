"""Step time of bf16-mixed through trainkit (SingleDeviceStrategy + MixedPrecision) vs a hand-written loop.

Both loops train the same model on the same batches with the same optimizer: forward under
``torch.autocast(bf16)``, backward, clip to a global norm, step, zero the gradients. Runs
alternate (which loop goes first alternates too), and each run restarts from the same weights.
Prints the median step time of each and ratio = hand-written / trainkit (1.0 = no overhead;
the target is >= 0.98), and the same ratio of the fastest runs (steadier on a busy machine).

Usage (trainkit installed, or PYTHONPATH=src):
    python benchmarks/precision_overhead.py [--repeats 15] [--steps 20] [--width 512] [--device cpu] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from trainkit import MixedPrecision, SingleDeviceStrategy

MAX_NORM = 1.0


def make_model(width: int) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(256, width), nn.GELU()]
    for _ in range(3):
        layers += [nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width)]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def hand_written(model: nn.Module, data: list, device: torch.device) -> float:
    """Seconds per step of the plain loop."""
    model = model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sync = _synchronizer(device)
    start = time.perf_counter()
    for x, y in data:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync()
    return (time.perf_counter() - start) / len(data)


def through_trainkit(model: nn.Module, data: list, device: torch.device) -> float:
    """Seconds per step of the same loop driven by SingleDeviceStrategy + MixedPrecision('bf16')."""
    strategy = SingleDeviceStrategy(device, precision=MixedPrecision("bf16"))
    strategy.setup_environment()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer, _ = strategy.setup(model, optimizer)
    assert optimizer is not None
    sync = _synchronizer(device)
    start = time.perf_counter()
    for batch in data:
        x, y = strategy.batch_to_device(batch)
        with strategy.forward_context():
            loss = nn.functional.cross_entropy(model(x).float(), y)
        strategy.backward(loss, model)
        strategy.clip_gradients(model, optimizer, MAX_NORM)
        strategy.optimizer_step(optimizer)
        strategy.zero_grad(optimizer)
    sync()
    elapsed = (time.perf_counter() - start) / len(data)
    strategy.teardown()
    return elapsed


def _synchronizer(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15, help="runs of each loop (alternating)")
    parser.add_argument("--steps", type=int, default=20, help="steps per run")
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is steadier on a busy machine)")
    opts = parser.parse_args()
    if opts.threads:
        torch.set_num_threads(opts.threads)

    device = torch.device(opts.device)
    gen = torch.Generator().manual_seed(0)
    data = [
        (torch.randn(opts.batch_size, 256, generator=gen), torch.randint(10, (opts.batch_size,), generator=gen))
        for _ in range(opts.steps)
    ]
    initial = make_model(opts.width)
    loops = {"hand-written": hand_written, "trainkit": through_trainkit}
    times: dict[str, list[float]] = {name: [] for name in loops}
    for loop in loops.values():  # warm-up: allocator, kernels, lazy imports
        loop(copy.deepcopy(initial), data[:5], device)
    for repeat in range(opts.repeats):
        order = list(loops) if repeat % 2 == 0 else list(reversed(loops))
        for name in order:
            times[name].append(loops[name](copy.deepcopy(initial), data, device))

    medians = {name: statistics.median(values) for name, values in times.items()}
    print(
        f"device={device} threads={torch.get_num_threads()} width={opts.width} batch={opts.batch_size} "
        f"steps={opts.steps} repeats={opts.repeats}"
    )
    for name, median in medians.items():
        spread = f"{min(times[name]) * 1e3:.2f}..{max(times[name]) * 1e3:.2f}"
        print(f"{name:>13}: median {median * 1e3:.2f} ms/step (range {spread})")
    print(f"ratio (hand-written / trainkit, target >= 0.98): {medians['hand-written'] / medians['trainkit']:.3f}")
    # on a shared machine the fastest runs are the least disturbed ones: a second estimate
    fastest = {name: min(values) for name, values in times.items()}
    print(f"ratio of the fastest runs: {fastest['hand-written'] / fastest['trainkit']:.3f}")


if __name__ == "__main__":
    main()
