"""DeepSpeed's pieces that run without a process group: the factory's choices and errors, the precision,
the collective checkpoint IO (with a stand-in engine), and the Trainer hooks DeepSpeed relies on.

The 2-process engine runs are in tests/integration/test_deepspeed.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from tests.helpers import RegressionDataset, RegressionModel, quiet_args
from trainkit import Trainer, TrainingArguments
from trainkit.checkpoint import CheckpointError, CheckpointManager, get_last_checkpoint
from trainkit.checkpoint.deepspeed_io import DeepSpeedCheckpointIO, SavedEngine, _writer_rank
from trainkit.checkpoint.layout import PART_DEEPSPEED, PART_RNG, PART_TRAINER_STATE
from trainkit.checkpoint.safetensors_io import SafetensorsCheckpointIO
from trainkit.factory import build_components, build_strategy
from trainkit.precision.deepspeed import DeepSpeedPrecision
from trainkit.strategies.single_device import SingleDeviceStrategy

LAUNCHED = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
ZERO2 = {"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": "auto"}
needs_deepspeed = pytest.mark.skipif(
    not __import__("importlib").util.find_spec("deepspeed"), reason="the deepspeed extra is not installed"
)


def ds_args(tmp_path, config=None, **kwargs):
    args = quiet_args(str(tmp_path), use_cpu=True, **kwargs)
    args.deepspeed = ZERO2 if config is None else config  # set after construction: issue 9 is not merged yet
    return args


@pytest.fixture
def issue_9(monkeypatch):
    """TrainingArguments accept ``deepspeed`` as they will once issue 9 is listed as implemented."""
    import trainkit.args_support as support

    monkeypatch.setattr(support, "IMPLEMENTED_ISSUES", support.IMPLEMENTED_ISSUES | {9})


# ----------------------------------------------------------------------- errors
def test_without_deepspeed_installed_the_error_names_the_extra(tmp_path, monkeypatch):
    import trainkit.utils.imports as imports

    monkeypatch.setattr(imports, "package_available", lambda requirement: False)
    with pytest.raises(ImportError, match=r"needs the package 'deepspeed'.*pip install 'trainkit\[deepspeed\]'"):
        build_strategy(ds_args(tmp_path), environ=LAUNCHED)
    from trainkit.strategies.deepspeed import DeepSpeedStrategy

    with pytest.raises(ImportError, match=r"trainkit\[deepspeed\]"):
        DeepSpeedStrategy(ZERO2)


def test_fsdp_and_deepspeed_together_are_refused(tmp_path, issue_9):
    with pytest.raises(ValueError, match="fsdp and deepspeed are exclusive"):
        TrainingArguments(output_dir=str(tmp_path), fsdp="full_shard", deepspeed=ZERO2)


@needs_deepspeed
def test_an_invalid_config_is_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"zero_optimization.stage=5 is not a ZeRO stage"):
        build_strategy(ds_args(tmp_path, {"zero_optimization": {"stage": 5}}), environ=LAUNCHED)


@needs_deepspeed
def test_without_a_launcher_the_error_says_how_to_launch(tmp_path):
    with pytest.raises(ValueError, match=r"torchrun --nproc_per_node.*deepspeed --num_gpus"):
        build_strategy(ds_args(tmp_path), environ={})


# ---------------------------------------------------------------------- factory
@needs_deepspeed
def test_the_factory_builds_a_filled_strategy_with_its_precision_and_io(tmp_path):
    args = ds_args(tmp_path, {"zero_optimization": {"stage": 3}, "bf16": {"enabled": "auto"}}, bf16=True)
    args.save_safetensors = False
    components = build_components(args, strategy=build_strategy(args, environ=LAUNCHED))
    strategy = components.strategy
    assert type(strategy).__name__ == "DeepSpeedStrategy"
    assert strategy.config["bf16"] == {"enabled": True}
    assert strategy.config["train_batch_size"] == 8 * 1 * 2  # per device x accumulation x WORLD_SIZE
    assert (strategy.zero_stage, strategy.shards_parameters) == (3, True)
    assert (components.precision.name, components.precision.compute_dtype) == ("deepspeed-bf16", torch.bfloat16)
    assert isinstance(components.checkpoint_io, DeepSpeedCheckpointIO)
    assert components.checkpoint_io.model_file_name == "pytorch_model.bin"


@needs_deepspeed
def test_the_configs_precision_cannot_be_replaced(tmp_path):
    from trainkit import MixedPrecision

    args = ds_args(tmp_path)
    strategy = build_strategy(args, environ=LAUNCHED)
    with pytest.raises(ValueError, match="takes its precision from its own configuration"):
        build_components(args, strategy=strategy, precision=MixedPrecision("bf16"))


@needs_deepspeed
def test_arguments_must_agree_with_a_hand_built_strategys_precision(tmp_path):
    from trainkit.strategies.deepspeed import DeepSpeedStrategy
    from trainkit.strategies.environment import ProcessEnvironment

    environment = ProcessEnvironment.from_environ(LAUNCHED)
    strategy = DeepSpeedStrategy({"bf16": {"enabled": True}}, environment=environment, use_cpu=True)
    with pytest.raises(ValueError, match=r"ask for fp32 .* runs bf16"):
        build_components(ds_args(tmp_path), strategy=strategy)


@needs_deepspeed
def test_a_precision_other_than_the_configs_is_refused():
    from trainkit.strategies.deepspeed import DeepSpeedStrategy
    from trainkit.strategies.environment import ProcessEnvironment

    environment = ProcessEnvironment.from_environ(LAUNCHED)
    with pytest.raises(ValueError, match=r"the config runs deepspeed-fp32 .* DeepSpeedPrecision\('bf16'"):
        DeepSpeedStrategy(ZERO2, environment=environment, precision=DeepSpeedPrecision("bf16"))


@needs_deepspeed
def test_the_engines_checkpoints_need_a_collective_io():
    from trainkit.strategies.deepspeed import DeepSpeedStrategy
    from trainkit.strategies.environment import ProcessEnvironment

    strategy = DeepSpeedStrategy(ZERO2, environment=ProcessEnvironment.from_environ(LAUNCHED), use_cpu=True)
    with pytest.raises(ValueError, match=r"must be collective .* got SafetensorsCheckpointIO"):
        strategy.checkpoint_io = SafetensorsCheckpointIO()


@needs_deepspeed
@pytest.mark.parametrize(
    ("config", "skips"),
    [
        ({"zero_optimization": {"stage": 0}}, False),  # a plain torch optimizer: the loop's norm check guards it
        ({"zero_optimization": {"stage": 1}}, True),
        ({"bf16": {"enabled": True}}, True),
        ({"bf16": {"enabled": True, "check_grad_overflow": False}}, False),
    ],
)
def test_the_engine_precision_says_whether_the_engine_skips_overflows(config, skips):
    from trainkit.strategies.deepspeed import engine_precision

    assert engine_precision(config).skips_nonfinite_gradients is skips


def test_the_command_line_takes_a_config_path(tmp_path, issue_9):
    from trainkit import ArgumentParser
    from trainkit.strategies.deepspeed_options import deepspeed_config_from_arguments

    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 2}, "gradient_clipping": "auto"}))
    (args,) = ArgumentParser(TrainingArguments).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--deepspeed", str(path), "--max_grad_norm", "0.3"]
    )
    assert args.deepspeed == str(path)  # a path stays a path (training_args.json records it)
    assert deepspeed_config_from_arguments(args, 1)["gradient_clipping"] == 0.3


# -------------------------------------------------------------------- precision
def test_the_precision_casts_floating_inputs_only_and_leaves_the_step_to_the_engine():
    precision = DeepSpeedPrecision("bf16")
    batch = precision.convert_input({"x": torch.ones(2), "ids": torch.ones(2, dtype=torch.long)})
    assert (batch["x"].dtype, batch["ids"].dtype) == (torch.bfloat16, torch.long)
    assert precision.convert_module(torch.nn.Linear(2, 2)).weight.dtype == torch.bfloat16
    assert DeepSpeedPrecision().convert_input(torch.ones(1)).dtype == torch.float32
    assert (precision.name, DeepSpeedPrecision().name, precision.state_dict()) == (
        "deepspeed-bf16",
        "deepspeed-fp32",
        {},
    )
    with pytest.raises(RuntimeError, match="use it with DeepSpeedStrategy"):
        precision.pre_backward(torch.ones(()))


# --------------------------------------------------------------- checkpoint IO
class StandInEngine:
    """Writes files named as DeepSpeed's engine does (``engine.save_checkpoint``), on one process."""

    def __init__(self, step: int = 3, fail: bool = False) -> None:
        self.global_steps, self.fail = step, fail

    def save_checkpoint(self, save_dir: str, tag: str, save_latest: bool) -> None:
        if self.fail:
            raise OSError("No space left on device")
        folder = Path(save_dir) / tag
        folder.mkdir(parents=True)
        torch.save({"module": {}}, folder / "mp_rank_00_model_states.pt")
        torch.save({"optimizer_state_dict": {}}, folder / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
        (Path(save_dir) / "zero_to_fp32.py").write_text("# recovery script\n")
        if save_latest:
            (Path(save_dir) / "latest").write_text(tag)


def _parts(engine):
    return {PART_DEEPSPEED: engine, PART_TRAINER_STATE: {"global_step": 3}, PART_RNG: {"cpu": torch.ones(2)}}


def test_the_engine_checkpoint_is_committed_with_a_manifest_and_read_back_as_a_saved_engine(tmp_path):
    io = DeepSpeedCheckpointIO()
    manager = CheckpointManager(tmp_path, io, save_total_limit=1)
    manager.save(3, _parts(StandInEngine(3)))
    manager.save(6, _parts(StandInEngine(6)))
    assert get_last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-6")
    assert not (tmp_path / "checkpoint-3").exists()  # rotated like any checkpoint
    manifest = json.loads((tmp_path / "checkpoint-6" / "manifest.json").read_text())
    assert sorted(manifest["parts"][PART_DEEPSPEED]) == [
        "global_step6/mp_rank_00_model_states.pt",
        "global_step6/zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "latest",
        "zero_to_fp32.py",
    ]
    state = manager.resume(tmp_path / "checkpoint-6", required=[PART_DEEPSPEED])
    assert state[PART_DEEPSPEED] == SavedEngine(tmp_path / "checkpoint-6", "global_step6")
    assert state[PART_TRAINER_STATE] == {"global_step": 3}


def test_a_damaged_shard_is_named_before_deepspeed_reads_it(tmp_path):
    io = DeepSpeedCheckpointIO()
    io.save(_parts(StandInEngine()), tmp_path / "checkpoint-3")
    shard = tmp_path / "checkpoint-3" / "global_step3" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    data = bytearray(shard.read_bytes())
    data[-20] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"zero_pp_rank_0_mp_rank_00_optim_states\.pt is corrupted"):
        io.load(tmp_path / "checkpoint-3")


def test_a_failed_engine_save_leaves_no_checkpoint(tmp_path):
    io = DeepSpeedCheckpointIO()
    with pytest.raises(OSError, match="No space left"):
        io.save(_parts(StandInEngine(fail=True)), tmp_path / "checkpoint-3")
    assert list(tmp_path.iterdir()) == []


def test_shards_are_sealed_by_the_rank_that_wrote_them():
    assert _writer_rank("global_step3/zero_pp_rank_1_mp_rank_00_optim_states.pt", 2) == 1
    assert _writer_rank("global_step3/mp_rank_00_model_states.pt", 2) == 0
    assert _writer_rank("latest", 2) == 0


class RecordingIO(SafetensorsCheckpointIO):
    collective = True

    def __init__(self) -> None:
        super().__init__()
        self.saved: list[list[str]] = []

    def save(self, state, path):  # type: ignore[no-untyped-def]
        self.saved.append(sorted(state))


def test_every_rank_calls_a_collective_io_with_its_parts(tmp_path):
    io = RecordingIO()
    manager = CheckpointManager(tmp_path, io, global_rank=1, local_rank=1)
    manager.save(1, {"model": {}, PART_RNG: {}})
    assert io.saved == [["model", PART_RNG]]  # no checkpoint_manager.json: rank 0 writes that


# ---------------------------------------------------- Trainer hooks DeepSpeed uses
class BuildsOptimizer(SingleDeviceStrategy):
    """Builds its own optimizer in setup_optimizers (as DeepSpeed does from its config) and clips in the step."""

    builds_optimizer = True

    def __init__(self) -> None:
        super().__init__("cpu")
        self.steps: tuple[int, int] | None = None

    def set_training_steps(self, num_training_steps: int, num_warmup_steps: int) -> None:
        self.steps = (num_training_steps, num_warmup_steps)

    def setup_optimizers(self, model, optimizer, scheduler):  # type: ignore[no-untyped-def]
        assert optimizer is None
        assert scheduler is None
        return model, torch.optim.SGD(model.parameters(), lr=0.1), None

    def clip_gradients(self, model, optimizer, max_norm):  # type: ignore[no-untyped-def]
        return None

    def step_grad_norm(self) -> torch.Tensor:
        return torch.tensor(7.0)


def test_the_registry_scheduler_runs_on_an_optimizer_the_strategy_built(tmp_path):
    args = quiet_args(str(tmp_path), max_steps=4, warmup_steps=2, logging_steps=1, logging_strategy="steps")
    trainer = Trainer(RegressionModel(), args, train_dataset=RegressionDataset(16), strategy=BuildsOptimizer())
    trainer.train()
    assert isinstance(trainer.optimizer, torch.optim.SGD)
    assert trainer.lr_scheduler.optimizer is trainer.optimizer
    assert trainer.strategy.steps == (4, 2)
    assert [h["learning_rate"] for h in trainer.state.log_history if "loss" in h] == pytest.approx(
        [0.0, 0.05, 0.1, 0.05]
    )
    assert [h["grad_norm"] for h in trainer.state.log_history if "loss" in h] == [7.0] * 4  # the step's own norm


def test_checkpoints_hold_the_parts_the_strategy_chooses(tmp_path):
    class EngineParts(SingleDeviceStrategy):
        def checkpoint_parts(self, model, optimizer, include_optimizer=True):  # type: ignore[no-untyped-def]
            return {"engine": {"weights": torch.ones(1)}}

    args = quiet_args(str(tmp_path), max_steps=1, save_strategy="steps", save_steps=1)
    Trainer(RegressionModel(), args, train_dataset=RegressionDataset(4), strategy=EngineParts("cpu")).train()
    files = {path.name for path in (tmp_path / "checkpoint-1").iterdir()}
    assert "engine.pt" in files
    assert not {"model.safetensors", "optimizer.pt"} & files


class Pickled:
    """Something a crafted checkpoint file could hold."""


@needs_deepspeed
def test_deepspeeds_files_are_read_weights_only(tmp_path):
    from deepspeed.runtime.zero.config import ZeroStageEnum

    from trainkit.strategies.deepspeed_weights import safe_engine_loads

    torch.save({"zero_stage": ZeroStageEnum.gradients}, tmp_path / "ours.pt")
    torch.save({"payload": Pickled()}, tmp_path / "crafted.pt")
    with safe_engine_loads(tmp_path):
        assert torch.load(tmp_path / "ours.pt", weights_only=False)["zero_stage"] == ZeroStageEnum.gradients
    crafted = pytest.raises(CheckpointError, match=r"cannot be loaded safely .*Unsupported global.*Pickled")
    with crafted, safe_engine_loads(tmp_path):
        torch.load(tmp_path / "crafted.pt", weights_only=False)  # what DeepSpeed passes
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ
