"""The crash-trial protocol of ``crash_harness.py`` spoken by a ``Trainer`` run that saves every step.

It resumes (``resume_from_checkpoint=True``) when ``--output-dir`` holds checkpoints. The model is
large enough (``--width``) that most of a step's time is spent writing its checkpoint.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.utils.data import Dataset

from trainkit import Trainer, TrainerCallback, TrainingArguments
from trainkit.checkpoint import list_checkpoints


class Autoencoder(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(256, width), nn.GELU(), nn.Dropout(0.1), nn.Linear(width, 256))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": (self.net(x) - x).pow(2).mean()}


class Noise(Dataset):
    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": torch.randn(256, generator=torch.Generator().manual_seed(i))}


class Protocol(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save:
            print(f"SAVING {state.global_step}", flush=True)

    def on_save(self, args, state, control, **kwargs):
        print(f"SAVED {state.global_step}", flush=True)

    def on_train_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            print("DONE", flush=True)


def warm_up() -> None:
    """Import what the first optimizer step imports lazily, so that forked children start warm."""
    model = Autoencoder(8)
    torch.optim.AdamW(model.parameters()).step()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--max-steps", type=int, required=True)
    parser.add_argument("--save-every", type=int, default=1)
    parser.add_argument("--save-total-limit", type=int, default=2)
    parser.add_argument("--width", type=int, default=2048)
    opts = parser.parse_args(argv)
    torch.set_num_threads(1)
    resume = bool(list_checkpoints(opts.output_dir))
    args = TrainingArguments(
        output_dir=opts.output_dir,
        max_steps=opts.max_steps,
        per_device_train_batch_size=16,
        save_steps=opts.save_every,
        save_total_limit=opts.save_total_limit,
        report_to="none",
        disable_tqdm=True,
        logging_strategy="no",
        learning_rate=1e-3,
        seed=0,
        lr_scheduler_type="constant",
    )
    trainer = Trainer(Autoencoder(opts.width), args, train_dataset=Noise(), callbacks=[Protocol()])
    if resume:
        from trainkit import get_last_checkpoint
        from trainkit.checkpoint.layout import checkpoint_step

        print(f"RESUMED {checkpoint_step(get_last_checkpoint(opts.output_dir))}", flush=True)
    else:
        print("FRESH", flush=True)
    print("READY", flush=True)
    trainer.train(resume_from_checkpoint=True if resume else None)


if __name__ == "__main__":
    main()
