"""Peak-memory growth of an evaluation on N vs 20N sequences (run in a subprocess by the tests).

Usage: python eval_memory.py MODE N   (MODE: loss_only | streaming | keep)
Prints, in MB, how much more the resident memory peaked (over its level when the evaluation
started, as trainkit's own memory report measures it) when evaluating 20N sequences than N.
"""

from __future__ import annotations

import sys
import tempfile

import torch
from torch import nn

from trainkit import Trainer, TrainingArguments


class LM(nn.Module):
    def __init__(self, vocab: int = 256, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, input_ids, labels=None):
        logits = self.head(self.embed(input_ids))
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
        return out


def data(n: int, seq: int = 32):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (n, seq), generator=g)
    return [{"input_ids": ids[i], "labels": ids[i]} for i in range(n)]


def peak_mb(metrics: dict) -> float:
    return (metrics["eval_mem_cpu_alloc_delta"] + metrics["eval_mem_cpu_peaked_delta"]) / 2**20


def main() -> None:
    mode, n = sys.argv[1], int(sys.argv[2])
    compute_metrics = None
    if mode == "streaming":
        import torchmetrics

        compute_metrics = torchmetrics.classification.MulticlassAccuracy(num_classes=256, multidim_average="global")
    elif mode == "keep":
        compute_metrics = lambda p: {"n": float(p.predictions.shape[0])}  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            per_device_eval_batch_size=16,
            report_to="none",
            disable_tqdm=True,
            prediction_loss_only=mode == "loss_only",
            skip_memory_metrics=False,
        )
        argmax = (lambda logits, labels: logits.argmax(-1)) if mode == "streaming" else None
        trainer = Trainer(LM(), args, compute_metrics=compute_metrics, preprocess_logits_for_metrics=argmax)
        small_set, big_set = data(n), data(20 * n)  # built first: only the evaluations are measured
        trainer.evaluate(small_set)  # warm-up: first-call allocations
        small = peak_mb(trainer.evaluate(small_set))
        print(f"{peak_mb(trainer.evaluate(big_set)) - small:.2f}")


if __name__ == "__main__":
    main()
