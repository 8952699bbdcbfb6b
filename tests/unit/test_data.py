"""Samplers and collators: deterministic per-epoch order, sharding, skipping, length grouping."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trainkit.data.collators import RemoveColumnsCollator, default_data_collator
from trainkit.data.samplers import EpochSampler, LengthGroupedSampler, SkippableBatchSampler


def test_epoch_sampler_is_a_function_of_seed_and_epoch():
    a, b = EpochSampler(10, seed=3), EpochSampler(10, seed=3)
    b.set_epoch(1)
    b.set_epoch(0)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)
    assert sorted(a) == list(range(10))


def test_epoch_sampler_matches_torch_randperm():
    sampler = EpochSampler(7, seed=5)
    sampler.set_epoch(2)
    assert list(sampler) == torch.randperm(7, generator=torch.Generator().manual_seed(7)).tolist()


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 40), replicas=st.integers(1, 4), shuffle=st.booleans(), drop_last=st.booleans())
def test_shards_cover_the_global_order(n, replicas, shuffle, drop_last):
    samplers = [
        EpochSampler(n, shuffle=shuffle, seed=1, num_replicas=replicas, rank=r, drop_last=drop_last)
        for r in range(replicas)
    ]
    shards = [list(s) for s in samplers]
    assert len({len(s) for s in shards}) == 1
    interleaved = [shards[r][i] for i in range(len(shards[0])) for r in range(replicas)]
    assert interleaved == samplers[0].global_order()
    if not drop_last:
        assert set(interleaved) == set(range(n))


def test_skippable_batch_sampler_skips_once():
    batches = SkippableBatchSampler(EpochSampler(10, shuffle=False), 3, False)
    full = list(batches)
    batches.skip_next(2)
    assert list(batches) == full[2:]
    assert list(batches) == full
    assert len(batches) == 4


def test_length_grouped_sampler_groups_and_puts_longest_first():
    lengths = [1, 50, 3, 4, 10, 2, 7, 8, 9, 30, 11, 12, 5, 6, 40, 13]
    sampler = LengthGroupedSampler(lengths, batch_size=2, seed=0)
    order = list(sampler)
    assert sorted(order) == list(range(len(lengths)))
    assert lengths[order[0]] == max(lengths)
    assert order == list(LengthGroupedSampler(lengths, batch_size=2, seed=0))


def test_default_collator_stacks_and_renames_labels():
    features = [
        {"x": np.array([1.0, 2.0]), "label": 1, "text": "a"},
        {"x": np.array([3.0, 4.0]), "label": 0, "text": "b"},
    ]
    batch = default_data_collator(features)
    assert batch["labels"].dtype == torch.long
    assert batch["labels"].tolist() == [1, 0]
    assert batch["x"].shape == (2, 2)
    assert "text" not in batch


def test_default_collator_float_labels_and_tensors():
    batch = default_data_collator([{"label_ids": torch.tensor([0.5]), "y": torch.tensor(1)}] * 3)
    assert batch["labels"].shape == (3, 1)
    assert batch["y"].tolist() == [1, 1, 1]


def test_default_collator_refuses_non_dict_examples():
    with pytest.raises(TypeError, match="dict of tensors"):
        default_data_collator([1, 2])


def test_remove_columns_collator():
    collate = RemoveColumnsCollator(default_data_collator, {"x", "labels"})
    batch = collate([{"x": torch.tensor(1.0), "extra": torch.tensor(2.0), "labels": torch.tensor(0)}] * 2)
    assert set(batch) == {"x", "labels"}
    same = collate([{"x": torch.tensor(1.0), "labels": torch.tensor(0)}] * 2)
    assert set(same) == {"x", "labels"}
