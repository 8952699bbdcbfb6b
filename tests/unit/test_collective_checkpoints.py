"""The file IOs' multi-process save, with thread ranks: each rank writes its RNG file, the coordinator the rest."""

from __future__ import annotations

import logging

import pytest
import torch

from tests.checkpoint_fixtures import assert_same, full_state
from tests.distributed_helpers import ThreadCheckpointGroup, ThreadGroup, ThreadRankStrategy, run_threads
from trainkit.checkpoint import CheckpointError, CheckpointManager, SafetensorsCheckpointIO, get_last_checkpoint
from trainkit.checkpoint.layout import staging_path
from trainkit.checkpoint.manifest import read_manifest


def _io(rank: int, group: ThreadGroup, io_class: type = SafetensorsCheckpointIO) -> SafetensorsCheckpointIO:
    io = io_class()
    io.set_process(rank, group.world_size)
    io.set_group(ThreadCheckpointGroup(group, rank))
    return io


def _raise_any(outcomes: list) -> list:
    for outcome in outcomes:
        if isinstance(outcome, Exception):
            raise outcome
    return outcomes


def test_each_rank_writes_its_rng_file_and_the_coordinator_the_shared_parts(tmp_path):
    states = [full_state(seed=0), full_state(seed=1)]  # rank 1's model differs: only rank 0's is written
    states[1]["rng"]["cpu"] = torch.Generator().manual_seed(7).get_state()
    target = tmp_path / "checkpoint-2"

    def work(rank, group):
        io = _io(rank, group)
        assert io.collective
        io.save(states[rank], target)
        group.exchange(rank, None)  # both saved: each rank reads back what it restores on resume
        return io.load(target)

    loaded = _raise_any(run_threads(2, work))
    manifest = read_manifest(target)
    assert manifest.parts["rng"] == ["rng_state_0.pth", "rng_state_1.pth"]
    assert manifest.metadata["world_size"] == 2
    for rank in range(2):
        assert_same(loaded[rank]["rng"], states[rank]["rng"])
        assert_same(loaded[rank]["model"], states[0]["model"])
    assert not staging_path(target).exists()


def test_a_failure_on_one_rank_fails_the_save_on_every_rank_and_leaves_the_last_checkpoint(tmp_path):
    states = [full_state(seed=rank) for rank in range(2)]

    def work(rank, group):
        io = _io(rank, group)
        io.save(states[rank], tmp_path / "checkpoint-1")
        broken = {**states[rank], "rng": dict(states[rank]["rng"])}
        if rank == 1:
            broken["rng"]["cpu"] = object()  # not loadable with weights_only: refused when written
        io.save(broken, tmp_path / "checkpoint-2")

    outcomes = run_threads(2, work)
    assert isinstance(outcomes[1], CheckpointError)
    assert "checkpoint part 'rng'['cpu'] is builtins.object" in str(outcomes[1])
    assert isinstance(outcomes[0], CheckpointError)
    assert "failed on another rank of the 2 writing it: rank 1: CheckpointError" in str(outcomes[0])
    assert not (tmp_path / "checkpoint-2").exists()
    assert not staging_path(tmp_path / "checkpoint-2").exists()
    assert get_last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-1")


def test_ranks_that_do_not_see_the_staging_folder_are_told_why(tmp_path):
    class LocalStorage(SafetensorsCheckpointIO):
        def prepare_staging(self, path):  # as if the folder were created on another machine's disk
            return staging_path(path)

    state = full_state()
    outcomes = run_threads(2, lambda rank, group: _io(rank, group, LocalStorage).save(state, tmp_path / "c-1"))
    for outcome in outcomes:
        assert isinstance(outcome, CheckpointError)
    assert "is not visible to rank 1 of 2" in str(outcomes[1])
    assert "set save_on_each_node=True" in str(outcomes[1])


def test_a_group_of_one_writes_alone(tmp_path):
    io = _io(0, ThreadGroup(1))
    assert not io.collective
    io.save(full_state(), tmp_path / "c")
    assert read_manifest(tmp_path / "c").parts["rng"] == ["rng_state.pth"]
    io.set_group(None)
    assert not io.collective


def test_strategy_save_checkpoint_runs_on_every_rank_of_a_collective_io(tmp_path):
    states = [full_state(seed=rank) for rank in range(2)]  # built apart: the threads share one RNG

    def work(rank, group):
        strategy = ThreadRankStrategy(group, rank)
        strategy.checkpoint_io = _io(rank, group)
        strategy.save_checkpoint(tmp_path / "c", states[rank])
        return strategy.load_checkpoint(tmp_path / "c")["rng"]

    rngs = _raise_any(run_threads(2, work))
    for rank in range(2):
        assert_same(rngs[rank], states[rank]["rng"])


def test_manager_saves_rotates_and_resumes_with_every_rank(tmp_path):
    states = {(step, rank): full_state(seed=10 * step + rank, step=step) for step in (1, 2) for rank in range(2)}

    def work(rank, group):
        manager = CheckpointManager(tmp_path, _io(rank, group), save_total_limit=1, global_rank=rank, local_rank=rank)
        for step in (1, 2):
            manager.save(step, states[step, rank])
        group.exchange(rank, None)
        return manager.resume(manager.resolve_resume(True))

    resumed = _raise_any(run_threads(2, work))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]
    for rank in range(2):
        assert_same(resumed[rank]["rng"], states[2, rank]["rng"])
        assert resumed[rank]["trainer_state"]["global_step"] == 2


def test_save_on_each_node_gives_each_node_a_checkpoint_with_its_ranks_rng_files(tmp_path):
    nodes = [ThreadGroup(2), ThreadGroup(2)]
    states = [full_state(seed=rank, step=3) for rank in range(4)]

    def work(rank, world):
        node, local = divmod(rank, 2)
        io = SafetensorsCheckpointIO()
        io.set_process(rank, 4)
        io.set_group(ThreadCheckpointGroup(nodes[node], local))
        folder = tmp_path / f"node{node}"
        manager = CheckpointManager(folder, io, save_on_each_node=True, global_rank=rank, local_rank=local)
        manager.save(3, states[rank])
        world.exchange(rank, None)
        return manager.resume(folder / "checkpoint-3")["rng"]

    rngs = _raise_any(run_threads(4, work))
    for node in range(2):
        files = read_manifest(tmp_path / f"node{node}" / "checkpoint-3").parts["rng"]
        assert files == [f"rng_state_{2 * node}.pth", f"rng_state_{2 * node + 1}.pth"]
    for rank in range(4):
        assert_same(rngs[rank], states[rank]["rng"])


def test_one_rng_state_for_several_processes_is_restored_by_each_with_a_warning(tmp_path, caplog):
    SafetensorsCheckpointIO().save(full_state(), tmp_path / "c")  # one process, or DDP before per-rank files
    io = SafetensorsCheckpointIO()
    io.set_process(1, 2)
    with caplog.at_level(logging.WARNING, logger="trainkit"):
        rng = io.load(tmp_path / "c", parts=["rng"])["rng"]
    assert_same(rng, full_state()["rng"])
    assert "holds one RNG state (rng_state.pth) for 2 processes: every process restores it" in caplog.text


def test_parts_other_ranks_pass_are_not_written(tmp_path):
    """The coordinator alone writes the parts the ranks share, whatever the others hold."""

    rng = full_state()["rng"]

    def work(rank, group):
        io = _io(rank, group)
        io.save({"rng": rng, "extra": torch.tensor([rank])}, tmp_path / "c")

    _raise_any(run_threads(2, work))
    assert read_manifest(tmp_path / "c").parts["extra"] == ["extra.pt"]
    assert SafetensorsCheckpointIO().load(tmp_path / "c", parts=["extra"])["extra"].item() == 0


@pytest.mark.parametrize("size", [1, 2])
def test_collective_flag_follows_the_group(size):
    io = SafetensorsCheckpointIO()
    io.set_group(ThreadCheckpointGroup(ThreadGroup(size), 0))
    assert io.collective is (size > 1)
    assert not SafetensorsCheckpointIO().collective


def test_a_sharded_part_refused_on_one_rank_stops_every_rank_before_the_collective_write(tmp_path):
    """torch.distributed.checkpoint is a collective: the ranks agree on the values first, or none enters it."""
    from trainkit.checkpoint.sharded_io import ShardedCheckpointIO, ShardedStateDict

    def work(rank, group):
        io = _io(rank, group, ShardedCheckpointIO)
        value = {"w": torch.ones(2), "hook": (lambda: None) if rank == 1 else 0}
        io.save({"model": ShardedStateDict(value)}, tmp_path / "checkpoint-1")

    outcomes = run_threads(2, work)
    assert "['hook'] is builtins.function" in str(outcomes[1])
    assert "checking the sharded part 'model' failed on another rank of the 2" in str(outcomes[0])
    assert list(tmp_path.iterdir()) == []
