"""The fine-tuning methods the benchmarks compare, each built on a fresh base model the same way.

``METHODS`` maps a name to a builder ``(base_model) -> model to train``; ``deployed`` gives what each
method ships for inference. All methods train the task head; what else they train:

- ``full``: every weight.
- ``lora``: PEFT LoRA, r = 8 on the attention query and value projections.
- ``layernorm``: PEFT LayerNorm tuning (every LayerNorm).
- ``bitfit``: every bias.
- ``side_kept``: MDPD's ladder side network alone, kept at inference (LST): no distillation, no fading.
- ``mdpd``: MDPD with its defaults (``fading="checkpointed"``), faded to the base architecture.
- ``mdpd_backprop`` / ``mdpd_head_only``: MDPD with ``fading="backprop"`` (the paper as written) /
  ``"head_only"`` (how the backbone's LayerNorms and head get their gradients; see ``MDPDConfig.fading``).
- ``mdpd_last_1`` / ``mdpd_last_2``: MDPD fading only the LayerNorms of the last 1 / 2 encoder layers
  (``MDPDConfig.fading_layers``), so fading's backward stops there.

``ABLATIONS`` are MDPD variants for the accuracy suite only (the paper's Table 5 and Fig. A, in
miniature): one distillation path switched off, or another mask ratio lambda.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from peft import LNTuningConfig, LoraConfig, get_peft_model
from torch import nn

from mdpd_peft import MDPDConfig

HEAD_NAMES = ("classifier", "score")


def _full(model: nn.Module) -> nn.Module:
    return model.requires_grad_(True)


def _lora(model: nn.Module) -> nn.Module:
    return get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16, target_modules=["query", "value"]))


def _layernorm(model: nn.Module) -> nn.Module:
    return get_peft_model(model, LNTuningConfig(task_type="SEQ_CLS", target_modules=["LayerNorm"]))


def _bitfit(model: nn.Module) -> nn.Module:
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.endswith("bias") or name.split(".")[0] in HEAD_NAMES)
    return model


def _side_kept(model: nn.Module) -> nn.Module:
    config = MDPDConfig(
        task_type="SEQ_CLS",
        fading="head_only",  # the backbone's norms stay frozen: nothing backpropagates into the backbone
        shallow_loss_weight=0.0,
        deep_loss_weight=0.0,
        logits_loss_weight=0.0,
        backbone_task_loss_weight=0.0,
        eval_path="side",
    )
    return get_peft_model(model, config)


def _mdpd(model: nn.Module, **config) -> nn.Module:
    return get_peft_model(model, MDPDConfig(task_type="SEQ_CLS", **config))


METHODS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "full": _full,
    "lora": _lora,
    "layernorm": _layernorm,
    "bitfit": _bitfit,
    "side_kept": _side_kept,
    "mdpd": _mdpd,
    "mdpd_backprop": partial(_mdpd, fading="backprop"),
    "mdpd_head_only": partial(_mdpd, fading="head_only"),
    "mdpd_last_1": partial(_mdpd, fading_layers=1),
    "mdpd_last_2": partial(_mdpd, fading_layers=2),
}

ABLATIONS: dict[str, Callable[[nn.Module], nn.Module]] = {
    # S -> B only: the side network learns from its task loss alone, no feature distillation.
    "mdpd_logits_only": partial(_mdpd, shallow_loss_weight=0.0, deep_loss_weight=0.0),
    # B -> S only: no logits distillation; the backbone learns from its own task loss.
    "mdpd_features_only": partial(_mdpd, logits_loss_weight=0.0),
    "mdpd_mask_0.25": partial(_mdpd, mask_ratio=0.25),
    "mdpd_mask_0.75": partial(_mdpd, mask_ratio=0.75),
}


def deployed(name: str, trained: nn.Module) -> nn.Module:
    """What the method ships: the side-kept model as trained (backbone + side network); every other
    method ships the base architecture (LoRA and LayerNorm tuning merged, MDPD faded)."""
    if name == "side_kept":
        return trained.eval()
    if hasattr(trained, "merge_and_unload"):
        return trained.merge_and_unload().eval()
    return trained.eval()


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def optimizer_for(model: nn.Module, learning_rate: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
