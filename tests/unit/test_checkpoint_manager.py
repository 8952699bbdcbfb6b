"""CheckpointManager: naming, best tracking, rotation, save_only_model, ranks, resume discovery, overwrite."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.checkpoint_fixtures import assert_same, full_state
from trainkit import TrainingArguments
from trainkit.checkpoint import (
    CheckpointError,
    CheckpointManager,
    SafetensorsCheckpointIO,
    TorchCheckpointIO,
    get_last_checkpoint,
)


def _small_state(step: int) -> dict:
    return {"trainer_state": {"global_step": step}, "optimizer": {"step": step}, "model": {}}


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _save_all(manager: CheckpointManager, steps_and_metrics) -> None:
    for step, metric in steps_and_metrics:
        manager.save(step, _small_state(step), metric=metric)


def test_naming_and_latest(tmp_path):
    manager = CheckpointManager(tmp_path)
    assert manager.latest_checkpoint is None
    assert manager.best_checkpoint is None
    path = manager.save(7, _small_state(7))
    assert path == tmp_path / "checkpoint-7" == manager.latest_checkpoint
    assert _names(path) == [
        "checkpoint_manager.json",
        "manifest.json",
        "model.safetensors",
        "optimizer.pt",
        "trainer_state.json",
    ]


def test_greater_is_better_defaults_follow_transformers():
    assert CheckpointManager("x", metric_for_best_model="eval_loss").greater_is_better is False
    assert CheckpointManager("x", metric_for_best_model="accuracy").greater_is_better is True
    assert CheckpointManager("x", metric_for_best_model="loss", greater_is_better=True).greater_is_better is True
    assert CheckpointManager("x").greater_is_better is False


def test_best_tracking_is_strict_and_ignores_nan(tmp_path):
    manager = CheckpointManager(tmp_path, metric_for_best_model="loss")
    assert manager.record_metric(1, 2.0) is True
    assert manager.record_metric(2, 2.0) is False  # a tie is not an improvement
    assert manager.record_metric(3, float("nan")) is False
    assert manager.record_metric(4, 1.5) is True
    assert manager.best_metric == 1.5
    higher = CheckpointManager(tmp_path, metric_for_best_model="accuracy")
    assert higher.record_metric(1, 0.5)
    assert not higher.record_metric(2, 0.4)
    assert higher.record_metric(3, 0.6)


def test_metric_value_reads_the_eval_prefixed_metric():
    assert CheckpointManager("x", metric_for_best_model="loss").metric_value({"eval_loss": 0.5}) == 0.5
    assert CheckpointManager("x", metric_for_best_model="eval_acc").metric_value({"eval_acc": 1}) == 1.0
    with pytest.raises(KeyError, match=r"reads 'eval_f1'.*returned \['eval_loss'\]"):
        CheckpointManager("x", metric_for_best_model="f1").metric_value({"eval_loss": 0.5})
    with pytest.raises(ValueError, match="not set"):
        CheckpointManager("x").metric_value({"eval_loss": 0.5})


def test_best_checkpoint_is_the_saved_checkpoint_of_the_best_step(tmp_path):
    manager = CheckpointManager(tmp_path, metric_for_best_model="loss")
    _save_all(manager, [(1, 3.0), (2, 1.0), (3, 2.0)])
    assert manager.best_checkpoint == tmp_path / "checkpoint-2"
    manager.record_metric(4, 0.5)  # evaluated at a step that is not saved (as transformers: no folder, no best)
    manager.save(5, _small_state(5), metric=0.7)
    assert manager.best_checkpoint == tmp_path / "checkpoint-2"
    assert manager.best_metric == 0.5


def test_rotation_keeps_the_newest_and_the_best(tmp_path):
    manager = CheckpointManager(tmp_path, save_total_limit=2, metric_for_best_model="loss")
    _save_all(manager, [(1, 3.0), (2, 1.0), (3, 2.0), (4, 2.5), (5, 2.6)])
    assert _names(tmp_path) == ["checkpoint-2", "checkpoint-5"]
    assert manager.written_steps == [2, 5]


def test_limit_one_keeps_best_and_latest_then_finalize_keeps_only_the_best(tmp_path):
    manager = CheckpointManager(tmp_path, save_total_limit=1, metric_for_best_model="accuracy")
    _save_all(manager, [(1, 0.9), (2, 0.5), (3, 0.4)])
    assert _names(tmp_path) == ["checkpoint-1", "checkpoint-3"]
    assert manager.finalize() == [tmp_path / "checkpoint-3"]
    assert _names(tmp_path) == ["checkpoint-1"]


def test_without_limit_nothing_is_deleted(tmp_path):
    manager = CheckpointManager(tmp_path)
    _save_all(manager, [(1, None), (2, None), (3, None)])
    assert manager.finalize() == []
    assert len(_names(tmp_path)) == 3


def test_only_checkpoints_of_this_run_are_deleted(tmp_path):
    other = CheckpointManager(tmp_path)
    _save_all(other, [(100, None), (200, None)])
    manager = CheckpointManager(tmp_path, save_total_limit=1, overwrite_output_dir=True)
    assert manager.resolve_resume(False) is None
    _save_all(manager, [(1, None), (2, None), (3, None)])
    assert _names(tmp_path) == ["checkpoint-100", "checkpoint-200", "checkpoint-3"]


def test_a_resumed_run_keeps_rotating_what_it_wrote_before(tmp_path):
    first = CheckpointManager(tmp_path, save_total_limit=2, metric_for_best_model="loss")
    _save_all(first, [(1, 1.0), (2, 2.0), (3, 3.0)])
    assert _names(tmp_path) == ["checkpoint-1", "checkpoint-3"]
    second = CheckpointManager(tmp_path, save_total_limit=2, metric_for_best_model="loss")
    second.resume(second.resolve_resume(True))
    assert second.written_steps == [1, 3]
    assert second.best_checkpoint == tmp_path / "checkpoint-1"
    assert second.best_metric == 1.0
    assert second.latest_checkpoint == tmp_path / "checkpoint-3"
    _save_all(second, [(4, 4.0)])
    assert _names(tmp_path) == ["checkpoint-1", "checkpoint-4"]


def test_resume_from_another_folder_carries_only_the_best_metric(tmp_path):
    first = CheckpointManager(tmp_path / "a", metric_for_best_model="loss")
    _save_all(first, [(1, 1.0)])
    second = CheckpointManager(tmp_path / "b", save_total_limit=1, metric_for_best_model="loss")
    second.resume(tmp_path / "a" / "checkpoint-1")
    assert second.best_metric == 1.0
    assert second.written_steps == []
    assert second.best_checkpoint is None


def test_save_only_model_writes_only_the_model_and_cannot_be_resumed(tmp_path):
    manager = CheckpointManager(tmp_path, save_only_model=True)
    state = full_state()
    manager.save(1, state)
    assert _names(tmp_path / "checkpoint-1") == [
        "checkpoint_manager.json",
        "manifest.json",
        "model.safetensors",
        "trainer_state.json",
        "training_args.json",
    ]
    with pytest.raises(CheckpointError, match=r"lacks \['optimizer'\].*save_only_model=True"):
        CheckpointManager(tmp_path).resume(tmp_path / "checkpoint-1")
    assert_same(manager.load(tmp_path / "checkpoint-1", parts=["model"])["model"], state["model"])


def test_load_best_reads_the_best_model(tmp_path):
    manager = CheckpointManager(tmp_path, metric_for_best_model="loss")
    with pytest.raises(CheckpointError, match="no best checkpoint"):
        manager.load_best()
    states = {1: full_state(seed=1), 2: full_state(seed=2)}
    manager.save(1, states[1], metric=0.5)
    manager.save(2, states[2], metric=0.9)
    best = manager.load_best()
    assert set(best) == {"model"}
    assert_same(best["model"], states[1]["model"])


def test_the_manager_part_name_is_reserved(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        CheckpointManager(tmp_path).save(1, {"checkpoint_manager": {}})


@pytest.mark.parametrize(
    ("global_rank", "local_rank", "on_each_node", "writes"),
    [(0, 0, False, True), (2, 0, False, False), (2, 0, True, True), (1, 1, True, False)],
)
def test_which_process_writes(tmp_path, global_rank, local_rank, on_each_node, writes):
    manager = CheckpointManager(
        tmp_path, global_rank=global_rank, local_rank=local_rank, save_on_each_node=on_each_node, save_total_limit=1
    )
    assert manager.should_save is writes
    _save_all(manager, [(1, None), (2, None)])
    assert _names(tmp_path) == (["checkpoint-2"] if writes else [])
    assert manager.latest_checkpoint == tmp_path / "checkpoint-2"


def test_the_first_save_recovers_what_a_crash_left(tmp_path):
    (tmp_path / ".checkpoint-9.staging").mkdir(parents=True)
    CheckpointManager(tmp_path).save(1, _small_state(1))
    assert _names(tmp_path) == ["checkpoint-1"]


def test_the_io_is_pluggable(tmp_path):
    manager = CheckpointManager(tmp_path, TorchCheckpointIO())
    manager.save(1, full_state())
    assert (tmp_path / "checkpoint-1" / "pytorch_model.bin").is_file()
    assert isinstance(CheckpointManager(tmp_path).io, SafetensorsCheckpointIO)


def test_from_args_reads_the_checkpoint_fields(tmp_path):
    defaults = CheckpointManager.from_args(TrainingArguments(output_dir=str(tmp_path)))
    assert defaults.output_dir == tmp_path
    assert defaults.save_total_limit is None
    assert defaults.should_save
    args = SimpleNamespace(
        output_dir=str(tmp_path),
        save_total_limit=3,
        metric_for_best_model="accuracy",
        greater_is_better=None,
        save_only_model=True,
        save_on_each_node=True,
        overwrite_output_dir=True,
        process_index=3,
        local_process_index=1,
    )
    manager = CheckpointManager.from_args(args, TorchCheckpointIO())
    assert (manager.save_total_limit, manager.greater_is_better, manager.save_only_model) == (3, True, True)
    assert manager.should_save is False
    assert isinstance(manager.io, TorchCheckpointIO)


# ---------------------------------------------------------------------- resume


def test_resume_true_takes_the_newest_complete_checkpoint(tmp_path):
    manager = CheckpointManager(tmp_path)
    _save_all(manager, [(1, None), (2, None)])
    (tmp_path / "checkpoint-3").mkdir()  # interrupted by a crash
    assert manager.resolve_resume(True) == tmp_path / "checkpoint-2"


def test_resume_true_without_a_complete_checkpoint_lists_what_exists(tmp_path):
    (tmp_path / "checkpoint-3").mkdir(parents=True)
    with pytest.raises(CheckpointError, match=r"no complete checkpoint.*checkpoint-3 \(incomplete: .*no manifest"):
        CheckpointManager(tmp_path).resolve_resume(True)
    with pytest.raises(CheckpointError, match="No checkpoint-<step> folders"):
        CheckpointManager(tmp_path / "empty").resolve_resume(True)


def test_resume_from_a_path_that_does_not_exist_lists_the_checkpoints_found(tmp_path):
    manager = CheckpointManager(tmp_path)
    _save_all(manager, [(1, None), (2, None)])
    with pytest.raises(CheckpointError, match=r"'.*checkpoint-5' does not exist.*checkpoint-1; checkpoint-2"):
        manager.resolve_resume(str(tmp_path / "checkpoint-5"))
    with pytest.raises(CheckpointError, match=r"does not exist.*Checkpoints in .*checkpoint-2"):
        manager.resolve_resume(tmp_path / "elsewhere" / "checkpoint-5")


def test_resume_from_the_output_folder_itself_points_to_its_newest_checkpoint(tmp_path):
    manager = CheckpointManager(tmp_path / "out")
    _save_all(manager, [(1, None)])
    with pytest.raises(CheckpointError, match=r"a folder of checkpoints, not a checkpoint; its newest complete one"):
        manager.resolve_resume(tmp_path / "out")


def test_resume_from_an_incomplete_checkpoint_says_why(tmp_path):
    manager = CheckpointManager(tmp_path)
    _save_all(manager, [(1, None)])
    (tmp_path / "checkpoint-1" / "optimizer.pt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"not a complete checkpoint: .*optimizer\.pt has 1 bytes"):
        manager.resolve_resume(tmp_path / "checkpoint-1")


def test_resume_with_a_valid_path_returns_it(tmp_path):
    manager = CheckpointManager(tmp_path)
    _save_all(manager, [(1, None)])
    assert manager.resolve_resume(str(tmp_path / "checkpoint-1")) == tmp_path / "checkpoint-1"
    with pytest.raises(TypeError, match="bool or a path"):
        manager.resolve_resume(3)  # type: ignore[arg-type]


def test_a_fresh_run_into_a_folder_with_checkpoints_needs_overwrite_output_dir(tmp_path):
    _save_all(CheckpointManager(tmp_path), [(1, None)])
    with pytest.raises(CheckpointError, match=r"holds checkpoints \(checkpoint-1\).*resume_from_checkpoint=True"):
        CheckpointManager(tmp_path).resolve_resume(False)
    with pytest.raises(CheckpointError, match="overwrite_output_dir=True"):
        CheckpointManager(tmp_path).resolve_resume(None)
    assert CheckpointManager(tmp_path, overwrite_output_dir=True).resolve_resume(False) is None
    assert CheckpointManager(tmp_path / "new").resolve_resume(False) is None


def test_resume_restores_every_part(tmp_path):
    state = full_state()
    manager = CheckpointManager(tmp_path)
    manager.save(2, state)
    resumed = CheckpointManager(tmp_path).resume(get_last_checkpoint(tmp_path))
    assert_same(resumed, state)


def test_a_deletion_interrupted_by_a_crash_is_finished_after_resume(tmp_path, monkeypatch):
    first = CheckpointManager(tmp_path, save_total_limit=1)
    _save_all(first, [(1, None)])
    monkeypatch.setattr(first, "_rotate", lambda latest_step: None)  # killed right after the commit
    _save_all(first, [(2, None)])
    assert _names(tmp_path) == ["checkpoint-1", "checkpoint-2"]
    second = CheckpointManager(tmp_path, save_total_limit=1)
    second.resume(second.resolve_resume(True))
    _save_all(second, [(3, None)])
    assert _names(tmp_path) == ["checkpoint-3"]
