"""``JSONLinesCallback``: each log (with its step) appended as one JSON line to ``output_dir/log_history.jsonl``."""

from __future__ import annotations

import json
import math
import os
from typing import Any

from trainkit.callbacks.base import TrainerCallback
from trainkit.state import TrainerControl, TrainerState

__all__ = ["JSONLinesCallback"]


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value if isinstance(value, (int, float, str, bool, type(None))) else str(value)


class JSONLinesCallback(TrainerCallback):
    """A machine-readable log that survives crashes (one flushed line per log)."""

    filename = "log_history.jsonl"

    def on_log(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> Any:
        if not state.is_world_process_zero:
            return
        os.makedirs(args.output_dir, exist_ok=True)
        record = {k: _json_safe(v) for k, v in (kwargs.get("logs") or {}).items()}
        record["step"] = state.global_step
        with open(os.path.join(args.output_dir, self.filename), "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
