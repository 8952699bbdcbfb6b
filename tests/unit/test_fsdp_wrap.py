"""Which submodules become FSDP units (transformers' auto_wrap), without any process group."""

from __future__ import annotations

import pytest
from torch import nn

from trainkit.strategies.fsdp_wrap import modules_by_class, modules_by_size, wrap_targets


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.Linear(4, 4)  # 20 parameters
        self.mlp = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 4))  # 40 + 36


class Net(nn.Module):
    _no_split_modules = ["Block"]

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)  # 40
        self.layers = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(4, 10)  # 50


def test_class_names_select_every_instance_in_forward_order():
    net = Net()
    assert modules_by_class(net, ["Block"]) == list(net.layers)


def test_a_class_name_the_model_lacks_is_an_error_listing_its_classes():
    with pytest.raises(ValueError, match=r"class \['GPTBlock'\] in Net \(its classes: Block, Embedding"):
        modules_by_class(Net(), ["Block", "GPTBlock"])


def test_size_policy_counts_parameters_not_already_in_a_unit():
    net = Net()
    chosen = modules_by_size(net, 45)
    # each Block's mlp (76) is a unit, leaving the Block itself 20: not enough; the head (50) is one
    assert chosen == [net.layers[0].mlp, net.layers[1].mlp, net.head]
    assert net.layers not in modules_by_size(net, 1)  # a ModuleList has no forward: never a unit


def test_size_policy_needs_a_positive_size():
    with pytest.raises(ValueError, match="min_num_params"):
        modules_by_size(Net(), 0)


def test_auto_wrap_defaults_to_the_models_no_split_modules():
    net = Net()
    assert wrap_targets(net, None, 0, auto_wrap=True) == list(net.layers)
    assert wrap_targets(net, None, 0, auto_wrap=False) == []


def test_auto_wrap_without_a_policy_says_which_keys_to_set():
    with pytest.raises(ValueError, match=r"transformer_layer_cls_to_wrap.*min_num_params"):
        wrap_targets(nn.Sequential(nn.Linear(2, 2)), None, 0, auto_wrap=True)


def test_targets_come_innermost_first():
    net = Net()
    targets = wrap_targets(net, ["Block", "Linear"], 0, auto_wrap=False)
    depths = [next(n for n, m in net.named_modules() if m is t).count(".") for t in targets]
    assert depths == sorted(depths, reverse=True)
    assert set(map(id, targets)) == {id(m) for m in net.modules() if type(m).__name__ in ("Block", "Linear")}
