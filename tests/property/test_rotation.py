"""Hypothesis: rotation keeps the latest and the best, honours save_total_limit, deletes only this run's checkpoints."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from trainkit.checkpoint import CheckpointManager, select_checkpoints_to_delete
from trainkit.checkpoint.rotation import is_better_metric, select_checkpoints_to_delete_at_end

_limits = st.one_of(st.none(), st.integers(-1, 5))
_metrics = st.one_of(st.none(), st.floats(-10, 10, allow_nan=False), st.just(float("nan")))
# (step gap, metric) pairs: steps strictly increase, as a training run saves them
_runs = st.lists(st.tuples(st.integers(1, 3), _metrics), min_size=1, max_size=12)
_foreign = st.sets(st.integers(0, 40), max_size=4)


def _simulate(run, limit, greater_is_better, foreign):
    """Play a run against the pure policy; check the invariants after every save."""
    present = set(foreign)
    written: list[int] = []
    best_metric = best_metric_step = best_checkpoint = None
    step = 40
    for gap, metric in run:
        step += gap
        if metric is not None and is_better_metric(metric, best_metric, greater_is_better):
            best_metric, best_metric_step = metric, step
        if best_metric_step == step:
            best_checkpoint = step
        present.add(step)
        written.append(step)
        doomed = select_checkpoints_to_delete(written, present, limit, best_checkpoint, step)
        assert set(doomed) <= set(written), "only this run's checkpoints are deleted"
        assert step not in doomed, "the latest is kept"
        assert best_checkpoint not in doomed, "the best is kept"
        present -= set(doomed)
        written = [s for s in written if s not in doomed]
        assert foreign <= present
        if limit is not None and limit > 0:
            extra = 1 if best_checkpoint not in (None, step) else 0
            assert len(written) <= limit + extra
            assert len(written) <= max(limit, 1 + extra)
        else:
            assert doomed == []
    return written, present, best_checkpoint


@settings(max_examples=400, deadline=None)
@given(_runs, _limits, st.booleans(), _foreign)
def test_rotation_invariants(run, limit, greater_is_better, foreign):
    written, present, best = _simulate(run, limit, greater_is_better, foreign)
    at_end = select_checkpoints_to_delete_at_end(written, present, limit, best)
    assert set(at_end) <= set(written)
    assert best not in at_end
    if limit == 1 and best is not None:
        assert set(written) - set(at_end) == {best}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 30), max_size=10, unique=True), st.integers(1, 5), st.integers(0, 30))
def test_rotation_keeps_the_newest_when_there_is_no_best(steps, limit, latest):
    ours = sorted({*steps, latest})
    doomed = select_checkpoints_to_delete(ours, ours, limit, None, latest)
    kept = [s for s in ours if s not in doomed]
    others = [s for s in ours if s != latest]
    assert kept == sorted({latest, *others[len(others) - min(len(others), limit - 1) :]})


@settings(max_examples=30, deadline=None)
@given(_runs, _limits, st.booleans(), st.sets(st.integers(0, 40), max_size=2))
def test_the_manager_applies_the_policy_on_disk(run, limit, greater_is_better, foreign):
    folder = Path(tempfile.mkdtemp(prefix="rotation-"))
    try:
        for step in foreign:
            CheckpointManager(folder).save(step, {"trainer_state": {"global_step": step}})
        manager = CheckpointManager(
            folder,
            save_total_limit=limit,
            metric_for_best_model="score",
            greater_is_better=greater_is_better,
            overwrite_output_dir=True,
        )
        expected_written, expected_present, expected_best = _simulate(run, limit, greater_is_better, foreign)
        step = 40
        for gap, metric in run:
            step += gap
            manager.save(step, {"trainer_state": {"global_step": step}}, metric=metric)
        on_disk = {int(p.name.split("-")[1]) for p in folder.iterdir()}
        assert on_disk == expected_present
        assert manager.written_steps == expected_written
        assert manager.best_checkpoint == (None if expected_best is None else folder / f"checkpoint-{expected_best}")
    finally:
        shutil.rmtree(folder)
