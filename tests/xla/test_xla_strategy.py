"""XLAStrategy on CPU PJRT: the Trainer's results equal the CPU run's; device loader, step marks, state on CPU."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

torch_xla = pytest.importorskip("torch_xla")

import torch  # noqa: E402
import torch_xla.core.xla_model as xm  # noqa: E402
import torch_xla.debug.metrics as met  # noqa: E402

from tests.helpers import TokenDataset, TokenModel, quiet_args  # noqa: E402
from tests.xla.helpers import (  # noqa: E402
    FP32_TOLERANCE,
    HALF_TOLERANCE,
    assert_runs_agree,
    pad_collate,
    train_evaluate_predict,
)
from trainkit import Trainer, TrainerCallback, TrainingArguments  # noqa: E402
from trainkit.checkpoint.io import CheckpointIO  # noqa: E402
from trainkit.factory import build_components, build_xla_strategy  # noqa: E402
from trainkit.strategies.single_device import SingleDeviceStrategy  # noqa: E402
from trainkit.strategies.xla import XLAStrategy  # noqa: E402
from trainkit.strategies.xla_loader import XLADeviceLoader  # noqa: E402
from trainkit.strategies.xla_spmd import XLASPMDStrategy  # noqa: E402

pytestmark = pytest.mark.xla


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return train_evaluate_predict(SingleDeviceStrategy("cpu"), str(tmp_path_factory.mktemp("cpu")))


# ------------------------------------------------------------------ train / evaluate / predict
def test_train_evaluate_predict_equal_the_cpu_run(cpu_run: Any, tmp_path: Path):
    xla = train_evaluate_predict(XLAStrategy(), str(tmp_path))
    assert next(xla.trainer.model.parameters()).device.type == "xla"
    assert_runs_agree(cpu_run, xla, FP32_TOLERANCE)


@pytest.mark.parametrize("flag", ["bf16", "fp16"])
def test_mixed_precision_on_xla_matches_the_cpu_within_half_tolerance(flag: str, tmp_path: Path):
    cpu = train_evaluate_predict(SingleDeviceStrategy("cpu"), str(tmp_path / "cpu"), **{flag: True})
    xla = train_evaluate_predict(XLAStrategy(), str(tmp_path / "xla"), **{flag: True})
    assert xla.trainer.strategy.precision.name == f"{flag}-mixed"
    assert_runs_agree(cpu, xla, HALF_TOLERANCE, relative=HALF_TOLERANCE)


def test_bf16_autocast_computes_in_bf16_on_the_xla_device(tmp_path: Path):
    trainer = Trainer(TokenModel(), quiet_args(str(tmp_path), bf16=True), strategy=XLAStrategy())
    trainer._prepare_model()
    batch = trainer.strategy.batch_to_device(pad_collate([TokenDataset(2)[0], TokenDataset(2)[1]]))
    with trainer.strategy.forward_context():
        logits = trainer.model_wrapped(**batch)["logits"]
    assert logits.device.type == "xla"
    assert logits.dtype == torch.bfloat16


def test_adamw_torch_xla_is_torch_xla_syncfree_adamw_and_matches_adamw_torch(cpu_run: Any, tmp_path: Path):
    from torch_xla.amp.syncfree import AdamW

    xla = train_evaluate_predict(XLAStrategy(), str(tmp_path), optim="adamw_torch_xla")
    assert type(xla.trainer.optimizer) is AdamW
    assert_runs_agree(cpu_run, xla, FP32_TOLERANCE)


class CompileCounter(TrainerCallback):
    def __init__(self) -> None:
        self.after_step: list[int] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        xm.wait_device_ops()
        data = met.metric_data("CompileTime")
        self.after_step.append(int(data[0]) if data else 0)


def test_steps_after_the_second_reuse_the_compiled_graphs(tmp_path: Path):
    """The changing learning rate (warm-up, decay) and token counts are graph inputs, not constants.

    Every window here has micro-batches of equal token counts: torch_xla shares equal scalars, so a
    window whose two weights are equal traces a second variant of the graph (compiled once) than one
    whose weights differ. The optimizer's first step creates its state: a graph of its own.
    """
    counter = CompileCounter()
    args = quiet_args(
        str(tmp_path), per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=10, warmup_steps=3
    )
    data = TokenDataset(96, pad=[0] * 96)
    Trainer(TokenModel(), args, train_dataset=data, strategy=XLAStrategy(), callbacks=[counter]).train()
    assert counter.after_step[2:] == [counter.after_step[2]] * 8


# ------------------------------------------------------------------ device loader and step marks
def test_device_loader_yields_host_batches_whose_device_copies_were_sent_ahead():
    strategy = XLAStrategy(prefetch=2)
    loader = torch.utils.data.DataLoader(TokenDataset(12), batch_size=2, collate_fn=pad_collate)
    device_loader = strategy.process_dataloader(loader)
    assert isinstance(device_loader, XLADeviceLoader)
    assert len(device_loader) == 6
    assert device_loader.batch_sampler is loader.batch_sampler
    iterator = iter(device_loader)
    first = next(iterator)
    assert first["labels"].device.type == "cpu"  # counted on the host by the loops: no device round trip
    assert len(strategy._device_copies) == 3  # the batch in use and two ahead
    moved = strategy.batch_to_device(first)
    assert moved["input_ids"].device.type == "xla"
    assert torch.equal(moved["input_ids"].cpu(), first["input_ids"])
    assert len(strategy._device_copies) == 2
    del iterator  # an epoch left early drops the copies nobody will take
    assert len(strategy._device_copies) == 0


def test_batch_to_device_keeps_container_types_and_non_tensors():
    strategy = XLAStrategy()
    moved = strategy.batch_to_device({"x": torch.ones(2, 3), "pair": (torch.zeros(2), 7), "name": "a"})
    assert moved["x"].device.type == "xla"
    assert moved["pair"][0].device.type == "xla"
    assert moved["pair"][1] == 7
    assert moved["name"] == "a"
    assert isinstance(moved["pair"], tuple)


class ExecutionCounter(TrainerCallback):
    def __init__(self) -> None:
        self.at_step_end: list[int] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        xm.wait_device_ops()  # executions are asynchronous: count the finished ones
        data = met.metric_data("ExecuteTime")
        self.at_step_end.append(int(data[0]) if data else 0)


def test_each_optimizer_step_runs_two_graphs(tmp_path: Path):
    """Forward/backward (cut by mark_step before the loss is read) and the update: no per-micro-batch sync."""
    counter = ExecutionCounter()
    args = quiet_args(str(tmp_path), per_device_train_batch_size=2, gradient_accumulation_steps=4, max_steps=4)
    Trainer(TokenModel(), args, train_dataset=TokenDataset(64), strategy=XLAStrategy(), callbacks=[counter]).train()
    steps = counter.at_step_end
    assert [b - a for a, b in itertools.pairwise(steps)] == [2, 2, 2]


# ------------------------------------------------------------------ state and checkpoints on the CPU
class RecordingIO(CheckpointIO):
    """Keeps the state that reaches the IO (writes no part files)."""

    def __init__(self) -> None:
        super().__init__()
        self.saved: list[dict[str, Any]] = []

    def _save(self, state: dict[str, Any], staging: Any) -> dict[str, list[str]]:
        self.saved.append(state)
        return {}

    def _load(self, folder: Path, parts: dict[str, list[str]], map_location: Any) -> dict[str, Any]:
        return self.saved[-1]


def _tensors(state: Any) -> list[torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for v in state.values() for t in _tensors(v)]
    if isinstance(state, (list, tuple)):
        return [t for v in state for t in _tensors(v)]
    return []


def test_state_dicts_and_checkpoints_hold_cpu_tensors_equal_to_the_device_ones(tmp_path: Path):
    io = RecordingIO()
    strategy = XLAStrategy(checkpoint_io=io)
    run = train_evaluate_predict(strategy, str(tmp_path))
    trainer = run.trainer
    model_state = strategy.model_state_dict(trainer.model)
    optimizer_state = strategy.optimizer_state_dict(trainer.optimizer)
    assert {t.device.type for t in _tensors(model_state)} == {"cpu"}
    assert {t.device.type for t in _tensors(optimizer_state)} == {"cpu"}
    assert len(optimizer_state["state"]) == len(list(trainer.model.parameters()))
    for name, value in trainer.model.state_dict().items():
        assert value.device.type == "xla"
        assert torch.equal(model_state[name], value.cpu())
    strategy.save_checkpoint(tmp_path / "checkpoint-6", {"model": trainer.model.state_dict(), "step": 6})
    assert {t.device.type for t in _tensors(io.saved[-1])} == {"cpu"}
    assert io.saved[-1]["step"] == 6


def test_loading_a_cpu_state_dict_puts_it_on_the_device():
    strategy = XLAStrategy()
    model = strategy.setup_module(TokenModel())
    cpu_state = {k: torch.full_like(v.cpu(), 0.5) for k, v in model.state_dict().items()}
    strategy.load_model_state_dict(model, cpu_state)
    for value in model.state_dict().values():
        assert value.device.type == "xla"
        assert bool((value.cpu() == 0.5).all())


# ------------------------------------------------------------------ one process: topology and collectives
def test_one_process_topology_and_collectives_are_identities():
    strategy = XLAStrategy()
    strategy.setup_environment()
    try:
        assert (strategy.world_size, strategy.global_rank, strategy.local_rank) == (1, 0, 0)
        assert strategy.distributed_sampler_kwargs is None
        value = torch.tensor([1.0, 2.0])
        assert strategy.all_reduce(value) is value
        assert strategy.all_gather(value).shape == (1, 2)
        assert strategy.all_gather_object({"a": 1}) == [{"a": 1}]
        assert strategy.broadcast("x") == "x"
        assert strategy.reduce_boolean_decision(True) is True
        strategy.barrier()
    finally:
        strategy.teardown()


# ------------------------------------------------------------------ factory: when XLA is used
def test_factory_picks_xla_when_pjrt_device_names_an_accelerator(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PJRT_DEVICE", "TPU")
    assert isinstance(build_xla_strategy(TrainingArguments(output_dir="x", report_to="none")), XLAStrategy)
    assert build_xla_strategy(TrainingArguments(output_dir="x", report_to="none", use_cpu=True)) is None
    # importing torch_xla sets PJRT_DEVICE=CPU by itself: CPU PJRT is asked for with a strategy object
    for value in ("CPU", "cpu"):
        monkeypatch.setenv("PJRT_DEVICE", value)
        assert build_xla_strategy(TrainingArguments(output_dir="x", report_to="none")) is None
        assert isinstance(build_components(TrainingArguments(output_dir="x")).strategy, SingleDeviceStrategy)
    monkeypatch.delenv("PJRT_DEVICE")
    assert build_xla_strategy(TrainingArguments(output_dir="x", report_to="none")) is None


def test_factory_gives_the_xla_strategy_bf16_mixed_precision_on_the_xla_device():
    components = build_components(TrainingArguments(output_dir="x", report_to="none", bf16=True), XLAStrategy())
    assert components.strategy.precision is components.precision
    assert components.precision.name == "bf16-mixed"
    components.strategy.setup_environment()
    assert components.precision.device_type == "xla"
    components.strategy.teardown()


def test_factory_picks_spmd_fully_sharded_training_for_fsdp_config_xla():
    args = TrainingArguments(
        output_dir="x",
        report_to="none",
        fsdp="full_shard",
        fsdp_config={
            "xla": True,
            "xla_fsdp_v2": True,
            "xla_fsdp_grad_ckpt": True,
            "transformer_layer_cls_to_wrap": ["B"],
        },
    )
    strategy = build_components(args).strategy  # not set up: SPMD mode would switch this whole process over
    assert isinstance(strategy, XLASPMDStrategy)
    assert strategy.shard_parameters
    assert strategy.activation_checkpointing
    assert strategy.layer_classes == ["B"]
