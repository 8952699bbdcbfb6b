"""transformers' grouped setters of TrainingArguments (``set_training``, ``set_evaluate``, ...).

Each sets a group of related fields, re-runs validation, and returns the arguments object.
"""

from __future__ import annotations

from typing import Any, TypeVar

__all__ = ["ArgumentSetters"]

Self = TypeVar("Self", bound="ArgumentSetters")


class ArgumentSetters:
    """Mixin of the ``set_*`` helpers; relies on the dataclass fields of TrainingArguments."""

    def _update(self: Self, **values: Any) -> Self:
        for name, value in values.items():
            setattr(self, name, value)
        from trainkit.args_validation import normalize_and_validate

        normalize_and_validate(self)  # type: ignore[arg-type]
        return self

    def set_training(
        self: Self,
        learning_rate: float = 5e-5,
        batch_size: int = 8,
        weight_decay: float = 0,
        num_epochs: float = 3,
        max_steps: int = -1,
        gradient_accumulation_steps: int = 1,
        seed: int = 42,
        gradient_checkpointing: bool = False,
    ) -> Self:
        return self._update(
            do_train=True,
            learning_rate=learning_rate,
            per_device_train_batch_size=batch_size,
            weight_decay=weight_decay,
            num_train_epochs=num_epochs,
            max_steps=max_steps,
            gradient_accumulation_steps=gradient_accumulation_steps,
            seed=seed,
            gradient_checkpointing=gradient_checkpointing,
        )

    def set_evaluate(
        self: Self,
        strategy: str = "no",
        steps: int = 500,
        batch_size: int = 8,
        accumulation_steps: int | None = None,
        delay: float | None = None,
        loss_only: bool = False,
        jit_mode: bool = False,
    ) -> Self:
        values: dict[str, Any] = {
            "eval_strategy": strategy,
            "do_eval": str(strategy) != "no",
            "eval_steps": steps if str(strategy) == "steps" else None,
            "per_device_eval_batch_size": batch_size,
            "eval_accumulation_steps": accumulation_steps,
            "prediction_loss_only": loss_only,
            "jit_mode_eval": jit_mode,
        }
        if str(strategy) == "steps" and steps == 0:
            raise ValueError("set_evaluate: steps must be > 0 when strategy='steps'")
        if delay is not None:
            values["eval_delay"] = delay
        return self._update(**values)

    def set_testing(self: Self, batch_size: int = 8, loss_only: bool = False, jit_mode: bool = False) -> Self:
        return self._update(
            do_predict=True,
            per_device_eval_batch_size=batch_size,
            prediction_loss_only=loss_only,
            jit_mode_eval=jit_mode,
        )

    def set_save(
        self: Self,
        strategy: str = "steps",
        steps: int = 500,
        total_limit: int | None = None,
        on_each_node: bool = False,
    ) -> Self:
        if str(strategy) == "steps" and steps == 0:
            raise ValueError("set_save: steps must be > 0 when strategy='steps'")
        return self._update(
            save_strategy=strategy, save_steps=steps, save_total_limit=total_limit, save_on_each_node=on_each_node
        )

    def set_logging(
        self: Self,
        strategy: str = "steps",
        steps: int = 500,
        report_to: str | list[str] = "none",
        level: str = "passive",
        first_step: bool = False,
        nan_inf_filter: bool = False,
        on_each_node: bool = False,
        replica_level: str = "passive",
    ) -> Self:
        if str(strategy) == "steps" and steps == 0:
            raise ValueError("set_logging: steps must be > 0 when strategy='steps'")
        return self._update(
            logging_strategy=strategy,
            logging_steps=steps,
            report_to=report_to,
            log_level=level,
            logging_first_step=first_step,
            logging_nan_inf_filter=nan_inf_filter,
            log_on_each_node=on_each_node,
            log_level_replica=replica_level,
        )

    def set_push_to_hub(
        self: Self,
        model_id: str,
        strategy: str = "every_save",
        token: str | None = None,
        private_repo: bool = False,
        always_push: bool = False,
    ) -> Self:
        return self._update(
            push_to_hub=True,
            hub_model_id=model_id,
            hub_strategy=strategy,
            hub_token=token,
            hub_private_repo=private_repo,
            hub_always_push=always_push,
        )

    def set_optimizer(
        self: Self,
        name: str = "adamw_torch",
        learning_rate: float = 5e-5,
        weight_decay: float = 0,
        beta1: float = 0.9,
        beta2: float = 0.999,
        epsilon: float = 1e-8,
        args: str | None = None,
    ) -> Self:
        return self._update(
            optim=str(name),
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            adam_beta1=beta1,
            adam_beta2=beta2,
            adam_epsilon=epsilon,
            optim_args=args,
        )

    def set_lr_scheduler(
        self: Self,
        name: str = "linear",
        num_epochs: float = 3.0,
        max_steps: int = -1,
        warmup_ratio: float = 0,
        warmup_steps: int | float = 0,
    ) -> Self:
        return self._update(
            lr_scheduler_type=str(name),
            num_train_epochs=num_epochs,
            max_steps=max_steps,
            warmup_ratio=warmup_ratio,
            warmup_steps=warmup_steps,
        )

    def set_dataloader(
        self: Self,
        train_batch_size: int = 8,
        eval_batch_size: int = 8,
        drop_last: bool = False,
        num_workers: int = 0,
        pin_memory: bool = True,
        persistent_workers: bool = False,
        prefetch_factor: int | None = None,
        auto_find_batch_size: bool = False,
        ignore_data_skip: bool = False,
        sampler_seed: int | None = None,
    ) -> Self:
        return self._update(
            per_device_train_batch_size=train_batch_size,
            per_device_eval_batch_size=eval_batch_size,
            dataloader_drop_last=drop_last,
            dataloader_num_workers=num_workers,
            dataloader_pin_memory=pin_memory,
            dataloader_persistent_workers=persistent_workers,
            dataloader_prefetch_factor=prefetch_factor,
            auto_find_batch_size=auto_find_batch_size,
            ignore_data_skip=ignore_data_skip,
            data_seed=sampler_seed,
        )
