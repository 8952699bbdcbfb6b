"""The one place that maps TrainingArguments (strings and flags) to component objects.

Only this module knows which combinations are valid (DeepSpeed brings its own precision
handling, FSDP needs sharded checkpoints, apex refuses bf16, ...). Objects passed to the
Trainer (``strategy=``, ``precision=``, ``checkpoint_io=``) override what the arguments say.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from trainkit.args import TrainingArguments
    from trainkit.checkpoint.io import CheckpointIO
    from trainkit.precision.base import Precision
    from trainkit.strategies.base import Strategy

__all__ = ["Components", "build_checkpoint_io", "build_components", "build_precision"]


@dataclass
class Components:
    strategy: Strategy
    precision: Precision
    checkpoint_io: CheckpointIO | None


def build_precision(args: TrainingArguments, device: torch.device) -> Precision:
    """The training Precision for ``args`` on ``device`` (fp32 with the tf32 flag until issue 4)."""
    from trainkit.precision.base import Precision

    return Precision(tf32=args.tf32)


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
    """Strategy, precision and checkpoint IO for ``args``; given objects win over the arguments."""
    from trainkit.strategies.single_device import SingleDeviceStrategy, default_device

    if strategy is None:
        strategy = SingleDeviceStrategy(device=default_device(args.use_cpu))
    if precision is None:
        precision = build_precision(args, strategy.root_device)
    strategy.precision = precision
    if checkpoint_io is not None:
        strategy.checkpoint_io = checkpoint_io
    return Components(strategy=strategy, precision=precision, checkpoint_io=checkpoint_io)
