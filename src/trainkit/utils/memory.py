"""Memory report of ``skip_memory_metrics=False`` (transformers' TrainerMemoryTracker metrics).

For each stage (init, train, eval, test): ``<stage>_mem_cpu_alloc_delta`` and
``<stage>_mem_cpu_peaked_delta`` (resident memory, bytes), and the ``gpu`` equivalents from
``torch.cuda`` when CUDA is in use. The init stage is reported with the first stage that follows.
"""

from __future__ import annotations

import gc
import os
import threading
from typing import Any

import torch

__all__ = ["MemoryTracker", "cpu_rss_bytes"]

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def cpu_rss_bytes() -> int:
    """Resident set size of this process (psutil when installed, else /proc)."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * _PAGE


class _PeakMonitor(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = cpu_rss_bytes()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.005):
            self.peak = max(self.peak, cpu_rss_bytes())

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return max(self.peak, cpu_rss_bytes())


class MemoryTracker:
    """Measures memory per stage; does nothing when ``skip`` is True."""

    def __init__(self, skip: bool = True) -> None:
        self.skip = skip
        self.stage: str | None = None
        self.metrics: dict[str, dict[str, int]] = {}
        self._begin: dict[str, int] = {}
        self._monitor: _PeakMonitor | None = None
        self._init_reported = False
        self.cuda = torch.cuda.is_available()

    def start(self, stage: str) -> None:
        if self.skip or self.stage is not None:
            return
        self.stage = stage
        gc.collect()
        self._begin = {"cpu": cpu_rss_bytes()}
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self._begin["gpu"] = torch.cuda.memory_allocated()
        self._monitor = _PeakMonitor()
        self._monitor.start()

    def stop(self, stage: str) -> None:
        if self.skip or self.stage != stage or self._monitor is None:
            return
        peak_cpu = self._monitor.stop()
        self._monitor = None
        gc.collect()
        now = {"cpu": cpu_rss_bytes()}
        peaks = {"cpu": peak_cpu}
        if self.cuda:
            now["gpu"] = torch.cuda.memory_allocated()
            peaks["gpu"] = torch.cuda.max_memory_allocated()
        self.metrics[stage] = {"begin_cpu": self._begin["cpu"]}
        for kind, end in now.items():
            self.metrics[stage][f"{kind}_alloc_delta"] = end - self._begin[kind]
            self.metrics[stage][f"{kind}_peaked_delta"] = max(0, peaks[kind] - end)
        self.stage = None

    def update_metrics(self, stage: str, metrics: dict[str, Any]) -> None:
        if self.skip:
            return
        stages = [stage] if self._init_reported or "init" not in self.metrics else ["init", stage]
        for name in stages:
            for key, value in self.metrics.get(name, {}).items():
                if key != "begin_cpu":
                    kind, rest = key.split("_", 1)
                    metrics[f"{name}_mem_{kind}_{rest}"] = value
        if "init" in stages:
            self._init_reported = True
            metrics["before_init_mem_cpu"] = self.metrics["init"]["begin_cpu"]

    def stop_and_update_metrics(self, metrics: dict[str, Any], stage: str | None = None) -> None:
        stage = stage or self.stage
        if stage is None:
            return
        self.stop(stage)
        self.update_metrics(stage, metrics)
