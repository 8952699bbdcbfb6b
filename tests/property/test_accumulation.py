"""Hypothesis: gradient accumulation equals one big batch (token-normalised), short last window included."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import SumLossTokenModel, TokenDataset, TokenModel, quiet_args
from trainkit import Trainer


def _train(model_cls, dataset, batch_size, accumulation, tmp, epochs=1):
    torch.manual_seed(0)
    model = model_cls().double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    args = quiet_args(
        tmp,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        num_train_epochs=epochs,
        max_grad_norm=0.0,
        seed=7,
    )
    Trainer(model, args, train_dataset=dataset, optimizers=(optimizer, scheduler)).train()
    return model.state_dict()


@settings(max_examples=25, deadline=None)
@given(
    accumulation=st.integers(1, 4),
    batch_size=st.integers(1, 3),
    length=st.integers(2, 17),
    pads=st.lists(st.integers(0, 6), min_size=17, max_size=17),
    sum_loss=st.booleans(),
)
def test_accumulation_equals_one_big_batch(tmp_path_factory, accumulation, batch_size, length, pads, sum_loss):
    tmp = str(tmp_path_factory.mktemp("ga"))
    dataset = TokenDataset(length=length, seq=6, pad=pads[:length])
    model_cls = SumLossTokenModel if sum_loss else TokenModel
    accumulated = _train(model_cls, dataset, batch_size, accumulation, tmp)
    big = _train(model_cls, dataset, batch_size * accumulation, 1, tmp)
    for name in big:
        torch.testing.assert_close(accumulated[name], big[name], atol=1e-6, rtol=0)


def test_mean_and_sum_loss_models_agree(tmp_path):
    dataset = TokenDataset(length=11, seq=6)
    mean_model = _train(TokenModel, dataset, 2, 3, str(tmp_path))
    sum_model = _train(SumLossTokenModel, dataset, 2, 3, str(tmp_path))
    for name in mean_model:
        torch.testing.assert_close(mean_model[name], sum_model[name], atol=1e-9, rtol=0)


def test_all_padding_micro_batch_contributes_zero(tmp_path):
    # example 0 has no label at all: a micro-batch of it alone has a NaN mean loss in plain PyTorch
    dataset = TokenDataset(length=4, seq=6, pad=[6, 0, 2, 1])
    accumulated = _train(TokenModel, dataset, 1, 4, str(tmp_path))
    big = _train(TokenModel, dataset, 4, 1, str(tmp_path))
    for name in big:
        assert torch.isfinite(accumulated[name]).all()
        torch.testing.assert_close(accumulated[name], big[name], atol=1e-9, rtol=0)
