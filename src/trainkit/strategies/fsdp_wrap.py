"""Which submodules get their own ``fully_shard`` (transformers' ``auto_wrap``), as pure functions of the model.

Each selected submodule becomes one FSDP unit: its parameters are all-gathered just before it
runs and freed after, so peak memory holds one unit at a time instead of the whole model.
Two policies, as in transformers: by layer class name (``transformer_layer_cls_to_wrap``, by
default the model's ``_no_split_modules``) or by size (``min_num_params``, torch's
``size_based_auto_wrap_policy``). Containers without a forward (``ModuleList``/``ModuleDict``)
are never units.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["modules_by_class", "modules_by_size", "wrap_targets"]

_CONTAINERS = (nn.ModuleList, nn.ModuleDict)


def modules_by_class(root: nn.Module, class_names: Sequence[str]) -> list[nn.Module]:
    """Submodules (not ``root``) whose class name is in ``class_names``, in forward (pre-)order.

    A name that matches no submodule is an error listing the classes the model has.
    """
    wanted = set(class_names)
    found = [m for m in root.modules() if m is not root and type(m).__name__ in wanted]
    missing = wanted - {type(m).__name__ for m in found}
    if missing:
        present = sorted({type(m).__name__ for m in root.modules()})
        raise ValueError(
            f"fsdp_config['transformer_layer_cls_to_wrap']: no submodule of class {sorted(missing)} in "
            f"{type(root).__name__} (its classes: {', '.join(present)})"
        )
    return found


def modules_by_size(root: nn.Module, min_num_params: int) -> list[nn.Module]:
    """Submodules holding at least ``min_num_params`` parameters not already in a smaller selected unit.

    Children are decided before their parent (post-order), so the parameters of a selected child
    no longer count for its parent; the root is sharded by the caller anyway and is not returned.
    """
    if min_num_params <= 0:
        raise ValueError(f"fsdp_config['min_num_params'] must be positive, got {min_num_params}")
    chosen: list[nn.Module] = []

    def remaining(module: nn.Module) -> int:
        count = sum(p.numel() for p in module.parameters(recurse=False))
        count += sum(remaining(child) for child in module.children())
        if module is not root and not isinstance(module, _CONTAINERS) and count >= min_num_params:
            chosen.append(module)
            return 0
        return count

    remaining(root)
    return chosen


def wrap_targets(
    root: nn.Module, class_names: Sequence[str] | None, min_num_params: int, auto_wrap: bool
) -> list[nn.Module]:
    """The submodules to shard separately, innermost first (the order ``fully_shard`` must be applied in).

    ``auto_wrap`` without a class list or size uses the model's ``_no_split_modules`` (transformers
    models list their layer classes there); without ``auto_wrap``, a class list or size still applies.
    """
    if class_names:
        targets = modules_by_class(root, class_names)
    elif min_num_params > 0:
        targets = modules_by_size(root, min_num_params)
    elif auto_wrap:
        layers = list(getattr(root, "_no_split_modules", None) or [])
        if not layers:
            raise ValueError(
                f"fsdp='auto_wrap': {type(root).__name__} has no _no_split_modules to wrap; set "
                "fsdp_config['transformer_layer_cls_to_wrap'] (layer class names) or fsdp_config['min_num_params']"
            )
        targets = modules_by_class(root, layers)
    else:
        return []
    depth = {id(m): name.count(".") for name, m in root.named_modules() if name}
    return sorted(targets, key=lambda m: -depth[id(m)])
