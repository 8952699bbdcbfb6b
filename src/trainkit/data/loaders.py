"""Building the training and evaluation DataLoaders from TrainingArguments (transformers' options)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from trainkit.data.samplers import EpochSampler, LengthGroupedSampler, SkippableBatchSampler
from trainkit.utils.seed import set_seed

__all__ = ["build_eval_dataloader", "build_train_dataloader", "lengths_of", "seed_worker"]


def seed_worker(worker_id: int) -> None:
    """Seed python/numpy/torch in a DataLoader worker from the worker's torch seed (as transformers)."""
    set_seed(torch.initial_seed() % 2**32)


def lengths_of(dataset: Any, column: str | None, input_name: str = "input_ids") -> list[int]:
    """Per-example lengths for ``group_by_length``: the ``length_column_name`` column when present."""
    column_names = getattr(dataset, "column_names", None)
    if column and column_names is not None and column in column_names:
        return [int(n) for n in dataset[column]]
    lengths = []
    for i in range(len(dataset)):
        item = dataset[i]
        if not isinstance(item, dict) or input_name not in item:
            raise ValueError(
                f"group_by_length needs a '{column}' column or examples that are dicts with '{input_name}'"
            )
        lengths.append(len(item[input_name]))
    return lengths


def _loader_kwargs(args: Any, device: torch.device) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "num_workers": args.dataloader_num_workers,
        "pin_memory": bool(args.dataloader_pin_memory and device.type == "cuda"),
    }
    if args.dataloader_num_workers > 0:
        kwargs["persistent_workers"] = args.dataloader_persistent_workers
        kwargs["worker_init_fn"] = seed_worker
        if args.dataloader_prefetch_factor is not None:
            kwargs["prefetch_factor"] = args.dataloader_prefetch_factor
    return kwargs


def build_train_dataloader(
    dataset: Dataset[Any] | IterableDataset[Any],
    args: Any,
    collate_fn: Callable[[list[Any]], Any],
    device: torch.device,
    sampler_kwargs: dict[str, int] | None = None,
    lengths: Sequence[int] | None = None,
) -> DataLoader[Any]:
    """A training DataLoader whose order depends only on (data_seed or seed, epoch)."""
    batch_size = args.per_device_train_batch_size
    kwargs = _loader_kwargs(args, device)
    seed = args.data_seed if args.data_seed is not None else args.seed
    kwargs["generator"] = torch.Generator().manual_seed(seed)
    if isinstance(dataset, IterableDataset):
        return DataLoader(
            dataset, batch_size=batch_size, collate_fn=collate_fn, drop_last=args.dataloader_drop_last, **kwargs
        )
    shard = sampler_kwargs or {"num_replicas": 1, "rank": 0}
    sampler: EpochSampler
    if args.group_by_length:
        if lengths is None:
            raise ValueError("group_by_length=True needs the example lengths")
        sampler = LengthGroupedSampler(lengths, batch_size * args.gradient_accumulation_steps, seed=seed, **shard)
    else:
        sampler = EpochSampler(len(dataset), shuffle=True, seed=seed, **shard)  # type: ignore[arg-type]
    batches = SkippableBatchSampler(sampler, batch_size, args.dataloader_drop_last)
    return DataLoader(dataset, batch_sampler=batches, collate_fn=collate_fn, **kwargs)


def build_eval_dataloader(
    dataset: Dataset[Any] | IterableDataset[Any],
    args: Any,
    collate_fn: Callable[[list[Any]], Any],
    device: torch.device,
    sampler_kwargs: dict[str, int] | None = None,
) -> DataLoader[Any]:
    """An evaluation DataLoader in dataset order (each rank a share, padded by repeating the first indices)."""
    batch_size = args.per_device_eval_batch_size
    kwargs = _loader_kwargs(args, device)
    if isinstance(dataset, IterableDataset):
        return DataLoader(dataset, batch_size=batch_size, collate_fn=collate_fn, **kwargs)
    shard = sampler_kwargs or {"num_replicas": 1, "rank": 0}
    sampler = EpochSampler(len(dataset), shuffle=False, **shard)  # type: ignore[arg-type]
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn, **kwargs)
