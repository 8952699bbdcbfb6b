"""Hypothesis: W ranks (threads with DDP's semantics) equal one process with W times the batch.

Training: the loss of each window is normalised by the label tokens of every rank and scaled
back by the world size, so averaged gradients are those of the global batch. Evaluation: the
sampler's padding is dropped and the gathered predictions come back in dataset order.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.distributed_helpers import run_ranks
from tests.helpers import IGNORE, SumLossTokenModel, TokenDataset, TokenModel, quiet_args
from trainkit import Trainer


def _train(strategy, model_cls, dataset, batch, accumulation, tmp, clip):
    model = model_cls().double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    args = quiet_args(
        tmp,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        num_train_epochs=2,
        max_grad_norm=clip,
        seed=7,
    )
    trainer = Trainer(model, args, train_dataset=dataset, optimizers=(optimizer, scheduler), strategy=strategy)
    trainer.train()
    return model.state_dict()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    world=st.integers(2, 3),
    batch=st.integers(1, 2),
    batches_per_rank=st.integers(1, 4),
    accumulation=st.integers(1, 3),
    pads=st.lists(st.integers(0, 6), min_size=24, max_size=24),
    sum_loss=st.booleans(),
    clip=st.sampled_from([0.0, 0.05]),
)
def test_ranks_train_like_one_process(tmp_path, world, batch, batches_per_rank, accumulation, pads, sum_loss, clip):
    length = world * batch * batches_per_rank  # no sampler padding: both runs see the same examples per step
    dataset = TokenDataset(length=length, seq=6, pad=pads[:length])
    model_cls = SumLossTokenModel if sum_loss else TokenModel
    ranks = run_ranks(world, lambda s: _train(s, model_cls, dataset, batch, accumulation, str(tmp_path), clip))
    one = _train(None, model_cls, dataset, batch * world, accumulation, str(tmp_path), clip)
    for state in ranks:
        for name in one:
            torch.testing.assert_close(state[name], one[name], atol=1e-9, rtol=0)


def _accuracy(p):
    preds, labels = np.asarray(p.predictions).argmax(-1), np.asarray(p.label_ids)
    mask = labels != IGNORE
    return {"accuracy": float((preds[mask] == labels[mask]).mean()) if mask.any() else 0.0, "n": len(labels)}


def _predict(strategy, size, batch, accumulation, concat, objects, tmp):
    args = quiet_args(
        tmp,
        per_device_eval_batch_size=batch,
        eval_accumulation_steps=accumulation,
        eval_do_concat_batches=concat,
        eval_use_gather_object=objects,
        include_for_metrics=["loss"],
    )
    metrics = None if objects or not concat else _accuracy
    trainer = Trainer(TokenModel(), args, compute_metrics=metrics, strategy=strategy)
    out = trainer.predict(TokenDataset(length=size, seq=6, seed=5))
    return out


def _examples(predictions, concat, objects):
    if objects:
        return [np.asarray(p) for p in predictions]
    if not concat:
        return [row for batch in predictions for row in batch]
    return list(predictions)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    world=st.integers(1, 4),
    size=st.integers(1, 13),
    batch=st.integers(1, 3),
    accumulation=st.sampled_from([None, 1, 2, 3]),
    layout=st.sampled_from(["concat", "lists", "objects"]),
)
def test_ranks_predict_like_one_process(tmp_path, world, size, batch, accumulation, layout):
    concat, objects = layout != "lists", layout == "objects"
    ranks = run_ranks(world, lambda s: _predict(s, size, batch, accumulation, concat, objects, str(tmp_path)))
    one = _predict(None, size, batch * world, accumulation, concat, objects, str(tmp_path))
    for out in ranks:
        assert out.metrics["test_loss"] == pytest.approx(one.metrics["test_loss"], rel=1e-6)
        for key in ("test_accuracy", "test_n"):
            assert out.metrics.get(key) == one.metrics.get(key)
        for got, expected in ((out.predictions, one.predictions), (out.label_ids, one.label_ids)):
            got, expected = _examples(got, concat, objects), _examples(expected, concat, objects)
            assert len(got) == len(expected) == size
            for a, b in zip(got, expected):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
