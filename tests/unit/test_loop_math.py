"""Pure pieces of the loop: the training plan, accumulation windows, micro-batch weights."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from trainkit.loops.plan import plan_training, resume_position
from trainkit.loops.step import count_label_tokens, iter_windows, make_window, micro_batch_weight


def test_plan_epochs_and_max_steps():
    plan = plan_training(10, 3, 2.0, -1)
    assert (plan.updates_per_epoch, plan.max_steps, plan.num_epochs) == (4, 8, 2)
    assert plan_training(10, 3, 2.0, 9).num_epochs == 3
    assert plan_training(10, 1, 0.5, -1).max_steps == 5


def test_plan_errors():
    with pytest.raises(ValueError, match="max_steps"):
        plan_training(None, 1, 3.0, -1)
    with pytest.raises(ValueError, match="empty"):
        plan_training(0, 1, 1.0, -1)
    with pytest.raises(ValueError, match="no optimizer step"):
        plan_training(10, 1, 0.0, -1)


@given(batches=st.integers(1, 50), accum=st.integers(1, 8), step=st.integers(0, 200))
def test_resume_position_is_window_aligned(batches, accum, step):
    plan = plan_training(batches, accum, 100.0, -1)
    epochs, consumed = resume_position(step, plan, accum)
    assert epochs == step // plan.updates_per_epoch
    assert consumed % accum == 0
    assert consumed < batches or consumed == 0


@given(n=st.integers(0, 30), accum=st.integers(1, 7))
def test_windows_split_an_epoch(n, accum):
    windows = list(iter_windows(iter(range(n)), n, accum))
    assert [x for w in windows for x in w] == list(range(n))
    assert all(len(w) == accum for w in windows[:-1])
    assert len(windows) == math.ceil(n / accum)


def test_windows_without_length_stop_when_exhausted():
    assert list(iter_windows(iter(range(5)), None, 2)) == [[0, 1], [2, 3], [4]]


def test_token_count_and_weights():
    batch = {"labels": torch.tensor([[1, -100, 2], [-100, -100, 3]])}
    assert count_label_tokens(batch, ["labels"]) == 3
    assert count_label_tokens({"x": torch.zeros(2)}, ["labels"]) is None
    window = make_window([batch, {"labels": torch.tensor([[4, 5, 6]])}], ["labels"])
    assert (window.num_items, window.num_samples) == (6, 3)
    assert micro_batch_weight(window, 3, 2, False) == pytest.approx(0.5)
    assert micro_batch_weight(window, 3, 2, True) == 1.0
    no_labels = make_window([{"x": torch.zeros(2, 1)}, {"x": torch.zeros(1, 1)}], ["labels"])
    assert micro_batch_weight(no_labels, None, 2, False) == pytest.approx(2 / 3)


def test_window_counts_are_summed_over_ranks():
    window = make_window([{"labels": torch.tensor([1, 2])}], ["labels"], lambda v: [v[0] * 4, v[1] * 4], 4)
    assert (window.num_items, window.num_samples, window.world_factor) == (8, 8, 4)
    assert micro_batch_weight(window, 2, 2, False) == pytest.approx(1.0)  # 2/8 of the tokens, times 4 ranks
