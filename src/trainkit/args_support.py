"""What trainkit does with each TrainingArguments field: supported, alias, or refused.

This table is the single source of ``docs/arguments.md`` (``python -m trainkit.args_support``)
and of the check that refuses a non-default value for a field trainkit does not implement,
so that nothing is silently ignored.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "FIELD_SUPPORT",
    "IMPLEMENTED_ISSUES",
    "FieldSupport",
    "UnsupportedArgumentError",
    "check_refused_fields",
    "field_status",
    "render_arguments_markdown",
]

# Issues whose features are on main. A "supported" field whose issue is not listed here is
# refused (when set to a non-default value) with a message naming the issue.
IMPLEMENTED_ISSUES: frozenset[int] = frozenset({2, 3, 4, 5, 6, 7, 8, 9})


class UnsupportedArgumentError(ValueError):
    """A TrainingArguments field was set to a value trainkit does not implement."""


@dataclass(frozen=True)
class FieldSupport:
    kind: Literal["supported", "alias", "refused"]
    note: str
    issue: int = 2


def _s(issue: int, note: str) -> FieldSupport:
    return FieldSupport("supported", note, issue)


def _alias(note: str) -> FieldSupport:
    return FieldSupport("alias", note)


def _no(reason: str) -> FieldSupport:
    return FieldSupport("refused", reason)


_HUB = "trainkit does not upload to the Hugging Face Hub; push the saved folder yourself"

FIELD_SUPPORT: dict[str, FieldSupport] = {
    "output_dir": _s(2, "Default 'trainer_output' (transformers >= 4.50); '~' is expanded."),
    "overwrite_output_dir": _s(7, "Without it, training into a folder with checkpoints needs resume_from_checkpoint."),
    "do_train": _s(2, "Read by scripts, as in transformers."),
    "do_eval": _s(2, "Read by scripts; set when eval_strategy is not 'no'."),
    "do_predict": _s(2, "Read by scripts, as in transformers."),
    "eval_strategy": _s(6, "'no' / 'steps' / 'epoch', as DefaultFlowCallback."),
    "evaluation_strategy": _alias("Deprecated name of eval_strategy; mapped with a FutureWarning."),
    "prediction_loss_only": _s(6, "Evaluation keeps only the loss."),
    "per_device_train_batch_size": _s(5, "Batch size of the training DataLoader per process."),
    "per_device_eval_batch_size": _s(6, "Batch size of the evaluation DataLoader per process."),
    "per_gpu_train_batch_size": _alias("Deprecated name of per_device_train_batch_size."),
    "per_gpu_eval_batch_size": _alias("Deprecated name of per_device_eval_batch_size."),
    "gradient_accumulation_steps": _s(5, "Exact: the loss is normalised by the label tokens of the whole window."),
    "eval_accumulation_steps": _s(
        6, "Predictions move to the host every k batches (default: every batch, so device memory stays bounded)."
    ),
    "eval_delay": _s(6, "In epochs or steps according to eval_strategy."),
    "torch_empty_cache_steps": _s(5, "Calls the accelerator's empty_cache every k steps."),
    "learning_rate": _s(3, "Initial learning rate of the optimizer."),
    "weight_decay": _s(3, "Applied to all weights except biases and normalisation weights."),
    "adam_beta1": _s(3, "Adam-family beta1."),
    "adam_beta2": _s(3, "Adam-family beta2."),
    "adam_epsilon": _s(3, "Adam-family epsilon."),
    "max_grad_norm": _s(5, "Global-norm clipping through the Strategy; the norm is logged as grad_norm."),
    "num_train_epochs": _s(5, "Fractional values stop part-way through the last epoch."),
    "max_steps": _s(5, "Overrides num_train_epochs; cycles the data."),
    "lr_scheduler_type": _s(3, "Any name of the SCHEDULERS registry (user entries included)."),
    "lr_scheduler_kwargs": _s(3, "Passed to the schedule (a key it does not take is refused); dict or JSON string."),
    "warmup_ratio": _s(3, "ceil(ratio * total steps), as transformers."),
    "warmup_steps": _s(3, "An int, or a float below 1 meaning a ratio (transformers 5)."),
    "log_level": _s(5, "Log level of the main process ('passive' keeps the current level)."),
    "log_level_replica": _s(5, "Log level of the other processes."),
    "log_on_each_node": _s(5, "Which processes log."),
    "logging_dir": _s(2, "TensorBoard folder; default output_dir/runs/<date>_<host>."),
    "logging_strategy": _s(5, "'no' / 'steps' / 'epoch'."),
    "logging_first_step": _s(5, "Logs step 1."),
    "logging_steps": _s(5, "Int, or a float in (0, 1) as a ratio of total steps."),
    "logging_nan_inf_filter": _s(5, "Non-finite losses are left out of the logged loss (the step is skipped anyway)."),
    "save_strategy": _s(5, "'no' / 'steps' / 'epoch' / 'best'."),
    "save_steps": _s(5, "Int, or a float in (0, 1) as a ratio of total steps."),
    "save_total_limit": _s(7, "Rotation that never deletes the latest or the best checkpoint."),
    "save_safetensors": _s(7, "False saves torch pickles (loaded with weights_only=True)."),
    "save_on_each_node": _s(
        7,
        "Each node's local main process writes checkpoints and save_model into the node's own storage, every rank "
        "of the node its RNG state (and FSDP shards) into that checkpoint. fsdp on several nodes needs "
        "hybrid_shard(_zero2) or no_shard, so that a node holds a whole replica.",
    ),
    "save_only_model": _s(7, "Checkpoints without optimizer, scheduler or RNG state (cannot resume)."),
    "restore_callback_states_from_checkpoint": _s(7, "Stateful callbacks are restored on resume."),
    "no_cuda": _alias("Deprecated name of use_cpu."),
    "use_cpu": _s(4, "Train on the CPU."),
    "use_mps_device": _alias(
        "Deprecated; MPS is chosen automatically when available. True is refused on machines without MPS."
    ),
    "seed": _s(5, "set_seed(seed) at the start of train()."),
    "data_seed": _s(5, "Seed of the training sampler."),
    "jit_mode_eval": _no("torch.jit tracing is deprecated in PyTorch; use torch_compile for faster inference."),
    "use_ipex": _no("Intel Extension for PyTorch is not integrated."),
    "bf16": _s(4, "bf16 mixed precision (MixedPrecision('bf16')); refused on a CUDA device without bf16."),
    "fp16": _s(4, "fp16 mixed precision with a GradScaler, on CUDA and on the CPU (MixedPrecision('fp16'))."),
    "fp16_opt_level": _s(4, "apex opt level; a value other than 'O1' needs half_precision_backend='apex'."),
    "half_precision_backend": _s(
        4, "'auto' (the device's autocast), 'cuda_amp', 'cpu_amp' (checked against the device) or 'apex'."
    ),
    "bf16_full_eval": _s(4, "Evaluation with the model cast to bf16, restored afterwards."),
    "fp16_full_eval": _s(4, "Evaluation with the model cast to fp16, restored afterwards."),
    "tf32": _s(4, "Applied by the Precision's setup(), restored by teardown(); True needs an Ampere+ CUDA device."),
    "local_rank": _s(2, "Read from LOCAL_RANK; fills it in when a legacy launcher passes --local_rank instead."),
    "ddp_backend": _s(
        8, "Process-group backend under torchrun (gloo on CPU, nccl on CUDA by default; nccl on CPU is refused)."
    ),
    "tpu_num_cores": _no("Launch XLA processes with torchrun/PJRT; the core count comes from the runtime."),
    "tpu_metrics_debug": _alias("Deprecated: becomes debug='tpu_metrics_debug' (which is refused)."),
    "debug": _no("'underflow_overflow' and 'tpu_metrics_debug' are not implemented."),
    "dataloader_drop_last": _s(5, "Drop the last incomplete batch."),
    "eval_steps": _s(6, "Defaults to logging_steps; int or a ratio."),
    "dataloader_num_workers": _s(5, "DataLoader workers."),
    "dataloader_prefetch_factor": _s(5, "Needs dataloader_num_workers > 0."),
    "past_index": _s(5, "Feeds outputs[past_index] back as 'mems'."),
    "run_name": _s(5, "Run name for loggers."),
    "disable_tqdm": _s(2, "Disables the progress bars; None means: when the trainkit logger is above WARNING."),
    "remove_unused_columns": _s(5, "Drops dict keys the model's forward does not accept (logged)."),
    "label_names": _s(5, "Keys holding the labels."),
    "load_best_model_at_end": _s(7, "Loads the best checkpoint's weights at the end."),
    "metric_for_best_model": _s(
        6, "With or without the 'eval_' prefix; drives the best checkpoint, reduce_lr_on_plateau and early stopping."
    ),
    "greater_is_better": _s(6, "Defaults to False for metrics ending in 'loss'."),
    "ignore_data_skip": _s(7, "On resume, start the epoch from its beginning."),
    "fsdp": _s(
        8,
        "FSDP2 (fully_shard) under torchrun: full_shard, shard_grad_op, hybrid_shard(_zero2) (needs several nodes), "
        "no_shard, offload (CPUOffloadPolicy), auto_wrap. Checkpoints are sharded: every rank writes its shards "
        "(torch.distributed.checkpoint, accelerate's layout; python -m trainkit.checkpoint.consolidate merges them); "
        "save_model and save_only_model write the consolidated weights. 'full_shard' (and 'auto_wrap') with "
        "fsdp_config['xla'] select XLA FSDPv2 instead. See docs/distributed.md and docs/xla.md.",
    ),
    "fsdp_min_num_params": _alias("Deprecated: copied into fsdp_config['min_num_params']."),
    "fsdp_config": _s(
        8,
        "Every transformers key mapped to FSDP2 or refused with the reason; unknown keys are refused. 'xla' + "
        "'xla_fsdp_v2' select XLA SPMD fully-sharded training (docs/xla.md), 'xla_fsdp_grad_ckpt' checkpoints the "
        "layers named by 'transformer_layer_cls_to_wrap'; XLA FSDP v1 ('xla' alone, 'xla_fsdp_settings') is refused. "
        "Checkpoints are always sharded (accelerate's SHARDED_STATE_DICT); there is no state-dict-type key.",
    ),
    "fsdp_transformer_layer_cls_to_wrap": _alias("Deprecated: copied into fsdp_config."),
    "accelerator_config": _no(
        "accelerate's AcceleratorConfig has no meaning without accelerate; the Strategy objects take these settings."
    ),
    "parallelism_config": _no("Tensor/context/sequence parallelism is not implemented."),
    "tp_size": _no("Tensor parallelism is not implemented."),
    "deepspeed": _s(
        9, "DeepSpeedStrategy: ZeRO 0-3, CPU offload; 'auto' values filled from the arguments (docs/deepspeed.md)."
    ),
    "label_smoothing_factor": _s(5, "Label smoothing on the model's logits."),
    "optim": _s(3, "Any name of the OPTIMIZERS registry (user entries included)."),
    "optim_args": _s(3, "'k1=v1,k2=v2' passed to the optimizer (every optimizer; unknown keys are refused)."),
    "adafactor": _alias("Deprecated: becomes optim='adafactor'."),
    "group_by_length": _s(5, "Length-grouped sampler."),
    "length_column_name": _s(5, "Column with precomputed lengths for group_by_length."),
    "report_to": _s(2, "'tensorboard', 'jsonl', 'all' (installed ones) or 'none'; None means 'all' (4.37)."),
    "project": _no("trackio is not integrated."),
    "trackio_space_id": _no("trackio is not integrated."),
    "ddp_find_unused_parameters": _s(
        8, "DDP find_unused_parameters; None: True unless the model uses gradient checkpointing."
    ),
    "ddp_bucket_cap_mb": _s(8, "DDP bucket_cap_mb (None: DDP's 25)."),
    "ddp_broadcast_buffers": _s(8, "DDP broadcast_buffers (None: DDP's True)."),
    "dataloader_pin_memory": _s(5, "Pinned memory when an accelerator is used."),
    "dataloader_persistent_workers": _s(5, "Persistent DataLoader workers."),
    "skip_memory_metrics": _s(5, "False adds the memory report to the metrics."),
    "use_legacy_prediction_loop": _no("trainkit has one evaluation loop."),
    "push_to_hub": _no(_HUB),
    "resume_from_checkpoint": _s(2, "Read by scripts, as in transformers; pass it to train()."),
    "hub_model_id": _no(_HUB),
    "hub_strategy": _no(_HUB),
    "hub_token": _no(_HUB),
    "hub_private_repo": _no(_HUB),
    "hub_always_push": _no(_HUB),
    "hub_revision": _no(_HUB),
    "gradient_checkpointing": _s(5, "Through the model's gradient_checkpointing_enable()."),
    "gradient_checkpointing_kwargs": _s(5, "Passed to gradient_checkpointing_enable()."),
    "include_inputs_for_metrics": _alias("Deprecated: adds 'inputs' to include_for_metrics."),
    "include_for_metrics": _s(6, "'inputs' and/or 'loss' in EvalPrediction."),
    "eval_do_concat_batches": _s(6, "False keeps per-batch lists."),
    "fp16_backend": _alias("Deprecated name of half_precision_backend."),
    "push_to_hub_model_id": _no(_HUB),
    "push_to_hub_organization": _no(_HUB),
    "push_to_hub_token": _no(_HUB),
    "mp_parameters": _no("SageMaker model parallelism is not integrated."),
    "auto_find_batch_size": _no("Not implemented: choose the batch size explicitly."),
    "full_determinism": _s(5, "enable_full_determinism(seed) at the start of train()."),
    "torchdynamo": _alias("Deprecated: becomes torch_compile_backend."),
    "ray_scope": _no("hyperparameter_search is not implemented."),
    "ddp_timeout": _s(8, "Process-group timeout: a dead or hung rank makes the others fail after it."),
    "torch_compile": _s(5, "torch.compile applied once, logged."),
    "torch_compile_backend": _s(5, "torch.compile backend."),
    "torch_compile_mode": _s(5, "torch.compile mode."),
    "dispatch_batches": _no("accelerate's batch dispatching is not used; each rank loads its own batches."),
    "split_batches": _no("accelerate's batch splitting is not used; batch sizes are per device."),
    "include_tokens_per_second": _s(5, "Adds train_tokens_per_second."),
    "include_num_input_tokens_seen": _s(5, "Tracks num_input_tokens_seen."),
    "neftune_noise_alpha": _s(5, "NEFTune noise on the input embeddings during training."),
    "optim_target_modules": _no("GaLore/APOLLO-style optimizers are not registered."),
    "batch_eval_metrics": _s(6, "compute_metrics per batch with compute_result."),
    "eval_on_start": _s(6, "A sanity evaluation before the first step."),
    "use_liger_kernel": _no("Liger kernels are not integrated."),
    "liger_kernel_config": _no("Liger kernels are not integrated."),
    "eval_use_gather_object": _s(
        8, "Predictions/labels gathered with all_gather_object as per-example lists (lists or tensors per batch)."
    ),
    "average_tokens_across_devices": _s(
        5, "Token count summed across ranks (default True): DDP/FSDP equal one process with the global batch."
    ),
}


def field_status(name: str) -> tuple[str, str]:
    """(status, note) of a field as of the implemented issues."""
    support = FIELD_SUPPORT[name]
    if support.kind == "supported" and support.issue not in IMPLEMENTED_ISSUES:
        return "refused", f"not implemented yet (issue {support.issue}): {support.note}"
    return support.kind, support.note


def _default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def check_refused_fields(args: Any) -> None:
    """Raise for every refused field that holds a non-default value, naming the field and why."""
    for f in dataclasses.fields(args):
        if not f.init:
            continue
        status, note = field_status(f.name)
        if status != "refused":
            continue
        value, default = getattr(args, f.name), _default_of(f)
        if value != default and not (not value and not default):
            raise UnsupportedArgumentError(
                f"TrainingArguments.{f.name}={value!r} is not supported by trainkit: {note} "
                f"(leave it at its default {default!r})."
            )


def render_arguments_markdown() -> str:
    """The field table of docs/arguments.md."""
    from trainkit.args import TrainingArguments

    rows = ["| field | default | status | what trainkit does |", "|---|---|---|---|"]
    for f in dataclasses.fields(TrainingArguments):
        if not f.init:
            continue
        status, note = field_status(f.name)
        default = _default_of(f)
        shown = "required" if default is dataclasses.MISSING else repr(default)
        rows.append(f"| `{f.name}` | `{shown}` | {status} | {note} |")
    return "\n".join(rows) + "\n"


TABLE_MARKER = "<!-- field table: generated by `python -m trainkit.args_support --write docs/arguments.md` -->"


def write_arguments_doc(path: str) -> None:
    """Replace everything after TABLE_MARKER in ``path`` with the current field table."""
    with open(path, encoding="utf-8") as fh:
        head = fh.read().split(TABLE_MARKER)[0]
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(head + TABLE_MARKER + "\n\n" + render_arguments_markdown())


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--write":
        write_arguments_doc(sys.argv[2])
    else:
        sys.stdout.write(render_arguments_markdown())
