"""Field names, types and defaults of TrainingArguments against transformers 4.37.2."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path

import pytest

from tests.unit.hf_reference import HF_4_37_2_FIELDS, REQUIRED
from trainkit import TrainingArguments

# Each documented difference from 4.37.2, with its justification (also in docs/arguments.md).
DEFAULT_EXCEPTIONS = {
    "output_dir": "optional, defaulting to 'trainer_output' as transformers >= 4.50 does",
    "evaluation_strategy": "deprecated alias: None means 'not given' (the value lives in eval_strategy, default 'no')",
}
TYPE_EXCEPTIONS = {
    "warmup_steps": "also a float below 1, meaning a ratio (transformers 5)",
    "fsdp": "also True, meaning 'full_shard' (as transformers accepts)",
}

ROOT = Path(__file__).resolve().parents[2]

_BASE = {"str": str, "int": int, "float": float, "bool": bool, "NoneType": type(None), "dict": dict, "Dict": dict}


def _our_defaults() -> dict[str, object]:
    out: dict[str, object] = {}
    for f in dataclasses.fields(TrainingArguments):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
        else:
            out[f.name] = REQUIRED
    return out


def _hf_base_types(annotation: str) -> set[type]:
    """Base types a transformers annotation string accepts (enums count as str)."""
    flat = re.sub(r"List\[[^\]]*\]", "list", annotation)
    found: set[type] = set()
    for token in re.findall(r"[A-Za-z_]+", flat):
        if token in _BASE:
            found.add(_BASE[token])
        elif token == "list":
            found.add(list)
        elif token == "Optional":
            found.add(type(None))
        elif token.endswith(("Strategy", "Type", "Names", "Option")):
            found.add(str)
    return found


def _our_base_types(tp: object) -> set[type]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_our_base_types(t) for t in typing.get_args(tp)))
    if origin is list:
        return {list}
    if origin is dict or tp is dict:
        return {dict}
    if isinstance(tp, type) and issubclass(tp, str):
        return {str}
    if tp is float:
        return {float, int}
    return {tp}  # type: ignore[set-item]


def test_every_4_37_2_field_exists():
    ours = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    missing = sorted(set(HF_4_37_2_FIELDS) - ours)
    assert missing == []


@pytest.mark.parametrize("name", sorted(HF_4_37_2_FIELDS))
def test_default_matches_4_37_2(name):
    hf_default = HF_4_37_2_FIELDS[name][1]
    ours = _our_defaults()[name]
    if name in DEFAULT_EXCEPTIONS:
        assert ours != hf_default
        return
    assert ours == hf_default
    assert type(ours) is type(hf_default) or (isinstance(ours, (int, float)) and isinstance(hf_default, (int, float)))


@pytest.mark.parametrize("name", sorted(HF_4_37_2_FIELDS))
def test_type_accepts_what_4_37_2_accepts(name):
    hints = typing.get_type_hints(TrainingArguments)
    ours = _our_base_types(hints[name])
    theirs = _hf_base_types(HF_4_37_2_FIELDS[name][0])
    assert theirs - ours == set(), f"{name}: transformers accepts {theirs}, trainkit {ours}"
    if name not in TYPE_EXCEPTIONS:
        extra = ours - theirs - {int}  # a float field accepting ints is not a difference
        assert extra <= {str, dict, type(None)}, f"{name}: trainkit also accepts {extra}"


def test_exceptions_are_documented():
    text = (ROOT / "docs" / "arguments.md").read_text()
    for name in [*DEFAULT_EXCEPTIONS, *TYPE_EXCEPTIONS]:
        assert f"`{name}`" in text.split("## Differences from transformers 4.37.2")[1]


def test_later_names_are_accepted():
    later = {
        "eval_strategy": "no",
        "eval_on_start": False,
        "batch_eval_metrics": False,
        "eval_do_concat_batches": True,
        "include_for_metrics": [],
        "torch_empty_cache_steps": None,
        "dataloader_prefetch_factor": None,
        "average_tokens_across_devices": True,
        "restore_callback_states_from_checkpoint": False,
        "optim_target_modules": None,
        "use_liger_kernel": False,
        "eval_use_gather_object": False,
        "accelerator_config": None,
        "tp_size": 0,
        "hub_revision": None,
        "liger_kernel_config": None,
        "parallelism_config": None,
    }
    defaults = _our_defaults()
    for name, default in later.items():
        assert defaults[name] == default, name


def test_installed_transformers_fields_are_accepted():
    transformers = pytest.importorskip("transformers")
    if int(transformers.__version__.split(".")[0]) >= 5:
        pytest.skip("transformers 5 removed fields; the 4.x names are the contract")
    ours = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    theirs = {f.name for f in dataclasses.fields(transformers.TrainingArguments) if f.init}
    assert sorted(theirs - ours) == []
