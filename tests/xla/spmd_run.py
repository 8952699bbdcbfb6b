"""Run tests/xla/helpers' Trainer run under XLASPMDStrategy, in a fresh process (SPMD mode is process-wide).

Usage: ``python tests/xla/spmd_run.py MODE OUT`` with MODE ``data_parallel``, ``fully_sharded``,
``fully_sharded_checkpointed`` or ``fully_sharded_odd_batch`` (batches of 3 on 2 devices); writes
the run's losses, predictions, weights and the parameters' and inputs' sharding to OUT (torch.save).
MODE ``fully_sharded_resumed`` writes runs resumed from a checkpoint and the sharding they resumed into.
"""

from __future__ import annotations

import sys
import tempfile
from typing import Any

import torch

from trainkit import TrainerCallback

CHECKPOINTED = "_xla_checkpointed_forward_original"  # set by torch_xla's checkpoint_module
ODD_BATCH = {"per_device_train_batch_size": 3, "per_device_eval_batch_size": 3}


def sharding(tensor: torch.Tensor) -> str:
    import torch_xla

    return str(torch_xla._XLAC._get_xla_sharding_spec(tensor))


def run_fields(run: Any) -> dict[str, Any]:
    fields = ("losses", "grad_norms", "eval_loss", "predictions", "label_ids", "weights")
    return {name: getattr(run, name) for name in fields}


class ShardingAtResume(TrainerCallback):
    """The sharding of the parameters and of their optimizer state once a checkpoint is loaded, before any step."""

    def __init__(self) -> None:
        self.parameters: dict[str, str] = {}
        self.optimizer_state: dict[str, dict[str, str]] = {}

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        names = {id(p): n for n, p in model.named_parameters()}
        self.parameters = {n: sharding(p) for n, p in model.named_parameters()}
        self.optimizer_state = {
            names[id(p)]: {k: sharding(v) for k, v in entry.items() if v.device.type == "xla"}
            for p, entry in kwargs["optimizer"].state.items()
        }


def resumed(out: str) -> None:
    """Fully-sharded runs resumed from step 3: without dropout (compared with one device by the test), and
    with dropout against the uninterrupted run (same process, so the same partitioned random numbers)."""
    from tests.xla.helpers import resume_evaluate_predict, train_evaluate_predict
    from trainkit.strategies.xla_spmd import XLASPMDStrategy

    recorder = ShardingAtResume()
    with tempfile.TemporaryDirectory() as folder:
        plain = resume_evaluate_predict(XLASPMDStrategy, f"{folder}/plain", 3, callbacks=[recorder])
        full = train_evaluate_predict(XLASPMDStrategy(), f"{folder}/full", dropout=0.3)
        dropout = resume_evaluate_predict(XLASPMDStrategy, f"{folder}/dropout", 3, dropout=0.3)
    result = {
        **run_fields(plain),
        "sharding_at_resume": {"parameters": recorder.parameters, "optimizer_state": recorder.optimizer_state},
        "dropout_full": run_fields(full),
        "dropout_resumed": run_fields(dropout),
    }
    torch.save(result, out)


def main(mode: str, out: str) -> None:
    import torch_xla.runtime as xr

    from tests.xla.helpers import train_evaluate_predict
    from trainkit.strategies.xla_spmd import XLASPMDStrategy

    if mode == "fully_sharded_resumed":
        resumed(out)
        return

    strategy = XLASPMDStrategy(
        shard_parameters=mode != "data_parallel",
        activation_checkpointing=mode == "fully_sharded_checkpointed",
        layer_classes=["Linear", "LayerNorm"] if mode == "fully_sharded_checkpointed" else None,
    )
    with tempfile.TemporaryDirectory() as folder:
        run = train_evaluate_predict(strategy, folder, **(ODD_BATCH if mode == "fully_sharded_odd_batch" else {}))
    model = run.trainer.model
    probe = {
        "input_ids": torch.zeros(4, 3, dtype=torch.long),
        "labels": torch.zeros(4, dtype=torch.long),  # one dimension (a classifier's labels)
        "odd": torch.zeros(3, 2),
        "odd_labels": torch.zeros(3, dtype=torch.long),
        "scalar": torch.tensor(1.0),
    }
    batch = strategy.batch_to_device(probe)
    torch.save(
        {
            "devices": xr.global_runtime_device_count(),
            "world_size": strategy.world_size,
            **run_fields(run),
            "param_sharding": {k: sharding(p) for k, p in model.named_parameters()},
            "input_sharding": {k: sharding(v) for k, v in batch.items()},
            "state_dict_devices": sorted({str(v.device) for v in strategy.model_state_dict(model).values()}),
            "checkpointed": sorted(
                n for n, m in model.named_modules() if hasattr(m, "_xla_checkpointed_forward_original")
            ),
        },
        out,
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
