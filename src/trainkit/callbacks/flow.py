"""When to log, evaluate, save and stop: transformers' ``DefaultFlowCallback`` rules as pure functions.

``decide_at_step_end`` and ``decide_at_epoch_end`` are functions of plain values (the
arguments' strategies and the state's resolved step intervals), testable without a model.
One addition to transformers 4.x: when training ends between two intervals, the last steps
are still logged and evaluated (transformers only fixed the final evaluation in 2026).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trainkit.callbacks.base import TrainerCallback
from trainkit.state import TrainerControl, TrainerState

__all__ = ["DefaultFlowCallback", "FlowDecision", "decide_at_epoch_end", "decide_at_step_end"]


@dataclass(slots=True)
class FlowDecision:
    log: bool = False
    evaluate: bool = False
    save: bool = False
    stop: bool = False


def _every(step: int, interval: float) -> bool:
    return interval > 0 and step % int(interval) == 0


def decide_at_step_end(
    *,
    global_step: int,
    max_steps: int,
    logging_strategy: str,
    logging_steps: float,
    logging_first_step: bool,
    eval_strategy: str,
    eval_steps: float | None,
    eval_delay: float | None,
    save_strategy: str,
    save_steps: float,
) -> FlowDecision:
    """What to do after optimizer step ``global_step`` (intervals already resolved from ratios)."""
    stop = global_step >= max_steps
    log = logging_strategy == "steps" and (_every(global_step, logging_steps) or stop)
    log = log or (global_step == 1 and logging_first_step)
    evaluate = (
        eval_strategy == "steps" and (eval_delay or 0) <= global_step and (_every(global_step, eval_steps or 0) or stop)
    )
    save = save_strategy == "steps" and (_every(global_step, save_steps) or stop)
    return FlowDecision(log=log, evaluate=evaluate, save=save, stop=stop)


def decide_at_epoch_end(
    *, epoch: float, logging_strategy: str, eval_strategy: str, eval_delay: float | None, save_strategy: str
) -> FlowDecision:
    """What to do at the end of an epoch (``epoch`` is the state's fractional epoch)."""
    return FlowDecision(
        log=logging_strategy == "epoch",
        evaluate=eval_strategy == "epoch" and (eval_delay or 0) <= epoch,
        save=save_strategy == "epoch",
    )


def _apply(control: TrainerControl, decision: FlowDecision) -> TrainerControl:
    control.should_log = control.should_log or decision.log
    control.should_evaluate = control.should_evaluate or decision.evaluate
    control.should_save = control.should_save or decision.save
    control.should_training_stop = control.should_training_stop or decision.stop
    return control


class DefaultFlowCallback(TrainerCallback):
    """Sets the control flags for logging, evaluation, saving and stopping."""

    def on_step_end(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> Any:
        decision = decide_at_step_end(
            global_step=state.global_step,
            max_steps=state.max_steps,
            logging_strategy=args.logging_strategy,
            logging_steps=state.logging_steps,
            logging_first_step=args.logging_first_step,
            eval_strategy=args.eval_strategy,
            eval_steps=state.eval_steps,
            eval_delay=args.eval_delay,
            save_strategy=args.save_strategy,
            save_steps=state.save_steps,
        )
        return _apply(control, decision)

    def on_epoch_end(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> Any:
        decision = decide_at_epoch_end(
            epoch=state.epoch or 0.0,
            logging_strategy=args.logging_strategy,
            eval_strategy=args.eval_strategy,
            eval_delay=args.eval_delay,
            save_strategy=args.save_strategy,
        )
        return _apply(control, decision)
