"""A plain PyTorch training loop that checkpoints every step through CheckpointManager (for crash trials).

It resumes from the newest complete checkpoint of ``--output-dir`` when there is one, and
speaks the line protocol of ``crash_harness.py``. Every random generator it uses (torch for the
data and dropout, numpy and python for noise) is restored on resume, so a run killed any number
of times ends with the same bits as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import random

import numpy as np
import torch
from torch import nn

from trainkit.checkpoint import CheckpointManager, list_checkpoints, load_model_state
from trainkit.checkpoint.rng import capture_rng_state, restore_rng_state


def build(width: int) -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, width), nn.GELU(), nn.Dropout(0.1), nn.Linear(width, 256))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.9)
    return model, optimizer, scheduler


def warm_up() -> None:
    """Import what the first optimizer imports lazily (torch._dynamo, ~2 s), so that forks start warm."""
    build(8)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler) -> None:
    noise = 0.1 * float(np.random.rand()) + 0.01 * random.random()
    inputs = torch.randn(16, 256)
    loss = (model(inputs) - inputs * (1 + noise)).pow(2).mean()
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--max-steps", type=int, required=True)
    parser.add_argument("--save-every", type=int, default=1)
    parser.add_argument("--save-total-limit", type=int, default=2)
    parser.add_argument("--width", type=int, default=2048)
    opts = parser.parse_args(argv)
    torch.set_num_threads(1)

    model, optimizer, scheduler = build(opts.width)
    random.seed(1)
    np.random.seed(2)
    manager = CheckpointManager(opts.output_dir, save_total_limit=opts.save_total_limit)
    resume_path = manager.resolve_resume(True) if list_checkpoints(opts.output_dir) else None
    start = 0
    if resume_path is None:
        print("FRESH", flush=True)
    else:
        state = manager.resume(resume_path)
        load_model_state(model, state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        restore_rng_state(state["rng"])
        start = state["trainer_state"]["global_step"]
        print(f"RESUMED {start}", flush=True)
    print("READY", flush=True)

    model.train()
    for step in range(start + 1, opts.max_steps + 1):
        train_step(model, optimizer, scheduler)
        if step % opts.save_every == 0 or step == opts.max_steps:
            print(f"SAVING {step}", flush=True)
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": capture_rng_state(),
                "trainer_state": {"global_step": step},
            }
            manager.save(step, state)
            print(f"SAVED {step}", flush=True)
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
