"""``DeepSpeedCheckpointIO``: a DeepSpeed engine's own checkpoint inside trainkit's atomic, manifest-checked folder.

Every rank takes part in a save (``collective``), following CheckpointIO's staging protocol:

1. global rank 0 creates ``.checkpoint-<N>.staging``; barrier;
2. rank 0 writes the shared parts (``trainer_state.json``, ``scheduler.pt``, ...), every rank its
   ``rng_state_<rank>.pth``; then every rank calls the engine's ``save_checkpoint`` into the staging
   folder, which writes each rank's ZeRO shards under ``global_step<N>/``, ``latest`` and DeepSpeed's
   ``zero_to_fp32.py``; each rank fsyncs and hashes the files it wrote;
3. rank 0 gathers every rank's file list, writes ``manifest.json`` and renames the folder into place.

A failure on any rank is reported on every rank and leaves no checkpoint behind. The folder has
transformers' DeepSpeed layout (``python checkpoint-N/zero_to_fp32.py checkpoint-N out`` works).
Loading verifies the manifest and every file's hash like any CheckpointIO; the engine part comes
back as a ``SavedEngine`` (folder and tag) that the strategy loads into its live engine, with every
``torch.load`` DeepSpeed makes forced to ``weights_only`` (``strategies/deepspeed_weights.py``).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from trainkit.checkpoint.errors import CheckpointError
from trainkit.checkpoint.file_io import FileCheckpointIO
from trainkit.checkpoint.io import PathLike
from trainkit.checkpoint.layout import (
    MODEL_SAFETENSORS_NAME,
    MODEL_TORCH_NAME,
    PART_DEEPSPEED,
    PART_MODEL,
    PART_RNG,
    staging_path,
)
from trainkit.checkpoint.manifest import DEFAULT_HASH
from trainkit.checkpoint.serialization import save_torch
from trainkit.checkpoint.staging import StagingFolder
from trainkit.checkpoint.weights import save_state_dict_file

__all__ = ["DeepSpeedCheckpointIO", "SavedEngine"]

# Files DeepSpeed writes beside its tag folder, from global rank 0.
_ENGINE_ROOT_FILES = ("latest", "zero_to_fp32.py", "zero_to_torch.py")
_SHARD_RANK = re.compile(r"zero_pp_rank_(\d+)_")
_PER_RANK_PARTS = frozenset({PART_RNG})
T = TypeVar("T")


@dataclass(frozen=True)
class SavedEngine:
    """A DeepSpeed engine checkpoint read from a trainkit checkpoint: ``engine.load_checkpoint(folder, tag)``."""

    folder: Path
    tag: str


class DeepSpeedCheckpointIO(FileCheckpointIO):
    """trainkit's parts as files (as the safetensors and torch IOs write them) and the engine's own checkpoint."""

    collective = True

    def __init__(self, safe_serialization: bool = True, hash_algorithm: str = DEFAULT_HASH) -> None:
        super().__init__(hash_algorithm)
        self.safe_serialization = safe_serialization
        self.model_file_name = MODEL_SAFETENSORS_NAME if safe_serialization else MODEL_TORCH_NAME

    # --------------------------------------------------------------------- save
    def save(self, state: dict[str, Any], path: PathLike) -> None:
        """Write ``checkpoint-<N>`` with every rank (call it on every rank, with this rank's parts)."""
        target = Path(path)
        staging = staging_path(target)
        self._on_every_rank("prepare", lambda: self.prepare_staging(target) if self.rank == 0 else None, staging)
        staged = self._on_every_rank("write", lambda: self.write_parts(state, staging), staging)
        self._on_every_rank("commit", lambda: self.commit(staging, target, staged) if self.rank == 0 else None, staging)

    def _on_every_rank(self, step: str, work: Callable[[], T], staging: Path) -> list[T]:
        """Run ``work`` on every rank; every rank gets the results, or every rank raises when one failed."""
        error: BaseException | None = None
        result: Any = None
        try:
            result = work()
        except Exception as err:
            error = err
        message = None if error is None else f"rank {self.rank}: {type(error).__name__}: {error}"
        outcomes = _all_gather((result, message)) if self.world_size > 1 else [(result, message)]
        failures = [failed for _, failed in outcomes if failed is not None]
        if failures:
            if self.rank == 0:
                shutil.rmtree(staging, ignore_errors=True)  # the previous checkpoints are untouched
            if error is not None:
                raise error
            raise CheckpointError(f"saving the checkpoint failed at the {step} step on another rank: {failures}")
        return [value for value, _ in outcomes]

    def _save(self, state: dict[str, Any], staging: StagingFolder) -> dict[str, list[str]]:
        """Rank 0 writes the shared parts, every rank its own; then the engine writes its shards."""
        own = {
            part: value
            for part, value in state.items()
            if part != PART_DEEPSPEED and (self.rank == 0 or part in _PER_RANK_PARTS)
        }
        written = super()._save(own, staging)
        engine = state.get(PART_DEEPSPEED)
        if engine is not None:
            written[PART_DEEPSPEED] = self._save_engine(engine, staging.path)
        return written

    def _save_engine(self, engine: Any, folder: Path) -> list[str]:
        """``engine.save_checkpoint`` (a collective) into ``folder``; the names of the files this rank wrote."""
        tag = f"global_step{engine.global_steps}"
        engine.save_checkpoint(str(folder), tag=tag, save_latest=True)
        names = [str(file.relative_to(folder)) for file in sorted((folder / tag).rglob("*")) if file.is_file()]
        names += [name for name in _ENGINE_ROOT_FILES if (folder / name).is_file()]
        return [name for name in names if _writer_rank(name, self.world_size) == self.rank]

    def _save_model(self, state_dict: dict[str, Any], staging: StagingFolder, name: str) -> None:
        if self.safe_serialization:
            save_state_dict_file(state_dict, staging.file(name))
            staging.written(name)
        else:
            with staging.open(name) as handle:
                save_torch(state_dict, handle, PART_MODEL)

    # --------------------------------------------------------------------- load
    def _load(self, folder: Path, parts: dict[str, list[str]], map_location: Any) -> dict[str, Any]:
        files = {part: names for part, names in parts.items() if part != PART_DEEPSPEED}
        state = super()._load(folder, files, map_location)
        if PART_DEEPSPEED in parts:
            state[PART_DEEPSPEED] = SavedEngine(folder, _engine_tag(folder, parts[PART_DEEPSPEED]))
        return state


def _writer_rank(name: str, world_size: int) -> int:
    """The rank that wrote a DeepSpeed file (ZeRO shards name their data-parallel rank; the rest is rank 0's).

    Only which rank fsyncs and hashes a file depends on it; every file is listed whatever the answer.
    """
    match = _SHARD_RANK.search(Path(name).name)
    rank = int(match.group(1)) if match else 0
    return rank if rank < world_size else 0


def _engine_tag(folder: Path, names: list[str]) -> str:
    if "latest" not in names:
        raise CheckpointError(f"{folder}: the DeepSpeed part has no 'latest' file naming its tag (files: {names})")
    tag = (folder / "latest").read_text(encoding="utf-8").strip()
    if not any(name.startswith(f"{tag}/") for name in names):
        raise CheckpointError(f"{folder}: 'latest' names the tag {tag!r}, but the manifest lists no file under it")
    return tag


def _all_gather(value: Any) -> list[Any]:
    import torch.distributed as dist

    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered
