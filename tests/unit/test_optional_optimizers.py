"""The optional-package entries build what transformers builds (checked with a stand-in bitsandbytes)."""

from __future__ import annotations

from typing import Any

import pytest
from torch import nn

from tests.optim_helpers import install_fake_bitsandbytes
from trainkit import TrainingArguments
from trainkit.optim import create_optimizer


def make_args(**kwargs: Any) -> TrainingArguments:
    return TrainingArguments(output_dir="out", report_to="none", learning_rate=2e-3, adam_beta1=0.8, **kwargs)


def model() -> nn.Module:
    return nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 4))


ADAM = {"lr": 2e-3, "betas": (0.8, 0.999), "eps": 1e-8}


@pytest.mark.parametrize(
    ("name", "cls", "expected"),
    [
        ("adamw_bnb_8bit", "AdamW", {**ADAM, "optim_bits": 8, "is_paged": False}),
        ("adamw_8bit", "AdamW", {**ADAM, "optim_bits": 8, "is_paged": False}),
        ("paged_adamw_32bit", "AdamW", {**ADAM, "optim_bits": 32, "is_paged": True}),
        ("paged_adamw_8bit", "AdamW", {**ADAM, "optim_bits": 8, "is_paged": True}),
        ("lion_8bit", "Lion", {"lr": 2e-3, "betas": (0.8, 0.999), "optim_bits": 8, "is_paged": False}),
        ("lion_32bit", "Lion", {"lr": 2e-3, "betas": (0.8, 0.999), "optim_bits": 32, "is_paged": False}),
        ("paged_lion_32bit", "Lion", {"lr": 2e-3, "betas": (0.8, 0.999), "optim_bits": 32, "is_paged": True}),
        ("paged_lion_8bit", "Lion", {"lr": 2e-3, "betas": (0.8, 0.999), "optim_bits": 8, "is_paged": True}),
        ("rmsprop_bnb", "RMSprop", {"lr": 2e-3, "optim_bits": 32}),
        ("rmsprop_bnb_8bit", "RMSprop", {"lr": 2e-3, "optim_bits": 8}),
        ("rmsprop_bnb_32bit", "RMSprop", {"lr": 2e-3, "optim_bits": 32}),
        (
            "ademamix",
            "AdEMAMix",
            {"lr": 2e-3, "betas": (0.8, 0.999, 0.9999), "alpha": 5.0, "eps": 1e-8, "optim_bits": 32, "is_paged": False},
        ),
        (
            "paged_ademamix_8bit",
            "AdEMAMix",
            {"lr": 2e-3, "betas": (0.8, 0.999, 0.9999), "alpha": 5.0, "eps": 1e-8, "optim_bits": 8, "is_paged": True},
        ),
    ],
)
def test_bitsandbytes_entries_pass_transformers_arguments(
    monkeypatch: pytest.MonkeyPatch, name: str, cls: str, expected: dict[str, Any]
):
    calls = install_fake_bitsandbytes(monkeypatch)
    net = model()
    create_optimizer(net, make_args(optim=name))
    assert calls["optimizers"] == [(cls, expected)]
    expected_overrides = [(net[0], "weight", {"optim_bits": 32})] if expected["optim_bits"] == 8 else []
    assert calls["overrides"] == expected_overrides


def test_ademamix_reads_its_betas_alpha_and_schedule_from_optim_args(monkeypatch: pytest.MonkeyPatch):
    calls = install_fake_bitsandbytes(monkeypatch)
    create_optimizer(model(), make_args(optim="ademamix_8bit", optim_args="beta3=0.999,alpha=8,t_alpha=100,eps=1e-6"))
    ((_, kwargs),) = calls["optimizers"]
    assert kwargs["betas"] == (0.8, 0.999, 0.999)
    assert (kwargs["alpha"], kwargs["eps"], kwargs["t_alpha"]) == (8.0, 1e-6, 100)


def test_rmsprop_bnb_takes_its_options_from_optim_args(monkeypatch: pytest.MonkeyPatch):
    calls = install_fake_bitsandbytes(monkeypatch)
    create_optimizer(model(), make_args(optim="rmsprop_bnb", optim_args="alpha=0.9,centered=true"))
    assert calls["optimizers"] == [("RMSprop", {"lr": 2e-3, "optim_bits": 32, "alpha": 0.9, "centered": True})]
