"""Safe file formats for checkpoint parts: JSON, and torch files that load with ``weights_only=True``.

Saving checks the value first, so a part that ``torch.load(weights_only=True)`` would refuse
(a numpy array, a custom class, a lambda) fails at save time with the path to the offending
value, not later on resume. Loading maps every failure to a CheckpointError naming the file.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import IO, Any, Protocol, cast

import torch

from trainkit.checkpoint.errors import CheckpointError

__all__ = [
    "BinaryWriter",
    "MapLocation",
    "check_json_safe",
    "check_weights_only_safe",
    "load_json",
    "load_torch",
    "materialize",
    "resolve_map_location",
    "save_json",
    "save_torch",
]

MapLocation = str | torch.device | None

_SCALARS = (type(None), bool, int, float, complex, str, bytes, bytearray, torch.dtype, torch.device)
_SEQUENCES = (list, tuple, set, torch.Size)
_TENSORS = (torch.Tensor, torch.nn.Parameter)


def _unsafe(where: str, value: Any, why: str) -> TypeError:
    return TypeError(f"{where} is {type(value).__module__}.{type(value).__qualname__}: {why}")


def check_weights_only_safe(value: Any, where: str) -> None:
    """Raise TypeError naming the first value (by its path) that ``weights_only=True`` cannot load."""
    kind = type(value)
    if kind in _SCALARS:
        return
    if kind in _TENSORS:
        return
    if isinstance(value, torch.Tensor):
        raise _unsafe(where, value, "tensor subclasses need their own CheckpointIO (e.g. sharded checkpoints)")
    if kind in (dict, OrderedDict):
        for key, item in value.items():
            check_weights_only_safe(key, f"{where} key {key!r}")
            check_weights_only_safe(item, f"{where}[{key!r}]")
        return
    if kind in _SEQUENCES:
        for index, item in enumerate(value):
            check_weights_only_safe(item, f"{where}[{index}]")
        return
    raise _unsafe(
        where,
        value,
        "checkpoints hold only tensors, Python scalars, strings and plain containers so that they load with "
        "torch.load(weights_only=True); convert it (e.g. float(x), torch.from_numpy(a), a dict of its fields)",
    )


def check_json_safe(value: Any, where: str) -> None:
    """Raise TypeError naming the first value that would not come back unchanged from JSON."""
    kind = type(value)
    if kind in (type(None), bool, int, str):
        return
    if kind is float:
        return
    if kind is list:
        for index, item in enumerate(value):
            check_json_safe(item, f"{where}[{index}]")
        return
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise _unsafe(f"{where} key {key!r}", key, "JSON object keys must be strings")
            check_json_safe(item, f"{where}[{key!r}]")
        return
    raise _unsafe(where, value, "JSON parts hold only dicts with string keys, lists, str, int, float, bool and None")


def save_json(value: Any, file: Path, part: str) -> None:
    """Write a JSON part (after checking it comes back unchanged)."""
    try:
        check_json_safe(value, f"checkpoint part {part!r}")
    except TypeError as err:
        raise CheckpointError(str(err)) from err
    file.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def load_json(file: Path) -> Any:
    """Read a JSON part; a file that does not parse raises CheckpointError naming it."""
    try:
        return json.loads(file.read_bytes())
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{file} is corrupted: not valid JSON ({err})") from err


class BinaryWriter(Protocol):
    """What ``torch.save`` needs of a file object."""

    def write(self, data: Any) -> int: ...
    def flush(self) -> None: ...


def save_torch(value: Any, file: Path | BinaryWriter, part: str) -> None:
    """Write a torch part that loads with ``weights_only=True`` (checked before writing)."""
    try:
        check_weights_only_safe(value, f"checkpoint part {part!r}")
    except TypeError as err:
        raise CheckpointError(str(err)) from err
    torch.save(value, file if isinstance(file, Path) else cast(IO[bytes], file))


def resolve_map_location(map_location: MapLocation) -> torch.device:
    """The device loaded tensors go to (None means the CPU)."""
    if map_location is None:
        return torch.device("cpu")
    if isinstance(map_location, (str, torch.device)):
        return torch.device(map_location)
    raise TypeError(f"map_location must be a device or a device name, got {type(map_location).__name__}")


def materialize(value: Any, device: torch.device, memo: dict[tuple[Any, ...], torch.Tensor] | None = None) -> Any:
    """Copy every (memory-mapped) tensor into memory of its own on ``device``; exact aliases stay aliases."""
    memo = {} if memo is None else memo
    if isinstance(value, torch.Tensor):
        key = (value.untyped_storage().data_ptr(), value.storage_offset(), value.shape, value.stride(), value.dtype)
        if value.numel() == 0 or key not in memo:
            copy = value.clone() if device.type == "cpu" else value.to(device)
            if value.numel() == 0:
                return copy
            memo[key] = copy
        return memo[key]
    if type(value) in (dict, OrderedDict):
        return type(value)((k, materialize(v, device, memo)) for k, v in value.items())
    if type(value) in (list, tuple, set):
        return type(value)(materialize(v, device, memo) for v in value)
    return value


def load_torch(file: Path, map_location: MapLocation = None) -> Any:
    """Load a torch part with ``weights_only=True``; crafted or damaged files raise CheckpointError."""
    device = resolve_map_location(map_location)
    try:
        # mmap avoids torch.load's slow buffered reads; materialize() then copies the tensors once,
        # so nothing stays mapped to a file that rotation may delete later.
        value = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # pickle.UnpicklingError, RuntimeError from the zip reader, EOFError, ...
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{file} cannot be loaded safely with torch.load(weights_only=True): {type(err).__name__}: {reason}"
        ) from err
    return materialize(value, device)
