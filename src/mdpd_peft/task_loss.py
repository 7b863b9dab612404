"""The supervised task loss on the side network's logits, following transformers' own heads.

MDPD trains the side network with the task loss (the side network's output is "the final output of
the model during the training stage", section 3.1); the backbone head learns from Eq. 3 and from the
wrapped model's own loss (``MDPDConfig.backbone_task_loss_weight``). Which loss
applies is decided the way transformers' ``*ForSequenceClassification`` / ``*ForTokenClassification``
/ ``*ForQuestionAnswering`` heads decide it, so the side head is trained on the same objective.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sequence_problem_type(config, labels: torch.Tensor) -> str:
    """transformers' rule: regression for one label, single-label for integer labels, else multi-label."""
    if getattr(config, "problem_type", None):
        return config.problem_type
    if config.num_labels == 1:
        return "regression"
    if labels.dtype in (torch.long, torch.int):
        return "single_label_classification"
    return "multi_label_classification"


def side_task_loss(logits: torch.Tensor, targets: dict[str, torch.Tensor], config, label_smoothing: float = 0.0) -> torch.Tensor | None:
    """Task loss of side logits (B, C) or (B, N, C) against the labels the model was called with; None without labels.
    ``label_smoothing`` applies to the cross-entropy of single-label and token classification."""
    if "start_positions" in targets and "end_positions" in targets:
        ignored = logits.shape[1]
        losses = [
            F.cross_entropy(logits[..., i], targets[name].clamp(0, ignored), ignore_index=ignored)
            for i, name in enumerate(("start_positions", "end_positions"))
        ]
        return (losses[0] + losses[1]) / 2
    labels = targets.get("labels")
    if labels is None:
        return None
    if logits.dim() == 3:  # token classification; -100 marks ignored tokens
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1).to(logits.device), label_smoothing=label_smoothing)
    problem = sequence_problem_type(config, labels)
    if problem == "regression":
        return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype).view(-1))
    if problem == "single_label_classification":
        return F.cross_entropy(logits, labels.view(-1), label_smoothing=label_smoothing)
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
