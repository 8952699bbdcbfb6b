"""``torch.distributed.checkpoint`` (DCP) folders, written and read without unpickling arbitrary objects.

A DCP folder holds one ``__<rank>_0.distcp`` file per rank and a ``.metadata`` index written by
the coordinator. DCP reads ``.metadata`` with ``pickle.load`` and every non-tensor value (an
optimizer's hyperparameters, a step count) with ``torch.load(weights_only=False)``; both would
run whatever a crafted file asks. Here ``.metadata`` goes through an unpickler that builds only
DCP's own metadata classes, and non-tensor values load with ``weights_only=True`` (DCP already
reads tensors that way). Saving checks the non-tensor values first, so a checkpoint that could
not be read back safely fails when it is written, naming the value.

DCP is imported when a function here runs, not when trainkit is imported.
"""

from __future__ import annotations

import io
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from trainkit.checkpoint.errors import CheckpointError
from trainkit.checkpoint.serialization import check_weights_only_safe

__all__ = ["METADATA_NAME", "check_sharded_values", "load_sharded", "read_sharded", "save_sharded"]

METADATA_NAME = ".metadata"

# What DCP pickles into ``.metadata`` (torch 2.4 - 2.13): its metadata dataclasses, the storage
# locations, shapes, dtypes, layouts, and the checkpoint's path.
_METADATA_CLASSES: dict[str, frozenset[str]] = {
    "torch.distributed.checkpoint.metadata": frozenset(
        {
            "BytesStorageMetadata",
            "ChunkStorageMetadata",
            "Metadata",
            "MetadataIndex",
            "StorageMeta",
            "TensorProperties",
            "TensorStorageMetadata",
            "_MEM_FORMAT_ENCODING",
        }
    ),
    "torch.distributed.checkpoint.filesystem": frozenset({"_StorageInfo"}),
    "torch.serialization": frozenset({"_get_layout"}),
    "torch": frozenset({"Size"}),
    "pathlib": frozenset({"Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath"}),
    "collections": frozenset({"OrderedDict"}),
}


class _MetadataUnpickler(pickle.Unpickler):
    """Builds DCP's metadata and nothing else: any other global is refused before it is looked up."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if name in _METADATA_CLASSES.get(module, ()):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of torch.distributed.checkpoint's metadata")


def read_metadata(file: Path) -> Any:
    """Read a DCP ``.metadata`` file with the restricted unpickler; CheckpointError names the file on failure."""
    from torch.distributed.checkpoint.metadata import Metadata

    try:
        with open(file, "rb") as handle:
            metadata = _MetadataUnpickler(handle).load()
    except Exception as err:  # UnpicklingError, EOFError, AttributeError from a damaged file, ...
        raise CheckpointError(f"{file} cannot be read safely: {type(err).__name__}: {err}") from err
    if not isinstance(metadata, Metadata):
        raise CheckpointError(f"{file} does not hold torch.distributed.checkpoint metadata")
    return metadata


def _load_value(value: io.BytesIO, where: str) -> Any:
    try:
        return torch.load(value, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{where} cannot be loaded safely with torch.load(weights_only=True): {err}") from err


def _planners() -> tuple[type, type]:
    """DCP's load planners with every non-tensor value read weights-only (built on first use: DCP is imported)."""
    from torch.distributed.checkpoint._traverse import set_element
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, _EmptyStateDictLoadPlanner

    def load_bytes(self: Any, read_item: Any, value: io.BytesIO) -> None:
        fqn = read_item.dest_index.fqn
        loaded = _load_value(value, f"checkpoint value {fqn!r}")
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[fqn], loaded)
        else:
            self.state_dict[fqn] = loaded

    safe = type("WeightsOnlyLoadPlanner", (DefaultLoadPlanner,), {"load_bytes": load_bytes})
    empty = type("WeightsOnlyEmptyLoadPlanner", (_EmptyStateDictLoadPlanner,), {"load_bytes": load_bytes})
    return safe, empty


def _reader(folder: Path) -> Any:
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeFileSystemReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            metadata = read_metadata(Path(self._get_metadata_path(kwargs.get("rank"))))
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeFileSystemReader(folder)


def check_sharded_values(state: Any, where: str) -> None:
    """Raise CheckpointError naming the first non-tensor value that ``weights_only=True`` could not load back."""
    if isinstance(state, torch.Tensor):
        return  # tensors (DTensors included) are written as tensors
    if isinstance(state, Mapping):
        for key, value in state.items():
            check_sharded_values(value, f"{where}[{key!r}]")
        return
    if isinstance(state, (list, tuple)):
        for index, value in enumerate(state):
            check_sharded_values(value, f"{where}[{index}]")
        return
    try:
        check_weights_only_safe(state, where)
    except TypeError as err:
        raise CheckpointError(str(err)) from err


def _describe(error: BaseException) -> str:
    failures = getattr(error, "failures", None)
    if not failures:
        return f"{type(error).__name__}: {error}"
    return "; ".join(f"rank {rank}: {type(exc).__name__}: {exc}" for rank, (exc, _) in sorted(failures.items()))


def _no_dist() -> bool:
    """One process without a process group: DCP then reads and writes everything itself."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized())


_NO_DIST_WARNING = "torch.distributed is disabled, unavailable or uninitialized"


def save_sharded(state: dict[str, Any], folder: Path, process_group: Any = None) -> None:
    """Write ``state`` as the DCP folder ``folder``: each rank of ``process_group`` its shards (a collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    check_sharded_values(state, f"sharded checkpoint {folder.name}")
    writer = dcp.FileSystemWriter(folder, single_file_per_rank=True, sync_files=True, thread_count=1, overwrite=False)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_NO_DIST_WARNING)
            dcp.save(state, storage_writer=writer, process_group=process_group, no_dist=_no_dist())
    except CheckpointException as err:  # a BaseException in DCP; raised on every rank alike
        raise CheckpointError(f"writing the sharded checkpoint {folder} failed: {_describe(err)}") from None


def load_sharded(state: dict[str, Any], folder: Path, process_group: Any = None) -> None:
    """Fill ``state`` (this rank's tensors, sharded or not) in place from the DCP folder ``folder`` (a collective).

    DCP reads whatever overlaps each tensor, so the checkpoint may come from another number of ranks.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    planner, _ = _planners()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_NO_DIST_WARNING)
            reader = _reader(folder)
            dcp.load(state, storage_reader=reader, planner=planner(), process_group=process_group, no_dist=_no_dist())
    except CheckpointException as err:
        raise CheckpointError(f"{folder} cannot be loaded into this model: {_describe(err)}") from None


def read_sharded(folder: Path) -> dict[str, Any]:
    """Everything in the DCP folder ``folder``, as full tensors on the CPU of this one process."""
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    _, empty_planner = _planners()
    state: dict[str, Any] = {}
    try:  # DCP's public load keeps the keys of the dict it is given; format_utils reads this way too
        _load_state_dict(state, storage_reader=_reader(folder), planner=empty_planner(), no_dist=True)
    except CheckpointException as err:
        raise CheckpointError(f"{folder} cannot be read: {_describe(err)}") from None
    return state
