"""Evaluation outputs across ranks: sampler padding, row trimming, interleaving back to dataset order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.distributed_helpers import run_ranks
from trainkit.data.samplers import EpochSampler
from trainkit.loops.gather import EvalSharding, RankGather, eval_sharding, per_example, real_samples_of, take_rows


@pytest.mark.parametrize(("size", "world"), [(7, 2), (5, 2), (10, 4), (3, 4), (8, 2)])
def test_real_samples_are_the_positions_before_the_dataset_end(size, world):
    samplers = [EpochSampler(size, shuffle=False, num_replicas=world, rank=r) for r in range(world)]
    real = [real_samples_of(s) for s in samplers]
    assert sum(real) == size
    for rank, sampler in enumerate(samplers):  # the first `real` indices of each rank are its own, then repeats
        positions = [rank + world * i for i in range(len(sampler))]
        assert [p < size for p in positions] == [i < real[rank] for i in range(len(sampler))]


def test_torch_distributed_sampler_is_understood_too():
    sampler = torch.utils.data.DistributedSampler(range(5), num_replicas=2, rank=1, shuffle=False)
    assert real_samples_of(sampler) == 2
    assert real_samples_of(torch.utils.data.SequentialSampler(range(5))) is None


def test_valid_rows_cut_the_last_batch():
    sharding = EvalSharding(world_size=2, real_rows=3)
    assert [sharding.valid_rows(seen, 2) for seen in (0, 2, 4)] == [2, 1, 0]
    assert EvalSharding(world_size=2).valid_rows(4, 2) == 2


def test_eval_sharding_of_a_loader():
    sampler = EpochSampler(7, shuffle=False, num_replicas=2, rank=1)
    loader = torch.utils.data.DataLoader(range(7), sampler=sampler, batch_size=2)
    assert eval_sharding(loader, 2) == EvalSharding(2, interleaved=True, real_rows=3)
    assert eval_sharding(torch.utils.data.DataLoader(range(7)), 2) == EvalSharding(2, interleaved=False)
    assert eval_sharding(loader, 1) == EvalSharding()


def test_take_rows_keeps_the_first_examples_of_every_batch_field():
    batch = {"ids": torch.arange(6).reshape(3, 2), "text": ["a", "b", "c"], "scale": torch.tensor(2.0), "k": 3}
    cut = take_rows(batch, 1, 3)
    assert cut["ids"].tolist() == [[0, 1]]
    assert cut["text"] == ["a"]
    assert cut["scale"].item() == 2.0
    assert cut["k"] == 3
    assert [t.tolist() for t in take_rows((torch.arange(3), torch.ones(3)), 2, 3)] == [[0, 1], [1.0, 1.0]]


def test_per_example_accepts_lists_and_tensors_only():
    assert per_example(["x", "y"]) == ["x", "y"]
    assert [a.tolist() for a in per_example(torch.arange(4).reshape(2, 2))] == [[0, 1], [2, 3]]
    with pytest.raises(TypeError, match="eval_use_gather_object=True"):
        per_example({"a": 1})


def test_gather_interleaves_pads_lengths_and_drops_missing_rows():
    # rank r holds positions r, r+2, ...; rank 1 lacks its last row (sampler padding cut before the forward)
    local = {0: torch.tensor([[0, 0, 0], [2, 2, 2]]), 1: torch.tensor([[1, 1]])}

    def work(strategy):
        return RankGather(strategy, EvalSharding(2, interleaved=True)).tensors(local[strategy.global_rank])

    for out in run_ranks(2, work):
        assert out.tolist() == [[0, 0, 0], [1, 1, -100], [2, 2, 2]]


def test_gather_of_streams_keeps_rank_order():
    def work(strategy):
        mine = torch.full((strategy.global_rank + 1,), strategy.global_rank)
        return RankGather(strategy, EvalSharding(2, interleaved=False)).tensors(mine)

    assert [t.tolist() for t in run_ranks(2, work)] == [[0, 1, 1], [0, 1, 1]]


def test_gather_objects_interleaves_examples():
    local = {0: ["a", "c", "e"], 1: ["b", "d"]}

    def work(strategy):
        return RankGather(strategy, EvalSharding(2)).objects(local[strategy.global_rank])

    assert run_ranks(2, work) == [["a", "b", "c", "d", "e"]] * 2


def test_one_rank_gathers_nothing():
    value = (torch.ones(2), np.zeros(1))
    gather = RankGather(None, EvalSharding())
    assert gather.tensors(value) is value
    assert gather.objects(["a"]) == ["a"]
