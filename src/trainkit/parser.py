"""``ArgumentParser`` (alias ``HfArgumentParser``): dataclasses from the command line, JSON, YAML or dicts.

Command lines are written as with transformers' HfArgumentParser: ``--fp16``, ``--fp16 true``,
``--no_<field>`` for booleans that default to True, choices for enum/Literal fields,
space-separated lists, and dict fields as JSON strings. ``to_cli_args`` renders a dataclass
back into such a command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import sys
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from enum import Enum
from pathlib import Path
from typing import Any, Literal

__all__ = ["ArgumentParser", "HfArgumentParser", "string_to_bool", "to_cli_args"]

_NONE_WORDS = ("none", "null")


def string_to_bool(value: str | bool) -> bool:
    """transformers' accepted spellings of a boolean on the command line."""
    if isinstance(value, bool):
        return value
    lowered = value.lower()
    if lowered in ("yes", "true", "t", "y", "1"):
        return True
    if lowered in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false/yes/no/1/0), got {value!r}")


def _choice_type(choices: Sequence[Any]) -> Callable[[str], Any]:
    by_text = {str(c): c for c in choices}

    def convert(text: str) -> Any:
        return by_text.get(text, text)

    return convert


def _enum_type(enum_cls: type[Enum]) -> Callable[[str], Any]:
    values = [str(e.value) for e in enum_cls]

    def convert(text: str) -> Any:
        for member in enum_cls:
            if str(member.value) == text:
                return member
        raise argparse.ArgumentTypeError(f"invalid choice {text!r} (choose from {', '.join(values)})")

    convert.__name__ = enum_cls.__name__
    return convert


def _optional(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return None if text.lower() in _NONE_WORDS else convert(text)

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def _number(text: str) -> int | float:
    """An int when the text is one, else a float (for ``int | float`` fields)."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def _union_members(tp: Any) -> tuple[list[Any], bool]:
    """The non-None members of a Union annotation, and whether None was one of them."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        members = list(typing.get_args(tp))
        has_none = type(None) in members
        return [m for m in members if m is not type(None)], has_none
    return [tp], False


def _is_list(tp: Any) -> bool:
    return typing.get_origin(tp) is list


def _is_enum(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, Enum)


def _field_default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _argument_spec(f: dataclasses.Field[Any], tp: Any) -> tuple[dict[str, Any], bool]:
    """argparse keyword arguments for one field, and whether it gets a ``--no_<name>`` twin."""
    members, optional = _union_members(tp)
    kwargs: dict[str, Any] = {"help": f.metadata.get("help", "")}
    default = _field_default(f)
    if default is dataclasses.MISSING:
        kwargs["required"] = True
    else:
        kwargs["default"] = default
    lists = [m for m in members if _is_list(m)]
    enums = [m for m in members if _is_enum(m)]
    literals = [m for m in members if typing.get_origin(m) is Literal]
    if bool in members and len(members) == 1:
        kwargs.update(type=string_to_bool, nargs="?", const=True, metavar="{true,false}")
        return kwargs, default is True
    if lists:
        (item,) = typing.get_args(lists[0]) or (str,)
        strict_enum = _is_enum(item) and str not in members
        kwargs.update(nargs="*", type=_choice_type([e.value for e in item]) if strict_enum else str)
        if strict_enum:
            kwargs["choices"] = [e.value for e in item]
        elif item in (int, float):
            kwargs["type"] = item
        return kwargs, False
    choices = f.metadata.get("choices")
    if enums and choices is None:
        kwargs.update(type=_enum_type(enums[0]), metavar="{" + ",".join(str(e.value) for e in enums[0]) + "}")
        return kwargs, False
    if literals:
        choices = list(typing.get_args(literals[0]))
    if choices is not None:
        kwargs.update(choices=list(choices), type=_choice_type(list(choices)))
        return kwargs, False
    numbers = [m for m in members if m in (int, float)]
    if numbers and str not in members:
        scalar: Callable[[str], Any] = _number if len(numbers) == 2 else numbers[0]
        kwargs["type"] = _optional(scalar) if optional else scalar
    else:
        kwargs["type"] = str
    return kwargs, False


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser generating arguments from the fields of one or more dataclasses."""

    def __init__(self, dataclass_types: type | Iterable[type] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(**kwargs)
        if dataclass_types is None:
            dataclass_types = []
        elif dataclasses.is_dataclass(dataclass_types):
            dataclass_types = [dataclass_types]
        self.dataclass_types: list[type] = list(dataclass_types)  # type: ignore[arg-type]
        for dtype in self.dataclass_types:
            self._add_dataclass_arguments(dtype)

    def _add_dataclass_arguments(self, dtype: type) -> None:
        group: argparse._ActionsContainer = self
        if hasattr(dtype, "_argument_group_name"):
            group = self.add_argument_group(dtype._argument_group_name)
        try:
            hints = typing.get_type_hints(dtype)
        except NameError as err:
            raise RuntimeError(f"Cannot resolve the type annotations of {dtype.__name__}: {err}") from err
        for f in dataclasses.fields(dtype):
            if not f.init:
                continue
            kwargs, with_negation = _argument_spec(f, hints[f.name])
            names = [f"--{f.name}"]
            if "_" in f.name:
                names.append(f"--{f.name.replace('_', '-')}")
            names += list(f.metadata.get("aliases", []))
            group.add_argument(*names, dest=f.name, **kwargs)
            if with_negation:
                group.add_argument(
                    f"--no_{f.name}",
                    f"--no-{f.name.replace('_', '-')}",
                    action="store_false",
                    dest=f.name,
                    help=f"Set {f.name} to False.",
                )

    # ------------------------------------------------------------------ parsing
    def parse_args_into_dataclasses(
        self,
        args: Sequence[str] | None = None,
        return_remaining_strings: bool = False,
        look_for_args_file: bool = True,
        args_filename: str | None = None,
        args_file_flag: str | None = None,
    ) -> tuple[Any, ...]:
        """Parse a command line into one instance per dataclass (plus leftovers when asked)."""
        argv = list(sys.argv[1:] if args is None else args)
        argv = self._prepend_args_files(argv, look_for_args_file, args_filename, args_file_flag)
        namespace, remaining = self.parse_known_args(args=argv)
        outputs = []
        for dtype in self.dataclass_types:
            keys = {f.name for f in dataclasses.fields(dtype) if f.init}
            inputs = {k: v for k, v in vars(namespace).items() if k in keys}
            for k in keys:
                delattr(namespace, k)
            outputs.append(self._build(dtype, inputs, cli=True))
        if vars(namespace):
            outputs.append(namespace)
        if return_remaining_strings:
            return (*outputs, remaining)
        if remaining:
            self.error(f"unrecognized arguments: {' '.join(remaining)}{self._suggest(remaining)}")
        return tuple(outputs)

    def _prepend_args_files(self, argv: list[str], look: bool, filename: str | None, flag: str | None) -> list[str]:
        files: list[Path] = []
        if flag:
            flag_parser = argparse.ArgumentParser(add_help=False)
            flag_parser.add_argument(flag, type=str, action="append")
            found, argv = flag_parser.parse_known_args(args=argv)
            files += [Path(p) for p in getattr(found, flag.lstrip("-"), None) or []]
        if filename:
            files.append(Path(filename))
        elif look and sys.argv and sys.argv[0]:
            candidate = Path(sys.argv[0]).with_suffix(".args")
            if candidate.exists():
                files.append(candidate)
        prefix: list[str] = []
        for path in files:
            if path.exists():
                prefix += path.read_text().split()
        return prefix + argv

    def parse_dict(self, args: dict[str, Any], allow_extra_keys: bool = False) -> tuple[Any, ...]:
        """One instance per dataclass from a dict; unknown keys are an error unless allowed."""
        unused = set(args)
        outputs = []
        for dtype in self.dataclass_types:
            keys = {f.name for f in dataclasses.fields(dtype) if f.init}
            unused -= keys
            outputs.append(self._build(dtype, {k: v for k, v in args.items() if k in keys}, cli=False))
        if unused and not allow_extra_keys:
            valid = {f.name for d in self.dataclass_types for f in dataclasses.fields(d) if f.init}
            hints = [
                f"{k!r}" + (f" (did you mean {c[0]!r}?)" if (c := difflib.get_close_matches(k, valid, n=1)) else "")
                for k in sorted(unused)
            ]
            raise ValueError(f"Keys not used by any of the dataclasses: {', '.join(hints)}")
        return tuple(outputs)

    def parse_json_file(self, json_file: str | os.PathLike[str], allow_extra_keys: bool = False) -> tuple[Any, ...]:
        path = Path(json_file)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None
        return self.parse_dict(_require_mapping(data, path), allow_extra_keys=allow_extra_keys)

    def parse_yaml_file(self, yaml_file: str | os.PathLike[str], allow_extra_keys: bool = False) -> tuple[Any, ...]:
        import yaml

        path = Path(yaml_file)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid YAML ({err})") from None
        return self.parse_dict(_require_mapping(data, path), allow_extra_keys=allow_extra_keys)

    def _build(self, dtype: type, inputs: dict[str, Any], cli: bool) -> Any:
        try:
            return dtype(**inputs)
        except (ValueError, TypeError) as err:
            if cli:
                self.error(str(err))
            raise

    def error(self, message: str) -> Any:
        """Exit with the error alone (the usage of ~140 options would bury it) and a pointer to --help."""
        self.exit(2, f"{self.prog}: error: {message}\n(run with --help to list every option)\n")

    def _suggest(self, remaining: list[str]) -> str:
        options = [s for action in self._actions for s in action.option_strings]
        hints = []
        for token in remaining:
            if token.startswith("--"):
                close = difflib.get_close_matches(token.split("=")[0], options, n=1)
                if close:
                    hints.append(f"{token} -> {close[0]}?")
        return f" (did you mean: {'; '.join(hints)})" if hints else ""


HfArgumentParser = ArgumentParser


def _require_mapping(data: Any, path: Path) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of argument names to values at the top level")
    return data


def to_cli_args(obj: Any) -> list[str]:
    """Render a dataclass instance as the command line that parses back into it."""
    hints = typing.get_type_hints(type(obj))
    argv: list[str] = []
    for f in dataclasses.fields(obj):
        if not f.init:
            continue
        value = getattr(obj, f.name)
        default = _field_default(f)
        if value == default and type(value) is type(default):
            continue
        argv += _render(f.name, value, hints[f.name])
    return argv


def _render(name: str, value: Any, tp: Any) -> list[str]:
    flag = f"--{name}"
    if value is None:
        members, optional = _union_members(tp)
        if optional and any(m in (int, float, bool) for m in members) and str not in members:
            return [flag, "None"]
        raise ValueError(f"{name}=None cannot be written on the command line (its default is not None)")
    if isinstance(value, Enum):
        return [flag, str(value.value)]
    if isinstance(value, bool):
        return [flag, "true" if value else "false"]
    if isinstance(value, (dict,)):
        return [flag, json.dumps(value)]
    if isinstance(value, list):
        return [flag, *[str(v.value if isinstance(v, Enum) else v) for v in value]]
    if isinstance(value, float):
        return [flag, repr(value)]
    return [flag, str(value)]
