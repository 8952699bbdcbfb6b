"""build_components: objects passed to the Trainer win; arguments fill in the rest; conflicts are errors."""

from __future__ import annotations

import pytest

from tests.helpers import quiet_args
from trainkit import MixedPrecision, Precision, SingleDeviceStrategy
from trainkit.checkpoint.safetensors_io import SafetensorsCheckpointIO
from trainkit.checkpoint.torch_io import TorchCheckpointIO
from trainkit.factory import build_components


def test_defaults(tmp_path):
    parts = build_components(quiet_args(str(tmp_path)))
    assert isinstance(parts.strategy, SingleDeviceStrategy)
    assert type(parts.precision) is Precision
    assert isinstance(parts.checkpoint_io, SafetensorsCheckpointIO)


def test_arguments_choose_precision_and_format(tmp_path):
    parts = build_components(quiet_args(str(tmp_path), bf16=True, save_safetensors=False))
    assert isinstance(parts.precision, MixedPrecision)
    assert parts.strategy.precision is parts.precision
    assert isinstance(parts.checkpoint_io, TorchCheckpointIO)


def test_a_strategy_keeps_its_precision(tmp_path):
    strategy = SingleDeviceStrategy("cpu", precision=MixedPrecision("bf16"))
    parts = build_components(quiet_args(str(tmp_path)), strategy=strategy)
    assert parts.precision is strategy.precision
    assert isinstance(parts.precision, MixedPrecision)


def test_two_precisions_are_a_conflict(tmp_path):
    strategy = SingleDeviceStrategy("cpu", precision=MixedPrecision("fp16"))
    with pytest.raises(ValueError, match="choose one of the two"):
        build_components(quiet_args(str(tmp_path), bf16=True), strategy=strategy)


def test_precision_object_wins(tmp_path):
    precision = MixedPrecision("bf16")
    parts = build_components(quiet_args(str(tmp_path), fp16=True), precision=precision)
    assert parts.precision is precision


def test_checkpoint_io_object_wins(tmp_path):
    io = TorchCheckpointIO()
    assert build_components(quiet_args(str(tmp_path)), checkpoint_io=io).strategy.checkpoint_io is io
