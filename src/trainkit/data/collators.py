"""Batch collators: transformers' ``default_data_collator`` and the ``remove_unused_columns`` filter."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from trainkit.utils.logging import get_logger

__all__ = ["DataCollatorWithPadding", "RemoveColumnsCollator", "default_data_collator", "forward_parameters"]

logger = get_logger(__name__)


def _as_mapping(feature: Any) -> Mapping[str, Any]:
    if isinstance(feature, Mapping):
        return feature
    if hasattr(feature, "__dict__"):
        return vars(feature)
    raise TypeError(
        "default_data_collator needs each example to be a dict of tensors/numbers (the model is called with "
        f"model(**batch)); got {type(feature).__name__}. Pass a data_collator that builds such a dict."
    )


def _stack(key: str, values: list[Any]) -> torch.Tensor:
    first = values[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(values)
    if isinstance(first, np.ndarray):
        return torch.from_numpy(np.stack(values))
    try:
        return torch.tensor(values)
    except (ValueError, TypeError) as err:
        raise ValueError(f"default_data_collator cannot batch the values of {key!r}: {err}") from None


def default_data_collator(features: Sequence[Any]) -> dict[str, Any]:
    """Stack each key of a list of dict examples; ``label``/``label_ids`` become ``labels``."""
    rows = features if all(type(f) is dict for f in features) else [_as_mapping(f) for f in features]
    first = rows[0]
    batch: dict[str, Any] = {}
    for label_key in ("label", "label_ids"):
        if label_key in first and first[label_key] is not None:
            value = first[label_key]
            value = value.item() if isinstance(value, torch.Tensor) and value.ndim == 0 else value
            dtype = torch.long if isinstance(value, int) else torch.float
            if isinstance(value, (int, float)):
                batch["labels"] = torch.tensor([r[label_key] for r in rows], dtype=dtype)
            else:
                batch["labels"] = _stack(label_key, [r[label_key] for r in rows])
    for key, value in first.items():
        if key in ("label", "label_ids") or value is None or isinstance(value, str):
            continue
        batch[key] = _stack(key, [r[key] for r in rows])
    return batch


class DataCollatorWithPadding:
    """Pads with the processing class's ``pad`` (a tokenizer), as transformers' collator of that name."""

    def __init__(self, tokenizer: Any, padding: bool | str = True, pad_to_multiple_of: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.padding = padding
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = dict(
            self.tokenizer.pad(
                features, padding=self.padding, pad_to_multiple_of=self.pad_to_multiple_of, return_tensors="pt"
            )
        )
        for label_key in ("label", "label_ids"):
            if label_key in batch:
                batch["labels"] = batch.pop(label_key)
        return batch


def forward_parameters(model: torch.nn.Module) -> tuple[set[str], bool]:
    """The keyword names ``model.forward`` accepts, and whether it takes ``**kwargs``."""
    params = inspect.signature(model.forward).parameters
    names = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names, any(p.kind is p.VAR_KEYWORD for p in params.values())


class RemoveColumnsCollator:
    """Drops batch keys the model's forward does not accept (logged once), then collates."""

    def __init__(self, collator: Callable[[Any], Any], keep: set[str], description: str = "training") -> None:
        self.collator = collator
        self.keep = keep
        self.description = description
        self._logged = False
        self._seen_keys: frozenset[str] | None = None

    def _needs_filter(self, feature: Any) -> bool:
        """False when the examples' keys are all accepted (checked once per distinct key set)."""
        if type(feature) is not dict and not isinstance(feature, Mapping):
            return False
        keys = frozenset(feature)
        if keys == self._seen_keys:
            return False
        if keys <= self.keep:
            self._seen_keys = keys
            return False
        return True

    def _filter(self, feature: Any) -> Any:
        if not isinstance(feature, Mapping):
            return feature
        dropped = [k for k in feature if k not in self.keep]
        if dropped and not self._logged:
            self._logged = True
            logger.info(
                "The %s set has columns the model's forward does not accept; they are dropped: %s. "
                "(remove_unused_columns=True)",
                self.description,
                ", ".join(sorted(dropped)),
            )
        return {k: v for k, v in feature.items() if k in self.keep}

    def __call__(self, features: list[Any]) -> Any:
        if features and not self._needs_filter(features[0]) and not self._needs_filter(features[-1]):
            return self.collator(features)
        return self.collator([self._filter(f) for f in features])
