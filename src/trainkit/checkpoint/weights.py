"""Model weights as safetensors, with shared (tied) tensors written once and restored as aliases.

``torch`` state dicts name a tied weight twice (``embed.weight`` and ``lm_head.weight`` share
storage), which ``safetensors`` refuses to write (transformers#33807). Here the first name of
each shared tensor is written, the others are recorded in the file's metadata as aliases, and
loading re-creates them, so ``model.load_state_dict(..., strict=True)`` works and ties stay tied.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainkit.checkpoint.atomic import fsync_dir, fsync_file
from trainkit.checkpoint.errors import CheckpointError
from trainkit.checkpoint.layout import MODEL_SAFETENSORS_NAME, MODEL_TORCH_NAME
from trainkit.checkpoint.serialization import MapLocation, materialize, resolve_map_location, save_torch

__all__ = [
    "ALIASES_METADATA_KEY",
    "describe_state_mismatch",
    "load_model_state",
    "load_state_dict_file",
    "save_state_dict_file",
    "save_weights_file",
    "split_shared_tensors",
]

ALIASES_METADATA_KEY = "trainkit_aliases"
_SHOWN_KEYS = 20


def split_shared_tensors(state_dict: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors to write (each shared tensor once, all contiguous) and the aliases (name -> written name)."""
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    first_name: dict[tuple[Any, ...], str] = {}
    storages: set[tuple[str, int]] = set()
    for name, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"model state entry {name!r} is a {type(value).__name__}, not a tensor; safetensors stores tensors "
                "only (save with save_safetensors=False to keep such entries)"
            )
        tensor = value.detach()
        if tensor.numel() > 0:
            storage = (str(tensor.device), tensor.untyped_storage().data_ptr())
            view = (*storage, tensor.storage_offset(), tuple(tensor.shape), tensor.stride(), tensor.dtype)
            if view in first_name:
                aliases[name] = first_name[view]
                continue
            first_name[view] = name
            if storage in storages:  # another view of the same memory (e.g. a slice of a fused weight)
                tensor = tensor.clone()
            storages.add(storage)
        unique[name] = tensor.contiguous()
    return unique, aliases


def save_state_dict_file(state_dict: Mapping[str, Any], file: Path, metadata: Mapping[str, str] | None = None) -> None:
    """Write a state dict as a safetensors file (``format: pt`` as transformers expects; aliases in metadata)."""
    from safetensors.torch import save_file

    tensors, aliases = split_shared_tensors(state_dict)
    meta = {"format": "pt", **(metadata or {})}
    if aliases:
        meta[ALIASES_METADATA_KEY] = json.dumps(aliases, sort_keys=True)
    save_file(tensors, str(file), metadata=meta)


def _read_aliases(file: Path, metadata: Mapping[str, str] | None) -> dict[str, str]:
    raw = (metadata or {}).get(ALIASES_METADATA_KEY)
    if raw is None:
        return {}
    try:
        aliases = json.loads(raw)
    except ValueError as err:
        raise CheckpointError(f"{file}: metadata {ALIASES_METADATA_KEY!r} is not valid JSON ({err})") from err
    if not isinstance(aliases, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()):
        raise CheckpointError(f"{file}: metadata {ALIASES_METADATA_KEY!r} must map names to names")
    return aliases


def load_state_dict_file(file: Path, map_location: MapLocation = None) -> dict[str, torch.Tensor]:
    """Read a safetensors state dict, re-creating alias names as the same tensor object."""
    from safetensors import safe_open

    device = resolve_map_location(map_location)
    try:
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            metadata = handle.metadata()
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (not a dict)
    except Exception as err:  # safetensors_rust.SafetensorError, OSError
        raise CheckpointError(f"{file} is not a readable safetensors file: {type(err).__name__}: {err}") from err
    state: dict[str, torch.Tensor] = materialize(tensors, device)
    for alias, target in _read_aliases(file, metadata).items():
        if target not in state or alias in state:
            raise CheckpointError(f"{file}: alias {alias!r} -> {target!r} does not match the stored tensors")
        state[alias] = state[target]
    return state


def save_weights_file(state_dict: Mapping[str, Any], folder: Path, safe_serialization: bool = True) -> Path:
    """Write ``model.safetensors`` (or ``pytorch_model.bin``) into ``folder`` atomically; return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / (MODEL_SAFETENSORS_NAME if safe_serialization else MODEL_TORCH_NAME)
    partial = final.with_name(f".{final.name}.partial")
    if safe_serialization:
        save_state_dict_file(state_dict, partial)
    else:
        save_torch(dict(state_dict), partial, "model")
    fsync_file(partial)
    os.replace(partial, final)
    fsync_dir(folder)
    return final


def _shorten(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN_KEYS])
    return shown + (f", ... and {len(keys) - _SHOWN_KEYS} more" if len(keys) > _SHOWN_KEYS else "")


def describe_state_mismatch(model: nn.Module, state_dict: Mapping[str, Any], strict: bool = True) -> str | None:
    """What keeps ``state_dict`` from loading into ``model`` (missing, unexpected, shapes), or None."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    shapes = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state_dict
        and isinstance(value, torch.Tensor)
        and isinstance(state_dict[key], torch.Tensor)
        and state_dict[key].shape != value.shape
    ]
    problems = []
    if strict and missing:
        problems.append(f"missing keys (in the model, not in the checkpoint): {_shorten(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected keys (in the checkpoint, not in the model): {_shorten(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches: {_shorten(shapes)}")
    return "; ".join(problems) or None


def load_model_state(model: nn.Module, state_dict: Mapping[str, Any], strict: bool = True, source: str = "") -> None:
    """``model.load_state_dict`` that first explains, in one CheckpointError, everything that does not fit."""
    problem = describe_state_mismatch(model, state_dict, strict)
    if problem is not None:
        origin = f" {source}" if source else ""
        raise CheckpointError(f"the checkpoint{origin} does not fit {type(model).__name__}: {problem}")
    model.load_state_dict(state_dict, strict=strict)
