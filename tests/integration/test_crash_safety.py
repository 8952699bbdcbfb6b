"""SIGKILL during checkpoint saves: every restart finds the newest complete checkpoint and resumes bit-exactly.

A training process that saves a ~1M-parameter model with AdamW state every step (so most of its
time is spent writing) is killed at random moments, ``TRAINKIT_CRASH_TRIALS`` times (default 20),
each restart resuming from what the previous one left. Then the run finishes, and its final
weights, optimizer, scheduler and RNG states must equal those of an uninterrupted run, bit for bit.
"""

from __future__ import annotations

import os
import random
from functools import partial
from pathlib import Path

import pytest

from tests.checkpoint_fixtures import assert_same
from tests.integration import crash_train_loop, crash_train_trainer
from tests.integration.crash_harness import run_and_kill, script_command, start_command, start_forked
from trainkit.checkpoint import SafetensorsCheckpointIO, get_last_checkpoint, list_complete_checkpoints
from trainkit.checkpoint.layout import checkpoint_step

TRIALS = int(os.environ.get("TRAINKIT_CRASH_TRIALS", "20"))
KILL_WINDOW_S = 0.5
LIMIT = 2


def _forked(*args: object):
    crash_train_loop.warm_up()
    return partial(start_forked, crash_train_loop.main, [str(arg) for arg in args])


def _command(*args: object):
    return partial(start_command, script_command(Path(crash_train_loop.__file__), *args))


def _newest_step(folder: Path) -> int | None:
    last = get_last_checkpoint(folder)
    return None if last is None else checkpoint_step(last)


def _kill_repeatedly(launcher, run_dir: Path, trials: int, seed: int) -> int:
    """Kill ``trials`` runs at random moments; check each restart; return the newest complete step."""
    rng = random.Random(seed)
    start = launcher("--output-dir", run_dir, "--max-steps", 10**6, "--save-total-limit", LIMIT)
    newest, while_saving = None, 0
    for index in range(trials):
        # every other kill aims at a save (right after its SAVING line), so that the share of kills
        # landing inside a save does not depend on how loaded the machine is; the others land anywhere
        if index % 2:
            trial = run_and_kill(start, delay=rng.uniform(0.0, KILL_WINDOW_S))
        else:
            trial = run_and_kill(start, delay=rng.uniform(0.0, 0.02), after="SAVING")
        assert trial.killed, trial.lines[-3:]
        assert trial.resumed_from == newest, "the restart did not resume from the newest complete checkpoint"
        newest = _newest_step(run_dir)
        while_saving += trial.killed_while_saving
        if trial.last_saved is None:  # a fresh start killed before its first save returned
            assert newest in (None, 1)
            continue
        # the last save that reported success is there, or the one in flight committed before the kill
        assert newest is not None
        assert trial.last_saved <= newest <= trial.last_saved + 1
        assert len(list_complete_checkpoints(run_dir)) <= LIMIT + 1  # + one committed before its rotation ran
        SafetensorsCheckpointIO().load(get_last_checkpoint(run_dir))  # every file verifies and parses
    assert while_saving >= trials // 2, f"only {while_saving} of {trials} kills landed in a save"
    assert newest is not None, "no trial got as far as a first checkpoint"
    return newest


def _finish_and_compare(
    launcher,
    run_dir: Path,
    reference_dir: Path,
    newest: int,
    parts: tuple[str, ...] = ("model", "optimizer", "scheduler", "rng", "trainer_state"),
) -> None:
    final_step = newest + 3
    finish = run_and_kill(launcher("--output-dir", run_dir, "--max-steps", final_step), delay=None)
    assert finish.resumed_from == newest
    assert "DONE" in finish.lines
    reference = launcher("--output-dir", reference_dir, "--max-steps", final_step, "--save-every", 10**6)
    assert "DONE" in run_and_kill(reference, delay=None).lines
    io = SafetensorsCheckpointIO()
    resumed = io.load(run_dir / f"checkpoint-{final_step}")
    uninterrupted = io.load(reference_dir / f"checkpoint-{final_step}")
    for part in parts:
        assert_same(resumed[part], uninterrupted[part], part)
    assert resumed["trainer_state"]["global_step"] == uninterrupted["trainer_state"]["global_step"] == final_step


@pytest.mark.slow
def test_sigkill_while_saving_never_loses_the_newest_complete_checkpoint(tmp_path):
    newest = _kill_repeatedly(_forked, tmp_path / "run", TRIALS, seed=7)
    _finish_and_compare(_forked, tmp_path / "run", tmp_path / "reference", newest)


@pytest.mark.slow
def test_the_harness_also_kills_fresh_interpreters(tmp_path):
    """The form a Trainer script will use: a separate ``python script.py`` per trial."""
    newest = _kill_repeatedly(_command, tmp_path / "run", trials=2, seed=11)
    _finish_and_compare(_forked, tmp_path / "run", tmp_path / "reference", newest)


def _forked_trainer(*args: object):
    crash_train_trainer.warm_up()
    return partial(start_forked, crash_train_trainer.main, [str(arg) for arg in args])


@pytest.mark.slow
def test_sigkill_while_a_trainer_saves(tmp_path):
    """The same trials against ``Trainer.train`` (checkpoint every step, resume_from_checkpoint=True)."""
    newest = _kill_repeatedly(_forked_trainer, tmp_path / "run", TRIALS, seed=13)
    # the trainer state also records the run's own settings (save_steps, log history): compare the training
    _finish_and_compare(
        _forked_trainer,
        tmp_path / "run",
        tmp_path / "reference",
        newest,
        parts=("model", "optimizer", "scheduler", "rng"),
    )
