"""Save and load time of a trainkit checkpoint against writing the same tensors directly.

A ~100M-parameter model with AdamW state after one step is saved with
``SafetensorsCheckpointIO`` (staging folder, fsync, CRC-32 manifest, rename) and, alternately,
with ``safetensors.torch.save_file`` + ``torch.save`` (no fsync, no hash; and once more followed
by fsyncs, the durability trainkit pays for); then loaded with
``SafetensorsCheckpointIO.load`` (hash check, materialized tensors) and, alternately, with
``safetensors.torch.load_file`` (lazy, memory-mapped) + ``torch.load(weights_only=True)``
(and once more with the model's tensors read into memory, as ``load_state_dict`` will).
Prints medians and the ratios (target <= 1.2), plus what the hash and the fsyncs cost alone.

Usage: python benchmarks/checkpoint_io.py [--repeats 3] [--layers 24] [--width 2048]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from trainkit.checkpoint import SafetensorsCheckpointIO
from trainkit.checkpoint.atomic import fsync_dir, fsync_file
from trainkit.checkpoint.manifest import file_digest


def build_state(layers: int, width: int) -> dict[str, dict]:
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model(torch.randn(2, width)).square().mean().backward()
    optimizer.step()
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {params / 1e6:.1f}M parameters, {layers} x Linear({width}, {width}); AdamW state after one step")
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict()}


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def direct_save(state: dict[str, dict], folder: Path) -> None:
    folder.mkdir()
    save_file(state["model"], str(folder / "model.safetensors"))
    torch.save(state["optimizer"], folder / "optimizer.pt")


def direct_save_fsynced(state: dict[str, dict], folder: Path) -> None:
    """The direct save made as durable as trainkit's: files and folder fsynced."""
    direct_save(state, folder)
    for name in ("model.safetensors", "optimizer.pt"):
        fsync_file(folder / name)
    fsync_dir(folder)


def direct_load(folder: Path) -> dict[str, object]:
    return {
        "model": load_file(str(folder / "model.safetensors")),
        "optimizer": torch.load(folder / "optimizer.pt", weights_only=True),
    }


def direct_load_materialized(folder: Path) -> dict[str, object]:
    """The direct load with the model's lazily mapped tensors read into memory (what load_state_dict pays anyway)."""
    state = direct_load(folder)
    state["model"] = {name: tensor.clone() for name, tensor in state["model"].items()}
    return state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--width", type=int, default=2048)
    opts = parser.parse_args()
    load_start = os.getloadavg()[0]
    state = build_state(opts.layers, opts.width)
    io = SafetensorsCheckpointIO()
    times: dict[str, list[float]] = {
        "trainkit save": [],
        "direct save": [],
        "direct save + fsync": [],
        "trainkit load": [],
        "direct load": [],
        "direct load, materialized": [],
    }
    extras: dict[str, list[float]] = {"crc32 of the files": [], "sha256 of the files": [], "fsync of the files": []}
    with tempfile.TemporaryDirectory(prefix="trainkit-bench-", dir=".") as root_name:
        root = Path(root_name)
        for repeat in range(opts.repeats):
            ours, theirs = root / f"checkpoint-{repeat}", root / f"direct-{repeat}"
            times["direct save"].append(timed(lambda: direct_save(state, theirs)))  # noqa: B023
            times["trainkit save"].append(timed(lambda: io.save(state, ours)))  # noqa: B023
            durable = root / f"durable-{repeat}"
            times["direct save + fsync"].append(timed(lambda: direct_save_fsynced(state, durable)))  # noqa: B023
            shutil.rmtree(durable)
            times["direct load"].append(timed(lambda: direct_load(theirs)))  # noqa: B023
            times["direct load, materialized"].append(timed(lambda: direct_load_materialized(theirs)))  # noqa: B023
            times["trainkit load"].append(timed(lambda: io.load(ours)))  # noqa: B023
            files = [theirs / "model.safetensors", theirs / "optimizer.pt"]
            extras["crc32 of the files"].append(timed(lambda: [file_digest(f, "crc32") for f in files]))  # noqa: B023
            extras["sha256 of the files"].append(timed(lambda: [file_digest(f, "sha256") for f in files]))  # noqa: B023
            extras["fsync of the files"].append(timed(lambda: [fsync_file(f) for f in files]))  # noqa: B023
            size = sum(f.stat().st_size for f in files) / 1e9
            shutil.rmtree(ours)
            shutil.rmtree(theirs)
    print(f"checkpoint size: {size:.2f} GB; medians of {opts.repeats} alternating runs")
    median = {name: statistics.median(values) for name, values in {**times, **extras}.items()}
    for name, value in median.items():
        print(f"  {name:22s} {value:7.3f} s   runs: {' '.join(f'{v:.2f}' for v in {**times, **extras}[name])}")
    for ours, theirs in (("save", "save"), ("save", "save + fsync"), ("load", "load"), ("load", "load, materialized")):
        paired = [a / b for a, b in zip(times[f"trainkit {ours}"], times[f"direct {theirs}"])]
        print(
            f"{ours} ratio trainkit / direct {theirs}: {statistics.median(paired):.2f} "
            f"(median of paired runs; best {min(paired):.2f}; target <= 1.2)"
        )
    print("load average (1 min) at start and end: " + " / ".join(f"{x:.2f}" for x in (load_start, os.getloadavg()[0])))


if __name__ == "__main__":
    main()
