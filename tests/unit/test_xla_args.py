"""The XLA keys of fsdp_config are checked by name; the XLA strategies say what to install without torch_xla."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

from trainkit import TrainingArguments
from trainkit.args_support import IMPLEMENTED_ISSUES

V2 = {"xla": True, "xla_fsdp_v2": True}


def _args(**kwargs: Any) -> TrainingArguments:
    return TrainingArguments(output_dir="out", report_to="none", **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fsdp_config": {"xla": "true"}}, r"fsdp_config\['xla'\] must be True or False, got 'true'"),
        ({"fsdp_config": {"xla_fsdp_v2": True}}, r"\['xla_fsdp_v2'\] need fsdp_config\['xla'\]=True"),
        ({"fsdp_config": {"xla_fsdp_grad_ckpt": True}}, r"\['xla_fsdp_grad_ckpt'\] need fsdp_config\['xla'\]=True"),
        ({"fsdp": "full_shard", "fsdp_config": {"xla": True}}, r"XLA FSDP v1 .* is not implemented; set .*xla_fsdp_v2"),
        (
            {"fsdp": "full_shard", "fsdp_config": {**V2, "xla_fsdp_settings": {"compute_dtype": "bfloat16"}}},
            r"\['xla_fsdp_settings'\] configures XLA FSDP v1",
        ),
        ({"fsdp_config": V2}, r"needs fsdp='full_shard' \(got fsdp=\[\]\)"),
        ({"fsdp": "full_shard offload", "fsdp_config": V2}, r"\['offload'\] are not supported with XLA FSDPv2"),
        (
            {"fsdp": "full_shard", "fsdp_config": {**V2, "min_num_params": 1000}},
            r"\['min_num_params'\] have no meaning under XLA SPMD",
        ),
        (
            {"fsdp": "full_shard", "fsdp_config": {**V2, "activation_checkpointing": True}},
            r"\['activation_checkpointing'\] have no meaning under XLA SPMD",
        ),
        ({"fsdp": "full_shard", "use_cpu": True, "fsdp_config": V2}, r"use_cpu=True contradicts fsdp_config\['xla'\]"),
    ],
)
def test_xla_fsdp_config_contradictions_are_named(kwargs: dict[str, Any], message: str):
    with pytest.raises(ValueError, match=message):
        _args(**kwargs)


def test_xla_keys_set_to_false_and_a_valid_fsdpv2_config_pass_the_check():
    from types import SimpleNamespace

    from trainkit.args_xla import check_xla_fsdp_config

    off = {"xla": False, "xla_fsdp_v2": False, "xla_fsdp_grad_ckpt": False, "xla_fsdp_settings": {}}
    check_xla_fsdp_config(SimpleNamespace(fsdp=[], fsdp_config=off, use_cpu=True))  # type: ignore[arg-type]
    config = {**V2, "xla_fsdp_grad_ckpt": True, "transformer_layer_cls_to_wrap": ["Block"], "min_num_params": 0}
    options = ["full_shard", "auto_wrap"]
    check_xla_fsdp_config(SimpleNamespace(fsdp=options, fsdp_config=config, use_cpu=False))  # type: ignore[arg-type]


def test_fsdpv2_arguments_are_accepted_once_fsdp_is_implemented():
    if 8 not in IMPLEMENTED_ISSUES:
        pytest.skip("needs issue 8 (fsdp and fsdp_config are refused until FSDP2 exists)")
    config = {**V2, "xla_fsdp_grad_ckpt": True, "transformer_layer_cls_to_wrap": "Block"}
    args = _args(fsdp="full_shard auto_wrap", fsdp_config=config)
    assert args.fsdp_config["transformer_layer_cls_to_wrap"] == ["Block"]


@pytest.mark.skipif(importlib.util.find_spec("torch_xla") is not None, reason="torch_xla is installed here")
def test_without_torch_xla_the_strategies_and_pjrt_device_name_the_install(monkeypatch: pytest.MonkeyPatch):
    from trainkit import XLASPMDStrategy, XLAStrategy
    from trainkit.factory import build_components

    for strategy in (XLAStrategy, XLASPMDStrategy):
        with pytest.raises(ImportError, match=rf"{strategy.__name__} needs the package 'torch_xla'.*trainkit\[xla\]"):
            strategy()
    monkeypatch.setenv("PJRT_DEVICE", "TPU")
    with pytest.raises(ImportError, match=r"XLAStrategy needs the package 'torch_xla'"):
        build_components(_args())
    assert build_components(_args(use_cpu=True)).strategy.root_device.type == "cpu"
    monkeypatch.setenv("PJRT_DEVICE", "CPU")  # what torch_xla's import sets by itself: not a request
    assert build_components(_args()).strategy.root_device.type in ("cpu", "cuda", "mps")
