"""How far XLA runs are from the CPU run (and SPMD from one XLA device): the figures of docs/xla.md.

Runs tests/xla/helpers' Trainer run (6 optimizer steps of a token model with accumulation 2,
clipping and warm-up, then evaluate and predict) on the CPU and on CPU PJRT, and under
XLASPMDStrategy on two virtual devices (a subprocess each: SPMD mode is process-wide), straight
through and resumed from the checkpoint of step 3 by a new Trainer. Prints the largest absolute
difference of the losses, the weights and the predictions. Not timed.

Usage, in the XLA environment, from the repository root:
    PJRT_DEVICE=CPU PYTHONPATH=src:. python benchmarks/xla_agreement.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from typing import Any

import numpy as np
import torch


def _differences(reference: Any, other: Any) -> tuple[float, float, float]:
    from tests.xla.helpers import max_weight_difference

    losses = float(np.max(np.abs(np.asarray(reference.losses) - np.asarray(other.losses))))
    predictions = float(np.max(np.abs(reference.predictions - other.predictions)))
    return losses, max_weight_difference(reference.weights, other.weights), predictions


def _as_run(result: dict[str, Any]) -> Any:
    from tests.xla.helpers import RunResult

    fields = ("losses", "grad_norms", "eval_loss", "predictions", "label_ids", "weights")
    return RunResult(**{k: result[k] for k in fields}, trainer=None)


def _spmd_result(mode: str, folder: str) -> dict[str, Any]:
    from tests.xla.helpers import cpu_devices_env

    out = os.path.join(folder, f"{mode}.pt")
    script = os.path.join(os.path.dirname(__file__), "..", "tests", "xla", "spmd_run.py")
    subprocess.run([sys.executable, script, mode, out], env=cpu_devices_env(2), check=True, capture_output=True)
    result: dict[str, Any] = torch.load(out, weights_only=False)
    return result


def _spmd(mode: str, folder: str) -> Any:
    return _as_run(_spmd_result(mode, folder))


def main() -> None:
    import torch_xla

    torch_xla.device()  # the runtime before any backward (the autograd engine sizes its device queues once)
    from tests.xla.helpers import resume_evaluate_predict, train_evaluate_predict
    from tests.xla.spmd_run import ODD_BATCH

    from trainkit.strategies.single_device import SingleDeviceStrategy
    from trainkit.strategies.xla import XLAStrategy

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for label, overrides in [("fp32", {}), ("bf16-mixed", {"bf16": True}), ("fp16-mixed", {"fp16": True})]:
            cpu = train_evaluate_predict(SingleDeviceStrategy("cpu"), folder, **overrides)
            xla = train_evaluate_predict(XLAStrategy(), folder, **overrides)
            rows.append((f"XLA vs CPU, {label}", *_differences(cpu, xla)))
            resumed = resume_evaluate_predict(XLAStrategy, os.path.join(folder, f"resumed-{label}"), 3, **overrides)
            rows.append((f"XLA resumed at step 3 vs CPU, {label}", *_differences(cpu, resumed)))
            rows.append((f"XLA resumed at step 3 vs XLA uninterrupted, {label}", *_differences(xla, resumed)))
            if label == "fp32":
                one = xla
                optim = train_evaluate_predict(XLAStrategy(), folder, optim="adamw_torch_xla")
                rows.append(("XLA adamw_torch_xla vs CPU adamw_torch", *_differences(cpu, optim)))
        for mode in ("data_parallel", "fully_sharded", "fully_sharded_checkpointed"):
            rows.append((f"SPMD 2 devices ({mode}) vs 1 XLA device", *_differences(one, _spmd(mode, folder))))
        one_odd = train_evaluate_predict(XLAStrategy(), folder, **ODD_BATCH)
        odd = _spmd("fully_sharded_odd_batch", folder)
        rows.append(("SPMD 2 devices (fully_sharded, batch 3) vs 1 XLA device", *_differences(one_odd, odd)))
        dropout = train_evaluate_predict(XLAStrategy(), folder, dropout=0.3)
        dropout_resumed = resume_evaluate_predict(XLAStrategy, os.path.join(folder, "dropout"), 3, dropout=0.3)
        rows.append(
            ("XLA resumed at step 3 vs XLA uninterrupted, dropout 0.3", *_differences(dropout, dropout_resumed))
        )
        spmd_resumed = _spmd_result("fully_sharded_resumed", folder)
        rows.append(
            (
                "SPMD 2 devices (fully_sharded) resumed at step 3 vs 1 XLA device",
                *_differences(one, _as_run(spmd_resumed)),
            )
        )
        full, cut = _as_run(spmd_resumed["dropout_full"]), _as_run(spmd_resumed["dropout_resumed"])
        rows.append(("SPMD 2 devices (fully_sharded) resumed vs uninterrupted, dropout 0.3", *_differences(full, cut)))
    print(f"{'comparison':<72} {'losses':>10} {'weights':>10} {'predictions':>12}")
    for name, losses, weights, predictions in rows:
        print(f"{name:<72} {losses:>10.2e} {weights:>10.2e} {predictions:>12.2e}")


if __name__ == "__main__":
    main()
