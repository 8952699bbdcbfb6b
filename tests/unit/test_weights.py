"""Model weights as safetensors: tied weights once and restored tied; state that does not fit is explained."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from tests.checkpoint_fixtures import TiedLM
from trainkit.checkpoint import CheckpointError, load_model_state, save_weights_file
from trainkit.checkpoint.weights import (
    ALIASES_METADATA_KEY,
    describe_state_mismatch,
    load_state_dict_file,
    save_state_dict_file,
    split_shared_tensors,
)


def test_tied_weights_are_written_once_and_recorded_as_aliases(tmp_path):
    model = TiedLM()
    save_state_dict_file(model.state_dict(), tmp_path / "w.safetensors")
    with safe_open(str(tmp_path / "w.safetensors"), framework="pt") as handle:
        names = set(handle.keys())
        metadata = handle.metadata()
    assert "embed.weight" in names
    assert "head.weight" not in names
    assert json.loads(metadata[ALIASES_METADATA_KEY]) == {"head.weight": "embed.weight"}
    assert metadata["format"] == "pt"  # what transformers' from_pretrained expects


def test_loading_recreates_aliases_and_ties_stay_tied(tmp_path):
    source = TiedLM()
    save_state_dict_file(source.state_dict(), tmp_path / "w.safetensors")
    state = load_state_dict_file(tmp_path / "w.safetensors")
    assert state["head.weight"] is state["embed.weight"]
    target = TiedLM(vocab=11, dim=6)
    load_model_state(target, state, strict=True)
    assert target.head.weight is target.embed.weight
    for name, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], value), name


def test_views_of_one_storage_that_differ_are_written_separately(tmp_path):
    fused = torch.arange(12.0).reshape(6, 2)
    state = {"q": fused[:3], "k": fused[3:], "qT": fused[:3].t(), "same_q": fused[:3]}
    tensors, aliases = split_shared_tensors(state)
    assert aliases == {"same_q": "q"}
    assert set(tensors) == {"q", "k", "qT"}
    save_state_dict_file(state, tmp_path / "w.safetensors")
    loaded = load_state_dict_file(tmp_path / "w.safetensors")
    for name, value in state.items():
        assert torch.equal(loaded[name], value), name


def test_empty_and_scalar_tensors(tmp_path):
    state = {"empty_a": torch.zeros(0), "empty_b": torch.zeros(0, 3), "scalar": torch.tensor(3.5)}
    save_state_dict_file(state, tmp_path / "w.safetensors")
    loaded = load_state_dict_file(tmp_path / "w.safetensors")
    assert loaded["empty_b"].shape == (0, 3)
    assert loaded["scalar"].item() == 3.5


def test_non_tensor_entries_are_refused_by_name(tmp_path):
    with pytest.raises(CheckpointError, match=r"'layer\._extra_state' is a dict.*save_safetensors=False"):
        save_state_dict_file({"layer._extra_state": {"a": 1}}, tmp_path / "w.safetensors")


def test_save_weights_file_writes_the_hf_file_names(tmp_path):
    model = TiedLM()
    path = save_weights_file(model.state_dict(), tmp_path / "export")
    assert path.name == "model.safetensors"
    assert set(load_file(str(path))) == {"embed.weight", "hidden.weight", "hidden.bias", "scale"}
    path = save_weights_file(model.state_dict(), tmp_path / "export", safe_serialization=False)
    assert path.name == "pytorch_model.bin"
    assert set(torch.load(path, weights_only=True)) == set(model.state_dict())
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["model.safetensors", "pytorch_model.bin"]


def test_misfit_lists_missing_unexpected_and_shape_mismatches():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    state = dict(model.state_dict())
    del state["1.bias"]
    state["2.weight"] = torch.zeros(1)
    state["0.weight"] = torch.zeros(5, 3)
    with pytest.raises(CheckpointError) as info:
        load_model_state(model, state, source="/x/checkpoint-5")
    message = str(info.value)
    assert "checkpoint /x/checkpoint-5 does not fit Sequential" in message
    assert "missing keys (in the model, not in the checkpoint): 1.bias" in message
    assert "unexpected keys (in the checkpoint, not in the model): 2.weight" in message
    assert "0.weight: checkpoint (5, 3) vs model (4, 3)" in message


def test_non_strict_load_tolerates_missing_and_unexpected_keys_but_not_shapes():
    model = nn.Linear(3, 4)
    state = {"weight": torch.ones(4, 3), "extra": torch.zeros(1)}
    assert describe_state_mismatch(model, state, strict=False) is None
    load_model_state(model, state, strict=False)
    assert torch.equal(model.weight, torch.ones(4, 3))
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_model_state(model, {"weight": torch.ones(1)}, strict=False)


def test_long_key_lists_are_shortened():
    model = nn.Sequential(*[nn.Linear(1, 1) for _ in range(30)])
    with pytest.raises(CheckpointError, match=r"and 40 more"):
        load_model_state(model, {})
