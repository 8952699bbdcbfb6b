"""XLAStrategy across PJRT processes (``xmp.spawn``): collectives, and training equal to one process.

These need an XLA accelerator (a TPU). On CPU PJRT, ``xmp.spawn`` starts the processes and each
reports the world size, but every collective waits for all local devices of the CPU client in
each process and XLA aborts after its rendezvous timeout: the process group never forms.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import pytest

torch_xla = pytest.importorskip("torch_xla")

import torch  # noqa: E402
import torch_xla.runtime as xr  # noqa: E402

from tests.helpers import TokenDataset, TokenModel, quiet_args  # noqa: E402
from tests.xla.helpers import FP32_TOLERANCE, max_weight_difference, pad_collate  # noqa: E402

pytestmark = [
    pytest.mark.xla,
    pytest.mark.xla_accelerator,
    pytest.mark.skipif(
        os.environ.get("PJRT_DEVICE", "CPU").upper() == "CPU",
        reason="multi-process PJRT needs an XLA accelerator: on CPU the processes never form a group "
        "(each process's collectives wait for all its local devices; see docs/xla.md)",
    ),
]

PER_DEVICE_BATCH = 2


def _collectives(index: int, out: str) -> None:
    from trainkit.strategies.xla import XLAStrategy

    strategy = XLAStrategy()
    strategy.setup_environment()
    rank, world = strategy.global_rank, strategy.world_size
    value = torch.tensor([float(rank + 1)])
    results = {
        "world": world,
        "rank": rank,
        "sum": strategy.all_reduce(value, op="sum").item(),
        "mean": strategy.all_reduce(value, op="mean").item(),
        "max": strategy.all_reduce(value, op="max").item(),
        "gather": strategy.all_gather(value).flatten().tolist(),
        "objects": strategy.all_gather_object({"rank": rank, "payload": "x" * (rank * 7)}),
        "broadcast": strategy.broadcast(f"from {rank}", src=world - 1),
        "any": strategy.reduce_boolean_decision(rank == 0, all=False),
        "all": strategy.reduce_boolean_decision(rank == 0, all=True),
        "sampler": strategy.distributed_sampler_kwargs,
    }
    strategy.barrier("collectives")
    strategy.teardown()
    with open(os.path.join(out, f"rank{rank}.pkl"), "wb") as fh:
        pickle.dump(results, fh)


def _train(index: int, out: str) -> None:
    from trainkit import Trainer
    from trainkit.strategies.xla import XLAStrategy

    model = TokenModel()
    args = quiet_args(out, per_device_train_batch_size=PER_DEVICE_BATCH, gradient_accumulation_steps=2, max_steps=4)
    trainer = Trainer(model, args, train_dataset=TokenDataset(64), data_collator=pad_collate, strategy=XLAStrategy())
    trainer.train()
    state = trainer.strategy.model_state_dict(trainer.model)
    torch.save(state, os.path.join(out, f"weights{trainer.strategy.global_rank}.pt"))


def _spawn(fn: Any, out: Path) -> int:
    import torch_xla.distributed.xla_multiprocessing as xmp

    xmp.spawn(fn, args=(str(out),))
    return int(xr.global_runtime_device_count())


def test_collectives_across_processes(tmp_path: Path):
    world = _spawn(_collectives, tmp_path)
    ranks = [pickle.loads((tmp_path / f"rank{r}.pkl").read_bytes()) for r in range(world)]
    total = world * (world + 1) / 2
    for r, result in enumerate(ranks):
        assert (result["world"], result["rank"]) == (world, r)
        assert result["sum"] == total
        assert result["mean"] == total / world
        assert result["max"] == world
        assert result["gather"] == [float(i + 1) for i in range(world)]
        assert result["objects"] == [{"rank": i, "payload": "x" * (i * 7)} for i in range(world)]
        assert result["broadcast"] == f"from {world - 1}"
        assert result["any"] is True
        assert result["all"] is False
        assert result["sampler"] == {"num_replicas": world, "rank": r}


def test_training_on_every_process_equals_one_process_on_the_global_batch(tmp_path: Path):
    from trainkit import Trainer
    from trainkit.strategies.single_device import SingleDeviceStrategy

    world = _spawn(_train, tmp_path)
    weights = [torch.load(tmp_path / f"weights{r}.pt") for r in range(world)]
    for other in weights[1:]:
        assert max_weight_difference(weights[0], other) == 0.0  # one update, applied on every process
    model = TokenModel()
    args = quiet_args(
        str(tmp_path / "one"),
        per_device_train_batch_size=PER_DEVICE_BATCH * world,
        gradient_accumulation_steps=2,
        max_steps=4,
    )
    single = Trainer(
        model, args, train_dataset=TokenDataset(64), data_collator=pad_collate, strategy=SingleDeviceStrategy("cpu")
    )
    single.train()
    assert max_weight_difference(weights[0], model.state_dict()) <= FP32_TOLERANCE
