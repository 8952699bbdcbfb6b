"""``optim_args`` ("k1=v1,k2=v2", as transformers parses it) and the checks of keyword arguments by signature."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["accepted_keywords", "check_keywords", "coerce_to_signature", "parse_optim_args"]


def parse_optim_args(text: str | None, field: str = "TrainingArguments.optim_args") -> dict[str, Any]:
    """Split ``"k1=v1,k2=v2"`` (spaces ignored, as transformers) into a dict of Python literals.

    Values become bool (``true``/``false``), None (``none``), int or float where they read as one,
    and stay strings otherwise. A malformed item or a repeated key raises a ValueError naming ``field``.
    """
    if not text:
        return {}
    parsed: dict[str, Any] = {}
    for item in text.replace(" ", "").split(","):
        key, sep, value = item.partition("=")
        if not sep or not key or "=" in value:
            raise ValueError(f"{field} must be 'key=value' pairs separated by commas, got {text!r} (bad item {item!r})")
        if key in parsed:
            raise ValueError(f"{field} sets {key!r} twice: {text!r}")
        parsed[key] = _literal(value)
    return parsed


def _literal(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def accepted_keywords(func: Callable[..., Any], skip: Iterable[str] = ()) -> frozenset[str] | None:
    """Keyword names ``func`` accepts (None when it takes ``**kwargs``, i.e. anything)."""
    params = inspect.signature(func).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    keyword_kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return frozenset(n for n, p in params.items() if p.kind in keyword_kinds) - set(skip)


def check_keywords(
    given: Iterable[str], func: Callable[..., Any], owner: str, source: str, skip: Iterable[str] = ()
) -> None:
    """Raise a TypeError naming the first key of ``given`` that ``func`` does not accept, and those it does."""
    accepted = accepted_keywords(func, skip)
    if accepted is None:
        return
    for key in given:
        if key not in accepted:
            raise TypeError(
                f"{owner} does not accept {key!r} (from {source}); it accepts: {', '.join(sorted(accepted))}"
            )


def coerce_to_signature(func: Callable[..., Any], values: Mapping[str, Any], owner: str) -> dict[str, Any]:
    """Convert parsed ``optim_args`` values to the types of ``func``'s defaults (bool, float).

    A parameter whose default is a tuple cannot be written as ``k=v`` (the comma separates items),
    so it is refused with the parameter's name.
    """
    params = inspect.signature(func).parameters
    out: dict[str, Any] = {}
    for key, value in values.items():
        param = params.get(key)
        default = None if param is None or param.default is inspect.Parameter.empty else param.default
        out[key] = _coerce(value, default, f"{owner}: optim_args {key}={value!r}")
    return out


def _coerce(value: Any, default: Any, where: str) -> Any:
    if isinstance(default, tuple):
        raise ValueError(f"{where}: a tuple cannot be given in optim_args ('k=v' items are separated by commas)")
    if value is None or default is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool) or value in (0, 1):
            return bool(value)
        raise ValueError(f"{where} must be true or false")
    if isinstance(default, (int, float)):
        # An int default does not make the parameter an int (torch's SGD has momentum: float = 0).
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where} must be a number")
        return float(value) if isinstance(default, float) else value
    return value
