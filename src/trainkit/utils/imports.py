"""Availability of optional packages, checked lazily (nothing optional is imported here)."""

from __future__ import annotations

import functools

__all__ = ["package_available", "require"]

_INSTALL_HINTS = {
    "deepspeed": "pip install 'trainkit[deepspeed]'",
    "torch_xla": "pip install 'trainkit[xla]' (torch_xla pins its own torch version)",
    "apex": "build NVIDIA apex from https://github.com/NVIDIA/apex",
    "tensorboard": "pip install tensorboard",
    "bitsandbytes": "pip install bitsandbytes",
    "torchdistx": "pip install torchdistx",
}


@functools.cache
def package_available(requirement: str) -> bool:
    """True when the requirement (``"deepspeed"`` or ``"deepspeed>=0.14"``) is satisfied."""
    from lightning_utilities.core.imports import RequirementCache

    if any(op in requirement for op in "<>=!~"):
        return bool(RequirementCache(requirement))
    return bool(RequirementCache(requirement, module=requirement))


def require(package: str, feature: str) -> None:
    """Raise an ImportError naming the package and how to install it when it is missing."""
    if not package_available(package):
        name = package.split("<")[0].split(">")[0].split("=")[0]
        hint = _INSTALL_HINTS.get(name, f"pip install {name}")
        raise ImportError(f"{feature} needs the package {package!r}, which is not installed. Install it with: {hint}")
