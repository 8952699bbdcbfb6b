"""DeepSpeed configs as data: reading, checking, and transformers' "auto" values filled from TrainingArguments.

Nothing here needs deepspeed installed: the config functions are pure.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from tests.helpers import quiet_args
from trainkit.strategies.deepspeed_config import (
    auto_keys,
    check_config,
    config_value,
    fill_auto,
    hidden_size_values,
    read_config,
    schedule_values,
)
from trainkit.strategies.deepspeed_options import check_deepspeed_arguments, deepspeed_config_from_arguments

WORLD = 4


def filled(tmp_path, config, **arguments):
    """``config`` filled from TrainingArguments (``deepspeed`` set after construction: issue 9 is not merged yet)."""
    args = quiet_args(str(tmp_path), **arguments)
    args.deepspeed = config
    return deepspeed_config_from_arguments(args, WORLD)


# --------------------------------------------------------------------- reading
def test_a_dict_is_copied(tmp_path):
    original = {"zero_optimization": {"stage": 2}}
    read_config(original)["zero_optimization"]["stage"] = 3
    assert original == {"zero_optimization": {"stage": 2}}


def test_a_json_string_and_a_file_path(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    assert (
        read_config(str(path))
        == read_config('{"zero_optimization": {"stage": 3}}')
        == {"zero_optimization": {"stage": 3}}
    )


def test_bad_json_names_the_file_and_the_place(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text('{"zero_optimization": {"stage": 2,}}')
    with pytest.raises(
        ValueError, match=r"TrainingArguments.deepspeed: the file '.*ds.json' is not valid JSON.*line 1"
    ):
        read_config(str(path))


def test_a_missing_file_and_a_json_list_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"cannot read the DeepSpeed config file '.*nope.json'"):
        read_config(str(tmp_path / "nope.json"))
    path = tmp_path / "list.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="must hold a JSON object"):
        read_config(str(path))


# --------------------------------------------------------------------- checking
@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"zero_optimization": {"stage": 4}}, r"zero_optimization.stage=4 is not a ZeRO stage"),
        ({"zero_optimization": {"stage": True}}, r"zero_optimization.stage=True is not a ZeRO stage"),
        ({"zero_optimization": {"stage": "2"}}, r"zero_optimization.stage='2' is not a ZeRO stage"),
        ({"zero_optimization": 2}, r"zero_optimization must be an object"),
        (
            {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "gpu"}}},
            r"zero_optimization.offload_optimizer.device='gpu' must be one of",
        ),
        (
            {"zero_optimization": {"stage": 2, "offload_param": {"device": "cpu"}}},
            r"zero_optimization.offload_param.device='cpu' needs zero_optimization.stage >= 3",
        ),
        (
            {"zero_optimization": {"stage": 0, "offload_optimizer": {"device": "cpu"}}},
            r"offload_optimizer.device='cpu' needs zero_optimization.stage >= 1",
        ),
        ({"fp16": {"enabled": True}, "bf16": {"enabled": True}}, "fp16.enabled and bf16.enabled are both true"),
        ({"optimizer": {"params": {"lr": 1}}}, r"optimizer.type must name the optimizer"),
        ({"scheduler": {"type": "WarmupLR", "params": 3}}, r"scheduler.params must be an object"),
        ({"train_micro_batch_size_per_gpu": 0}, r"train_micro_batch_size_per_gpu must be a positive integer"),
        ({"gradient_accumulation_steps": 1.5}, r"gradient_accumulation_steps must be a positive integer"),
        ({"gradient_clipping": -1}, r"gradient_clipping must be a number >= 0"),
    ],
)
def test_invalid_configs_name_the_key(config, message):
    with pytest.raises(ValueError, match=message):
        check_config(config)


def test_a_valid_config_passes():
    check_config(
        {
            "zero_optimization": {
                "stage": 3,
                "offload_param": {"device": "cpu"},
                "offload_optimizer": {"device": "cpu"},
            },
            "bf16": {"enabled": "auto"},
            "optimizer": {"type": "AdamW", "params": {"lr": "auto"}},
            "gradient_clipping": 0,
        }
    )


# ------------------------------------------------------------------ "auto" fields
# (config key, arguments, expected value); WORLD ranks
AUTO_FIELDS = [
    ("train_micro_batch_size_per_gpu", {"per_device_train_batch_size": 3}, 3),
    ("gradient_accumulation_steps", {"gradient_accumulation_steps": 5}, 5),
    ("train_batch_size", {"per_device_train_batch_size": 3, "gradient_accumulation_steps": 5}, 3 * 5 * WORLD),
    ("gradient_clipping", {"max_grad_norm": 0.5}, 0.5),
    ("optimizer.params.lr", {"learning_rate": 3e-4}, 3e-4),
    ("optimizer.params.betas", {"adam_beta1": 0.8, "adam_beta2": 0.95}, [0.8, 0.95]),
    ("optimizer.params.eps", {"adam_epsilon": 1e-6}, 1e-6),
    ("optimizer.params.weight_decay", {"weight_decay": 0.1}, 0.1),
    ("scheduler.params.warmup_min_lr", {}, 0),
    ("scheduler.params.warmup_max_lr", {"learning_rate": 3e-4}, 3e-4),
    ("fp16.enabled", {"fp16": True}, True),
    ("bf16.enabled", {"bf16": True}, True),
    ("bf16.enabled", {}, False),
]


def _with_auto(key):
    config: dict = {"optimizer": {"type": "AdamW", "params": {}}, "scheduler": {"type": "WarmupLR", "params": {}}}
    *parents, last = key.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = "auto"
    return config


@pytest.mark.parametrize(
    ("key", "arguments", "expected"), AUTO_FIELDS, ids=[f"{k}-{i}" for i, (k, *_) in enumerate(AUTO_FIELDS)]
)
def test_each_auto_field_takes_its_argument(tmp_path, key, arguments, expected):
    assert config_value(filled(tmp_path, _with_auto(key), **arguments), key) == expected


@pytest.mark.parametrize(
    ("key", "expected"), [("scheduler.params.total_num_steps", 100), ("scheduler.params.warmup_num_steps", 10)]
)
def test_the_schedule_auto_fields_take_the_training_length(tmp_path, key, expected):
    config = _with_auto(key)
    args = quiet_args(str(tmp_path), warmup_ratio=0.1)
    fill_auto(config, schedule_values(100, args.get_warmup_steps(100)))
    assert config_value(config, key) == expected


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("zero_optimization.reduce_bucket_size", 64 * 64),
        ("zero_optimization.stage3_prefetch_bucket_size", int(0.9 * 64 * 64)),
        ("zero_optimization.stage3_param_persistence_threshold", 640),
    ],
)
def test_the_bucket_sizes_take_the_models_hidden_size(key, expected):
    config = {"zero_optimization": {"stage": 3, key.split(".")[1]: "auto"}}
    fill_auto(config, hidden_size_values(config, SimpleNamespace(hidden_size=64)))
    assert config_value(config, key) == expected
    with pytest.raises(ValueError, match=r"needs the model's config.hidden_size"):
        hidden_size_values({"zero_optimization": {key.split(".")[1]: "auto"}}, None)


def test_keys_the_loop_relies_on_are_filled_when_absent(tmp_path):
    config = filled(tmp_path, {}, per_device_train_batch_size=2, gradient_accumulation_steps=3, max_grad_norm=0.7)
    assert config == {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 3,
        "train_batch_size": 2 * 3 * WORLD,
        "gradient_clipping": 0.7,
    }


def test_optimizer_values_are_filled_only_where_auto(tmp_path):
    config = filled(tmp_path, {"optimizer": {"type": "AdamW", "params": {"lr": "auto"}}}, learning_rate=1e-3)
    assert config["optimizer"] == {"type": "AdamW", "params": {"lr": 1e-3}}


def test_matching_explicit_values_are_kept(tmp_path):
    config = {
        "train_micro_batch_size_per_gpu": 2,
        "bf16": {"enabled": True},
        "optimizer": {"type": "AdamW", "params": {"betas": [0.9, 0.999]}},
    }
    assert filled(tmp_path, config, per_device_train_batch_size=2, bf16=True)["bf16"] == {"enabled": True}


def test_contradictions_name_the_config_value_and_the_argument(tmp_path):
    config = {
        "train_micro_batch_size_per_gpu": 4,
        "optimizer": {"type": "AdamW", "params": {"lr": 0.1}},
        "fp16": {"enabled": True},
    }
    with pytest.raises(ValueError) as caught:
        filled(tmp_path, config, per_device_train_batch_size=2, learning_rate=1e-3)
    message = str(caught.value)
    assert "train_micro_batch_size_per_gpu=4 contradicts TrainingArguments.per_device_train_batch_size=2" in message
    assert "optimizer.params.lr=0.1 contradicts TrainingArguments.learning_rate=0.001" in message
    assert "fp16.enabled=True contradicts TrainingArguments.fp16=False" in message


def test_a_schedule_contradiction_names_the_warmup(tmp_path):
    config = {"scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 7}}}
    with pytest.raises(ValueError, match=r"warmup_num_steps=7 contradicts the 10 warmup steps"):
        fill_auto(config, schedule_values(100, 10))


def test_auto_values_left_are_listed():
    assert auto_keys({"a": "auto", "b": {"c": "auto", "d": 1}}) == ["a", "b.c"]


# ------------------------------------------------------------- refused arguments
@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"fp16": True, "half_precision_backend": "cpu_amp"}, "half_precision_backend='cpu_amp' cannot be used"),
        ({"bf16_full_eval": True}, "bf16_full_eval=True cannot be used with deepspeed"),
        ({"torch_compile": True}, "torch_compile=True cannot be used with deepspeed"),
        ({"save_on_each_node": True}, "save_on_each_node=True cannot be used with deepspeed"),
        ({"ddp_find_unused_parameters": True}, "ddp_find_unused_parameters=True cannot be used with deepspeed"),
    ],
)
def test_arguments_the_engine_cannot_honour_are_refused(tmp_path, arguments, message):
    with pytest.raises(ValueError, match=message):
        check_deepspeed_arguments(quiet_args(str(tmp_path), **arguments), {})


def test_the_configs_optimizer_and_scheduler_exclude_the_registries_choices(tmp_path):
    optimizer = {"optimizer": {"type": "Lamb"}}
    with pytest.raises(ValueError, match=r"optim='sgd' .* contradicts the DeepSpeed config's optimizer 'Lamb'"):
        check_deepspeed_arguments(quiet_args(str(tmp_path), optim="sgd"), optimizer)
    scheduler = {"scheduler": {"type": "WarmupLR"}}
    with pytest.raises(ValueError, match=r"lr_scheduler_type='cosine' .* contradicts .* scheduler 'WarmupLR'"):
        check_deepspeed_arguments(quiet_args(str(tmp_path), lr_scheduler_type="cosine"), scheduler)


def test_a_json_string_that_does_not_parse_is_named_by_the_arguments(tmp_path):
    from trainkit import TrainingArguments

    with pytest.raises(ValueError, match=r"TrainingArguments.deepspeed is not valid JSON"):
        TrainingArguments(output_dir=str(tmp_path), deepspeed='{"zero_optimization": {"stage": 2,}}')
