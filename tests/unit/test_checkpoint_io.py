"""CheckpointIO: HF layout, round trips, atomic saves, manifest checks, safe loading, discovery."""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import trainkit
from tests.checkpoint_fixtures import assert_same, full_state
from trainkit.checkpoint import (
    CheckpointError,
    SafetensorsCheckpointIO,
    TorchCheckpointIO,
    get_last_checkpoint,
    list_checkpoints,
    list_complete_checkpoints,
)
from trainkit.checkpoint.atomic import recover_output_dir
from trainkit.checkpoint.manifest import read_manifest, write_manifest

HF_FILES = {
    "model.safetensors",
    "optimizer.pt",
    "scheduler.pt",
    "scaler.pt",
    "rng_state.pth",
    "trainer_state.json",
    "training_args.json",
    "manifest.json",
}


def _rewrite_manifest_entry(folder: Path, name: str) -> None:
    """Make the manifest agree with a file changed on purpose (as an attacker could)."""
    from trainkit.checkpoint.manifest import FileEntry, file_digest

    manifest = read_manifest(folder)
    manifest.files[name] = FileEntry((folder / name).stat().st_size, file_digest(folder / name))
    write_manifest(folder, manifest)


@pytest.mark.parametrize("io_class", [SafetensorsCheckpointIO, TorchCheckpointIO])
def test_round_trip_of_every_part_is_exact(tmp_path, io_class):
    state = full_state()
    io = io_class()
    io.save(state, tmp_path / "checkpoint-2")
    assert_same(io.load(tmp_path / "checkpoint-2"), state)


def test_layout_is_transformers_layout_plus_manifest(tmp_path):
    SafetensorsCheckpointIO().save(full_state(), tmp_path / "checkpoint-2")
    assert {p.name for p in (tmp_path / "checkpoint-2").iterdir()} == HF_FILES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]  # no staging folder left behind
    args = json.loads((tmp_path / "checkpoint-2" / "training_args.json").read_text())
    assert args["learning_rate"] == 0.01


def test_torch_io_writes_pytorch_model_bin(tmp_path):
    TorchCheckpointIO().save(full_state(), tmp_path / "c")
    names = {p.name for p in (tmp_path / "c").iterdir()}
    assert "pytorch_model.bin" in names
    assert "model.safetensors" not in names


def test_each_io_reads_the_other_ones_checkpoints(tmp_path):
    state = full_state()
    TorchCheckpointIO().save(state, tmp_path / "t")
    SafetensorsCheckpointIO().save(state, tmp_path / "s")
    assert_same(SafetensorsCheckpointIO().load(tmp_path / "t"), state)
    assert_same(TorchCheckpointIO().load(tmp_path / "s"), state)


def test_empty_scaler_and_none_parts_are_not_written(tmp_path):
    state = full_state()
    state["scaler"] = {}
    state["scheduler"] = None
    SafetensorsCheckpointIO().save(state, tmp_path / "c")
    names = {p.name for p in (tmp_path / "c").iterdir()}
    assert "scaler.pt" not in names
    assert "scheduler.pt" not in names
    assert set(SafetensorsCheckpointIO().load(tmp_path / "c")) == {
        "model",
        "optimizer",
        "rng",
        "trainer_state",
        "training_args",
    }


def test_every_torch_file_loads_with_weights_only(tmp_path):
    SafetensorsCheckpointIO().save(full_state(), tmp_path / "c")
    for file in (tmp_path / "c").glob("*.p*"):
        assert torch.load(file, weights_only=True) is not None


def test_extra_parts_round_trip_as_weights_only_torch_files(tmp_path):
    state = {"model": full_state()["model"], "ema": {"decay": 0.99, "shadow": {"w": torch.arange(4.0)}}}
    SafetensorsCheckpointIO().save(state, tmp_path / "c")
    assert (tmp_path / "c" / "ema.pt").is_file()
    assert_same(SafetensorsCheckpointIO().load(tmp_path / "c", parts=["ema"]), {"ema": state["ema"]})


@pytest.mark.parametrize("name", ["", "../evil", "a/b", "_private", 3, "x.json"])
def test_bad_part_names_are_refused(tmp_path, name):
    with pytest.raises(ValueError, match="part"):
        SafetensorsCheckpointIO().save({name: {"x": 1}}, tmp_path / "c")
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize(
    ("value", "culprit"),
    [
        ({"keys": np.arange(3)}, "numpy.ndarray"),
        ({"fn": lambda x: x}, "function"),
        ({"nested": [1, {"obj": object()}]}, "builtins.object"),
    ],
)
def test_values_weights_only_cannot_load_are_refused_at_save_naming_the_path(tmp_path, value, culprit):
    previous = full_state()
    io = SafetensorsCheckpointIO()
    io.save(previous, tmp_path / "checkpoint-1")
    with pytest.raises(CheckpointError, match=culprit) as info:
        io.save({**previous, "scheduler": value}, tmp_path / "checkpoint-2")
    assert "'scheduler'" in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1"]  # nothing half written
    assert io.exists(tmp_path / "checkpoint-1")


def test_json_parts_must_survive_json_unchanged(tmp_path):
    with pytest.raises(CheckpointError, match="string"):
        SafetensorsCheckpointIO().save({"trainer_state": {1: "a"}}, tmp_path / "c")
    with pytest.raises(CheckpointError, match="tuple"):
        SafetensorsCheckpointIO().save({"training_args": {"betas": (0.9, 0.99)}}, tmp_path / "c")


def test_a_failing_save_leaves_the_previous_checkpoints_and_no_partial_folder(tmp_path, monkeypatch):
    io = SafetensorsCheckpointIO()
    io.save(full_state(), tmp_path / "checkpoint-1")

    def boom(value, file, part):
        raise OSError("disk full")

    monkeypatch.setattr("trainkit.checkpoint.file_io.save_torch", boom)
    with pytest.raises(OSError, match="disk full"):
        io.save(full_state(), tmp_path / "checkpoint-2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1"]
    assert get_last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-1")


def test_saving_onto_an_existing_checkpoint_replaces_it(tmp_path):
    io = SafetensorsCheckpointIO()
    io.save(full_state(seed=0), tmp_path / "checkpoint-3")
    io.save(full_state(seed=1), tmp_path / "checkpoint-3")
    assert_same(io.load(tmp_path / "checkpoint-3")["model"], full_state(seed=1)["model"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-3"]


def test_load_of_selected_parts_and_of_an_absent_part(tmp_path):
    io = SafetensorsCheckpointIO()
    io.save(full_state(), tmp_path / "c")
    assert set(io.load(tmp_path / "c", parts=["model", "rng"])) == {"model", "rng"}
    with pytest.raises(CheckpointError, match=r"no part \['ema'\].*holds: model"):
        io.load(tmp_path / "c", parts=["ema"])


def test_load_errors_name_what_is_missing(tmp_path):
    io = SafetensorsCheckpointIO()
    with pytest.raises(CheckpointError, match="no checkpoint folder"):
        io.load(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    with pytest.raises(CheckpointError, match=r"no manifest\.json.*interrupted"):
        io.load(tmp_path / "half")


def test_exists_checks_the_manifest_and_file_sizes(tmp_path):
    io = SafetensorsCheckpointIO()
    io.save(full_state(), tmp_path / "c")
    assert io.exists(tmp_path / "c")
    with open(tmp_path / "c" / "optimizer.pt", "r+b") as handle:
        handle.truncate(10)
    assert not io.exists(tmp_path / "c")
    assert not io.exists(tmp_path / "missing")


def test_changed_file_is_reported_by_name_even_when_the_size_holds(tmp_path):
    io = SafetensorsCheckpointIO()
    io.save(full_state(), tmp_path / "c")
    file = tmp_path / "c" / "model.safetensors"
    data = bytearray(file.read_bytes())
    data[-1] ^= 0x01
    file.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors is corrupted: its crc32 hash"):
        io.load(tmp_path / "c")


def test_crafted_pickle_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    io = SafetensorsCheckpointIO()
    io.save(full_state(), tmp_path / "c")
    with open(tmp_path / "c" / "optimizer.pt", "wb") as handle:
        torch.save({"state": Exploit()}, handle, pickle_module=pickle)
    _rewrite_manifest_entry(tmp_path / "c", "optimizer.pt")  # the manifest is no defence; weights_only is
    with pytest.raises(CheckpointError, match=r"optimizer\.pt cannot be loaded safely"):
        io.load(tmp_path / "c")
    assert not marker.exists()


def test_multi_process_protocol_writes_one_rng_file_per_rank(tmp_path, caplog):
    """Steps of the documented protocol, played by two IOs standing for two ranks."""
    rng = [full_state(seed=0)["rng"], full_state(seed=1)["rng"]]
    ios = [SafetensorsCheckpointIO(), SafetensorsCheckpointIO()]
    for rank, io in enumerate(ios):
        io.set_process(rank, 2)
    target = tmp_path / "checkpoint-1"
    staging = ios[0].prepare_staging(target)
    staged = [ios[0].write_parts({"model": full_state()["model"], "rng": rng[0]}, staging)]
    staged.append(ios[1].write_parts({"rng": rng[1]}, staging))
    ios[0].commit(staging, target, staged)
    assert read_manifest(target).parts["rng"] == ["rng_state_0.pth", "rng_state_1.pth"]
    for rank, io in enumerate(ios):
        assert_same(io.load(target, parts=["rng"])["rng"], rng[rank])
    with caplog.at_level(logging.WARNING, logger="trainkit"):
        assert "rng" not in SafetensorsCheckpointIO().load(target)
    assert "none for process 0 of 1" in caplog.text


def test_set_process_validates_rank():
    with pytest.raises(ValueError, match="rank"):
        SafetensorsCheckpointIO().set_process(2, 2)


def test_sha256_can_be_chosen_and_unknown_hashes_are_refused(tmp_path):
    io = SafetensorsCheckpointIO(hash_algorithm="sha256")
    io.save(full_state(), tmp_path / "c")
    assert read_manifest(tmp_path / "c").hash_algorithm == "sha256"
    assert len(read_manifest(tmp_path / "c").files["optimizer.pt"].digest) == 64
    assert_same(SafetensorsCheckpointIO().load(tmp_path / "c")["scaler"], full_state()["scaler"])
    with pytest.raises(ValueError, match="unknown checkpoint hash algorithm 'xxh3'"):
        SafetensorsCheckpointIO(hash_algorithm="xxh3")


def test_map_location_and_materialized_tensors(tmp_path):
    io = SafetensorsCheckpointIO()
    io.save(full_state(), tmp_path / "c")
    loaded = io.load(tmp_path / "c", map_location="cpu")
    shutil.rmtree(tmp_path / "c")  # nothing stays mapped to the deleted files
    assert loaded["model"]["embed.weight"].sum().isfinite()
    assert loaded["optimizer"]["state"][0]["exp_avg"].abs().sum() > 0
    io.save(full_state(), tmp_path / "d")
    with pytest.raises(TypeError, match="map_location"):
        io.load(tmp_path / "d", map_location={"cuda:0": "cpu"})


def test_remove_deletes_and_tolerates_absence(tmp_path):
    io = SafetensorsCheckpointIO()
    io.save(full_state(), tmp_path / "checkpoint-1")
    io.remove(tmp_path / "checkpoint-1")
    io.remove(tmp_path / "checkpoint-1")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ discovery


def test_get_last_checkpoint_returns_the_newest_complete_by_step_number(tmp_path):
    io = SafetensorsCheckpointIO()
    for step in (9, 10):
        io.save({"trainer_state": {"global_step": step}}, tmp_path / f"checkpoint-{step}")
    (tmp_path / "checkpoint-11").mkdir()  # interrupted (no manifest)
    io.save({"trainer_state": {"global_step": 12}}, tmp_path / "checkpoint-12")
    (tmp_path / "checkpoint-12" / "trainer_state.json").write_text("{}")  # damaged: size differs
    (tmp_path / ".checkpoint-13.staging").mkdir()
    (tmp_path / "checkpoint-x").mkdir()
    assert get_last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")
    assert trainkit.get_last_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-10")
    assert list_complete_checkpoints(tmp_path) == [tmp_path / "checkpoint-9", tmp_path / "checkpoint-10"]
    problems = {entry.step: entry.problem for entry in list_checkpoints(tmp_path)}
    assert problems[9] is None
    assert "no manifest.json" in problems[11]
    assert "bytes" in problems[12]


def test_get_last_checkpoint_of_an_empty_or_missing_folder_is_none(tmp_path):
    assert get_last_checkpoint(tmp_path) is None
    assert get_last_checkpoint(tmp_path / "missing") is None


def test_recovery_tidies_what_interrupted_saves_leave(tmp_path):
    io = SafetensorsCheckpointIO()
    io.save({"trainer_state": {"global_step": 4}}, tmp_path / ".checkpoint-4.replaced")
    io.save({"trainer_state": {"global_step": 5}}, tmp_path / "checkpoint-5")
    io.save({"trainer_state": {"global_step": 5}}, tmp_path / ".checkpoint-5.replaced")
    (tmp_path / ".checkpoint-6.staging").mkdir()
    (tmp_path / ".checkpoint-2.deleting").mkdir()
    (tmp_path / ".unrelated").mkdir()
    actions = recover_output_dir(tmp_path)
    assert len(actions) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == [".unrelated", "checkpoint-4", "checkpoint-5"]
    assert io.exists(tmp_path / "checkpoint-4")


def test_the_factory_maps_save_safetensors_to_the_io():
    from types import SimpleNamespace

    from trainkit.factory import build_checkpoint_io

    assert isinstance(build_checkpoint_io(trainkit.TrainingArguments(output_dir="x")), SafetensorsCheckpointIO)
    assert isinstance(build_checkpoint_io(SimpleNamespace(save_safetensors=False)), TorchCheckpointIO)
