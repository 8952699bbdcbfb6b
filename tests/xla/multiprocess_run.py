"""Run XLAStrategy on every PJRT process (``xmp.spawn``), in a fresh process: used by test_xla_multiprocess.

Usage: ``python tests/xla/multiprocess_run.py collectives|train OUT``; each process writes its
results to OUT (``rank<i>.pkl`` or ``weights<i>.pt``). The parent test never starts the XLA
runtime itself: on a TPU, a process holding the device keeps the spawned ones from it.
"""

from __future__ import annotations

import os
import pickle
import sys

import torch

PER_DEVICE_BATCH = 2


def collectives(index: int, out: str) -> None:
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


def train(index: int, out: str) -> None:
    from tests.helpers import TokenDataset, TokenModel, quiet_args
    from tests.xla.helpers import pad_collate
    from trainkit import Trainer
    from trainkit.strategies.xla import XLAStrategy

    model = TokenModel()
    args = quiet_args(out, per_device_train_batch_size=PER_DEVICE_BATCH, gradient_accumulation_steps=2, max_steps=4)
    trainer = Trainer(model, args, train_dataset=TokenDataset(64), data_collator=pad_collate, strategy=XLAStrategy())
    trainer.train()
    state = trainer.strategy.model_state_dict(trainer.model)
    torch.save(state, os.path.join(out, f"weights{trainer.strategy.global_rank}.pt"))


if __name__ == "__main__":
    import torch_xla.distributed.xla_multiprocessing as xmp

    xmp.spawn({"collectives": collectives, "train": train}[sys.argv[1]], args=(sys.argv[2],))
