"""docs/distributed.md documents every fsdp option and every fsdp_config key trainkit knows."""

from __future__ import annotations

from pathlib import Path

from trainkit.options import FSDPOption
from trainkit.strategies.fsdp_options import FSDP_CONFIG_KEYS

DOC = (Path(__file__).resolve().parents[2] / "docs" / "distributed.md").read_text()


def test_every_fsdp_option_is_documented():
    assert [o.value for o in FSDPOption if f"`{o.value}`" not in DOC] == []


def test_every_fsdp_config_key_is_documented():
    assert [key for key in FSDP_CONFIG_KEYS if f"`{key}`" not in DOC] == []
