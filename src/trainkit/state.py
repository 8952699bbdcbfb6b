"""``TrainerState`` and ``TrainerControl`` with transformers' fields and semantics (JSON-serialisable)."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = ["ExportableState", "TrainerControl", "TrainerState"]


@runtime_checkable
class ExportableState(Protocol):
    """A callback whose state is saved in checkpoints (``restore_callback_states_from_checkpoint``)."""

    def state(self) -> dict[str, Any]: ...


@dataclass
class TrainerState:
    """What the Trainer knows about the run; saved as ``trainer_state.json`` in each checkpoint."""

    epoch: float | None = None
    global_step: int = 0
    max_steps: int = 0
    logging_steps: float = 500
    eval_steps: float = 500
    save_steps: float = 500
    train_batch_size: int | None = None
    num_train_epochs: int = 0
    num_input_tokens_seen: int = 0
    total_flos: float = 0
    log_history: list[dict[str, float]] = field(default_factory=list)
    best_metric: float | None = None
    best_global_step: int | None = None
    best_model_checkpoint: str | None = None
    is_local_process_zero: bool = True
    is_world_process_zero: bool = True
    is_hyper_param_search: bool = False
    trial_name: str | None = None
    trial_params: dict[str, Any] | None = None
    stateful_callbacks: dict[str, Any] = field(default_factory=dict)
    # trainkit: optimizer steps skipped for a non-finite loss or gradient (never hidden)
    skipped_steps: int = 0

    def compute_steps(self, args: Any, max_steps: int) -> None:
        """Resolve ``logging/eval/save_steps`` given as ratios (< 1) into step counts, as transformers."""
        for kind in ("logging", "eval", "save"):
            value = getattr(args, f"{kind}_steps")
            if value is not None:
                setattr(self, f"{kind}_steps", math.ceil(max_steps * value) if value < 1 else value)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save_to_json(self, json_path: str | Path) -> None:
        Path(json_path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainerState:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def load_from_json(cls, json_path: str | Path) -> TrainerState:
        return cls.from_dict(json.loads(Path(json_path).read_text(encoding="utf-8")))


@dataclass
class TrainerControl:
    """Flags callbacks set to steer the loop (log, evaluate, save, stop)."""

    should_training_stop: bool = False
    should_epoch_stop: bool = False
    should_save: bool = False
    should_evaluate: bool = False
    should_log: bool = False

    def _new_training(self) -> None:
        self.should_training_stop = False

    def _new_epoch(self) -> None:
        self.should_epoch_stop = False

    def _new_step(self) -> None:
        self.should_save = False
        self.should_evaluate = False
        self.should_log = False

    def state(self) -> dict[str, Any]:
        return {"args": dataclasses.asdict(self), "attributes": {}}
