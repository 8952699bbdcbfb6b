"""Which checkpoints to delete, and which metric is best: pure functions of plain values.

Rotation follows transformers' ``save_total_limit``: the newest checkpoints are kept, the
best one is never deleted and counts towards the limit, and with ``save_total_limit=1`` a best
checkpoint different from the latest is kept beside it (two folders). Unlike transformers it
only ever deletes checkpoints this run wrote (``written_steps``), and only those count towards
the limit: folders of another run in the same ``output_dir`` are left alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = [
    "default_greater_is_better",
    "is_better_metric",
    "select_checkpoints_to_delete",
    "select_checkpoints_to_delete_at_end",
]


def select_checkpoints_to_delete(
    written_steps: Iterable[int],
    present_steps: Iterable[int],
    limit: int | None,
    best_step: int | None,
    latest_step: int,
) -> list[int]:
    """Steps whose checkpoints to delete after saving ``latest_step``, oldest first.

    ``written_steps``: checkpoints this run wrote; ``present_steps``: complete ones on disk;
    ``limit``: ``save_total_limit`` (None or <= 0 keeps everything); ``best_step``: the best
    checkpoint's step, if any. The latest and the best are always kept.
    """
    if limit is None or limit <= 0:
        return []
    ours = sorted(set(written_steps) & set(present_steps))
    protected = {latest_step} if best_step is None else {latest_step, best_step}
    others = [step for step in ours if step not in protected]
    room = max(0, limit - sum(1 for step in ours if step in protected))
    return others[: max(0, len(others) - room)]


def select_checkpoints_to_delete_at_end(
    written_steps: Iterable[int], present_steps: Iterable[int], limit: int | None, best_step: int | None
) -> list[int]:
    """transformers' end-of-training cleanup: with ``save_total_limit=1`` only the best checkpoint stays."""
    present = set(present_steps)
    if limit != 1 or best_step is None or best_step not in present:
        return []
    return sorted(step for step in set(written_steps) & present if step != best_step)


def default_greater_is_better(metric_for_best_model: str | None, greater_is_better: bool | None) -> bool:
    """transformers' default: a metric whose name ends in "loss" is better when smaller."""
    if greater_is_better is not None:
        return greater_is_better
    return metric_for_best_model is not None and not metric_for_best_model.endswith("loss")


def is_better_metric(value: float, best: float | None, greater_is_better: bool) -> bool:
    """Whether ``value`` strictly improves on ``best`` (a NaN is never better; ties are not improvements)."""
    if math.isnan(value):
        return False
    if best is None:
        return True
    return value > best if greater_is_better else value < best
