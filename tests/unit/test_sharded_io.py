"""ShardedCheckpointIO in one process: DCP folders inside the manifest protocol, safe reading, consolidation."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file

from tests.checkpoint_fixtures import TiedLM, assert_same, full_state, trained_parts
from tests.distributed_helpers import ThreadCheckpointGroup, ThreadGroup, run_threads
from tests.unit.test_checkpoint_io import _rewrite_manifest_entry
from trainkit.checkpoint import (
    CheckpointError,
    SafetensorsCheckpointIO,
    ShardedCheckpointIO,
    consolidate_checkpoint,
    get_last_checkpoint,
)
from trainkit.checkpoint.consolidate import main as consolidate_main
from trainkit.checkpoint.manifest import read_manifest
from trainkit.checkpoint.safe_dcp import load_sharded, read_metadata
from trainkit.checkpoint.sharded_io import SavedShards, ShardedStateDict
from trainkit.checkpoint.weights import load_state_dict_file

TIED = {"head.weight": "embed.weight"}


def _parts(seed: int = 0) -> dict:
    model, optimizer, _ = trained_parts(seed)
    weights = {k: v for k, v in model.state_dict().items() if k not in TIED}
    state = full_state(seed)
    return {
        "model": ShardedStateDict(weights, tied=TIED),
        "optimizer": ShardedStateDict(optimizer.state_dict()),
        "scheduler": state["scheduler"],
        "rng": state["rng"],
        "trainer_state": state["trainer_state"],
    }


def _zeros_like(state):
    if isinstance(state, torch.Tensor):
        return torch.zeros_like(state)
    if isinstance(state, dict):
        return {key: _zeros_like(value) for key, value in state.items()}
    if isinstance(state, list):
        return [_zeros_like(value) for value in state]
    return state


def test_layout_is_accelerates_fsdp_layout_inside_the_manifest(tmp_path):
    ShardedCheckpointIO().save(_parts(), tmp_path / "checkpoint-2")
    parts = read_manifest(tmp_path / "checkpoint-2").parts
    assert sorted(parts["model"]) == ["pytorch_model_fsdp_0/.metadata", "pytorch_model_fsdp_0/__0_0.distcp"]
    assert sorted(parts["optimizer"]) == ["optimizer_0/.metadata", "optimizer_0/__0_0.distcp"]
    assert parts["scheduler"] == ["scheduler.pt"]
    assert parts["rng"] == ["rng_state.pth"]


def test_sharded_parts_come_back_exactly_through_load_into(tmp_path):
    saved = _parts()
    ShardedCheckpointIO().save(saved, tmp_path / "c")
    loaded = ShardedCheckpointIO().load(tmp_path / "c")
    for part in ("model", "optimizer"):
        assert isinstance(loaded[part], SavedShards)
        template = _zeros_like(saved[part].state_dict)
        loaded[part].load_into(template)
        assert_same(template, saved[part].state_dict)
    assert_same(loaded["scheduler"], saved["scheduler"])
    assert_same(loaded["rng"], saved["rng"])


def test_consolidation_writes_weights_a_plain_model_loads_strictly(tmp_path):
    model, _, _ = trained_parts()
    ShardedCheckpointIO().save(_parts(), tmp_path / "checkpoint-2")
    path = consolidate_checkpoint(tmp_path / "checkpoint-2", tmp_path / "merged")
    assert path == tmp_path / "merged" / "model.safetensors"
    assert "head.weight" not in load_file(str(path))  # tied: written once, recorded as an alias
    plain = TiedLM()
    plain.load_state_dict(load_state_dict_file(path), strict=True)
    assert_same(plain.state_dict(), model.state_dict())
    assert plain.head.weight is plain.embed.weight


def test_consolidation_command_line(tmp_path, capsys):
    ShardedCheckpointIO().save(_parts(), tmp_path / "c")
    consolidate_main([str(tmp_path / "c"), str(tmp_path / "out"), "--torch"])
    assert "pytorch_model.bin" in capsys.readouterr().out
    assert (tmp_path / "out" / "pytorch_model.bin").is_file()


def test_a_whole_model_part_is_one_file(tmp_path):
    """save_only_model with FSDP: the gathered weights, as model.safetensors (or pytorch_model.bin)."""
    weights = trained_parts()[0].state_dict()
    for safe, name in ((True, "model.safetensors"), (False, "pytorch_model.bin")):
        ShardedCheckpointIO(safe_serialization=safe).save({"model": weights}, tmp_path / name)
        assert read_manifest(tmp_path / name).parts["model"] == [name]
        assert_same(ShardedCheckpointIO().load(tmp_path / name)["model"], weights)
        consolidate_checkpoint(tmp_path / name, tmp_path / f"merged-{name}")
        assert (tmp_path / f"merged-{name}" / "model.safetensors").is_file()


def test_a_damaged_shard_is_named_and_an_incomplete_checkpoint_is_skipped(tmp_path):
    io = ShardedCheckpointIO()
    io.save(_parts(), tmp_path / "checkpoint-1")
    io.save(_parts(), tmp_path / "checkpoint-2")
    shard = tmp_path / "checkpoint-2" / "optimizer_0" / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"optimizer_0/__0_0\.distcp is corrupted"):
        io.load(tmp_path / "checkpoint-2")
    (tmp_path / "checkpoint-2" / "pytorch_model_fsdp_0" / "__0_0.distcp").unlink()
    assert not io.exists(tmp_path / "checkpoint-2")
    assert get_last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-1")


def test_a_crafted_metadata_pickle_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    ShardedCheckpointIO().save(_parts(), tmp_path / "c")
    index = tmp_path / "c" / "pytorch_model_fsdp_0" / ".metadata"
    index.write_bytes(pickle.dumps(Exploit()))
    _rewrite_manifest_entry(tmp_path / "c", "pytorch_model_fsdp_0/.metadata")
    model = ShardedCheckpointIO().load(tmp_path / "c")["model"]
    with pytest.raises(CheckpointError, match=r"\.metadata cannot be read safely: UnpicklingError: posix\.system"):
        model.load_into({"embed.weight": torch.zeros(11, 6)})
    assert not marker.exists()


def test_a_crafted_value_in_a_shard_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    dcp.save({"part": {"value": Exploit()}}, storage_writer=dcp.FileSystemWriter(tmp_path / "dcp"), no_dist=True)
    assert read_metadata(tmp_path / "dcp" / ".metadata") is not None  # the index itself is harmless
    with pytest.raises(CheckpointError, match=r"cannot be loaded safely with torch\.load"):
        load_sharded({"part": {"value": None}}, tmp_path / "dcp")
    assert not marker.exists()


def test_values_that_could_not_be_read_back_safely_are_refused_when_saved(tmp_path):
    state = {"model": ShardedStateDict({"w": torch.ones(2), "hook": lambda: None})}
    with pytest.raises(CheckpointError, match=r"\['hook'\] is builtins\.function"):
        ShardedCheckpointIO().save(state, tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_the_file_ios_point_to_the_sharded_one(tmp_path):
    ShardedCheckpointIO().save(_parts(), tmp_path / "c")
    with pytest.raises(CheckpointError, match="a sharded part: read it with ShardedCheckpointIO"):
        SafetensorsCheckpointIO().load(tmp_path / "c", parts=["model"])


def test_ranks_share_the_verification_and_all_raise_on_a_damaged_file(tmp_path):
    ShardedCheckpointIO().save(_parts(), tmp_path / "c")
    names = sorted(read_manifest(tmp_path / "c").parts["model"])
    damaged = tmp_path / "c" / names[1]  # verified by rank 1 of 2
    data = bytearray(damaged.read_bytes())
    data[-1] ^= 0xFF
    damaged.write_bytes(bytes(data))

    def work(rank, group):
        io = ShardedCheckpointIO()
        io.set_group(ThreadCheckpointGroup(group, rank))
        return io.load(tmp_path / "c", parts=["model"])

    outcomes = run_threads(2, work)
    assert isinstance(outcomes[1], CheckpointError)
    assert f"{names[1]} is corrupted" in str(outcomes[1])
    assert isinstance(outcomes[0], CheckpointError)
    assert "verifying" in str(outcomes[0])
    assert f"{names[1]} is corrupted" in str(outcomes[0])


def test_a_sharded_io_without_its_group_is_refused_in_a_multi_process_job(tmp_path, monkeypatch):
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    with pytest.raises(CheckpointError, match="not connected to the processes that write its checkpoints"):
        ShardedCheckpointIO().save(_parts(), tmp_path / "c")
    io = ShardedCheckpointIO()
    io.set_group(ThreadCheckpointGroup(ThreadGroup(1), 0))
    assert io._process_group() is None  # the thread group stands for the default group
