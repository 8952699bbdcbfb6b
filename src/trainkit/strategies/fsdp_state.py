"""FSDP2 state dicts: sharded (each rank's DTensor shards, for checkpoints) and gathered (full, for ``save_model``).

The sharded ones come from ``torch.distributed.checkpoint.state_dict`` (``get_model_state_dict``,
``get_optimizer_state_dict``: parameter names as keys, DTensor values) and go back with the
``set_*`` functions after DCP filled them in place. A parameter registered under two names (an
output layer tied to the embedding) is kept under its first name only, in checkpoints as in
``model.safetensors``, and tied again when it is loaded.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.optim import Optimizer

from trainkit.checkpoint.sharded_io import SavedShards

__all__ = [
    "gather_full_state",
    "load_sharded_model",
    "load_sharded_optimizer",
    "retie",
    "sharded_model_state",
    "sharded_optimizer_state",
    "tied_aliases",
]


def tied_aliases(module: nn.Module) -> dict[str, str]:
    """``{second name: first name}`` of every parameter registered under several names."""
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        owner = first.setdefault(id(param), name)
        if owner != name:
            aliases[name] = owner
    return aliases


def retie(module: nn.Module, state: dict[str, Any]) -> dict[str, Any]:
    """Give every second name of a tied parameter its first name's tensor (where the first is in ``state``)."""
    for alias, owner in tied_aliases(module).items():
        if owner in state:
            state[alias] = state[owner]
    return state


def gather_full_state(module: nn.Module, keep: bool) -> dict[str, Any]:
    """The full state dict on the CPU where ``keep``, ``{}`` elsewhere; every rank calls it (one all-gather per tensor).

    Tensors are gathered one at a time, so no rank holds more than one unsharded tensor on its device.
    """
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    aliases = tied_aliases(module)
    full: dict[str, Any] = {}
    for name, value in get_model_state_dict(module).items():
        if name in aliases:
            continue
        if isinstance(value, DTensor):
            if value.device.type != value.device_mesh.device_type:  # offloaded shards gather on the mesh's device
                value = cast(DTensor, value.to(value.device_mesh.device_type))
            value = value.full_tensor()
        if keep and isinstance(value, torch.Tensor):
            full[name] = value.detach().to("cpu", copy=True)
        elif keep:
            full[name] = value
    return retie(module, full) if keep else {}


def sharded_model_state(module: nn.Module) -> dict[str, Any]:
    """This rank's shards of the model, one entry per parameter (tied names once)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    aliases = tied_aliases(module)
    return {name: value for name, value in get_model_state_dict(module).items() if name not in aliases}


def sharded_optimizer_state(module: nn.Module, optimizer: Optimizer) -> dict[str, Any]:
    """This rank's shards of the optimizer state, keyed by parameter name (a fresh optimizer's state is created)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(module, optimizer)


def load_sharded_model(module: nn.Module, saved: SavedShards, strict: bool = True) -> None:
    """Load a sharded model part into ``module``'s shards (every rank calls it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    state = sharded_model_state(module)
    saved.load_into(state)
    set_model_state_dict(module, retie(module, state), options=StateDictOptions(strict=strict))


def load_sharded_optimizer(module: nn.Module, optimizer: Optimizer, saved: SavedShards) -> None:
    """Load a sharded optimizer part into ``optimizer`` (every rank calls it)."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    state = sharded_optimizer_state(module, optimizer)
    saved.load_into(state)
    set_optimizer_state_dict(module, optimizer, state)
