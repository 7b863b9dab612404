"""Checks of a batch before the backbone runs on it.

transformers fails on these deep inside the model, with messages that name no argument (an index error in
the embedding for an out-of-vocabulary id, a shape error in the position table for a long sequence), or
not at all: float labels switch a classifier's ``config.problem_type`` to multi-label for good, and the next
batch fails in a loss the user never chose. The tuner's forward pre-hook runs these checks first.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn

from .side_networks.base import exporting_graph

IGNORED_LABEL = -100  # the label transformers' losses skip (padding tokens, special tokens)


@dataclass(frozen=True)
class BatchLimits:
    """What a batch must fit: the vocabulary and the position table (None where the model has none)."""

    vocab_size: int | None
    max_tokens: int | None

    @classmethod
    def of(cls, model: nn.Module) -> "BatchLimits":
        try:
            embeddings = model.get_input_embeddings()
        except (AttributeError, NotImplementedError):  # vision models (CLIPForImageClassification raises)
            embeddings = None
        vocab_size = embeddings.num_embeddings if isinstance(embeddings, nn.Embedding) else None
        max_tokens = None
        for name, module in model.named_modules():
            if name.endswith("position_embeddings") and isinstance(module, nn.Embedding):
                # Positions start after the padding index where there is one (RoBERTa, MPNet: padding_idx + 1).
                offset = module.padding_idx + 1 if module.padding_idx is not None else 0
                max_tokens = module.num_embeddings - offset
                break
        return cls(vocab_size, max_tokens)


def call_arguments(signature: inspect.Signature, args: tuple, kwargs: dict) -> dict:
    """A forward call's arguments by name, those passed through ``**kwargs`` included (a forward hook sees the call's
    ``args`` and ``kwargs``); its keyword arguments alone when they do not bind to ``signature``."""
    try:
        arguments = signature.bind_partial(*args, **kwargs).arguments
    except TypeError:
        return dict(kwargs)
    return {**arguments.get("kwargs", {}), **{name: value for name, value in arguments.items() if name != "kwargs"}}


def check_batch(arguments: dict, limits: BatchLimits, config) -> None:
    """Raise a ValueError naming the argument and what it must be, for a batch the model would fail on."""
    for name in ("input_ids", "inputs_embeds", "pixel_values"):
        inputs = arguments.get(name)
        if isinstance(inputs, torch.Tensor) and inputs.dim() > 0 and inputs.shape[0] == 0:
            raise ValueError(f"{name} has batch size 0 (shape {tuple(inputs.shape)}): pass at least one example.")
    for name in ("input_ids", "inputs_embeds"):
        inputs = arguments.get(name)
        if limits.max_tokens is not None and isinstance(inputs, torch.Tensor) and inputs.dim() >= 2 and inputs.shape[1] > limits.max_tokens:
            raise ValueError(
                f"{name} has {inputs.shape[1]} tokens per sequence, but the model's position table holds {limits.max_tokens}: "
                f"truncate the batch (tokenizer(..., truncation=True, max_length={limits.max_tokens}))."
            )
    input_ids = arguments.get("input_ids")
    # The ids' values cannot be read while a graph is exported (the check would be a branch fixed in the graph).
    if limits.vocab_size is not None and isinstance(input_ids, torch.Tensor) and input_ids.numel() and not exporting_graph():
        low, high = (int(v) for v in torch.aminmax(input_ids))
        if low < 0 or high >= limits.vocab_size:
            raise ValueError(
                f"input_ids must be token ids in [0, {limits.vocab_size - 1}] (the model's vocabulary); this batch holds ids in "
                f"[{low}, {high}]: tokenize with the model's own tokenizer."
            )
    check_labels(arguments.get("labels"), config)


def check_labels(labels, config) -> None:
    """Class labels must be integer class ids in [0, num_labels), or -100 (ignored); float labels only as regression
    (``num_labels=1``) or multi-label targets of shape (batch, num_labels)."""
    num_labels = getattr(config, "num_labels", None)
    if not isinstance(labels, torch.Tensor) or not num_labels or num_labels < 2 or not labels.numel():
        return
    if labels.is_floating_point():
        if labels.dim() == 0 or labels.shape[-1] != num_labels:
            raise ValueError(
                f"labels are {labels.dtype} of shape {tuple(labels.shape)}, but the model has num_labels={num_labels}: pass class "
                f"ids as integers (labels.long()), or multi-label targets as floats of shape (batch, {num_labels}) with "
                "problem_type='multi_label_classification'."
            )
        return
    if getattr(config, "problem_type", None) == "multi_label_classification":
        return
    real = labels[labels != IGNORED_LABEL]
    if real.numel():
        low, high = (int(v) for v in torch.aminmax(real))
        if low < 0 or high >= num_labels:
            raise ValueError(
                f"labels must be class ids in [0, {num_labels - 1}] (num_labels={num_labels}) or {IGNORED_LABEL} (ignored); "
                f"this batch holds labels in [{low}, {high}]."
            )
