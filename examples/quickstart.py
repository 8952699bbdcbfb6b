"""Quickstart: a character-level transformer language model, trained the transformers.Trainer way.

The corpus ships with the repository (examples/data: Genesis and Exodus, King James Version,
public domain). The script is an HF-style script: an ``HfArgumentParser`` over a small
model-arguments dataclass and ``TrainingArguments``; every default below can be overridden on
the command line (``python examples/quickstart.py --max_steps 100 --output_dir /tmp/q``).

It trains, evaluates (loss and perplexity) and compares the evaluation loss with the entropy
of the character unigram distribution, the loss of a model that ignores context. Checkpoints
and TensorBoard logs go to ``--output_dir`` (default ``quickstart_output``). With its defaults it
takes about two minutes on a 2-core CPU.
"""

from __future__ import annotations

import math
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from trainkit import HfArgumentParser, Trainer, TrainingArguments

HERE = Path(__file__).resolve().parent

DEFAULTS = {
    "output_dir": "quickstart_output",
    "overwrite_output_dir": "true",
    "max_steps": "600",
    "per_device_train_batch_size": "32",
    "per_device_eval_batch_size": "64",
    "learning_rate": "2e-3",
    "weight_decay": "0.1",
    "lr_scheduler_type": "cosine",
    "warmup_steps": "0.05",
    "eval_strategy": "steps",
    "eval_steps": "200",
    "logging_steps": "50",
    "save_steps": "200",
    "save_total_limit": "2",
    "seed": "0",
    "disable_tqdm": "true",
}


@dataclass
class ModelArguments:
    """The language model and its data."""

    data_file: str = field(default=str(HERE / "data" / "kjv_genesis_exodus.txt"), metadata={"help": "Text corpus."})
    block_size: int = field(default=64, metadata={"help": "Characters of context per example."})
    d_model: int = field(default=128, metadata={"help": "Width of the transformer."})
    n_layer: int = field(default=2, metadata={"help": "Transformer blocks."})
    n_head: int = field(default=4, metadata={"help": "Attention heads per block."})
    eval_fraction: float = field(default=0.05, metadata={"help": "Share of the text held out for evaluation."})


class CharBlocks(Dataset):
    """Consecutive blocks of ``block_size + 1`` characters: inputs and next-character labels."""

    def __init__(self, ids: torch.Tensor, block_size: int) -> None:
        self.ids = ids
        self.block_size = block_size

    def __len__(self) -> int:
        return (len(self.ids) - 1) // self.block_size

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        chunk = self.ids[i * self.block_size : (i + 1) * self.block_size + 1]
        return {"input_ids": chunk[:-1], "labels": chunk[1:]}


class CharTransformer(nn.Module):
    """A small causal transformer over characters (pre-norm blocks, tied embeddings)."""

    main_input_name = "input_ids"

    def __init__(self, vocab: int, block_size: int, d_model: int, n_layer: int, n_head: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.position = nn.Parameter(torch.zeros(block_size, d_model))
        layer = nn.TransformerEncoderLayer(
            d_model, n_head, 4 * d_model, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, n_layer, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(block_size), persistent=False)
        nn.init.normal_(self.embed.weight, std=0.02)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        n = input_ids.shape[1]
        h = self.embed(input_ids) + self.position[:n]
        h = self.blocks(h, mask=self.mask[:n, :n], is_causal=True)
        logits = self.head(self.norm(h))
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
        return out

    @torch.no_grad()
    def generate(self, ids: torch.Tensor, length: int, block_size: int) -> torch.Tensor:
        for _ in range(length):
            logits = self(ids[:, -block_size:])["logits"][:, -1]
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
        return ids


def unigram_entropy(train_text: str, eval_text: str) -> float:
    """Cross-entropy (nats/char) of the evaluation text under the training text's character frequencies."""
    counts = Counter(train_text)
    total = sum(counts.values())
    eval_counts = Counter(eval_text)
    floor = 1 / (total + len(eval_counts))  # characters unseen in training get a small probability
    return -sum(n * math.log(counts.get(c, 0) / total or floor) for c, n in eval_counts.items()) / len(eval_text)


def main() -> None:
    parser = HfArgumentParser((ModelArguments, TrainingArguments))
    defaults = [token for key, value in DEFAULTS.items() for token in (f"--{key}", value)]
    model_args, training_args = parser.parse_args_into_dataclasses(args=defaults + sys.argv[1:])
    text = Path(model_args.data_file).read_text(encoding="utf-8")
    vocab = sorted(set(text))
    encode = {c: i for i, c in enumerate(vocab)}
    split = int(len(text) * (1 - model_args.eval_fraction))
    train_text, eval_text = text[:split], text[split:]
    ids = torch.tensor([encode[c] for c in text], dtype=torch.long)
    train_set = CharBlocks(ids[:split], model_args.block_size)
    eval_set = CharBlocks(ids[split:], model_args.block_size)
    torch.manual_seed(training_args.seed)
    model = CharTransformer(
        len(vocab), model_args.block_size, model_args.d_model, model_args.n_layer, model_args.n_head
    )
    print(
        f"{len(text):,} characters, vocabulary {len(vocab)}, {sum(p.numel() for p in model.parameters()):,} "
        f"parameters, {len(train_set):,} training blocks of {model_args.block_size}"
    )

    trainer = Trainer(model, training_args, train_dataset=train_set, eval_dataset=eval_set)
    start = time.time()
    result = trainer.train()
    trainer.log_metrics("train", result.metrics)
    metrics = trainer.evaluate()
    metrics["eval_perplexity"] = math.exp(metrics["eval_loss"])
    trainer.log_metrics("eval", metrics)
    trainer.save_model()
    trainer.save_metrics("all", {**result.metrics, **metrics})

    baseline = unigram_entropy(train_text, eval_text)
    prompt = torch.tensor([[encode[c] for c in "And God said"]])
    sample = model.generate(prompt, 80, model_args.block_size)[0]
    print(f"\nSample: {''.join(vocab[i] for i in sample.tolist())!r}")
    print(f"Evaluation loss   {metrics['eval_loss']:.3f} nats/char (perplexity {math.exp(metrics['eval_loss']):.2f})")
    print(f"Unigram baseline  {baseline:.3f} nats/char (perplexity {math.exp(baseline):.2f})")
    print(f"Finished in {time.time() - start:.0f} s; checkpoints and TensorBoard logs in {training_args.output_dir}")


if __name__ == "__main__":
    main()
