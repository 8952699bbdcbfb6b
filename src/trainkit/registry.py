"""``Registry[T]``: named factories for strategies, precisions, checkpoint IOs, optimizers, schedulers.

Register with a decorator or a call; ``get(name, **overrides)`` builds the object.
An entry may declare an optional package it needs; asking for it without that package
raises an ImportError naming what to install. A misspelt name gets the closest match.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, overload

__all__ = ["Registry", "RegistryEntry"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class RegistryEntry(Generic[T]):
    """One named factory, its default keyword arguments and its optional requirements."""

    name: str
    factory: Callable[..., T]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    requires: tuple[str, ...] = ()
    install: str | None = None
    description: str = ""

    def missing_requirements(self) -> list[str]:
        """The requirements (pip specifiers or module names) that are not satisfied here."""
        from trainkit.utils.imports import package_available

        return [req for req in self.requires if not package_available(req)]

    def is_available(self) -> bool:
        return not self.missing_requirements()


class Registry(Generic[T]):
    """A typed, extensible mapping from names to factories of ``T``."""

    def __init__(self, kind: str, base: type | None = None) -> None:
        self.kind = kind
        self.base = base
        self._entries: dict[str, RegistryEntry[T]] = {}

    # ------------------------------------------------------------ registration
    @overload
    def register(
        self,
        name: str,
        factory: None = None,
        *,
        requires: str | tuple[str, ...] | list[str] = (),
        install: str | None = None,
        description: str = "",
        override: bool = False,
        **defaults: Any,
    ) -> Callable[[F], F]: ...

    @overload
    def register(
        self,
        name: str,
        factory: Callable[..., T],
        *,
        requires: str | tuple[str, ...] | list[str] = (),
        install: str | None = None,
        description: str = "",
        override: bool = False,
        **defaults: Any,
    ) -> Callable[..., T]: ...

    def register(
        self,
        name: str,
        factory: Callable[..., T] | None = None,
        *,
        requires: str | tuple[str, ...] | list[str] = (),
        install: str | None = None,
        description: str = "",
        override: bool = False,
        **defaults: Any,
    ) -> Any:
        """Register ``factory`` under ``name`` (or use as ``@registry.register(name)``).

        ``requires`` names optional packages (``"apex"``, ``"deepspeed>=0.14"``) checked when the
        entry is used; ``install`` is the command suggested when they are missing. Registering a
        name twice is an error unless ``override=True``.
        """
        if not isinstance(name, str) or not name:
            raise TypeError(f"{self.kind} registry: a name must be a non-empty string, got {name!r}")
        reqs = (requires,) if isinstance(requires, str) else tuple(requires)

        def add(obj: Callable[..., Any]) -> Callable[..., Any]:
            if not callable(obj):
                raise TypeError(f"{self.kind} registry: {name!r} must be callable, got {type(obj).__name__}")
            if name in self._entries and not override:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered (by {_qualname(self._entries[name].factory)}); "
                    "pass override=True to replace it"
                )
            self._entries[name] = RegistryEntry(name, obj, dict(defaults), reqs, install, description)
            return obj

        return add if factory is None else add(factory)

    def remove(self, name: str) -> None:
        self.entry(name, check_requirements=False)
        del self._entries[name]

    # ------------------------------------------------------------------ lookup
    def entry(self, name: str, check_requirements: bool = True) -> RegistryEntry[T]:
        """The entry for ``name``; raises ValueError (unknown) or ImportError (missing package)."""
        try:
            found = self._entries[name]
        except (KeyError, TypeError):
            raise ValueError(self._unknown_message(name)) from None
        if check_requirements:
            missing = found.missing_requirements()
            if missing:
                hint = found.install or "pip install " + " ".join(repr(m) if " " in m else m for m in missing)
                raise ImportError(
                    f"{self.kind} {name!r} needs {', '.join(missing)}, which is not installed. Install it with: {hint}"
                )
        return found

    def get(self, name: str, **overrides: Any) -> T:
        """Build the object registered as ``name`` with its defaults updated by ``overrides``."""
        found = self.entry(name)
        try:
            obj = found.factory(**{**found.defaults, **overrides})
        except TypeError as err:
            raise TypeError(f"{self.kind} {name!r}: {err}") from err
        if self.base is not None and not isinstance(obj, self.base):
            raise TypeError(f"{self.kind} {name!r} built a {type(obj).__name__}, which is not a {self.base.__name__}")
        return obj

    def available(self, installed_only: bool = False) -> list[str]:
        """Registered names (only those whose requirements are met, when asked)."""
        return sorted(n for n, e in self._entries.items() if not installed_only or e.is_available())

    def closest(self, name: str) -> str | None:
        matches = difflib.get_close_matches(str(name), list(self._entries), n=1, cutoff=0.5)
        return matches[0] if matches else None

    def _unknown_message(self, name: Any) -> str:
        close = self.closest(name)
        hint = f" Did you mean {close!r}?" if close else ""
        return f"Unknown {self.kind} {name!r}.{hint} Available: {', '.join(self.available())}"

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.available())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.available()})"


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
