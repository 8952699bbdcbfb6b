"""``TrainingArguments``: transformers' argument names and defaults, as pure data.

Constructing it validates and normalises the values (as transformers does) but has no side
effects: no process group, no environment writes, no device allocation. Devices and
distributed setup belong to the Strategy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from trainkit.args_setters import ArgumentSetters
from trainkit.options import (
    DebugOption,
    FSDPOption,
    HubStrategy,
    IntervalStrategy,
    SaveStrategy,
)

__all__ = ["LOG_LEVELS", "TrainingArguments"]

LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "passive": -1,
}
_LOG_LEVEL_CHOICES = tuple(LOG_LEVELS)


def _arg(default: Any = dataclasses.MISSING, help: str = "", **metadata: Any) -> Any:
    """A dataclass field with its ``--help`` text; list/dict defaults become factories."""
    metadata["help"] = help
    if isinstance(default, (list, dict)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainingArguments(ArgumentSetters):
    """Every argument of ``transformers.TrainingArguments`` (4.37.2, plus later names).

    Each field's status (supported, alias, or refused with a reason) is listed in
    ``docs/arguments.md``; a refused field raises when set to anything but its default.
    """

    # fmt: off
    output_dir: str | None = _arg(None, "Where checkpoints and predictions are written (default 'trainer_output').")
    overwrite_output_dir: bool = _arg(False, "Allow writing into an output_dir that already holds checkpoints.")
    do_train: bool = _arg(False, "Whether to run training (read by scripts, not by the Trainer).")
    do_eval: bool = _arg(False, "Whether to run evaluation; set automatically when eval_strategy is not 'no'.")
    do_predict: bool = _arg(False, "Whether to run predictions (read by scripts, not by the Trainer).")
    eval_strategy: IntervalStrategy | str = _arg("no", "When to evaluate during training.",
                                                 choices=[s.value for s in IntervalStrategy])
    evaluation_strategy: IntervalStrategy | str | None = _arg(None, "Deprecated alias of eval_strategy.",
                                                               choices=[s.value for s in IntervalStrategy])
    prediction_loss_only: bool = _arg(False, "Evaluation returns only the loss, no predictions.")
    per_device_train_batch_size: int = _arg(8, "Training batch size per device.")
    per_device_eval_batch_size: int = _arg(8, "Evaluation batch size per device.")
    per_gpu_train_batch_size: int | None = _arg(None, "Deprecated alias of per_device_train_batch_size.")
    per_gpu_eval_batch_size: int | None = _arg(None, "Deprecated alias of per_device_eval_batch_size.")
    gradient_accumulation_steps: int = _arg(1, "Micro-batches accumulated before each optimizer step.")
    eval_accumulation_steps: int | None = _arg(None, "Move gathered predictions to CPU every this many steps.")
    eval_delay: float | None = _arg(0, "Epochs or steps (by eval_strategy) to wait before the first evaluation.")
    torch_empty_cache_steps: int | None = _arg(None, "Call the accelerator's empty_cache every this many steps.")
    learning_rate: float = _arg(5e-5, "Initial learning rate.")
    weight_decay: float = _arg(0.0, "Weight decay on all weights except biases and normalisation weights.")
    adam_beta1: float = _arg(0.9, "beta1 of Adam-family optimizers.")
    adam_beta2: float = _arg(0.999, "beta2 of Adam-family optimizers.")
    adam_epsilon: float = _arg(1e-8, "epsilon of Adam-family optimizers.")
    max_grad_norm: float = _arg(1.0, "Clip the global gradient norm to this value (0 disables clipping).")
    num_train_epochs: float = _arg(3.0, "Epochs to train; a fraction stops part-way through the last one.")
    max_steps: int = _arg(-1, "Optimizer steps to train; overrides num_train_epochs when > 0.")
    lr_scheduler_type: str = _arg("linear", "Learning-rate schedule, by name (see the SCHEDULERS registry).")
    lr_scheduler_kwargs: dict | str | None = _arg({}, "Extra schedule arguments, as a dict or a JSON string.")
    warmup_ratio: float = _arg(0.0, "Fraction of the total steps used for warmup.")
    warmup_steps: int | float = _arg(0, "Warmup steps; a float below 1 is a ratio of the total steps.")
    log_level: str | None = _arg("passive", "Log level of the main process.", choices=_LOG_LEVEL_CHOICES)
    log_level_replica: str | None = _arg("warning", "Log level of the replicas.", choices=_LOG_LEVEL_CHOICES)
    log_on_each_node: bool = _arg(True, "Log from the local main process of every node, not only node 0.")
    logging_dir: str | None = _arg(None, "TensorBoard log folder (default output_dir/runs/<date>_<host>).")
    logging_strategy: IntervalStrategy | str = _arg("steps", "When to log.",
                                                    choices=[s.value for s in IntervalStrategy])
    logging_first_step: bool = _arg(False, "Log the first optimizer step.")
    logging_steps: float = _arg(500, "Log every this many steps (a float below 1 is a ratio of total steps).")
    logging_nan_inf_filter: bool = _arg(True, "Leave non-finite losses out of the logged training loss.")
    save_strategy: SaveStrategy | str = _arg("steps", "When to save checkpoints.",
                                             choices=[s.value for s in SaveStrategy])
    save_steps: float = _arg(500, "Save every this many steps (a float below 1 is a ratio of total steps).")
    save_total_limit: int | None = _arg(None, "Keep at most this many checkpoints (the best is always kept).")
    save_safetensors: bool | None = _arg(True, "Save weights as safetensors rather than torch pickles.")
    save_on_each_node: bool = _arg(False, "In multi-node training, save on every node, not only node 0.")
    save_only_model: bool = _arg(False, "Checkpoints hold only the model (no optimizer, scheduler, RNG).")
    restore_callback_states_from_checkpoint: bool = _arg(False, "Restore stateful callbacks on resume.")
    no_cuda: bool = _arg(False, "Deprecated alias of use_cpu.")
    use_cpu: bool = _arg(False, "Train on the CPU even when an accelerator is available.")
    use_mps_device: bool = _arg(False, "Deprecated: MPS is chosen automatically when available.")
    seed: int = _arg(42, "Random seed set at the start of training.")
    data_seed: int | None = _arg(None, "Seed of the data samplers (defaults to seed).")
    jit_mode_eval: bool = _arg(False, "Use torch.jit.trace for inference.")
    use_ipex: bool = _arg(False, "Use Intel extension for PyTorch.")
    bf16: bool = _arg(False, "bf16 mixed precision.")
    fp16: bool = _arg(False, "fp16 mixed precision with loss scaling.")
    fp16_opt_level: str = _arg("O1", "apex AMP optimisation level ('O0'..'O3').")
    half_precision_backend: str = _arg("auto", "Mixed-precision backend.",
                                       choices=("auto", "cuda_amp", "cpu_amp", "apex"))
    bf16_full_eval: bool = _arg(False, "Evaluate with the model cast to bf16.")
    fp16_full_eval: bool = _arg(False, "Evaluate with the model cast to fp16.")
    tf32: bool | None = _arg(None, "Enable (True) or disable (False) TF32 matmuls; None leaves them as they are.")
    local_rank: int = _arg(-1, "Set by the launcher; trainkit reads LOCAL_RANK from the environment.")
    ddp_backend: str | None = _arg(None, "torch.distributed backend.",
                                   choices=("nccl", "gloo", "mpi", "ccl", "hccl", "cncl", "mccl", "xccl"))
    tpu_num_cores: int | None = _arg(None, "TPU cores (set by the XLA launcher).")
    tpu_metrics_debug: bool = _arg(False, "Deprecated: use debug='tpu_metrics_debug'.")
    debug: str | list[DebugOption] = _arg("", "Debug features: 'underflow_overflow', 'tpu_metrics_debug'.")
    dataloader_drop_last: bool = _arg(False, "Drop the last incomplete batch.")
    eval_steps: float | None = _arg(None, "Evaluate every this many steps (defaults to logging_steps).")
    dataloader_num_workers: int = _arg(0, "DataLoader worker processes.")
    dataloader_prefetch_factor: int | None = _arg(None, "Batches loaded in advance by each worker.")
    past_index: int = _arg(-1, "Index of the model output holding 'mems'/'past' to feed back.")
    run_name: str | None = _arg(None, "Run name for loggers (defaults to output_dir).")
    disable_tqdm: bool | None = _arg(None, "Disable progress bars.")
    remove_unused_columns: bool | None = _arg(True, "Drop batch keys the model's forward does not accept.")
    label_names: list[str] | None = _arg(None, "Keys of the batch holding labels (default: 'labels'...).")
    load_best_model_at_end: bool | None = _arg(False, "Load the best checkpoint at the end of training.")
    metric_for_best_model: str | None = _arg(None, "Metric that selects the best checkpoint.")
    greater_is_better: bool | None = _arg(None, "Whether a greater metric is better.")
    ignore_data_skip: bool = _arg(False, "On resume, do not skip the batches already seen.")
    fsdp: list[FSDPOption] | str | bool | None = _arg("", "FSDP options: full_shard shard_grad_op hybrid_shard "
                                               "hybrid_shard_zero2 offload auto_wrap (space separated).")
    fsdp_min_num_params: int = _arg(0, "Deprecated: fsdp_config['min_num_params'].")
    fsdp_config: dict | str | None = _arg(None, "FSDP configuration: a dict, a JSON string or a JSON file.")
    fsdp_transformer_layer_cls_to_wrap: str | None = _arg(None, "Deprecated: "
                                                          "fsdp_config['transformer_layer_cls_to_wrap'].")
    accelerator_config: dict | str | None = _arg(None, "accelerate's AcceleratorConfig.")
    parallelism_config: dict | str | None = _arg(None, "accelerate's ParallelismConfig.")
    tp_size: int | None = _arg(0, "Tensor-parallel degree.")
    deepspeed: dict | str | None = _arg(None, "DeepSpeed configuration: a dict, a JSON string or a JSON file.")
    label_smoothing_factor: float = _arg(0.0, "Label smoothing (0 disables it).")
    optim: str = _arg("adamw_torch", "Optimizer, by name (see the OPTIMIZERS registry).")
    optim_args: str | None = _arg(None, "Extra optimizer arguments as 'k1=v1,k2=v2'.")
    adafactor: bool = _arg(False, "Deprecated: use optim='adafactor'.")
    group_by_length: bool = _arg(False, "Batch samples of similar length together.")
    length_column_name: str | None = _arg("length", "Dataset column holding precomputed lengths.")
    report_to: str | list[str] | None = _arg(None, "Loggers: 'tensorboard', 'jsonl', 'all' or 'none'.")
    project: str = _arg("huggingface", "trackio project name.")
    trackio_space_id: str | None = _arg("trackio", "trackio Space id.")
    ddp_find_unused_parameters: bool | None = _arg(None, "DDP find_unused_parameters.")
    ddp_bucket_cap_mb: int | None = _arg(None, "DDP bucket_cap_mb.")
    ddp_broadcast_buffers: bool | None = _arg(None, "DDP broadcast_buffers.")
    dataloader_pin_memory: bool = _arg(True, "Pin DataLoader memory.")
    dataloader_persistent_workers: bool = _arg(False, "Keep DataLoader workers alive between epochs.")
    skip_memory_metrics: bool = _arg(True, "Skip the memory report in the metrics.")
    use_legacy_prediction_loop: bool = _arg(False, "Use transformers' legacy prediction loop.")
    push_to_hub: bool = _arg(False, "Upload to the Hugging Face Hub.")
    resume_from_checkpoint: str | None = _arg(None, "Checkpoint folder to resume from (read by scripts).")
    hub_model_id: str | None = _arg(None, "Hub repository name.")
    hub_strategy: HubStrategy | str = _arg("every_save", "When to push to the Hub.",
                                           choices=[s.value for s in HubStrategy])
    hub_token: str | None = _arg(None, "Hub token.")
    hub_private_repo: bool | None = _arg(False, "Create a private Hub repository.")
    hub_always_push: bool = _arg(False, "Push even when the previous push is not finished.")
    hub_revision: str | None = _arg(None, "Hub revision (branch) to push to.")
    gradient_checkpointing: bool = _arg(False, "Recompute activations in backward to save memory.")
    gradient_checkpointing_kwargs: dict | str | None = _arg(None, "Arguments of gradient_checkpointing_enable.")
    include_inputs_for_metrics: bool = _arg(False, "Deprecated: include_for_metrics=['inputs'].")
    include_for_metrics: list[str] = _arg([], "Extra inputs of compute_metrics: 'inputs', 'loss'.")
    eval_do_concat_batches: bool = _arg(True, "Concatenate predictions across batches (False keeps a list).")
    fp16_backend: str = _arg("auto", "Deprecated alias of half_precision_backend.",
                             choices=("auto", "cuda_amp", "cpu_amp", "apex"))
    push_to_hub_model_id: str | None = _arg(None, "Deprecated: hub_model_id.")
    push_to_hub_organization: str | None = _arg(None, "Deprecated: hub_model_id.")
    push_to_hub_token: str | None = _arg(None, "Deprecated: hub_token.")
    mp_parameters: str = _arg("", "SageMaker model-parallel parameters.")
    auto_find_batch_size: bool = _arg(False, "Halve the batch size on out-of-memory and retry.")
    full_determinism: bool = _arg(False, "Deterministic algorithms everywhere (slower).")
    torchdynamo: str | None = _arg(None, "Deprecated: torch_compile_backend.")
    ray_scope: str | None = _arg("last", "Ray Tune scope for hyperparameter search.")
    ddp_timeout: int | None = _arg(1800, "Process-group timeout in seconds.")
    torch_compile: bool = _arg(False, "Compile the model with torch.compile.")
    torch_compile_backend: str | None = _arg(None, "torch.compile backend (sets torch_compile).")
    torch_compile_mode: str | None = _arg(None, "torch.compile mode (sets torch_compile).")
    dispatch_batches: bool | None = _arg(None, "accelerate dispatch_batches.")
    split_batches: bool | None = _arg(False, "accelerate split_batches.")
    include_tokens_per_second: bool | None = _arg(False, "Report train_tokens_per_second.")
    include_num_input_tokens_seen: bool | None = _arg(False, "Track num_input_tokens_seen in the state.")
    neftune_noise_alpha: float | None = _arg(None, "NEFTune noise on the input embeddings.")
    optim_target_modules: str | list[str] | None = _arg(None, "Modules for GaLore-style optimizers.")
    batch_eval_metrics: bool = _arg(False, "Call compute_metrics per batch (compute_result on the last).")
    eval_on_start: bool = _arg(False, "Evaluate once before training (a sanity check).")
    use_liger_kernel: bool = _arg(False, "Use Liger kernels.")
    liger_kernel_config: dict | str | None = _arg(None, "Liger kernel configuration.")
    eval_use_gather_object: bool = _arg(False, "Gather non-tensor predictions with gather_object.")
    average_tokens_across_devices: bool = _arg(True, "Normalise the loss by the token count of all ranks.")
    # fmt: on

    def __new__(cls, *args: Any, **kwargs: Any) -> TrainingArguments:
        unknown = [k for k in kwargs if k not in _init_field_names(cls)]
        if unknown:
            raise TypeError(_unknown_message(cls.__name__, unknown, _init_field_names(cls)))
        return super().__new__(cls)

    def __post_init__(self) -> None:
        from trainkit.args_validation import normalize_and_validate

        normalize_and_validate(self)

    # ----------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field; enums become values and ``*_token`` fields are masked."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if not f.init:
                continue
            value = _plain(getattr(self, f.name))
            if f.name.endswith("_token") and value is not None:
                value = f"<{f.name.upper()}>"
            out[f.name] = value
        return out

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_sanitized_dict(self) -> dict[str, Any]:
        """Scalars only (others as strings), for TensorBoard's hparams."""
        d = {**self.to_dict(), "train_batch_size": self.train_batch_size, "eval_batch_size": self.eval_batch_size}
        return {k: v if type(v) in (bool, int, float, str) else str(v) for k, v in d.items()}

    def __str__(self) -> str:
        body = "".join(f"{k}={v},\n" for k, v in sorted(self.to_dict().items()))
        return f"{type(self).__name__}(\n{body})"

    __repr__ = __str__

    # ------------------------------------------------------------- derived values
    @property
    def n_gpu(self) -> int:
        """Accelerators used by this process: 1 when a CUDA device will be used, else 0."""
        import torch

        return 1 if (not self.use_cpu and torch.cuda.is_available()) else 0

    @property
    def train_batch_size(self) -> int:
        return self.per_device_train_batch_size * max(1, self.n_gpu)

    @property
    def eval_batch_size(self) -> int:
        return self.per_device_eval_batch_size * max(1, self.n_gpu)

    @property
    def world_size(self) -> int:
        return _dist_value("get_world_size", "WORLD_SIZE", 1)

    @property
    def process_index(self) -> int:
        return _dist_value("get_rank", "RANK", 0)

    @property
    def local_process_index(self) -> int:
        if self.local_rank != -1:
            return self.local_rank
        return int(os.environ.get("LOCAL_RANK", 0))

    @property
    def should_log(self) -> bool:
        return (self.local_process_index if self.log_on_each_node else self.process_index) == 0

    @property
    def should_save(self) -> bool:
        return (self.local_process_index if self.save_on_each_node else self.process_index) == 0

    @property
    def device(self) -> Any:
        """The device this process would train on (computed; nothing is allocated)."""
        import torch

        if not self.use_cpu and torch.cuda.is_available():
            return torch.device("cuda", self.local_process_index % max(1, torch.cuda.device_count()))
        if not self.use_cpu and torch.backends.mps.is_available() and self.world_size == 1:
            return torch.device("mps")
        return torch.device("cpu")

    def get_warmup_steps(self, num_training_steps: int) -> int:
        """Warmup steps: ``warmup_steps`` (or its ratio when a float below 1), else ceil(ratio * total)."""
        if isinstance(self.warmup_steps, float) and 0 < self.warmup_steps < 1:
            return math.ceil(num_training_steps * self.warmup_steps)
        if self.warmup_steps > 0:
            return int(self.warmup_steps)
        return math.ceil(num_training_steps * self.warmup_ratio)

    def get_process_log_level(self) -> int:
        """The log level of this process: ``log_level`` on the logging process, ``log_level_replica`` elsewhere."""
        name = self.log_level if self.should_log else self.log_level_replica
        level = LOG_LEVELS[name or "passive"]
        if level == -1:
            return logging.getLogger("trainkit").getEffectiveLevel()
        return level

    @contextlib.contextmanager
    def main_process_first(self, local: bool = True, desc: str = "work") -> Iterator[None]:
        """Run the block on the (local) main process first; the others wait at a barrier, then run it.

        Under torchrun it starts the process group when no Trainer has yet (the Trainer then joins it).
        """
        import torch.distributed as dist

        if dist.is_available() and not dist.is_initialized():
            from trainkit.strategies.parallel import start_from_arguments

            start_from_arguments(self)
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            yield
            return
        is_main = (self.local_process_index if local else dist.get_rank()) == 0
        logger = logging.getLogger("trainkit")
        try:
            if not is_main:
                logger.debug("rank %d waits for the main process to do %s", dist.get_rank(), desc)
                dist.barrier()
            yield
        finally:
            if is_main:
                dist.barrier()


def _init_field_names(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls) if f.init)


def _unknown_message(owner: str, unknown: list[str], valid: frozenset[str]) -> str:
    parts = []
    for name in unknown:
        close = difflib.get_close_matches(name, sorted(valid), n=1)
        parts.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return f"{owner} got unexpected keyword argument(s): {', '.join(parts)}"


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _dist_value(getter: str, env: str, default: int) -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return int(getattr(dist, getter)())
    return int(os.environ.get(env, default))
