"""Tied parameters (one Parameter held by several modules) kept tied across a device move that replaces them.

``Module.to`` replaces each parameter by a new one when the target device's tensors cannot take the
old one's place (XLA): once per module that holds it, so a tied embedding and output layer become
two parameters that train apart. transformers re-ties through ``tie_weights()`` after the move; this
works for any module, from the names found before it.
"""

from __future__ import annotations

from torch import nn

__all__ = ["retie_parameters", "tied_parameter_names"]


def tied_parameter_names(module: nn.Module) -> list[list[str]]:
    """Groups of the qualified names under which one Parameter is held, for every Parameter held more than once."""
    names: dict[int, list[str]] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    return [group for group in names.values() if len(group) > 1]


def retie_parameters(module: nn.Module, groups: list[list[str]]) -> None:
    """Make every name of each group hold the Parameter of its first name again."""
    for first, *others in groups:
        param = module.get_parameter(first)
        for name in others:
            owner, _, attribute = name.rpartition(".")
            setattr(module.get_submodule(owner), attribute, param)
