"""``CheckpointManager``: the policy over ``checkpoint-<step>`` folders of one output folder.

Naming, best-checkpoint tracking (``metric_for_best_model`` / ``greater_is_better``),
``save_total_limit`` rotation, ``save_only_model``, ``save_on_each_node``, resume discovery and
``overwrite_output_dir``. It knows nothing of TrainerState: it receives steps, metric values and
parts (a Trainer mirrors ``best_metric`` / ``best_checkpoint`` into its state). Its own state
(which checkpoints this run wrote, the best so far) travels in every checkpoint as
``checkpoint_manager.json``, so a resumed run keeps rotating what it wrote, and only that.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainkit.checkpoint import atomic
from trainkit.checkpoint.discovery import get_last_checkpoint, list_checkpoints
from trainkit.checkpoint.errors import CheckpointError
from trainkit.checkpoint.io import CheckpointIO, PathLike
from trainkit.checkpoint.layout import (
    PART_CHECKPOINT_MANAGER,
    PART_MODEL,
    PART_OPTIMIZER,
    PART_TRAINER_STATE,
    PART_TRAINING_ARGS,
    checkpoint_folder_name,
    checkpoint_step,
)
from trainkit.checkpoint.manifest import find_manifest_problem, read_manifest
from trainkit.checkpoint.rotation import (
    default_greater_is_better,
    is_better_metric,
    select_checkpoints_to_delete,
    select_checkpoints_to_delete_at_end,
)
from trainkit.utils.logging import get_logger

if TYPE_CHECKING:
    from trainkit.args import TrainingArguments

__all__ = ["MODEL_ONLY_PARTS", "CheckpointManager"]

logger = get_logger(__name__)

# What a save_only_model checkpoint keeps (as transformers: weights, trainer state, arguments).
MODEL_ONLY_PARTS = frozenset({PART_MODEL, PART_TRAINER_STATE, PART_TRAINING_ARGS})
_STATE_VERSION = 1


class CheckpointManager:
    """Saves ``state`` as ``output_dir/checkpoint-<step>`` through a CheckpointIO and applies the policy."""

    def __init__(
        self,
        output_dir: PathLike,
        checkpoint_io: CheckpointIO | None = None,
        *,
        save_total_limit: int | None = None,
        metric_for_best_model: str | None = None,
        greater_is_better: bool | None = None,
        save_only_model: bool = False,
        save_on_each_node: bool = False,
        overwrite_output_dir: bool = False,
        global_rank: int = 0,
        local_rank: int = 0,
    ) -> None:
        if checkpoint_io is None:
            from trainkit.checkpoint.safetensors_io import SafetensorsCheckpointIO

            checkpoint_io = SafetensorsCheckpointIO()
        self.output_dir = Path(output_dir)
        self.io = checkpoint_io
        self.save_total_limit = save_total_limit
        self.metric_for_best_model = metric_for_best_model
        self.greater_is_better = default_greater_is_better(metric_for_best_model, greater_is_better)
        self.save_only_model = save_only_model
        self.save_on_each_node = save_on_each_node
        self.overwrite_output_dir = overwrite_output_dir
        self.global_rank, self.local_rank = global_rank, local_rank
        self._written: list[int] = []
        self._best_metric: float | None = None
        self._best_metric_step: int | None = None
        self._best_checkpoint_step: int | None = None
        self._latest_step: int | None = None
        self._recovered = False

    @classmethod
    def from_args(cls, args: TrainingArguments, checkpoint_io: CheckpointIO | None = None) -> CheckpointManager:
        """A manager configured by TrainingArguments' checkpoint fields (the IO comes from the factory)."""
        if args.output_dir is None:
            raise ValueError("TrainingArguments.output_dir is None: checkpoints need an output_dir")
        return cls(
            args.output_dir,
            checkpoint_io,
            save_total_limit=args.save_total_limit,
            metric_for_best_model=args.metric_for_best_model,
            greater_is_better=args.greater_is_better,
            save_only_model=args.save_only_model,
            save_on_each_node=args.save_on_each_node,
            overwrite_output_dir=args.overwrite_output_dir,
            global_rank=args.process_index,
            local_rank=args.local_process_index,
        )

    # ------------------------------------------------------------------ queries
    @property
    def should_save(self) -> bool:
        """Whether this process writes checkpoints (each node's first process with ``save_on_each_node``)."""
        return (self.local_rank if self.save_on_each_node else self.global_rank) == 0

    def checkpoint_path(self, step: int) -> Path:
        return self.output_dir / checkpoint_folder_name(step)

    @property
    def written_steps(self) -> list[int]:
        """Steps of the checkpoints this run wrote that rotation has not deleted."""
        return list(self._written)

    @property
    def best_metric(self) -> float | None:
        return self._best_metric

    @property
    def best_checkpoint(self) -> Path | None:
        """The checkpoint saved at the best metric so far (transformers' ``best_model_checkpoint``)."""
        return None if self._best_checkpoint_step is None else self.checkpoint_path(self._best_checkpoint_step)

    @property
    def latest_checkpoint(self) -> Path | None:
        """The checkpoint this run saved (or resumed from) last."""
        return None if self._latest_step is None else self.checkpoint_path(self._latest_step)

    # -------------------------------------------------------------------- best
    def metric_value(self, metrics: Mapping[str, float]) -> float:
        """``metric_for_best_model`` in an evaluation's metrics, with or without the ``eval_`` prefix (transformers)."""
        name = self.metric_for_best_model
        if name is None:
            raise ValueError("metric_for_best_model is not set, so no metric selects the best checkpoint")
        key = name if name.startswith("eval_") else f"eval_{name}"
        if key not in metrics:
            raise KeyError(
                f"metric_for_best_model={name!r} reads {key!r}, which the evaluation did not return; "
                f"it returned {sorted(metrics)}"
            )
        return float(metrics[key])

    def is_better(self, value: float) -> bool:
        """Whether ``value`` of ``metric_for_best_model`` would be a new best."""
        return is_better_metric(float(value), self._best_metric, self.greater_is_better)

    def record_metric(self, step: int, value: float) -> bool:
        """Track an evaluation's metric; True when it is a new best (what ``save_strategy="best"`` saves on)."""
        if not self.is_better(value):
            return False
        self._best_metric, self._best_metric_step = float(value), step
        return True

    def _best_checkpoint_after_saving(self, step: int) -> int | None:
        best = self._best_metric_step
        if best is not None and (best == step or self.io.exists(self.checkpoint_path(best))):
            return best
        return self._best_checkpoint_step

    # -------------------------------------------------------------------- save
    def save(self, step: int, state: dict[str, Any], metric: float | None = None) -> Path:
        """Write ``checkpoint-<step>`` (after tracking ``metric``, when given), then rotate; return its path."""
        if metric is not None:
            self.record_metric(step, metric)
        path = self.checkpoint_path(step)
        best_checkpoint = self._best_checkpoint_after_saving(step)
        written = self._written if step in self._written else [*self._written, step]
        if self.should_save:
            self._recover_once()
            parts = self._parts_to_save(state)
            parts[PART_CHECKPOINT_MANAGER] = self._state_json(written, best_checkpoint)
            if path.exists() and step not in self._written:
                logger.info("replacing %s, which this run did not write", path)
            self.io.save(parts, path)
        elif self.io.collective:  # every rank writes its own parts (shards); the IO coordinates them
            self.io.save(self._parts_to_save(state), path)
        self._written, self._best_checkpoint_step, self._latest_step = written, best_checkpoint, step
        if self.should_save:
            self._rotate(step)
        return path

    def _parts_to_save(self, state: dict[str, Any]) -> dict[str, Any]:
        if PART_CHECKPOINT_MANAGER in state:
            raise ValueError(f"the part name {PART_CHECKPOINT_MANAGER!r} is reserved for the CheckpointManager")
        if not self.save_only_model:
            return dict(state)
        return {part: value for part, value in state.items() if part in MODEL_ONLY_PARTS}

    def _rotate(self, latest_step: int) -> None:
        present = [entry.step for entry in list_checkpoints(self.output_dir) if entry.complete]
        doomed = select_checkpoints_to_delete(
            self._written, present, self.save_total_limit, self._best_checkpoint_step, latest_step
        )
        self._delete(doomed, "save_total_limit")

    def _delete(self, steps: list[int], reason: str) -> None:
        for step in steps:
            logger.info("deleting %s (%s=%s)", self.checkpoint_path(step), reason, self.save_total_limit)
            self.io.remove(self.checkpoint_path(step))
        self._written = [step for step in self._written if step not in steps]

    def finalize(self) -> list[Path]:
        """End of training (transformers): with ``save_total_limit=1``, delete all but the best checkpoint."""
        if not self.should_save:
            return []
        present = [entry.step for entry in list_checkpoints(self.output_dir) if entry.complete]
        doomed = select_checkpoints_to_delete_at_end(
            self._written, present, self.save_total_limit, self._best_checkpoint_step
        )
        self._delete(doomed, "save_total_limit")
        return [self.checkpoint_path(step) for step in doomed]

    def _recover_once(self) -> None:
        if not self._recovered:
            atomic.recover_output_dir(self.output_dir)
            self._recovered = True

    # ------------------------------------------------------------------ resume
    def resolve_resume(self, resume_from_checkpoint: bool | str | os.PathLike[str] | None) -> Path | None:
        """The checkpoint to resume from: True means the newest complete one in ``output_dir``.

        False/None means a fresh run, refused when ``output_dir`` holds checkpoints unless
        ``overwrite_output_dir``. Errors list the checkpoints that exist.
        """
        if resume_from_checkpoint is None or resume_from_checkpoint is False:
            self._check_fresh_start()
            return None
        if self.should_save:
            self._recover_once()
        if resume_from_checkpoint is True:
            last = get_last_checkpoint(self.output_dir)
            if last is None:
                raise CheckpointError(
                    f"resume_from_checkpoint=True, but {self.output_dir} holds no complete checkpoint. "
                    f"{_describe_checkpoints(self.output_dir)}"
                )
            return Path(last)
        if not isinstance(resume_from_checkpoint, (str, os.PathLike)):
            raise TypeError(
                f"resume_from_checkpoint must be a bool or a path, got {type(resume_from_checkpoint).__name__}"
            )
        path = Path(resume_from_checkpoint)
        problem = self._resume_problem(path)
        if problem is not None:
            raise CheckpointError(problem)
        return path

    def _check_fresh_start(self) -> None:
        existing = list_checkpoints(self.output_dir)
        if self.overwrite_output_dir or not existing:
            return
        names = ", ".join(entry.path.name for entry in existing)
        raise CheckpointError(
            f"output_dir {self.output_dir} already holds checkpoints ({names}). To continue that run pass "
            "resume_from_checkpoint=True; to start a new run there set overwrite_output_dir=True (the existing "
            "checkpoints are kept and never rotated); or choose another output_dir"
        )

    def _resume_problem(self, path: Path) -> str | None:
        if not path.exists():
            return f"resume_from_checkpoint={str(path)!r} does not exist. {_describe_places(path, self.output_dir)}"
        if checkpoint_step(path) is None and list_checkpoints(path):
            last = get_last_checkpoint(path)
            hint = f"its newest complete one is {last}" if last else "none of them is complete"
            return (
                f"resume_from_checkpoint={str(path)!r} is a folder of checkpoints, not a checkpoint; {hint}. "
                f"{_describe_checkpoints(path)}"
            )
        problem = find_manifest_problem(path)
        if problem is not None:
            return (
                f"resume_from_checkpoint={str(path)!r} is not a complete checkpoint: {problem}. "
                f"{_describe_places(path, self.output_dir)}"
            )
        return None

    def load(self, path: PathLike, parts: Collection[str] | None = None, map_location: Any = "cpu") -> dict[str, Any]:
        """Read (verified) parts of a checkpoint, without the manager's own part."""
        wanted = None if parts is None else [part for part in parts if part != PART_CHECKPOINT_MANAGER]
        state = self.io.load(path, map_location=map_location, parts=wanted)
        state.pop(PART_CHECKPOINT_MANAGER, None)
        return state

    def resume(
        self, path: PathLike, map_location: Any = "cpu", required: Collection[str] = (PART_MODEL, PART_OPTIMIZER)
    ) -> dict[str, Any]:
        """Load every part of ``path`` to resume from it, and take over its rotation and best-model state."""
        folder = Path(path)
        state = self.io.load(folder, map_location=map_location)
        missing = [part for part in required if part not in state]
        if missing:
            raise CheckpointError(
                f"{folder} cannot be resumed from: it lacks {missing} (it holds {sorted(state)}). A checkpoint saved "
                "with save_only_model=True holds only the model; load its weights instead, or resume from a full one"
            )
        manager_state = state.pop(PART_CHECKPOINT_MANAGER, None)
        if manager_state is not None:
            self.load_state_dict(manager_state, same_output_dir=_same_folder(folder.parent, self.output_dir))
            # steps whose deletion the crashed run finished are no longer this run's to rotate
            self._written = [step for step in self._written if self.checkpoint_path(step).exists()]
        self._latest_step = checkpoint_step(folder)
        return state

    def parts_of(self, path: PathLike) -> list[str]:
        """The parts a checkpoint holds, from its manifest (raises CheckpointError when it is incomplete)."""
        return sorted(read_manifest(Path(path)).parts)

    def load_best(self, parts: Collection[str] = (PART_MODEL,), map_location: Any = "cpu") -> dict[str, Any]:
        """Read the best checkpoint's parts (the model by default: ``load_best_model_at_end``)."""
        if self.best_checkpoint is None:
            raise CheckpointError(
                f"no best checkpoint to load: metric_for_best_model={self.metric_for_best_model!r} has not been "
                "recorded at a step that was saved"
            )
        return self.load(self.best_checkpoint, parts=parts, map_location=map_location)

    # ------------------------------------------------------------------- state
    def _state_json(self, written: list[int], best_checkpoint: int | None) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "written_steps": sorted(written),
            "best_metric": self._best_metric,
            "best_metric_step": self._best_metric_step,
            "best_checkpoint_step": best_checkpoint,
            "metric_for_best_model": self.metric_for_best_model,
            "greater_is_better": self.greater_is_better,
            "save_only_model": self.save_only_model,
        }

    def state_dict(self) -> dict[str, Any]:
        """The manager's state as JSON data (what ``checkpoint_manager.json`` holds)."""
        return self._state_json(self._written, self._best_checkpoint_step)

    def load_state_dict(self, state: dict[str, Any], same_output_dir: bool = True) -> None:
        """Take over a saved state; from another output folder only the best metric carries over."""
        try:
            best_metric = state["best_metric"]
            self._best_metric = None if best_metric is None else float(best_metric)
            self._best_metric_step = _optional_int(state["best_metric_step"])
            if same_output_dir:
                self._written = sorted(int(step) for step in state["written_steps"])
                self._best_checkpoint_step = _optional_int(state["best_checkpoint_step"])
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"malformed checkpoint manager state ({type(err).__name__}: {err})") from err


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _describe_checkpoints(folder: Path) -> str:
    entries = list_checkpoints(folder)
    if not entries:
        return f"No checkpoint-<step> folders in {folder}."
    described = [entry.path.name + ("" if entry.complete else f" (incomplete: {entry.problem})") for entry in entries]
    return f"Checkpoints in {folder}: " + "; ".join(described) + "."


def _describe_places(path: Path, output_dir: Path) -> str:
    places = [output_dir] if _same_folder(path.parent, output_dir) else [path.parent, output_dir]
    return " ".join(_describe_checkpoints(place) for place in places)
