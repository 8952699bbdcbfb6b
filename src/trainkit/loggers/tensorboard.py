"""``TensorBoardCallback``: every logged number as a TensorBoard scalar, and the arguments as hparams."""

from __future__ import annotations

from typing import Any

from trainkit.callbacks.base import TrainerCallback
from trainkit.state import TrainerControl, TrainerState
from trainkit.utils.logging import get_logger

__all__ = ["TensorBoardCallback", "rewrite_logs"]

logger = get_logger(__name__)


def rewrite_logs(logs: dict[str, Any]) -> dict[str, Any]:
    """transformers' tag names: ``eval_x`` -> ``eval/x``, ``test_x`` -> ``test/x``, others ``train/x``."""
    out = {}
    for key, value in logs.items():
        for prefix in ("eval", "test"):
            if key.startswith(prefix + "_"):
                out[f"{prefix}/{key[len(prefix) + 1 :]}"] = value
                break
        else:
            out[f"train/{key}"] = value
    return out


class TensorBoardCallback(TrainerCallback):
    """Writes event files in ``args.logging_dir`` (the writer is imported only when training starts)."""

    def __init__(self, tb_writer: Any = None) -> None:
        self.tb_writer = tb_writer
        self._warned: set[str] = set()

    def _init_writer(self, args: Any) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.tb_writer = SummaryWriter(log_dir=args.logging_dir)

    def on_train_begin(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> Any:
        if not state.is_world_process_zero:
            return
        if self.tb_writer is None:
            self._init_writer(args)
        self.tb_writer.add_text("args", args.to_json_string())
        model = kwargs.get("model")
        config = getattr(model, "config", None)
        if config is not None and hasattr(config, "to_json_string"):
            self.tb_writer.add_text("model_config", config.to_json_string())
        self.tb_writer.add_hparams(args.to_sanitized_dict(), metric_dict={}, run_name=".")

    def on_log(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> Any:
        if not state.is_world_process_zero:
            return
        if self.tb_writer is None:
            self._init_writer(args)
        for tag, value in rewrite_logs(kwargs.get("logs") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.tb_writer.add_scalar(tag, value, state.global_step)
            elif tag not in self._warned:
                self._warned.add(tag)
                logger.warning("TensorBoard: %s=%r is not a number; it is not logged.", tag, value)
        self.tb_writer.flush()

    def on_train_end(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> Any:
        if self.tb_writer is not None:
            self.tb_writer.close()
            self.tb_writer = None
