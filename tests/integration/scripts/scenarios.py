"""Training and evaluation scenarios run under torchrun (and in-process, as the one-process reference).

Usage: torchrun --nproc_per_node 2 scenarios.py SPEC.json --output DIR

SPEC.json holds {"scenarios": [...]}; each scenario names a task ("train" or "evaluate"), a model
("token": mean cross entropy; "sum_token": normalised by num_items_in_batch), dataset sizes,
TrainingArguments and how metrics are computed. Rank 0 writes DIR/<name>.pt (weights, logs,
metrics, predictions); every rank writes DIR/<name>.rank<r>.json (what it saw of the topology).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tests.helpers import IGNORE, SumLossTokenModel, TiedTokenModel, TokenDataset, TokenModel
from trainkit import Trainer, TrainerCallback, TrainingArguments

MODELS = {"token": TokenModel, "sum_token": SumLossTokenModel, "tied_token": TiedTokenModel}


def _joined(value: Any) -> np.ndarray:
    """One array from a concatenated array or a list of per-batch arrays (eval_do_concat_batches=False)."""
    return np.concatenate([np.asarray(v) for v in value]) if isinstance(value, list) else np.asarray(value)


def token_accuracy(p: Any) -> dict[str, float]:
    preds, labels = _joined(p.predictions), _joined(p.label_ids)
    if preds.ndim == labels.ndim + 1:
        preds = preds.argmax(-1)
    mask = labels != IGNORE
    return {"accuracy": float((preds[mask] == labels[mask]).mean()), "examples": len(labels)}


def object_accuracy(p: Any) -> dict[str, float]:
    preds = np.stack([np.asarray(x).argmax(-1) for x in p.predictions])
    labels = np.stack([np.asarray(x) for x in p.label_ids])
    mask = labels != IGNORE
    return {"accuracy": float((preds[mask] == labels[mask]).mean()), "examples": len(p.predictions)}


class BatchAccuracy:
    """A ``batch_eval_metrics`` function: running accuracy, reported with ``compute_result``."""

    def __init__(self) -> None:
        self.correct = self.total = self.examples = 0

    def __call__(self, p: Any, compute_result: bool) -> dict[str, float]:
        preds, labels = p.predictions.argmax(-1), p.label_ids
        mask = labels != IGNORE
        self.correct += int((preds[mask] == labels[mask]).sum())
        self.total += int(mask.sum())
        self.examples += int(labels.shape[0])
        result = {"accuracy": self.correct / self.total, "examples": self.examples}
        if compute_result:
            self.correct = self.total = self.examples = 0
        return result


def _metrics(kind: str | None) -> tuple[Any, Any]:
    """(compute_metrics, preprocess_logits_for_metrics) for a scenario's metrics kind."""
    if kind == "function":
        return token_accuracy, None
    if kind == "objects":
        return object_accuracy, None
    if kind == "batch":
        return BatchAccuracy(), None
    if kind == "torchmetrics":
        from torchmetrics.classification import MulticlassAccuracy

        metric = MulticlassAccuracy(num_classes=11, ignore_index=IGNORE, average="micro")
        return metric, lambda logits, labels: logits.argmax(-1)
    return None, None


class FailAt(TrainerCallback):
    """Raise (or hang) on one rank at a given step: the job must end, not wait forever."""

    def __init__(self, rank: int, step: int, mode: str) -> None:
        self.rank, self.step, self.mode = rank, step, mode

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step and int(os.environ.get("RANK", 0)) == self.rank:
            if self.mode == "hang":
                time.sleep(3600)
            raise RuntimeError(f"injected failure on rank {self.rank} at step {self.step}")


def _failing_io(rank: int, step: int) -> Any:
    """A ShardedCheckpointIO whose write fails on one rank, after its shards, when it saves ``checkpoint-<step>``."""
    from trainkit.checkpoint.sharded_io import ShardedCheckpointIO

    class FailingIO(ShardedCheckpointIO):
        def _save(self, state: dict[str, Any], staging: Any) -> dict[str, list[str]]:
            written = super()._save(state, staging)  # its shards, then its RNG file
            if self.rank == rank and staging.path.name == f".checkpoint-{step}.staging":
                raise OSError(f"disk full (injected on rank {rank})")
            return written

    return FailingIO()


class NanLossAt(TrainerCallback):
    """Make one rank's loss NaN during one optimizer step (the whole window): every rank must skip that step."""

    def __init__(self, model: Any, rank: int, step: int) -> None:
        self.rank, self.step, self.active = rank, step, False
        model.register_forward_hook(self._poison)

    def _poison(self, module: Any, inputs: Any, output: Any) -> Any:
        if self.active and isinstance(output, dict) and "loss" in output:
            return {**output, "loss": output["loss"] * float("nan")}
        return output

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.active = state.global_step + 1 == self.step and int(os.environ.get("RANK", 0)) == self.rank

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.active = False


def _check_main_process_first(args: TrainingArguments, folder: Path) -> bool | None:
    """Whether the main process's block ran first (None on the main process itself)."""
    marker = folder / "main_first.marker"
    with args.main_process_first(desc="dataset preparation"):
        if args.local_process_index == 0:
            time.sleep(0.2)
            marker.write_text("done")
            return None
        return marker.exists()


def _copy_checkpoints(args: TrainingArguments, source: Path, folder: Path, step: int, per_node: bool) -> None:
    import shutil

    with args.main_process_first(desc="copying checkpoints"):
        if (args.local_process_index if per_node else args.process_index) == 0:
            for checkpoint in source.glob("checkpoint-*"):
                if int(checkpoint.name.split("-")[1]) <= step:
                    shutil.copytree(checkpoint, folder / checkpoint.name)


def run_scenario(spec: dict[str, Any], output: str | Path) -> dict[str, Any]:
    """Run one scenario; returns what rank 0 saves (and the per-rank facts under "rank" and its trainer)."""
    node = f"node{os.environ.get('GROUP_RANK', 0)}" if spec.get("per_node_output") else ""
    folder = Path(output) / spec["name"] / node  # several "nodes" on one machine: each its own output_dir
    folder.mkdir(parents=True, exist_ok=True)
    args = TrainingArguments(output_dir=str(folder), **spec["args"])
    if spec.get("deepspeed") is not None:
        args.deepspeed = spec["deepspeed"]
    main_first = _check_main_process_first(args, folder) if spec.get("main_process_first") else None
    if isinstance(spec.get("resume_from"), dict):  # a copy of another run's checkpoints, cut back to one
        source = Path(output) / spec["resume_from"]["name"] / node
        _copy_checkpoints(args, source, folder, spec["resume_from"]["step"], bool(node))
    model = MODELS[spec.get("model", "token")](dropout=spec.get("dropout", 0.0))
    other_ranks = spec.get("other_ranks") if int(os.environ.get("RANK", 0)) != 0 else None
    if other_ranks == "meta":  # what cpu_ram_efficient_loading allows: no weights outside rank 0
        model = model.to("meta")
    elif other_ranks == "different_weights":
        model = MODELS[spec.get("model", "token")](seed=1)
    compute_metrics, preprocess = _metrics(spec.get("metrics"))
    callbacks: list[Any] = [FailAt(**spec["fail"])] if spec.get("fail") else []
    if spec.get("nan_loss"):
        callbacks.append(NanLossAt(model, **spec["nan_loss"]))
    trainer = Trainer(
        model,
        args,
        train_dataset=TokenDataset(spec.get("train_size", 8)),
        eval_dataset=TokenDataset(spec.get("eval_size", 7), seed=3),
        compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=preprocess,
        callbacks=callbacks,
        checkpoint_io=_failing_io(**spec["fail_save"]) if spec.get("fail_save") else None,
    )
    if spec.get("per_rank_seed") is not None:  # each rank draws its own dropout masks (the Trainer seeds all alike)
        torch.manual_seed(spec["per_rank_seed"] + trainer.strategy.global_rank)
    result: dict[str, Any] = {}
    if spec["task"] == "train":
        # a string names a checkpoint folder relative to the output folder; any other value (the harness's
        # description of the run whose checkpoints were copied there) means its newest checkpoint
        resume = spec.get("resume_from")
        resume = str(Path(output) / resume) if isinstance(resume, str) else bool(resume) or None
        result["train_metrics"] = trainer.train(resume_from_checkpoint=resume).metrics
        result["log_history"] = trainer.state.log_history
        result["state"] = trainer.strategy.model_state_dict(trainer.model_wrapped)
        if spec.get("save_model"):
            try:
                trainer.save_model()
            except NotImplementedError as err:  # sharded models until sharded checkpoints exist
                result["save_model_error"] = str(err)
    if spec["task"] == "evaluate":
        result["eval_metrics"] = trainer.evaluate()
        prediction = trainer.predict(TokenDataset(spec.get("eval_size", 7), seed=3))
        result["predictions"], result["label_ids"] = prediction.predictions, prediction.label_ids
        result["pred_metrics"] = prediction.metrics
    result["trainer"] = trainer
    result["rank"] = {
        "rank": trainer.strategy.global_rank,
        "world_size": trainer.strategy.world_size,
        "strategy": type(trainer.strategy).__name__,
        "log_level": logging.getLogger("trainkit").level,
        "is_world_zero": trainer.is_world_process_zero(),
        "is_local_zero": trainer.is_local_process_zero(),
        "main_first": main_first,
        "fsdp_units": sum(type(m).__name__.startswith("FSDP") for m in trainer.model.modules()),
        "scaler": type(getattr(trainer.precision, "scaler", None)).__name__,
        "precision": trainer.precision.name,
        "optimizer": type(trainer.optimizer).__name__,
        "scheduler": type(trainer.lr_scheduler).__name__,
        "best_model_checkpoint": trainer.state.best_model_checkpoint,
        "checkpoints": sorted(p.name for p in folder.glob("checkpoint-*")),
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("spec")
    parser.add_argument("--output", required=True)
    parser.add_argument("--local_rank", type=int, default=-1)  # the deepspeed launcher passes it
    opts = parser.parse_args()
    spec = json.loads(Path(opts.spec).read_text())
    strategies = []
    for scenario in spec["scenarios"]:
        result = run_scenario(scenario, opts.output)
        strategies.append(result.pop("trainer").strategy)
        facts = result.pop("rank")
        Path(opts.output, f"{scenario['name']}.rank{facts['rank']}.json").write_text(json.dumps(facts))
        if facts["rank"] == 0:
            torch.save(result, Path(opts.output, f"{scenario['name']}.pt"))
    for strategy in strategies:  # the one that started the process group ends it, after a barrier
        strategy.teardown()


if __name__ == "__main__":
    main()
