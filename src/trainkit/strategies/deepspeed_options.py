"""TrainingArguments read into a DeepSpeed configuration (transformers' ``"auto"`` values) and refused combinations.

What maps to what (``docs/deepspeed.md`` has the table):

- ``per_device_train_batch_size`` -> ``train_micro_batch_size_per_gpu``; ``gradient_accumulation_steps``
  -> the same key; their product with ``WORLD_SIZE`` -> ``train_batch_size``; ``max_grad_norm`` ->
  ``gradient_clipping``; ``fp16`` / ``bf16`` -> ``fp16.enabled`` / ``bf16.enabled``. These are filled
  when ``"auto"`` *or absent*: the loop's arithmetic relies on them.
- ``learning_rate``, ``adam_beta1/2``, ``adam_epsilon``, ``weight_decay`` -> ``optimizer.params``;
  ``learning_rate`` -> ``scheduler.params.warmup_max_lr`` (``warmup_min_lr`` "auto" is 0); the
  training length -> ``scheduler.params.total_num_steps`` / ``warmup_num_steps`` (at ``train()``).
  These are filled when ``"auto"`` only, as transformers does.

A value that is not ``"auto"`` must agree with its argument; the error names both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trainkit.strategies.deepspeed_config import ConfigValue, check_config, fill_auto, read_config

if TYPE_CHECKING:
    from trainkit.args import TrainingArguments

__all__ = ["argument_values", "check_deepspeed_arguments", "deepspeed_config_from_arguments"]

_DDP_ONLY = ("ddp_find_unused_parameters", "ddp_bucket_cap_mb", "ddp_broadcast_buffers")
_DEFAULT_OPTIM = "adamw_torch"
_DEFAULT_SCHEDULER = "linear"


def argument_values(args: TrainingArguments, world_size: int) -> list[ConfigValue]:
    """What each argument says about the config keys it maps to (module docstring)."""
    micro, accumulation = args.per_device_train_batch_size, args.gradient_accumulation_steps
    lr, betas = args.learning_rate, [args.adam_beta1, args.adam_beta2]

    def arg(name: str, value: Any) -> str:
        return f"TrainingArguments.{name}={value!r}"

    values = [
        ConfigValue("train_micro_batch_size_per_gpu", micro, arg("per_device_train_batch_size", micro), True),
        ConfigValue(
            "gradient_accumulation_steps", accumulation, arg("gradient_accumulation_steps", accumulation), True
        ),
        ConfigValue(
            "train_batch_size",
            micro * accumulation * world_size,
            f"per_device_train_batch_size x gradient_accumulation_steps x WORLD_SIZE = {micro} x {accumulation} "
            f"x {world_size}",
            True,
        ),
        ConfigValue("gradient_clipping", args.max_grad_norm, arg("max_grad_norm", args.max_grad_norm), True),
        ConfigValue("optimizer.params.lr", lr, arg("learning_rate", lr)),
        ConfigValue("optimizer.params.betas", betas, f"TrainingArguments.adam_beta1/adam_beta2={betas}"),
        ConfigValue("optimizer.params.eps", args.adam_epsilon, arg("adam_epsilon", args.adam_epsilon)),
        ConfigValue("optimizer.params.weight_decay", args.weight_decay, arg("weight_decay", args.weight_decay)),
        ConfigValue("scheduler.params.warmup_min_lr", 0, "0", must_match=False),
        ConfigValue("scheduler.params.warmup_max_lr", lr, arg("learning_rate", lr)),
    ]
    for name in ("fp16", "bf16"):  # an absent block is filled only to switch a mode on
        enabled = bool(getattr(args, name))
        values.append(ConfigValue(f"{name}.enabled", enabled, arg(name, enabled), fill_missing=enabled))
    return values


def check_deepspeed_arguments(args: TrainingArguments, config: dict[str, Any]) -> None:
    """Refuse arguments the engine cannot honour with this config, naming them."""
    refused = {
        "half_precision_backend": args.half_precision_backend != "auto",
        "fp16_full_eval": args.fp16_full_eval,
        "bf16_full_eval": args.bf16_full_eval,
        "torch_compile": args.torch_compile,
        "save_on_each_node": args.save_on_each_node,
        **{name: getattr(args, name) is not None for name in _DDP_ONLY},
    }
    why = {
        "half_precision_backend": "the engine owns fp16/bf16 (set fp16/bf16, or the config's fp16/bf16 blocks)",
        "fp16_full_eval": "the engine keeps one dtype; evaluation runs in it (bf16/fp16 through the config)",
        "bf16_full_eval": "the engine keeps one dtype; evaluation runs in it (bf16/fp16 through the config)",
        "torch_compile": "compiling the DeepSpeed engine is not supported yet",
        "save_on_each_node": "DeepSpeed checkpoints are written to one shared output_dir",
    }
    for name, is_set in refused.items():
        if is_set:
            reason = why.get(name, "it configures DDP")
            value = getattr(args, name)
            raise ValueError(f"TrainingArguments.{name}={value!r} cannot be used with deepspeed: {reason}")
    _check_optimization(args, config)


def _check_optimization(args: TrainingArguments, config: dict[str, Any]) -> None:
    """The config's optimizer/scheduler replace the registry's: arguments that choose those must stay unset."""
    if "optimizer" in config and (args.optim != _DEFAULT_OPTIM or args.optim_args):
        raise ValueError(
            f"TrainingArguments.optim={args.optim!r} (optim_args={args.optim_args!r}) contradicts the DeepSpeed "
            f"config's optimizer {config['optimizer']['type']!r}: remove one of the two"
        )
    if "scheduler" in config and (args.lr_scheduler_type != _DEFAULT_SCHEDULER or args.lr_scheduler_kwargs):
        raise ValueError(
            f"TrainingArguments.lr_scheduler_type={args.lr_scheduler_type!r} (lr_scheduler_kwargs="
            f"{args.lr_scheduler_kwargs!r}) contradicts the DeepSpeed config's scheduler "
            f"{config['scheduler']['type']!r}: remove one of the two"
        )


def deepspeed_config_from_arguments(args: TrainingArguments, world_size: int) -> dict[str, Any]:
    """``args.deepspeed`` read, checked, and filled from the arguments (a new dict)."""
    config = read_config(args.deepspeed)
    check_config(config)
    check_deepspeed_arguments(args, config)
    fill_auto(config, argument_values(args, world_size))
    return config
