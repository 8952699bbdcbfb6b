"""How much ``import trainkit`` (and its public names) adds over ``import torch``.

Runs each import in fresh interpreters, alternating, and prints medians and the difference.
Usage: python benchmarks/import_time.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")
CASES = {
    "torch": "import torch",
    "torch + trainkit": "import torch, trainkit",
    "torch + trainkit public names": "import torch, trainkit\nfor n in trainkit.__all__: getattr(trainkit, n)",
}


def _run(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": SRC})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=15)
    opts = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in CASES}
    for code in CASES.values():  # warm the file cache
        _run(code)
    for _ in range(opts.repeats):
        for name, code in CASES.items():
            times[name].append(_run(code))
    base = statistics.median(times["torch"])
    for name, values in times.items():
        med = statistics.median(values)
        print(f"{name:34s} median {med:6.3f} s   (+{med - base:6.3f} s over torch)")


if __name__ == "__main__":
    main()
