"""Run tests/xla/helpers' Trainer run under XLASPMDStrategy, in a fresh process (SPMD mode is process-wide).

Usage: ``python tests/xla/spmd_run.py MODE OUT`` with MODE ``data_parallel``, ``fully_sharded``,
``fully_sharded_checkpointed`` or ``fully_sharded_odd_batch`` (batches of 3 on 2 devices); writes
the run's losses, predictions, weights and the parameters' and inputs' sharding to OUT (torch.save).
"""

from __future__ import annotations

import sys
import tempfile

import torch

CHECKPOINTED = "_xla_checkpointed_forward_original"  # set by torch_xla's checkpoint_module
ODD_BATCH = {"per_device_train_batch_size": 3, "per_device_eval_batch_size": 3}


def main(mode: str, out: str) -> None:
    import torch_xla
    import torch_xla.runtime as xr

    from tests.xla.helpers import train_evaluate_predict
    from trainkit.strategies.xla_spmd import XLASPMDStrategy

    strategy = XLASPMDStrategy(
        shard_parameters=mode != "data_parallel",
        activation_checkpointing=mode == "fully_sharded_checkpointed",
        layer_classes=["Linear", "LayerNorm"] if mode == "fully_sharded_checkpointed" else None,
    )
    with tempfile.TemporaryDirectory() as folder:
        run = train_evaluate_predict(strategy, folder, **(ODD_BATCH if mode == "fully_sharded_odd_batch" else {}))
    model = run.trainer.model
    probe = {"input_ids": torch.zeros(4, 3, dtype=torch.long), "odd": torch.zeros(3, 2), "scalar": torch.tensor(1.0)}
    batch = strategy.batch_to_device(probe)
    torch.save(
        {
            "devices": xr.global_runtime_device_count(),
            "world_size": strategy.world_size,
            "losses": run.losses,
            "grad_norms": run.grad_norms,
            "eval_loss": run.eval_loss,
            "predictions": run.predictions,
            "label_ids": run.label_ids,
            "weights": run.weights,
            "param_sharding": {k: torch_xla._XLAC._get_xla_sharding_spec(p) for k, p in model.named_parameters()},
            "input_sharding": {k: torch_xla._XLAC._get_xla_sharding_spec(v) for k, v in batch.items()},
            "state_dict_devices": sorted({str(v.device) for v in strategy.model_state_dict(model).values()}),
            "checkpointed": sorted(
                n for n, m in model.named_modules() if hasattr(m, "_xla_checkpointed_forward_original")
            ),
        },
        out,
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
