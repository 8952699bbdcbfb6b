"""The Trainer's rank-dependent behaviour, with a strategy that only pretends to be rank 1 of 2."""

from __future__ import annotations

import logging

import pytest

from tests.helpers import RegressionDataset, RegressionModel, quiet_args
from trainkit import Trainer
from trainkit.strategies.single_device import SingleDeviceStrategy


class PretendRank(SingleDeviceStrategy):
    """Rank ``rank`` of a 2-process job on node ``node`` (collectives stay the one-process identities)."""

    def __init__(self, rank: int = 1, local_rank: int = 0) -> None:
        super().__init__("cpu")
        self._rank, self._local = rank, local_rank

    @property
    def global_rank(self) -> int:
        return self._rank

    @property
    def local_rank(self) -> int:
        return self._local

    @property
    def world_size(self) -> int:
        return 2


@pytest.mark.parametrize(("on_each_node", "written"), [(True, True), (False, False)])
def test_save_model_on_a_second_nodes_main_process(tmp_path, on_each_node, written):
    args = quiet_args(str(tmp_path), save_on_each_node=on_each_node)
    trainer = Trainer(RegressionModel(), args, strategy=PretendRank(rank=1, local_rank=0))
    assert not trainer.is_world_process_zero()
    assert trainer.is_local_process_zero()
    trainer.save_model()
    assert (tmp_path / "model.safetensors").exists() is written


def test_a_failing_rank_says_which_one_and_where(tmp_path, caplog):
    class Broken(RegressionModel):
        def forward(self, input_x, labels=None):
            raise RuntimeError("broken forward")

    trainer = Trainer(Broken(), quiet_args(str(tmp_path)), train_dataset=RegressionDataset(8), strategy=PretendRank())
    with caplog.at_level(logging.ERROR, logger="trainkit"), pytest.raises(RuntimeError, match="broken forward"):
        trainer.train()
    assert "Rank 1 of 2 failed at step 0: RuntimeError: broken forward" in caplog.text


def test_an_iterable_dataset_on_several_ranks_is_flagged(tmp_path, caplog):
    from tests.helpers import StreamDataset

    stream = StreamDataset(RegressionDataset(8))
    args = quiet_args(str(tmp_path), max_steps=1)
    trainer = Trainer(RegressionModel(), args, train_dataset=stream, strategy=PretendRank())
    with caplog.at_level(logging.WARNING, logger="trainkit"):
        trainer.get_train_dataloader()
    assert "must shard itself by rank" in caplog.text
