"""Which strategy the factory builds from TrainingArguments and torchrun's environment, and the errors it gives."""

from __future__ import annotations

import logging

import pytest
import torch
from torch.distributed.fsdp import MixedPrecisionPolicy

from tests.helpers import quiet_args
from trainkit import HalfPrecision, MixedPrecision, Precision, TrainingArguments
from trainkit.checkpoint import SafetensorsCheckpointIO, TorchCheckpointIO
from trainkit.checkpoint.sharded_io import ShardedCheckpointIO
from trainkit.factory import build_components, build_strategy
from trainkit.strategies.ddp import DDPStrategy
from trainkit.strategies.environment import ProcessEnvironment
from trainkit.strategies.fsdp import FSDPStrategy
from trainkit.strategies.fsdp_options import fsdp_strategy_kwargs
from trainkit.strategies.single_device import SingleDeviceStrategy

TORCHRUN = {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "0"}
TWO_NODES = {"RANK": "1", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1", "GROUP_RANK": "1"}


@pytest.fixture
def torchrun_env(monkeypatch):
    for key, value in {**TORCHRUN, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(key, value)


def args(tmp_path, **kwargs):
    return quiet_args(str(tmp_path), use_cpu=True, **kwargs)


# ------------------------------------------------------------------ environment
def test_environment_without_launcher_is_one_process():
    env = ProcessEnvironment.from_environ({})
    assert (env.rank, env.local_rank, env.world_size, env.num_nodes, env.launched) == (0, 0, 1, 1, False)


def test_environment_reads_torchrun_variables():
    env = ProcessEnvironment.from_environ(TWO_NODES)
    assert (env.rank, env.local_rank, env.world_size, env.node_rank, env.num_nodes) == (1, 0, 2, 1, 2)
    assert env.launched
    assert "node 1/2" in env.describe()


def test_legacy_local_rank_argument_fills_a_missing_variable():
    env = ProcessEnvironment.from_environ({"RANK": "1", "WORLD_SIZE": "2"}, local_rank=1)
    assert env.local_rank == 1


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2 is not in"),
        ({"RANK": "0", "WORLD_SIZE": "3", "LOCAL_WORLD_SIZE": "2"}, "not a multiple of LOCAL_WORLD_SIZE"),
        ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK='x' is not an integer"),
    ],
)
def test_impossible_environment_is_named(environ, message):
    with pytest.raises(ValueError, match=message):
        ProcessEnvironment.from_environ(environ)


# --------------------------------------------------------------------- factory
def test_one_process_gets_a_single_device_strategy(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="trainkit"):
        strategy = build_strategy(args(tmp_path, ddp_find_unused_parameters=True), environ={})
    assert isinstance(strategy, SingleDeviceStrategy)
    assert "ddp_find_unused_parameters take effect under torchrun only" in caplog.text


def test_torchrun_gets_ddp_with_the_ddp_arguments(tmp_path):
    a = args(tmp_path, ddp_bucket_cap_mb=5, ddp_broadcast_buffers=False, ddp_timeout=7)
    strategy = build_strategy(a, environ=TORCHRUN)
    assert isinstance(strategy, DDPStrategy)
    assert (strategy.global_rank, strategy.local_rank, strategy.world_size) == (1, 1, 2)
    assert strategy.distributed_sampler_kwargs == {"num_replicas": 2, "rank": 1}
    assert strategy.backend == "gloo"
    assert strategy.timeout.total_seconds() == 7
    kwargs = strategy.ddp_kwargs(torch.nn.Linear(2, 2))
    assert kwargs == {"find_unused_parameters": True, "bucket_cap_mb": 5, "broadcast_buffers": False}


def test_find_unused_parameters_follows_gradient_checkpointing_by_default(tmp_path):
    model = torch.nn.Linear(2, 2)
    model.is_gradient_checkpointing = True
    strategy = build_strategy(args(tmp_path), environ=TORCHRUN)
    assert strategy.ddp_kwargs(model)["find_unused_parameters"] is False
    explicit = build_strategy(args(tmp_path, ddp_find_unused_parameters=True), environ=TORCHRUN)
    assert explicit.ddp_kwargs(model)["find_unused_parameters"] is True


def test_nccl_on_the_cpu_is_refused(tmp_path):
    with pytest.raises(ValueError, match="ddp_backend='nccl' needs CUDA"):
        build_strategy(args(tmp_path, ddp_backend="nccl"), environ=TORCHRUN)


def test_torchrun_with_fsdp_gets_fsdp(tmp_path):
    a = args(tmp_path, fsdp="shard_grad_op offload auto_wrap", fsdp_config={"min_num_params": 10})
    strategy = build_strategy(a, environ=TORCHRUN)
    assert isinstance(strategy, FSDPStrategy)
    assert (strategy.sharding, strategy.reshard_after_forward, strategy.cpu_offload) == ("shard_grad_op", False, True)
    assert strategy.min_num_params == 10
    assert strategy.shards_parameters


def test_fsdp_without_launcher_says_how_to_launch(tmp_path):
    with pytest.raises(ValueError, match=r"fsdp='full_shard' runs one process per device.*torchrun --nproc_per_node"):
        build_strategy(args(tmp_path, fsdp="full_shard"), environ={})


def test_hybrid_sharding_needs_a_second_node(tmp_path):
    with pytest.raises(ValueError, match=r"fsdp='hybrid_shard'.*one node"):
        build_strategy(args(tmp_path, fsdp="hybrid_shard"), environ=TORCHRUN)
    assert build_strategy(args(tmp_path, fsdp="hybrid_shard_zero2"), environ=TWO_NODES).sharding == "hybrid_shard_zero2"


def test_fsdp_config_without_fsdp_is_refused(tmp_path):
    with pytest.raises(ValueError, match="fsdp_config is set but fsdp is empty"):
        build_strategy(args(tmp_path, fsdp_config={"min_num_params": 10}), environ=TORCHRUN)


def test_ddp_arguments_with_fsdp_are_refused(tmp_path):
    with pytest.raises(ValueError, match="ddp_bucket_cap_mb configure DDP and have no effect with fsdp"):
        build_strategy(args(tmp_path, fsdp="full_shard", ddp_bucket_cap_mb=10), environ=TORCHRUN)


def test_contradictory_fsdp_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="exclusive"):
        TrainingArguments(output_dir=str(tmp_path), fsdp="full_shard shard_grad_op")
    with pytest.raises(ValueError, match="fsdp and deepspeed are exclusive"):
        TrainingArguments(output_dir=str(tmp_path), fsdp="full_shard", deepspeed={"zero_optimization": {"stage": 2}})
    with pytest.raises(ValueError, match="means reshard_after_forward=True, but fsdp_config sets"):
        build_strategy(args(tmp_path, fsdp="full_shard", fsdp_config={"reshard_after_forward": "false"}), TORCHRUN)


@pytest.mark.parametrize("flag", ["fp16_full_eval", "bf16_full_eval"])
def test_full_half_evaluation_with_fsdp_is_refused(tmp_path, torchrun_env, flag):
    with pytest.raises(ValueError, match="fp16_full_eval / bf16_full_eval cannot run with fsdp"):
        build_components(args(tmp_path, fsdp="full_shard", **{flag: True}))


@pytest.mark.parametrize("save_safetensors", [True, False])
def test_fsdp_checkpoints_are_sharded(tmp_path, torchrun_env, save_safetensors):
    components = build_components(
        args(tmp_path, fsdp="full_shard", save_strategy="steps", save_safetensors=save_safetensors)
    )
    io = components.checkpoint_io
    assert isinstance(io, ShardedCheckpointIO)
    assert io.model_file_name == ("model.safetensors" if save_safetensors else "pytorch_model.bin")


def test_fsdp_refuses_a_checkpoint_io_that_cannot_write_shards(tmp_path, torchrun_env):
    with pytest.raises(ValueError, match="checkpoint_io must be a ShardedCheckpointIO, got SafetensorsCheckpointIO"):
        build_components(args(tmp_path, fsdp="full_shard"), checkpoint_io=SafetensorsCheckpointIO())
    with pytest.raises(ValueError, match="must be a ShardedCheckpointIO, got TorchCheckpointIO"):
        FSDPStrategy(checkpoint_io=TorchCheckpointIO())
    assert isinstance(FSDPStrategy().checkpoint_io, ShardedCheckpointIO)


@pytest.mark.parametrize(
    ("fsdp", "save_strategy", "refused"),
    [
        ("full_shard", "steps", True),
        ("shard_grad_op", "epoch", True),
        ("full_shard", "no", False),  # save_model alone: each node's first process gathers the full weights
        ("hybrid_shard", "steps", False),
        ("no_shard", "steps", False),
    ],
)
def test_save_on_each_node_needs_a_whole_replica_per_node(tmp_path, monkeypatch, fsdp, save_strategy, refused):
    for key, value in TWO_NODES.items():
        monkeypatch.setenv(key, value)
    arguments = args(tmp_path, fsdp=fsdp, save_on_each_node=True, save_strategy=save_strategy)
    if refused:
        with pytest.raises(ValueError, match=r"save_on_each_node=True with fsdp=.* on 2 nodes: each node's ranks hold"):
            build_strategy(arguments)
    else:
        assert build_strategy(arguments).save_on_each_node


def test_save_on_each_node_reaches_the_strategy(tmp_path, torchrun_env):
    assert build_strategy(args(tmp_path, save_on_each_node=True)).save_on_each_node
    assert not build_strategy(args(tmp_path)).save_on_each_node
    mine = DDPStrategy()
    build_components(args(tmp_path, save_on_each_node=True), strategy=mine)
    assert mine.save_on_each_node  # filled in from the arguments
    with pytest.raises(ValueError, match=r"has save_on_each_node=True, but TrainingArguments\.save_on_each_node is"):
        build_components(args(tmp_path), strategy=DDPStrategy(save_on_each_node=True))


def test_a_strategy_object_wins_over_the_arguments(tmp_path, torchrun_env):
    mine = SingleDeviceStrategy("cpu")
    assert build_components(args(tmp_path, fsdp="full_shard"), strategy=mine).strategy is mine


# ---------------------------------------------------------------- fsdp_config
@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"min_num_param": 10}, r"unknown key\(s\) \['min_num_param'\]"),
        ({"version": 1}, "FSDP2 only"),
        ({"use_orig_params": "false"}, "FSDP1-only"),
        ({"backward_prefetch": "backward_post"}, "always prefetches"),
        ({"xla": True}, "XLA FSDP is XLASPMDStrategy's"),
        ({"forward_prefetch": "maybe"}, r"fsdp_config\['forward_prefetch'\] must be true or false"),
    ],
)
def test_fsdp_config_keys_that_cannot_apply_are_refused(config, message):
    with pytest.raises(ValueError, match=message):
        fsdp_strategy_kwargs(["full_shard"], config)


def test_fsdp_config_keys_map_to_strategy_arguments():
    config = {
        "transformer_layer_cls_to_wrap": "Block",
        "activation_checkpointing": "true",
        "sync_module_states": True,
        "forward_prefetch": True,
        "backward_prefetch": "BACKWARD_PRE",
        "limit_all_gathers": "true",
        "use_orig_params": True,
        "xla": False,
        "version": 2,
    }
    kwargs = fsdp_strategy_kwargs(["full_shard", "auto_wrap"], config)
    assert kwargs["wrap_classes"] == ["Block"]
    assert kwargs["activation_checkpointing"]
    assert kwargs["forward_prefetch"]
    assert kwargs["auto_wrap"]
    assert kwargs["sharding"] == "full_shard"


def test_activation_checkpointing_and_gradient_checkpointing_are_exclusive():
    with pytest.raises(ValueError, match="cannot both be true"):
        fsdp_strategy_kwargs(["full_shard"], {"activation_checkpointing": True}, gradient_checkpointing=True)


# ------------------------------------------------------------ precision policy
@pytest.mark.parametrize(
    ("precision", "expected"),
    [
        (Precision(), MixedPrecisionPolicy()),
        (MixedPrecision("bf16"), MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)),
        (MixedPrecision("fp16"), MixedPrecisionPolicy(param_dtype=torch.float16, reduce_dtype=torch.float32)),
        (HalfPrecision("bf16"), MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)),
    ],
)
def test_precision_maps_to_fsdp_mixed_precision_policy(precision, expected):
    strategy = FSDPStrategy(environment=ProcessEnvironment.from_environ(TORCHRUN), use_cpu=True, precision=precision)
    assert strategy.mixed_precision_policy() == expected
    mine = MixedPrecisionPolicy(param_dtype=torch.float32)
    env = ProcessEnvironment.from_environ(TORCHRUN)
    custom = FSDPStrategy(environment=env, precision=precision, mixed_precision=mine)
    assert custom.mixed_precision_policy() is mine


def test_fp16_scaler_agrees_across_shards_once_gradients_are_sharded():
    from trainkit.precision.sharded_scaler import ShardedGradScaler

    precision = MixedPrecision("fp16", device_type="cpu")
    precision.load_state_dict({**precision.state_dict(), "scale": 1024.0})
    precision.enable_sharded_gradients()
    assert isinstance(precision.scaler, ShardedGradScaler)
    assert precision.scaler.get_scale() == 1024.0
    late = MixedPrecision("fp16")
    late.enable_sharded_gradients()
    late.setup("cpu")
    assert isinstance(late.scaler, ShardedGradScaler)
