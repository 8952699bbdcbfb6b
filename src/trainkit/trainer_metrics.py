"""Reporting helpers of the Trainer with transformers' names: ``log_metrics``, ``save_metrics``, ..."""

from __future__ import annotations

import datetime
import json
import os
from typing import Any

__all__ = ["MetricsReportingMixin", "metrics_format"]


def metrics_format(metrics: dict[str, Any]) -> dict[str, Any]:
    """Human-readable values: memory in MB, runtimes as h:mm:ss, flos in GF, floats to 4 decimals."""
    out = dict(metrics)
    for key, value in out.items():
        if "_mem_" in key and isinstance(value, int):
            out[key] = f"{value >> 20}MB"
        elif "_runtime" in key and isinstance(value, (int, float)):
            whole = int(value)
            out[key] = f"{datetime.timedelta(seconds=whole)}.{round((value - whole) * 100):02d}"
        elif key == "total_flos" and isinstance(value, (int, float)):
            out[key] = f"{int(value) >> 30}GF"
        elif isinstance(value, float):
            out[key] = round(value, 4)
    return out


class MetricsReportingMixin:
    """Printing and saving metrics and the state, from the world's main process only."""

    args: Any
    state: Any

    def is_world_process_zero(self) -> bool:
        raise NotImplementedError

    def metrics_format(self, metrics: dict[str, Any]) -> dict[str, Any]:
        return metrics_format(metrics)

    def log_metrics(self, split: str, metrics: dict[str, Any]) -> None:
        """Print ``metrics`` as an aligned table headed ``***** <split> metrics *****``."""
        if not self.is_world_process_zero():
            return
        print(f"***** {split} metrics *****")
        shown = self.metrics_format(metrics)
        if not shown:
            return
        key_width = max(len(str(k)) for k in shown)
        value_width = max(len(str(v)) for v in shown.values())
        for key in sorted(shown):
            print(f"  {key: <{key_width}} = {shown[key]!s:>{value_width}}")

    def save_metrics(self, split: str, metrics: dict[str, Any], combined: bool = True) -> None:
        """Write ``<split>_results.json`` (and merge into ``all_results.json`` when ``combined``)."""
        if not self.is_world_process_zero():
            return
        os.makedirs(self.args.output_dir, exist_ok=True)
        path = os.path.join(self.args.output_dir, f"{split}_results.json" if split != "all" else "all_results.json")
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(metrics, fh, indent=4, sort_keys=True)
        if combined:
            all_path = os.path.join(self.args.output_dir, "all_results.json")
            merged: dict[str, Any] = {}
            if os.path.exists(all_path):
                with open(all_path, encoding="utf-8") as fh:
                    merged = json.load(fh)
            merged.update(metrics)
            with open(all_path, "w", encoding="utf-8") as fh:
                json.dump(merged, fh, indent=4, sort_keys=True)

    def save_state(self) -> None:
        """Write the TrainerState to ``output_dir/trainer_state.json``."""
        if not self.is_world_process_zero():
            return
        os.makedirs(self.args.output_dir, exist_ok=True)
        self.state.save_to_json(os.path.join(self.args.output_dir, "trainer_state.json"))
