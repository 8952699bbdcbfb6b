"""``Trainer``: transformers' Trainer API as a thin facade over trainkit's components.

It wires the Strategy, Precision, CheckpointIO, registries and callbacks built from
``TrainingArguments`` (objects passed in win) and delegates the work to the loops. Subclass
hooks (``compute_loss``, ``training_step``, ``create_optimizer``, ...) change *what* happens;
callbacks decide *when*.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from trainkit.args import TrainingArguments
from trainkit.callbacks import CallbackHandler, DefaultFlowCallback, PrinterCallback, ProgressCallback, TrainerCallback
from trainkit.data.collators import (
    DataCollatorWithPadding,
    RemoveColumnsCollator,
    default_data_collator,
    forward_parameters,
)
from trainkit.data.loaders import build_train_dataloader, lengths_of
from trainkit.factory import build_components
from trainkit.loops import step as step_math
from trainkit.loops.model_features import LabelSmoother, accepts_num_items_in_batch, extract_loss, is_causal_lm
from trainkit.state import TrainerControl, TrainerState
from trainkit.trainer_checkpointing import CheckpointingMixin
from trainkit.trainer_evaluation import EvaluationMixin
from trainkit.trainer_metrics import MetricsReportingMixin
from trainkit.trainer_utils import TrainOutput, has_length
from trainkit.utils.logging import get_logger
from trainkit.utils.memory import MemoryTracker
from trainkit.utils.seed import enable_full_determinism, set_seed

__all__ = ["Trainer"]

logger = get_logger(__name__)


def _default_label_names(model: nn.Module | None) -> list[str]:
    """transformers' ``find_labels``: forward parameters whose name contains 'label' (else ['labels'])."""
    if model is None:
        return ["labels"]
    names, _ = forward_parameters(model)
    if "start_positions" in names and "end_positions" in names:
        return ["start_positions", "end_positions"]
    found = [n for n in names if "label" in n]
    return found or ["labels"]


@dataclass
class _ModelFacts:
    model: nn.Module
    main_input_name: str
    flops_counter: Callable[[Any], Any] | None
    dense_parameters: int

    @classmethod
    def of(cls, model: nn.Module, inner: nn.Module) -> _ModelFacts:
        counter = getattr(inner, "floating_point_ops", None)
        embeddings = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
        dense = sum(p.numel() for p in model.parameters() if id(p) not in embeddings)
        return cls(model, getattr(model, "main_input_name", "input_ids"), counter if callable(counter) else None, dense)


class Trainer(CheckpointingMixin, EvaluationMixin, MetricsReportingMixin):
    """Train, evaluate and predict with transformers' Trainer API."""

    def __init__(
        self,
        model: nn.Module | None = None,
        args: TrainingArguments | None = None,
        data_collator: Callable[[list[Any]], Any] | None = None,
        train_dataset: Dataset[Any] | IterableDataset[Any] | None = None,
        eval_dataset: Dataset[Any] | dict[str, Dataset[Any]] | None = None,
        processing_class: Any = None,
        model_init: Callable[..., nn.Module] | None = None,
        compute_metrics: Callable[..., dict[str, float]] | Any = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple[torch.optim.Optimizer | None, Any] = (None, None),
        preprocess_logits_for_metrics: Callable[[Any, Any], Any] | None = None,
        *,
        compute_loss_func: Callable[..., torch.Tensor] | None = None,
        tokenizer: Any = None,
        strategy: Any = None,
        precision: Any = None,
        checkpoint_io: Any = None,
    ) -> None:
        self.args = args if args is not None else TrainingArguments(output_dir="tmp_trainer")
        self._memory_tracker = MemoryTracker(skip=self.args.skip_memory_metrics)
        self._memory_tracker.start("init")
        self._seed()
        self.model_init = model_init
        if model is None:
            if model_init is None:
                raise ValueError("Trainer needs a model or a model_init function.")
            model = self.call_model_init()
        elif model_init is not None:
            raise ValueError("Pass either a model or a model_init function to the Trainer, not both.")
        if model_init is not None and optimizers != (None, None):
            raise ValueError("A model_init builds a new model per train(): it cannot share the optimizers passed.")
        components = build_components(self.args, strategy=strategy, precision=precision, checkpoint_io=checkpoint_io)
        self.strategy = components.strategy
        self.strategy.setup_environment()
        self._set_log_level()
        self.model: nn.Module = model
        self.model_wrapped: nn.Module = model
        self._wrapped_for: nn.Module | None = None
        self._compiled = False
        self.processing_class = processing_class if processing_class is not None else tokenizer
        if data_collator is None:
            has_pad = self.processing_class is not None and hasattr(self.processing_class, "pad")
            data_collator = DataCollatorWithPadding(self.processing_class) if has_pad else default_data_collator
        self.data_collator = data_collator
        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset
        self.compute_metrics = compute_metrics
        self.compute_loss_func = compute_loss_func
        self.preprocess_logits_for_metrics = preprocess_logits_for_metrics
        self.optimizer, self.lr_scheduler = optimizers
        self.label_names = list(self.args.label_names) if self.args.label_names else _default_label_names(model)
        self.model_accepts_loss_kwargs = accepts_num_items_in_batch(model)
        eps = self.args.label_smoothing_factor
        self.label_smoother = LabelSmoother(epsilon=eps) if eps > 0 else None
        self._check_eval_setup()
        self.state = TrainerState(
            is_local_process_zero=self.is_local_process_zero(), is_world_process_zero=self.is_world_process_zero()
        )
        self.control = TrainerControl()
        self.callback_handler = CallbackHandler(
            self._default_callbacks(callbacks), model, self.processing_class, self.optimizer, self.lr_scheduler
        )
        self._current_window: step_math.Window | None = None
        self._checkpoints = None
        self._past: Any = None
        self._neftune_hook: Any = None
        self._tokens_local = 0
        self._tokens_seen_this_run = 0
        self._current_flos = 0.0
        self._facts: _ModelFacts | None = None
        self._samples_local = 0
        self.is_in_train = False
        self.control = self.callback_handler.on_init_end(self.args, self.state, self.control)
        self._memory_tracker.stop("init")

    # ------------------------------------------------------------------- setup
    def _seed(self) -> None:
        if self.args.full_determinism:
            enable_full_determinism(self.args.seed)
        else:
            set_seed(self.args.seed)

    def _set_log_level(self) -> None:
        """``log_level`` on the logging process(es), ``log_level_replica`` elsewhere (transformers' rule)."""
        import logging

        logging.getLogger("trainkit").setLevel(self.args.get_process_log_level())

    def call_model_init(self, trial: Any = None) -> nn.Module:
        assert self.model_init is not None
        model = self.model_init(trial) if self.model_init.__code__.co_argcount == 1 else self.model_init()
        if model is None:
            raise RuntimeError("model_init returned None; it must return an nn.Module")
        return model

    def _check_eval_setup(self) -> None:
        if str(self.args.eval_strategy) != "no" and self.eval_dataset is None:
            raise ValueError(
                f"eval_strategy={str(self.args.eval_strategy)!r} needs an eval_dataset: pass eval_dataset to the "
                "Trainer or set eval_strategy='no'."
            )

    def _default_callbacks(self, callbacks: list[TrainerCallback] | None) -> list[TrainerCallback]:
        from trainkit.loggers import build_logger_callbacks

        progress = PrinterCallback() if self.args.disable_tqdm else ProgressCallback()
        return [DefaultFlowCallback(), *build_logger_callbacks(self.args), *(callbacks or []), progress]

    def add_callback(self, callback: TrainerCallback | type[TrainerCallback]) -> None:
        self.callback_handler.add_callback(callback)

    def pop_callback(self, callback: TrainerCallback | type[TrainerCallback]) -> TrainerCallback | None:
        return self.callback_handler.pop_callback(callback)

    def remove_callback(self, callback: TrainerCallback | type[TrainerCallback]) -> None:
        self.callback_handler.remove_callback(callback)

    @property
    def tokenizer(self) -> Any:
        return self.processing_class

    @property
    def precision(self) -> Any:
        return self.strategy.precision

    def is_local_process_zero(self) -> bool:
        return self.strategy.is_local_zero

    def is_world_process_zero(self) -> bool:
        return self.strategy.is_global_zero

    # -------------------------------------------------------------------- data
    def _collator(self, dataset: Any, description: str) -> Callable[[list[Any]], Any]:
        if not self.args.remove_unused_columns:
            return self.data_collator
        names, var_kw = forward_parameters(self.strategy.unwrap_model(self.model))
        if var_kw:
            return self.data_collator
        keep = names | set(self.label_names) | {"label", "label_ids"}
        return RemoveColumnsCollator(self.data_collator, keep, description)

    def get_train_dataloader(self) -> DataLoader[Any]:
        if self.train_dataset is None:
            raise ValueError("Trainer.train() needs a train_dataset: pass train_dataset=... to the Trainer.")
        dataset = self.train_dataset
        if isinstance(dataset, IterableDataset) and self.strategy.world_size > 1:
            logger.warning(
                "The training dataset is an IterableDataset: each of the %d ranks reads it as given, so it must "
                "shard itself by rank (e.g. datasets.distributed.split_dataset_by_node)",
                self.strategy.world_size,
            )
        lengths = None
        if self.args.group_by_length and not isinstance(dataset, IterableDataset):
            input_name = getattr(self.model, "main_input_name", "input_ids")
            lengths = lengths_of(dataset, self.args.length_column_name, input_name)
        return build_train_dataloader(
            dataset,
            self.args,
            self._collator(dataset, "training"),
            self.strategy.root_device,
            self.strategy.distributed_sampler_kwargs,
            lengths,
        )

    def num_examples(self, dataloader: DataLoader[Any]) -> int:
        """Examples in a DataLoader's dataset (batches x batch size when it has no length)."""
        try:
            return len(dataloader.dataset)  # type: ignore[arg-type]
        except (TypeError, AttributeError):
            return len(dataloader) * (dataloader.batch_size or 1)

    # --------------------------------------------------------------- optimizer
    def create_optimizer(self) -> torch.optim.Optimizer:
        if self.optimizer is None:
            from trainkit.optim import create_optimizer

            self.optimizer = create_optimizer(self.model, self.args)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None) -> Any:
        if self.lr_scheduler is None:
            from trainkit.optim import create_scheduler

            optimizer = optimizer or self.optimizer
            if optimizer is None:
                raise ValueError("create_scheduler needs an optimizer: call create_optimizer() first")
            self.lr_scheduler = create_scheduler(self.args, optimizer, num_training_steps)
        return self.lr_scheduler

    def create_optimizer_and_scheduler(self, num_training_steps: int) -> None:
        """The registries' optimizer and scheduler, unless the strategy builds them from its own configuration
        (a DeepSpeed config's "optimizer" / "scheduler"): then ``setup_optimizers`` does."""
        self.strategy.set_training_steps(num_training_steps, self.args.get_warmup_steps(num_training_steps))
        if self.strategy.builds_optimizer:
            return  # the scheduler needs the strategy's optimizer: created after setup_optimizers
        self.create_optimizer()
        if not self.strategy.builds_scheduler:
            self.create_scheduler(num_training_steps=num_training_steps, optimizer=self.optimizer)

    def _get_learning_rate(self) -> float:
        assert self.optimizer is not None
        return float(self.optimizer.param_groups[0]["lr"])

    # ------------------------------------------------------------------- train
    def train(
        self,
        resume_from_checkpoint: str | bool | None = None,
        trial: Any = None,
        ignore_keys_for_eval: list[str] | None = None,
        **kwargs: Any,
    ) -> TrainOutput:
        """Train the model; resume from the last (``True``) or a given checkpoint folder."""
        from trainkit.loops.training import run_training

        if kwargs:
            raise TypeError(f"Trainer.train() got unexpected keyword arguments: {', '.join(sorted(kwargs))}")
        if self.train_dataset is None:
            raise ValueError("Trainer.train() needs a train_dataset: pass train_dataset=... to the Trainer.")
        self._ignore_keys_for_eval = ignore_keys_for_eval
        if self.model_init is not None:
            self._seed()
            self.model = self.model_wrapped = self.call_model_init(trial)
            self.optimizer, self.lr_scheduler = None, None
        resume = self._resolve_resume(resume_from_checkpoint)
        self.is_in_train = True
        try:
            return run_training(self, resume)
        except Exception as err:
            if self.strategy.world_size > 1:  # each rank logs apart: say which one failed, and where
                logger.error(
                    "Rank %d of %d failed at step %d: %s: %s",
                    self.strategy.global_rank,
                    self.strategy.world_size,
                    self.state.global_step,
                    type(err).__name__,
                    err,
                )
            raise
        finally:
            self.is_in_train = False

    def _prepare_model(self) -> None:
        """Move (and wrap, for distributed strategies) the model once, before training or evaluation."""
        if self._wrapped_for is not self.model:
            self.model_wrapped = self.strategy.setup_module(self.model)
            self._wrapped_for = self.model

    def _remove_neftune(self) -> None:
        if self._neftune_hook is not None:
            self._neftune_hook.remove()
            self._neftune_hook = None

    # -------------------------------------------------------------------- step
    def _prepare_inputs(self, inputs: Any) -> Any:
        return self.strategy.batch_to_device(inputs)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | None = None,
    ) -> Any:
        """The loss of one micro-batch (the model's own loss, or label smoothing / compute_loss_func)."""
        labels = None
        if (self.label_smoother is not None or self.compute_loss_func is not None) and "labels" in inputs:
            inputs = dict(inputs)
            labels = inputs.pop("labels")
        if self.model_accepts_loss_kwargs and num_items_in_batch is not None and labels is None:
            inputs = {**inputs, "num_items_in_batch": num_items_in_batch}
        if self.args.past_index >= 0 and self._past is not None:
            inputs = {**inputs, "mems": self._past}
        outputs = model(**inputs)
        if self.args.past_index >= 0:
            self._past = outputs[self.args.past_index]
        if labels is not None and self.compute_loss_func is not None:
            loss = self.compute_loss_func(outputs, labels, num_items_in_batch=num_items_in_batch)
        elif labels is not None and self.label_smoother is not None:
            loss = self.label_smoother(outputs, labels, shift_labels=is_causal_lm(self.strategy.unwrap_model(model)))
        else:
            loss = extract_loss(outputs, inputs)
        return (loss, outputs) if return_outputs else loss

    def _loss_is_normalized(self, num_items_in_batch: torch.Tensor | None) -> bool:
        """Whether compute_loss already divided by ``num_items_in_batch`` (the model or compute_loss_func did)."""
        if num_items_in_batch is None:
            return False
        if self.compute_loss_func is not None:
            return True
        return self.model_accepts_loss_kwargs and self.label_smoother is None

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Forward and backward of one micro-batch; returns its detached share of the window's loss."""
        if not model.training:
            model.train()
        window = self._current_window or step_math.make_window([inputs], self.label_names)
        normalized = self._loss_is_normalized(num_items_in_batch)
        single = step_math.is_single(window)
        micro_samples = window.num_samples if single else step_math.batch_size_of(inputs)
        self._samples_local += micro_samples
        self._current_flos += self.floating_point_ops(inputs)
        weight, micro_items = 1.0, None
        if normalized or not single:
            micro_items = step_math.count_label_tokens(inputs, self.label_names)
            weight = step_math.micro_batch_weight(window, micro_items, micro_samples, normalized)
        inputs = self._prepare_inputs(inputs)
        with self.strategy.forward_context():
            if micro_items == 0 and not normalized:
                # a mean over zero labels is NaN; this micro-batch's exact share of the window is zero
                loss, outputs = self.compute_loss(model, inputs, return_outputs=True, num_items_in_batch=None)
                loss = step_math.zero_loss(outputs, loss)
            else:
                loss = self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
        if weight != 1.0:
            loss = loss * weight
        if loss.requires_grad:
            self.strategy.backward(loss, model)
        loss = loss.detach()
        return loss if window.world_factor == 1 else loss / window.world_factor

    def floating_point_ops(self, inputs: Any) -> float:
        """Training FLOPs of a micro-batch: the model's own count (transformers models), else the same
        estimate transformers uses, 6 x input tokens x parameters outside embeddings."""
        facts = self._model_facts
        if facts.flops_counter is not None:
            return float(facts.flops_counter(inputs))
        tokens = inputs.get(facts.main_input_name) if type(inputs) is dict else None
        if not isinstance(tokens, torch.Tensor):
            return 0.0
        return 6.0 * tokens.numel() * facts.dense_parameters

    @property
    def _model_facts(self) -> _ModelFacts:
        """What the per-step code asks of the model, looked up once per model (module getattr is slow)."""
        if self._facts is None or self._facts.model is not self.model:
            self._facts = _ModelFacts.of(self.model, self.strategy.unwrap_model(self.model))
        return self._facts

    def _count_input_tokens(self, batch: Any) -> None:
        if not (self.args.include_num_input_tokens_seen or self.args.include_tokens_per_second):
            return
        name = self._model_facts.main_input_name
        if isinstance(batch, dict) and isinstance(batch.get(name), torch.Tensor):
            self._tokens_local += batch[name].numel()

    def _sync_input_tokens_seen(self, this_run: bool = False) -> int:
        """Add the tokens counted since the last call (all ranks) to the state; return the total."""
        local = torch.tensor(self._tokens_local, device=self.strategy.root_device, dtype=torch.int64)
        added = int(self.strategy.all_reduce(local, op="sum"))
        self._tokens_local = 0
        self.state.num_input_tokens_seen += added
        self._tokens_seen_this_run += added
        return self._tokens_seen_this_run if this_run else self.state.num_input_tokens_seen

    def _sync_counters(self) -> None:
        """Fold per-rank counters (tokens seen, FLOPs) into the state, e.g. before it is saved."""
        if self.args.include_num_input_tokens_seen or self.args.include_tokens_per_second:
            self._sync_input_tokens_seen()
        self._sync_flos()

    def _sync_flos(self) -> None:
        local = torch.tensor(self._current_flos, device=self.strategy.root_device, dtype=torch.float64)
        self.state.total_flos += float(self.strategy.all_reduce(local, op="sum"))
        self._current_flos = 0.0

    # --------------------------------------------------------------- logging
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Record ``logs`` in the state's history (with epoch and step) and call ``on_log``."""
        if self.state.epoch is not None:
            logs["epoch"] = self.state.epoch
        if self.args.include_num_input_tokens_seen:
            logs["num_input_tokens_seen"] = self._sync_input_tokens_seen()
        if start_time is not None:
            from trainkit.trainer_utils import speed_metrics

            logs.update(speed_metrics("train", start_time, num_tokens=self.state.num_input_tokens_seen))
        self.state.log_history.append({**logs, "step": self.state.global_step})
        self.control = self.callback_handler.on_log(self.args, self.state, self.control, logs=logs)

    def __repr__(self) -> str:
        return f"Trainer(model={type(self.model).__name__}, strategy={self.strategy!r})"

    def _has_length(self, obj: Any) -> bool:
        return has_length(obj)
