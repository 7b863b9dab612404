"""The fine-tuning methods the benchmarks compare, each built on a fresh base model the same way.

``METHODS`` maps a name to a builder ``(base_model) -> model to train``; ``deployed`` gives what each
method ships for inference. All methods train the task head; what else they train:

- ``full``: every weight.
- ``lora``: PEFT LoRA, r = 8 on the attention query and value projections (``query``/``value``, ViT's ``q_proj``/``v_proj``).
- ``layernorm``: PEFT LayerNorm tuning (every LayerNorm, found by type: BERT's ``LayerNorm``, ViT's and DINOv2's own names).
- ``lora_checkpointed`` / ``layernorm_checkpointed``: the same with transformers' gradient checkpointing
  (non-reentrant), as ``TrainingArguments(gradient_checkpointing=True)`` turns it on: what an informed user picks
  to save memory. Same gradients, so the same accuracy; less memory, one more backbone forward per step.
- ``bitfit``: every bias.
- ``side_kept``: MDPD's ladder side network alone, kept at inference (LST): no distillation, no fading.
- ``mdpd``: MDPD with its defaults (``fading="checkpointed"``), faded to the base architecture.
- ``mdpd_backprop`` / ``mdpd_head_only``: MDPD with ``fading="backprop"`` (the paper as written) /
  ``"head_only"`` (how the backbone's LayerNorms and head get their gradients; see ``MDPDConfig.fading``).
- ``mdpd_last_1`` / ``mdpd_last_2``: MDPD fading only the LayerNorms of the last 1 / 2 encoder layers
  (``MDPDConfig.fading_layers``), so fading's backward stops there.
- ``mdpd_every_2`` / ``_3`` / ``_4``: MDPD whose LayerNorms learn on every 2nd / 3rd / 4th step
  (``MDPDConfig.fading_interval``); between those, the backbone runs without autograd.
- ``mdpd_block_local``: MDPD whose layers' LayerNorms each learn from a probe of their own output
  (``fading="block_local"``), so no backward crosses more than one layer.

``SIDE_NETWORK_METHODS`` are the other side networks of ``MDPDConfig.side_network``, each
kept (``side_kept_<network>``, like ``side_kept``) and faded (``mdpd_<network>``, MDPD's defaults
otherwise), and ``dtl`` / ``dtl+``: DTL's compact side network as its own PEFT method, kept at inference.
Every builder works on text classifiers and on ViT image classifiers (``--model vit-base``).

``ABLATIONS`` are MDPD variants for the accuracy suite only: the paper's Table 5 and Fig. A in
miniature (one distillation path switched off, or another mask ratio lambda), and ``mdpd_last_3`` to
``_5``, fading the last 3 to 5 layers' LayerNorms.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from peft import LNTuningConfig, LoraConfig, get_peft_model
from torch import nn

from mdpd_peft import DTLConfig, MDPDConfig
from mdpd_peft.architecture import is_norm

HEAD_NAMES = ("classifier", "score")


def task_settings(model: nn.Module) -> dict:
    """PEFT's sequence-classification wrapper for text; for a ViT classifier, no wrapper and its head saved."""
    if model.main_input_name == "pixel_values":
        return {"modules_to_save": ["classifier"]}
    return {"task_type": "SEQ_CLS"}


def _full(model: nn.Module) -> nn.Module:
    return model.requires_grad_(True)


def _lora(model: nn.Module) -> nn.Module:
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = ["query", "value"] if "query" in names else ["q_proj", "v_proj"]  # BERT's names; transformers 5's ViT's
    return get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=targets, **task_settings(model)))


def _layernorm(model: nn.Module) -> nn.Module:
    # Every LayerNorm by its own name: BERT's "LayerNorm"; ViT's "layernorm_before"/"_after"; DINOv2's "norm1"/"norm2".
    targets = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if is_norm(module)})
    return get_peft_model(model, LNTuningConfig(target_modules=targets, **task_settings(model)))


def _checkpointed(build: Callable[[nn.Module], nn.Module], model: nn.Module) -> nn.Module:
    """``build`` on a model that recomputes each layer in backward (non-reentrant gradient checkpointing)."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return build(model)


def _bitfit(model: nn.Module) -> nn.Module:
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.endswith("bias") or name.split(".")[0] in HEAD_NAMES)
    return model


def _side_kept(model: nn.Module, side_network: str = "ladder", **settings) -> nn.Module:
    config = MDPDConfig(
        side_network=side_network,
        **settings,
        fading="head_only",  # the backbone's norms stay frozen: nothing backpropagates into the backbone
        shallow_loss_weight=0.0,
        deep_loss_weight=0.0,
        logits_loss_weight=0.0,
        backbone_task_loss_weight=0.0,
        eval_path="side",
        **task_settings(model),
    )
    return get_peft_model(model, config)


def _mdpd(model: nn.Module, **config) -> nn.Module:
    return get_peft_model(model, MDPDConfig(**config, **task_settings(model)))


class StoredSideLogitsFade(nn.Module):
    """A step of MDPD's fade phase on stored side logits (``MDPDTrainer(state_cache=...)``'s default): the side network
    and the distillation modules frozen, every batch carrying the side network's logits (drawn at random here: a
    step's cost does not depend on their values). It ships what MDPD ships (``merge_and_unload``)."""

    def __init__(self, peft_model: nn.Module):
        super().__init__()
        self.peft_model = peft_model
        for module in (peft_model.base_model.mdpd_side, peft_model.base_model.mdpd_distill):
            module.requires_grad_(False)

    def forward(self, **batch):
        inputs = next(iter(batch.values()))
        logits = torch.randn(inputs.shape[0], self.peft_model.config.num_labels, device=inputs.device)
        return self.peft_model(**batch, mdpd_side_logits=logits)

    def merge_and_unload(self) -> nn.Module:
        return self.peft_model.merge_and_unload()


def _dtl(model: nn.Module, conv_kernel: int | None = None) -> nn.Module:
    return get_peft_model(model, DTLConfig(conv_kernel=conv_kernel, **task_settings(model)))


METHODS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "full": _full,
    "lora": _lora,
    "layernorm": _layernorm,
    "lora_checkpointed": partial(_checkpointed, _lora),
    "layernorm_checkpointed": partial(_checkpointed, _layernorm),
    "bitfit": _bitfit,
    "side_kept": _side_kept,
    "mdpd": _mdpd,
    "mdpd_backprop": partial(_mdpd, fading="backprop"),
    "mdpd_head_only": partial(_mdpd, fading="head_only"),
    **{f"mdpd_last_{k}": partial(_mdpd, fading_layers=k) for k in (1, 2)},
    **{f"mdpd_every_{n}": partial(_mdpd, fading_interval=n) for n in (2, 3, 4)},
    "mdpd_block_local": partial(_mdpd, fading="block_local"),
    "mdpd_fade_stored": lambda model: StoredSideLogitsFade(_mdpd(model)),
}

SIDE_NETWORK_METHODS: dict[str, Callable[[nn.Module], nn.Module]] = {
    **{f"side_kept_{network}": partial(_side_kept, side_network=network) for network in ("unipt", "sherl", "dtl", "dtl+")},
    **{f"mdpd_{network}": partial(_mdpd, side_network=network) for network in ("unipt", "sherl", "dtl", "dtl+")},
    "dtl": _dtl,
    "dtl+": partial(_dtl, conv_kernel=3),
}

ABLATIONS: dict[str, Callable[[nn.Module], nn.Module]] = {
    # fading_layers k = 3-5 (of MiniLM's 6), between mdpd_last_2 and every layer
    **{f"mdpd_last_{k}": partial(_mdpd, fading_layers=k) for k in (3, 4, 5)},
    # S -> B only: the side network learns from its task loss alone, no feature distillation.
    "mdpd_logits_only": partial(_mdpd, shallow_loss_weight=0.0, deep_loss_weight=0.0),
    # B -> S only: no logits distillation; the backbone learns from its own task loss.
    "mdpd_features_only": partial(_mdpd, logits_loss_weight=0.0),
    # No distillation at all: the side network trains beside the backbone but teaches it nothing, so the faded
    # model is LayerNorm tuning; its gap to "mdpd" is what the distillation does (the ablation).
    "mdpd_no_distillation": partial(_mdpd, shallow_loss_weight=0.0, deep_loss_weight=0.0, logits_loss_weight=0.0),
    "mdpd_mask_0.25": partial(_mdpd, mask_ratio=0.25),
    "mdpd_mask_0.75": partial(_mdpd, mask_ratio=0.75),
}


def deployed(name: str, trained: nn.Module) -> nn.Module:
    """What the method ships: side-kept models as trained (backbone + side network, DTL's too); every other
    method ships the base architecture (LoRA and LayerNorm tuning merged, MDPD faded)."""
    if name.startswith("side_kept") or name.startswith("dtl"):
        return trained.eval()
    if hasattr(trained, "merge_and_unload"):
        return trained.merge_and_unload().eval()
    return trained.eval()


def steps_per_cycle(model: nn.Module) -> int:
    """How many training steps one repetition of the method's work spans: ``fading_interval`` for MDPD, else 1."""
    config = getattr(model, "peft_config", {}).get("default")
    return getattr(config, "fading_interval", 1)


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def optimizer_for(model: nn.Module, learning_rate: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
