"""Model-side features of the training step: loss extraction, label smoothing, NEFTune, checkpointing."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = [
    "LabelSmoother",
    "accepts_num_items_in_batch",
    "activate_neftune",
    "enable_gradient_checkpointing",
    "extract_loss",
    "is_causal_lm",
]


def accepts_num_items_in_batch(model: nn.Module) -> bool:
    """Whether the model normalises its loss by a ``num_items_in_batch`` it receives.

    transformers models declare it with ``accepts_loss_kwargs``; other modules must name the
    parameter in ``forward``. A bare ``**kwargs`` is not taken as a promise (transformers#37766).
    """
    declared = getattr(model, "accepts_loss_kwargs", None)
    if declared is not None:
        return bool(declared)
    try:
        return "num_items_in_batch" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def extract_loss(outputs: Any, inputs: Mapping[str, Any]) -> torch.Tensor:
    """The loss of a model output (``outputs["loss"]`` or ``outputs[0]``), or an error saying what to return."""
    if type(outputs) is dict or isinstance(outputs, Mapping):
        loss = outputs.get("loss")
        if loss is not None:
            return loss
        keys = ", ".join(outputs.keys())
        raise ValueError(
            f"The model did not return a loss: its output has only the keys [{keys}]. It received the inputs "
            f"[{', '.join(inputs.keys())}]. Return a dict with 'loss' (or a tuple whose first element is the "
            "loss), computed from the labels in the batch; or override Trainer.compute_loss."
        )
    if isinstance(outputs, torch.Tensor) and outputs.ndim == 0:
        return outputs
    first = outputs[0] if isinstance(outputs, (tuple, list)) and outputs else None
    if isinstance(first, torch.Tensor) and first.ndim == 0:
        return first
    raise ValueError(
        f"The model did not return a loss (got {type(outputs).__name__}); it received the inputs "
        f"[{', '.join(inputs.keys())}]. Return a dict with 'loss' or a tuple whose first element is the scalar "
        "loss, computed from the labels in the batch; or override Trainer.compute_loss."
    )


def logits_of(outputs: Any) -> torch.Tensor:
    if isinstance(outputs, Mapping):
        return outputs["logits"]
    return outputs[0] if isinstance(outputs, (tuple, list)) else outputs


def is_causal_lm(model: nn.Module) -> bool:
    """Heuristic of transformers' causal-LM mapping: labels are shifted inside such models."""
    name = type(model).__name__
    return "CausalLM" in name or "LMHeadModel" in name


class LabelSmoother:
    """Label-smoothed cross entropy over the non-ignored labels (transformers' formula)."""

    def __init__(self, epsilon: float = 0.1, ignore_index: int = -100) -> None:
        self.epsilon = epsilon
        self.ignore_index = ignore_index

    def __call__(self, outputs: Any, labels: torch.Tensor, shift_labels: bool = False) -> torch.Tensor:
        logits = logits_of(outputs)
        if shift_labels:
            logits = logits[..., :-1, :].contiguous()
            labels = labels[..., 1:].contiguous()
        log_probs = -nn.functional.log_softmax(logits.float(), dim=-1)
        if labels.dim() == log_probs.dim() - 1:
            labels = labels.unsqueeze(-1)
        padding = labels.eq(self.ignore_index)
        nll = log_probs.gather(dim=-1, index=torch.clamp(labels, min=0)).masked_fill(padding, 0.0)
        smoothed = log_probs.sum(dim=-1, keepdim=True).masked_fill(padding, 0.0)
        active = padding.numel() - padding.long().sum()
        nll_loss = nll.sum() / active
        smoothed_loss = smoothed.sum() / (active * log_probs.shape[-1])
        return (1 - self.epsilon) * nll_loss + self.epsilon * smoothed_loss


def _input_embeddings(model: nn.Module) -> nn.Module:
    getter = getattr(model, "get_input_embeddings", None)
    if callable(getter):
        return getter()
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            return module
    raise ValueError(
        "neftune_noise_alpha needs input embeddings: the model has no get_input_embeddings() and no nn.Embedding"
    )


def activate_neftune(model: nn.Module, alpha: float) -> Any:
    """Add NEFTune noise (uniform, scaled by alpha / sqrt(seq_len * dim)) to the embeddings in training mode."""

    def hook(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        if not module.training:
            return output
        dims = output.size(1) * output.size(2)
        magnitude = alpha / torch.sqrt(torch.tensor(float(dims)))
        return output + torch.zeros_like(output).uniform_(-magnitude.item(), magnitude.item())

    return _input_embeddings(model).register_forward_hook(hook)


def enable_gradient_checkpointing(model: nn.Module, kwargs: dict[str, Any] | None) -> None:
    """Turn on activation checkpointing through the model's own ``gradient_checkpointing_enable``."""
    enable = getattr(model, "gradient_checkpointing_enable", None)
    if not callable(enable):
        raise ValueError(
            f"gradient_checkpointing=True, but {type(model).__name__} has no gradient_checkpointing_enable() "
            "method; add one (for example wrapping blocks with torch.utils.checkpoint) or turn the option off."
        )
    enable(gradient_checkpointing_kwargs=kwargs or {"use_reentrant": True})
