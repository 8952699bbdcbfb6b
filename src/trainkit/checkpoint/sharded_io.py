"""``ShardedCheckpointIO``: FSDP checkpoints in which every rank writes its own shards (torch.distributed.checkpoint).

Layout (transformers' and accelerate's for FSDP's sharded state dict, so ``accelerate merge-weights``
reads it too):

- ``pytorch_model_fsdp_0/``: the model's shards, a DCP folder (``.metadata`` and one
  ``__<rank>_0.distcp`` per rank), keys ``model.<parameter name>``;
- ``optimizer_0/``: the optimizer's shards, keys ``optimizer.state.<parameter name>.<field>``
  and ``optimizer.param_groups``;
- every other part as the file IOs write it: ``scheduler.pt``, ``trainer_state.json``, ...
  (the group's coordinator), and ``rng_state_<rank>.pth`` (each rank its own).

A part is sharded when its value is a ``ShardedStateDict`` (what ``FSDPStrategy.checkpoint_parts``
returns); any other value, e.g. the gathered weights of a ``save_only_model`` checkpoint, is a file.
The save is collective and atomic (``FileCheckpointIO``): each rank writes and hashes its shards
in the coordinator's staging folder, and the coordinator writes the manifest and renames the folder
into place, so a checkpoint whose save was interrupted is never complete. Loading verifies every
file against the manifest (the ranks share the hashing) and returns each sharded part as
``SavedShards``, which the strategy loads into its live sharded state (``load_into``), resharding
as DCP does when the number of ranks changed. Nothing is unpickled beyond DCP's metadata
classes and weights-only values (``safe_dcp.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainkit.checkpoint.atomic import fsync_dir
from trainkit.checkpoint.collective import on_every_rank
from trainkit.checkpoint.errors import CheckpointError
from trainkit.checkpoint.file_io import FileCheckpointIO
from trainkit.checkpoint.layout import MODEL_SAFETENSORS_NAME, MODEL_TORCH_NAME, PART_MODEL, PART_OPTIMIZER
from trainkit.checkpoint.manifest import DEFAULT_HASH, Manifest
from trainkit.checkpoint.safe_dcp import METADATA_NAME, check_sharded_values, load_sharded, save_sharded
from trainkit.checkpoint.serialization import save_torch
from trainkit.checkpoint.staging import StagingFolder
from trainkit.checkpoint.weights import save_state_dict_file

__all__ = [
    "SHARDED_FOLDERS",
    "TIED_KEY",
    "SavedShards",
    "ShardedCheckpointIO",
    "ShardedStateDict",
    "sharded_folder_name",
]

# Beside a part's shards in its DCP folder: the names of tied parameters left out ({name: name kept}).
TIED_KEY = "tied_parameters"
# accelerate's names (FSDP_MODEL_NAME + "_0", OPTIMIZER_NAME + "_0"); other sharded parts: "<part>_sharded".
SHARDED_FOLDERS: dict[str, str] = {PART_MODEL: "pytorch_model_fsdp_0", PART_OPTIMIZER: "optimizer_0"}


def sharded_folder_name(part: str) -> str:
    """The folder of a sharded part inside a checkpoint."""
    return SHARDED_FOLDERS.get(part, f"{part}_sharded")


@dataclass
class ShardedStateDict:
    """A state dict holding this rank's shards (DTensors), written by every rank with DCP.

    ``tied`` names parameters left out because they are another parameter (``{name: name kept}``);
    it is saved beside the shards (``tied_parameters``) so that a consolidation can restore them.
    """

    state_dict: dict[str, Any]
    tied: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SavedShards:
    """A sharded part of a verified checkpoint; ``load_into`` fills a state dict of the same keys (a collective)."""

    folder: Path
    key: str
    process_group: Any = field(default=None, compare=False, repr=False)

    def load_into(self, state_dict: dict[str, Any]) -> None:
        """Fill ``state_dict`` (this rank's tensors, e.g. DTensor shards) in place; every rank calls it."""
        wrapped = {self.key: state_dict}
        load_sharded(wrapped, self.folder, self.process_group)
        if wrapped[self.key] is not state_dict:  # DCP may hand back new containers for non-tensor values
            state_dict.update(wrapped[self.key])


class ShardedCheckpointIO(FileCheckpointIO):
    """Sharded parts through torch.distributed.checkpoint, every other part as one file (the model as safetensors)."""

    def __init__(self, safe_serialization: bool = True, hash_algorithm: str = DEFAULT_HASH) -> None:
        super().__init__(hash_algorithm)
        self.safe_serialization = safe_serialization
        self.model_file_name = MODEL_SAFETENSORS_NAME if safe_serialization else MODEL_TORCH_NAME

    # --------------------------------------------------------------------- save
    def _save(self, state: dict[str, Any], staging: StagingFolder) -> dict[str, list[str]]:
        sharded = sorted(part for part, value in state.items() if isinstance(value, ShardedStateDict))
        written = {part: self._save_shards(part, state[part], staging) for part in sharded}
        written.update(super()._save({part: v for part, v in state.items() if part not in sharded}, staging))
        return written

    def _save_shards(self, part: str, value: ShardedStateDict, staging: StagingFolder) -> list[str]:
        """Every rank writes its shards of ``part`` (DCP, a collective); return the files this rank wrote."""
        name = sharded_folder_name(part)
        folder = staging.file(name)
        content: dict[str, Any] = {part: value.state_dict}
        if value.tied:
            content[TIED_KEY] = dict(value.tied)
        # DCP is a collective: a rank that failed before it would leave the others waiting in it
        self._on_every_rank(f"checking the sharded part {part!r}", lambda: check_sharded_values(content, part))
        save_sharded(content, folder, self._process_group())  # DCP reports a failure inside it to every rank
        fsync_dir(folder)
        rank = self.group.rank if self.group is not None else 0
        mine = sorted(file.name for file in folder.iterdir() if file.name.startswith(f"__{rank}_"))
        if self.writes_shared_parts:
            mine.append(METADATA_NAME)  # DCP's coordinator (rank 0 of the group) wrote the index
        names = [f"{name}/{file}" for file in mine]
        for file in names:
            staging.written(file)
        return names

    def _on_every_rank(self, what: str, work: Callable[[], None]) -> None:
        if self.group is None or self.group.size == 1:
            work()
        else:
            on_every_rank(self.group, what, work, lambda: None)

    def _process_group(self) -> Any:
        """The group DCP coordinates over: this IO's checkpoint group (refused when a multi-process job gave none)."""
        if self.group is not None:
            return self.group.process_group
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            raise CheckpointError(
                "ShardedCheckpointIO is not connected to the processes that write its checkpoints: use it through a "
                "multi-process strategy (FSDPStrategy.setup_environment connects it) or call io.set_group(...)"
            )
        return None

    def _save_model(self, state_dict: dict[str, Any], staging: StagingFolder, name: str) -> None:
        """Gathered (unsharded) weights, e.g. of a ``save_only_model`` checkpoint."""
        if self.safe_serialization:
            save_state_dict_file(state_dict, staging.file(name))
            staging.written(name)
        else:
            with staging.open(name) as handle:
                save_torch(state_dict, handle, PART_MODEL)

    # --------------------------------------------------------------------- load
    def _verify_files(self, folder: Path, names: list[str], manifest: Manifest) -> None:
        """Each rank of the group hashes its share of the files; every rank raises if any file is damaged."""
        group = self.group
        if group is None or group.size == 1:
            super()._verify_files(folder, names, manifest)
            return
        share = sorted(names)[group.rank :: group.size]
        verify = super()._verify_files  # every file it is given
        self._on_every_rank(f"verifying {folder}", lambda: verify(folder, share, manifest))

    def _load(self, folder: Path, parts: dict[str, list[str]], map_location: Any) -> dict[str, Any]:
        sharded = {part: files for part, files in parts.items() if _index_file(files) is not None}
        state = super()._load(folder, {part: f for part, f in parts.items() if part not in sharded}, map_location)
        for part, files in sharded.items():
            index = _index_file(files)
            assert index is not None
            state[part] = SavedShards(folder / Path(index).parent, part, self._process_group())
        return state


def _index_file(files: list[str]) -> str | None:
    """The ``.metadata`` among a part's files: the part is a DCP folder."""
    return next((name for name in files if Path(name).name == METADATA_NAME and "/" in name), None)
