"""Your own training loop, with trainkit's Strategy and Precision doing the device and precision work.

A character-level language model on Genesis and Exodus (KJV), trained by a plain PyTorch loop.
trainkit contributes two components: ``SingleDeviceStrategy`` (moves the model and batches,
runs backward / clipping / the optimizer step through the precision) and a ``Precision`` (fp32,
bf16/fp16 mixed with loss scaling, true half, optional half-precision evaluation). Swap the
precision by name; the loop does not change. Run it with trainkit installed (or PYTHONPATH=src):

    python examples/custom_loop.py --precision bf16-mixed --steps 200
    python examples/custom_loop.py --precision fp16-mixed --full-eval bf16 --device cpu
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from torch import nn

from trainkit import SingleDeviceStrategy
from trainkit.precision import PRECISIONS

CORPUS = Path(__file__).parent / "data" / "kjv_genesis_exodus.txt"


class CharModel(nn.Module):
    """Predicts the next character from the previous ``context`` characters (embedding + MLP)."""

    def __init__(self, vocab: int, context: int = 16, width: int = 128) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 32)
        self.mlp = nn.Sequential(
            nn.Linear(32 * context, width), nn.GELU(), nn.LayerNorm(width), nn.Linear(width, vocab)
        )

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.embed(ids).flatten(1))


def load_corpus(context: int) -> tuple[torch.Tensor, int]:
    text = CORPUS.read_text(encoding="utf-8")
    vocab = {c: i for i, c in enumerate(sorted(set(text)))}
    ids = torch.tensor([vocab[c] for c in text[:200_000]], dtype=torch.long)
    return ids.unfold(0, context + 1, 1), len(vocab)  # windows of context + the next character


def batches(windows: torch.Tensor, batch_size: int, generator: torch.Generator):
    while True:
        rows = windows[torch.randint(len(windows), (batch_size,), generator=generator)]
        yield rows[:, :-1], rows[:, -1]


def evaluate(strategy: SingleDeviceStrategy, model: nn.Module, windows: torch.Tensor) -> float:
    """Mean cross-entropy on held-out windows, in the precision's evaluation context."""
    model.eval()
    total = torch.zeros((), device=strategy.root_device)
    chunks = windows.split(1024)
    with torch.no_grad(), strategy.eval_context(model):
        for chunk in chunks:
            ids, target = strategy.batch_to_device((chunk[:, :-1], chunk[:, -1]))
            total += nn.functional.cross_entropy(model(ids).float(), target)
    model.train()
    return total.item() / len(chunks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", default="bf16-mixed", choices=PRECISIONS.available())
    parser.add_argument("--full-eval", choices=["fp16", "bf16"], help="evaluate with the model cast to half")
    parser.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: the best available)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--context", type=int, default=16)
    opts = parser.parse_args()

    torch.manual_seed(0)
    eval_precision = PRECISIONS.get(f"{opts.full_eval}-true") if opts.full_eval else None
    precision = PRECISIONS.get(opts.precision, tf32=opts.tf32, eval_precision=eval_precision)
    strategy = SingleDeviceStrategy(device=opts.device, precision=precision)
    strategy.setup_environment()  # the precision's global flags (tf32), restored by teardown()

    windows, vocab = load_corpus(opts.context)
    held_out, train_windows = windows[:4096], windows[4096:]
    model = CharModel(vocab, opts.context)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / opts.steps)))
    model, optimizer, scheduler = strategy.setup(model, optimizer, scheduler)
    print(f"{strategy!r}; held-out loss before training: {evaluate(strategy, model, held_out):.3f}")

    data = batches(train_windows, opts.batch_size, torch.Generator().manual_seed(0))
    for step in range(1, opts.steps + 1):
        ids, target = strategy.batch_to_device(next(data))
        with strategy.forward_context():
            loss = nn.functional.cross_entropy(model(ids).float(), target)
        strategy.backward(loss, model)  # loss scaling, when the precision has it
        grad_norm = strategy.clip_gradients(model, optimizer, max_norm=1.0)  # unscales first
        if strategy.optimizer_step(optimizer):  # False: inf/NaN gradients, the step was skipped
            scheduler.step()
        strategy.zero_grad(optimizer)
        if step % 100 == 0 or step == opts.steps:
            print(f"step {step}: loss {loss.item():.3f}, grad norm {grad_norm.item():.2f}")

    print(f"held-out loss after training: {evaluate(strategy, model, held_out):.3f}")
    print(f"skipped steps: {precision.skipped_steps}; precision state: {precision.state_dict()}")
    strategy.teardown()


if __name__ == "__main__":
    main()
