"""Names on disk: checkpoint folders, the parts of a checkpoint and their files (HF's layout).

A checkpoint is ``<output_dir>/checkpoint-<step>/``. While it is written it lives in a hidden
sibling (``.checkpoint-<step>.staging``); hidden siblings never match ``checkpoint-<N>``, so
neither trainkit nor transformers' own discovery mistakes them for checkpoints.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = [
    "JSON_PARTS",
    "MANIFEST_NAME",
    "MODEL_SAFETENSORS_NAME",
    "MODEL_TORCH_NAME",
    "PART_CHECKPOINT_MANAGER",
    "PART_DEEPSPEED",
    "PART_FILE_NAMES",
    "PART_MODEL",
    "PART_OPTIMIZER",
    "PART_RNG",
    "PART_SCALER",
    "PART_SCHEDULER",
    "PART_TRAINER_STATE",
    "PART_TRAINING_ARGS",
    "PREFIX_CHECKPOINT_DIR",
    "checkpoint_folder_name",
    "checkpoint_step",
    "deleting_path",
    "extra_part_file_name",
    "replaced_path",
    "rng_file_name",
    "staging_path",
    "validate_part_name",
]

PREFIX_CHECKPOINT_DIR = "checkpoint"
MANIFEST_NAME = "manifest.json"

PART_MODEL = "model"
PART_OPTIMIZER = "optimizer"
PART_SCHEDULER = "scheduler"
PART_SCALER = "scaler"
PART_RNG = "rng"
PART_TRAINER_STATE = "trainer_state"
PART_TRAINING_ARGS = "training_args"
PART_CHECKPOINT_MANAGER = "checkpoint_manager"
# A DeepSpeed engine's own checkpoint (model, optimizer shards, loss scaler): ``global_step<N>/``, ``latest``.
PART_DEEPSPEED = "deepspeed"

MODEL_SAFETENSORS_NAME = "model.safetensors"
MODEL_TORCH_NAME = "pytorch_model.bin"

# Files of the parts whose name does not depend on the IO or the rank.
PART_FILE_NAMES: dict[str, str] = {
    PART_OPTIMIZER: "optimizer.pt",
    PART_SCHEDULER: "scheduler.pt",
    PART_SCALER: "scaler.pt",
    PART_TRAINER_STATE: "trainer_state.json",
    PART_TRAINING_ARGS: "training_args.json",
    PART_CHECKPOINT_MANAGER: "checkpoint_manager.json",
}
JSON_PARTS = frozenset({PART_TRAINER_STATE, PART_TRAINING_ARGS, PART_CHECKPOINT_MANAGER})

_CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
_PART_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def checkpoint_folder_name(step: int) -> str:
    """``checkpoint-<step>``."""
    if step < 0:
        raise ValueError(f"checkpoint step must be >= 0, got {step}")
    return f"{PREFIX_CHECKPOINT_DIR}-{step}"


def checkpoint_step(path: str | Path) -> int | None:
    """The step of a ``checkpoint-<step>`` folder name, or None for any other name."""
    match = _CHECKPOINT_RE.match(Path(path).name)
    return int(match.group(1)) if match else None


def rng_file_name(rank: int, world_size: int) -> str:
    """``rng_state.pth`` on one process, ``rng_state_<rank>.pth`` when several processes train."""
    return "rng_state.pth" if world_size <= 1 else f"rng_state_{rank}.pth"


def validate_part_name(name: object) -> str:
    """Return ``name`` when it can name a part (and a file), else raise ValueError saying why."""
    if not isinstance(name, str) or not _PART_NAME_RE.match(name):
        raise ValueError(
            f"checkpoint part names must be strings of letters, digits, '_' or '-' (not starting with '_' or '-'), "
            f"got {name!r}"
        )
    return name


def extra_part_file_name(name: str) -> str:
    """File of a part trainkit does not know (``<name>.pt``, a weights-only torch file).

    Known parts own every ``.pt`` name trainkit writes, so an extra part cannot overwrite one.
    """
    return f"{validate_part_name(name)}.pt"


def staging_path(path: Path) -> Path:
    """The hidden sibling a checkpoint is written into before it is renamed into place."""
    return path.with_name(f".{path.name}.staging")


def replaced_path(path: Path) -> Path:
    """Where an existing checkpoint of the same step waits while its replacement is renamed in."""
    return path.with_name(f".{path.name}.replaced")


def deleting_path(path: Path) -> Path:
    """Where a checkpoint goes (atomically) before it is deleted, so it never looks half deleted."""
    return path.with_name(f".{path.name}.deleting")
