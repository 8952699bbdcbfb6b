"""Parity: the Trainer (fp32, CPU) and a plain PyTorch loop with the same data order and math agree."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from tests.helpers import IGNORE, TokenDataset, TokenModel, quiet_args
from trainkit import Trainer, default_data_collator

SEED = 11
BATCH = 3
ACCUM = 2
EPOCHS = 2
LR = 0.05


def _optimizer(model):
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    total = EPOCHS * -(-len(_dataset()) // (BATCH * ACCUM))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, (total - s) / total))
    return optimizer, scheduler


def _dataset():
    return TokenDataset(length=23, seq=6)


def plain_loop() -> dict[str, torch.Tensor]:
    """What the Trainer documents it does, written by hand."""
    torch.manual_seed(0)
    model = TokenModel()
    optimizer, scheduler = _optimizer(model)
    dataset = _dataset()
    for epoch in range(EPOCHS):
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(SEED + epoch)).tolist()
        loader = DataLoader(dataset, batch_size=BATCH, sampler=order, collate_fn=default_data_collator)
        batches = list(loader)
        for start in range(0, len(batches), ACCUM):
            window = batches[start : start + ACCUM]
            tokens = sum(int((b["labels"] != IGNORE).sum()) for b in window)
            for batch in window:
                loss = model(**batch)["loss"] * (int((batch["labels"] != IGNORE).sum()) / tokens)
                loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
    return model.state_dict()


def test_trainer_equals_plain_loop_with_optimizers_passed(tmp_path):
    torch.manual_seed(0)
    model = TokenModel()
    args = quiet_args(
        str(tmp_path),
        per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=ACCUM,
        num_train_epochs=EPOCHS,
        max_grad_norm=1.0,
        seed=SEED,
    )
    Trainer(model, args, train_dataset=_dataset(), optimizers=_optimizer(model)).train()
    expected = plain_loop()
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, expected[name], atol=1e-6, rtol=0)


def test_trainer_equals_plain_loop_with_registry_adamw_and_linear_schedule(tmp_path):
    """The same, with AdamW and the linear schedule chosen by name in TrainingArguments."""
    torch.manual_seed(0)
    model = TokenModel()
    args = quiet_args(
        str(tmp_path),
        per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=ACCUM,
        num_train_epochs=EPOCHS,
        max_grad_norm=1.0,
        seed=SEED,
        learning_rate=LR,
        optim="adamw_torch",
        lr_scheduler_type="linear",
        weight_decay=0.0,
    )
    Trainer(model, args, train_dataset=_dataset()).train()
    expected = plain_loop()
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, expected[name], atol=1e-6, rtol=0)
