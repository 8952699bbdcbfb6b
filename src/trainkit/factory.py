"""The one place that maps TrainingArguments (strings and flags) to component objects.

Only this module knows which combinations are valid (DeepSpeed brings its own precision
handling, FSDP needs sharded checkpoints, apex refuses bf16, ...). Objects passed to the
Trainer (``strategy=``, ``precision=``, ``checkpoint_io=``) override what the arguments say.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from trainkit.utils.logging import get_logger

if TYPE_CHECKING:
    from trainkit.args import TrainingArguments
    from trainkit.checkpoint.io import CheckpointIO
    from trainkit.precision.base import Precision
    from trainkit.strategies.base import Strategy

__all__ = [
    "Components",
    "build_checkpoint_io",
    "build_components",
    "build_precision",
    "build_strategy",
    "build_xla_strategy",
]

logger = get_logger(__name__)


@dataclass
class Components:
    strategy: Strategy
    precision: Precision
    checkpoint_io: CheckpointIO | None


def build_precision(args: TrainingArguments, device: torch.device) -> Precision:
    """The training Precision for ``args`` on ``device``, with the full-eval precision attached.

    ``fp16``/``bf16`` pick mixed precision (``half_precision_backend='apex'`` picks apex AMP with
    ``fp16_opt_level``), ``tf32`` is a flag of any mode, and ``fp16_full_eval``/``bf16_full_eval``
    become the ``eval_precision`` (a true-half precision used inside ``eval_context`` only).
    Contradictions and modes that ``device`` cannot run raise ValueError naming both.
    """
    from trainkit.precision import PRECISIONS

    device = torch.device(device)
    _check_precision_flags(args)
    _check_device_runs(args, device)
    eval_name = "fp16-true" if args.fp16_full_eval else "bf16-true" if args.bf16_full_eval else None
    eval_precision = PRECISIONS.get(eval_name) if eval_name else None
    if args.fp16 and args.half_precision_backend == "apex":
        return PRECISIONS.get("apex", opt_level=args.fp16_opt_level, tf32=args.tf32, eval_precision=eval_precision)
    name = "fp16-mixed" if args.fp16 else "bf16-mixed" if args.bf16 else "fp32"
    return PRECISIONS.get(name, tf32=args.tf32, eval_precision=eval_precision)


def _check_precision_flags(args: TrainingArguments) -> None:
    """Refuse combinations that contradict each other or would silently do nothing."""
    if args.fp16 and args.bf16:
        raise ValueError("TrainingArguments: fp16=True and bf16=True are exclusive; choose one")
    if args.fp16_full_eval and args.bf16_full_eval:
        raise ValueError("TrainingArguments: fp16_full_eval=True and bf16_full_eval=True are exclusive; choose one")
    backend = args.half_precision_backend
    if backend == "apex" and args.bf16:
        raise ValueError("TrainingArguments: half_precision_backend='apex' does not support bf16=True (apex is fp16)")
    if backend != "auto" and not (args.fp16 or args.bf16):
        raise ValueError(
            f"TrainingArguments: half_precision_backend={backend!r} has no effect without fp16=True or bf16=True"
        )
    if args.fp16_opt_level != "O1" and backend != "apex":
        raise ValueError(
            f"TrainingArguments: fp16_opt_level={args.fp16_opt_level!r} is an apex setting; it needs "
            f"half_precision_backend='apex' (got {backend!r})"
        )


_BACKEND_DEVICE = {"cuda_amp": "cuda", "cpu_amp": "cpu", "apex": "cuda"}


def _check_device_runs(args: TrainingArguments, device: torch.device) -> None:
    """Refuse a precision mode that ``device`` cannot run, naming the device and the mode."""
    mode = "fp16" if args.fp16 else "bf16" if args.bf16 else None
    needed = _BACKEND_DEVICE.get(args.half_precision_backend)
    if mode and needed and device.type != needed:
        raise ValueError(
            f"TrainingArguments: {mode}=True with half_precision_backend={args.half_precision_backend!r} "
            f"needs a {needed.upper()} device, but the device is {device}"
        )
    uses_bf16 = [name for name in ("bf16", "bf16_full_eval") if getattr(args, name)]
    if uses_bf16 and device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise ValueError(
            f"TrainingArguments: {uses_bf16[0]}=True needs a device with bfloat16 support; "
            f"{device} ({torch.cuda.get_device_name(device)}) has none (Ampere or newer is needed)"
        )
    if args.tf32 and not _supports_tf32(device):
        raise ValueError(
            f"TrainingArguments: tf32=True needs a CUDA device of the Ampere generation or newer, got {device}"
        )


def _supports_tf32(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8


def build_strategy(args: TrainingArguments, environ: Mapping[str, str] | None = None) -> Strategy:
    """The Strategy for ``args`` in this process's environment.

    XLA first (``build_xla_strategy``: ``fsdp_config['xla']`` or ``PJRT_DEVICE``). Under torchrun
    (``RANK``/``WORLD_SIZE`` set): ``FSDPStrategy`` when ``fsdp`` is set, else ``DDPStrategy``.
    Without a launcher: ``SingleDeviceStrategy``; ``fsdp`` is then an error (it needs one process
    per device), while ``ddp_*`` values only take effect under torchrun.
    """
    from trainkit.strategies.environment import TORCHRUN_HINT, ProcessEnvironment

    xla = build_xla_strategy(args)
    if xla is not None:
        return xla
    env = ProcessEnvironment.from_environ(environ, args.local_rank)
    if args.deepspeed:
        return _deepspeed_strategy(args, env)
    options = [str(getattr(o, "value", o)) for o in args.fsdp or []]  # type: ignore[union-attr]
    if args.fsdp_config and not options:
        raise ValueError(
            "TrainingArguments.fsdp_config is set but fsdp is empty: add fsdp='full_shard' (or another sharding) "
            "to train with FSDP, or drop fsdp_config"
        )
    if options:
        if not env.launched:
            raise ValueError(
                f"TrainingArguments.fsdp={' '.join(options)!r} runs one process per device: {TORCHRUN_HINT}"
            )
        return _fsdp_strategy(args, options, env)
    if env.launched:
        from trainkit.strategies.ddp import DDPStrategy

        return DDPStrategy(
            find_unused_parameters=args.ddp_find_unused_parameters,
            bucket_cap_mb=args.ddp_bucket_cap_mb,
            broadcast_buffers=args.ddp_broadcast_buffers,
            environment=env,
            **_process_group_kwargs(args),
        )
    from trainkit.strategies.single_device import SingleDeviceStrategy, default_device

    unused = [name for name in (*_DDP_ONLY, "ddp_backend") if getattr(args, name) is not None]
    if unused:
        logger.info("%s take effect under torchrun only; this is a single process", ", ".join(unused))
    return SingleDeviceStrategy(device=default_device(args.use_cpu))


_DDP_ONLY = ("ddp_find_unused_parameters", "ddp_bucket_cap_mb", "ddp_broadcast_buffers")


def _process_group_kwargs(args: TrainingArguments) -> dict[str, Any]:
    return {
        "backend": args.ddp_backend,
        "timeout": args.ddp_timeout,
        "use_cpu": args.use_cpu,
        "save_on_each_node": args.save_on_each_node,
    }


def _fsdp_strategy(args: TrainingArguments, options: list[str], env: Any) -> Strategy:
    from trainkit.checkpoint.sharded_io import ShardedCheckpointIO
    from trainkit.strategies.fsdp import FSDPStrategy, per_node_checkpoint_problem
    from trainkit.strategies.fsdp_options import fsdp_strategy_kwargs

    ddp_set = [name for name in _DDP_ONLY if getattr(args, name) is not None]
    if ddp_set:
        raise ValueError(
            f"TrainingArguments: {', '.join(ddp_set)} configure DDP and have no effect with fsdp; unset them"
        )
    if args.gradient_checkpointing and {"full_shard", "hybrid_shard"} & set(options):
        logger.warning(
            "gradient_checkpointing with fsdp full sharding repeats an all-gather in backward; "
            "fsdp_config['activation_checkpointing'] avoids it"
        )
    config = args.fsdp_config if isinstance(args.fsdp_config, dict) else None  # normalised to a dict by the args
    kwargs = fsdp_strategy_kwargs(options, config, args.gradient_checkpointing)
    strategy = FSDPStrategy(
        environment=env,
        checkpoint_io=ShardedCheckpointIO(safe_serialization=args.save_safetensors is not False),
        **kwargs,
        **_process_group_kwargs(args),
    )
    problem = per_node_checkpoint_problem(strategy.sharding, env.num_nodes, args.save_on_each_node)
    if problem is not None and str(args.save_strategy) != "no":
        raise ValueError(f"TrainingArguments: {problem}")
    return strategy


def _deepspeed_strategy(args: TrainingArguments, env: Any) -> Strategy:
    """``DeepSpeedStrategy`` with the config's ``"auto"`` values filled from the arguments (deepspeed_options.py)."""
    from trainkit.strategies.environment import TORCHRUN_HINT
    from trainkit.utils.imports import require

    require("deepspeed", "TrainingArguments.deepspeed")
    from trainkit.checkpoint.deepspeed_io import DeepSpeedCheckpointIO
    from trainkit.strategies.deepspeed import DeepSpeedStrategy, engine_precision
    from trainkit.strategies.deepspeed_options import deepspeed_config_from_arguments

    if not env.launched:
        raise ValueError(
            "TrainingArguments.deepspeed runs one process per device, started by a launcher (one process is fine): "
            f"{TORCHRUN_HINT}; or DeepSpeed's own launcher, `deepspeed --num_gpus 2 train.py ...`"
        )
    config = deepspeed_config_from_arguments(args, env.world_size)
    return DeepSpeedStrategy(
        config,
        environment=env,
        precision=engine_precision(config, tf32=args.tf32),
        checkpoint_io=DeepSpeedCheckpointIO(safe_serialization=args.save_safetensors is not False),
        **_process_group_kwargs(args),
    )


def _check_combination(args: TrainingArguments, strategy: Strategy, precision: Precision) -> None:
    """Refuse what the strategy cannot run (yet), naming the arguments involved."""
    if not strategy.shards_parameters or strategy.checkpoint_io.collective:
        return  # an IO in which every rank writes its shards (DeepSpeed's) runs sharded strategies
    if precision.eval_precision is not None:
        raise ValueError(
            "TrainingArguments: fp16_full_eval / bf16_full_eval cannot run with fsdp: FSDP2 owns the parameters, "
            "so the model cannot be cast for evaluation; evaluate in the training precision (fp16/bf16 mixed)"
        )
    if precision.name == "apex":
        raise ValueError("TrainingArguments: half_precision_backend='apex' cannot run with fsdp; use 'auto'")


def build_checkpoint_io(args: TrainingArguments) -> CheckpointIO:
    """The checkpoint format for ``args``: safetensors weights, or torch files with ``save_safetensors=False``."""
    if args.save_safetensors is False:
        from trainkit.checkpoint.torch_io import TorchCheckpointIO

        return TorchCheckpointIO()
    from trainkit.checkpoint.safetensors_io import SafetensorsCheckpointIO

    return SafetensorsCheckpointIO()


def build_components(
    args: TrainingArguments,
    strategy: Strategy | None = None,
    precision: Precision | None = None,
    checkpoint_io: CheckpointIO | None = None,
) -> Components:
    """Strategy, precision and checkpoint IO for ``args``; given objects win over the arguments.

    A strategy passed in keeps the precision and IO it was built with; the arguments fill in
    only what it leaves at the defaults, and asking for two different precisions is an error.
    """
    if strategy is None:
        strategy = build_strategy(args)
    else:
        _fill_save_on_each_node(args, strategy)
    if precision is None:
        precision = _precision_for(args, strategy)
    elif strategy.configures_precision and precision is not strategy.precision:
        raise ValueError(
            f"{type(strategy).__name__} takes its precision from its own configuration ({strategy.precision!r}); "
            f"it cannot run the precision passed to the Trainer ({precision!r})"
        )
    strategy.precision = precision
    if checkpoint_io is not None:
        strategy.checkpoint_io = checkpoint_io
    elif strategy._checkpoint_io is None:
        strategy.checkpoint_io = build_checkpoint_io(args)
    _check_combination(args, strategy, precision)
    return Components(strategy=strategy, precision=precision, checkpoint_io=strategy.checkpoint_io)


def _fill_save_on_each_node(args: TrainingArguments, strategy: Strategy) -> None:
    """A multi-process strategy passed in writes per node when the arguments say so (they decide who saves)."""
    from trainkit.strategies.parallel import ParallelStrategy

    if not isinstance(strategy, ParallelStrategy) or strategy.save_on_each_node == args.save_on_each_node:
        return
    if args.save_on_each_node:
        strategy.save_on_each_node = True
        return
    raise ValueError(
        f"The {type(strategy).__name__} passed to the Trainer has save_on_each_node=True, but "
        "TrainingArguments.save_on_each_node is False: set it in the arguments too (they decide which processes save)"
    )


def _precision_for(args: TrainingArguments, strategy: Strategy) -> Precision:
    from trainkit.precision.base import Precision

    own = strategy.precision
    if strategy.configures_precision:
        _check_configured_precision(args, own, strategy.root_device)
        return own
    if type(own) is not Precision or own.tf32 is not None or own.eval_precision is not None:
        wanted = build_precision(args, strategy.root_device)
        if type(wanted) is not Precision or wanted.tf32 is not None or wanted.eval_precision is not None:
            raise ValueError(
                f"The strategy passed to the Trainer has precision {own!r}, and the TrainingArguments ask for "
                f"{wanted!r} (fp16/bf16/tf32/*_full_eval): choose one of the two."
            )
        return own
    return build_precision(args, strategy.root_device)


def build_xla_strategy(args: TrainingArguments) -> Strategy | None:
    """The XLA strategy ``args`` and the environment ask for, or None when they ask for none.

    ``fsdp_config['xla']`` (with ``xla_fsdp_v2``, checked by the arguments) selects SPMD fully-sharded
    training over every device, as transformers' FSDPv2. Otherwise ``PJRT_DEVICE`` naming an
    accelerator (``TPU``, ``NEURON``, ...) selects one XLA device per process, unless ``use_cpu=True``.
    ``PJRT_DEVICE=CPU`` does not: importing torch_xla sets it by itself when it finds no accelerator,
    so it cannot tell a request; CPU PJRT is chosen with ``strategy=XLAStrategy()``. (transformers
    picks XLA whenever torch_xla is importable.)
    """
    import os

    config = args.fsdp_config if isinstance(args.fsdp_config, dict) else {}
    if config.get("xla"):
        from trainkit.strategies.xla_spmd import XLASPMDStrategy

        return XLASPMDStrategy(
            shard_parameters=True,
            activation_checkpointing=bool(config.get("xla_fsdp_grad_ckpt")),
            layer_classes=config.get("transformer_layer_cls_to_wrap"),
        )
    if os.environ.get("PJRT_DEVICE", "CPU").upper() != "CPU" and not args.use_cpu:
        from trainkit.strategies.xla import XLAStrategy

        return XLAStrategy()
    return None


def _check_configured_precision(args: TrainingArguments, precision: Precision, device: torch.device) -> None:
    """The arguments' fp16/bf16/tf32 against a precision the strategy's configuration decided (DeepSpeed)."""
    _check_device_runs(args, device)
    wanted = "fp16" if args.fp16 else "bf16" if args.bf16 else "fp32"
    dtype = precision.compute_dtype
    has = "fp16" if dtype == torch.float16 else "bf16" if dtype == torch.bfloat16 else "fp32"
    if wanted != has:
        raise ValueError(
            f"TrainingArguments ask for {wanted} (fp16={args.fp16}, bf16={args.bf16}), but the strategy's own "
            f"configuration runs {has} ({precision!r}): make them agree"
        )
    if args.tf32 is not None and precision.tf32 != args.tf32:
        raise ValueError(f"TrainingArguments.tf32={args.tf32} contradicts the strategy's precision {precision!r}")
