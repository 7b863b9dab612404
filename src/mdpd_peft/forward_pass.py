"""One MDPD training pass, as data flows: capture the backbone's states -> run the side network -> the losses.

The tuner's hooks (``hooks.py``) fill a ``ForwardCapture`` during the wrapped model's forward (the states through
``capture.BackboneCapture``); this module holds what happens to it: the side pass (side network, side task loss,
feature distillation, Eq. 1-7) and the backbone's terms (Eq. 3's logits distillation and our backbone task loss),
with the small helpers that read and rewrite layer calls. Training on cached states enters at ``side_pass`` with
``BackboneStates`` rebuilt from a collated batch (``cached_passes.py``).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers.utils import ModelOutput

from .config import MDPDConfig
from .distillation import DualPathDistiller, logits_distillation_loss
from .layer import MDPDLayer
from .side_networks import BackboneStates, SideNetwork
from .task_loss import side_task_loss

TARGET_ARGUMENTS = ("labels", "start_positions", "end_positions")  # the task targets a forward (or a cache) carries
SIDE_LOGITS_ARGUMENT = "mdpd_side_logits"  # stored side logits (B, C) a fade-phase forward may carry: see ``stored_side_pass``


@dataclass
class ForwardCapture:
    """What one MDPD forward pass carries besides the backbone's states (which ``capture.BackboneCapture`` records)."""

    attention_mask: torch.Tensor | None
    targets: dict[str, torch.Tensor]
    local_losses: list[torch.Tensor] = field(default_factory=list)  # fading="block_local": each layer's, detached
    stored_side_logits: torch.Tensor | None = None  # (B, C) given with the batch: no state is recorded, no side network runs

    @property
    def records_states(self) -> bool:
        return self.stored_side_logits is None


@dataclass
class SidePass:
    """The side path's result on one batch: its logits, its unweighted loss terms and their weighted sum."""

    logits: torch.Tensor | None  # (B, C) or (B, N, C); None without a task head
    losses: dict[str, torch.Tensor]  # "task", "shallow", "deep" (those computed)
    loss: torch.Tensor


# ------------------------------------------------------------------------------------------ layer calls


def layer_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden states an encoder layer is called with (positionally or as ``hidden_states=``)."""
    if args:
        return args[0]
    return kwargs.get("hidden_states", next(v for v in kwargs.values() if isinstance(v, torch.Tensor)))


def layer_output(output) -> torch.Tensor:
    """The hidden states an encoder layer returns (a tensor, or the first item of a tuple)."""
    return output if isinstance(output, torch.Tensor) else output[0]


def with_layer_output(output, hidden: torch.Tensor):
    """A layer's return value with its hidden states replaced by ``hidden``."""
    return hidden if isinstance(output, torch.Tensor) else (hidden, *output[1:])


def with_layer_input(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    """The arguments of a layer call with its hidden states replaced by ``hidden``."""
    if args:
        return (hidden, *args[1:]), kwargs
    name = "hidden_states" if "hidden_states" in kwargs else next(k for k, v in kwargs.items() if isinstance(v, torch.Tensor))
    return args, {**kwargs, name: hidden}


@contextmanager
def as_loaded(layer: nn.Module):
    """Run ``layer`` as it was loaded: its adapter copies bypassed and no activation checkpointing (a
    recomputation in backward would run after this context has closed, with the copies)."""
    wrapped = [m for m in layer.modules() if isinstance(m, MDPDLayer)]
    checkpointed = [m for m in layer.modules() if getattr(m, "gradient_checkpointing", False)]
    disabled = [m._disable_adapters for m in wrapped]
    for module in wrapped:
        module._disable_adapters = True
    for module in checkpointed:
        module.gradient_checkpointing = False
    try:
        yield layer
    finally:
        for module, was_disabled in zip(wrapped, disabled):
            module._disable_adapters = was_disabled
        for module in checkpointed:
            module.gradient_checkpointing = True


def real_tokens(attention_mask: torch.Tensor | None, batch: int, tokens: int, device: torch.device) -> torch.Tensor:
    """(B, N) bool of real tokens; every token is real when the model got no 2-D padding mask of that shape."""
    if attention_mask is not None and tuple(attention_mask.shape) == (batch, tokens):
        return attention_mask.to(device=device).bool()
    return torch.ones(batch, tokens, dtype=torch.bool, device=device)


# ----------------------------------------------------------------------------------------------- logits


def backbone_logits_of(output: ModelOutput) -> torch.Tensor | None:
    """Y_B: ``logits`` (B, C) or (B, N, C), or start/end logits stacked to (B, N, 2); None for feature extraction."""
    if output.get("logits") is not None:
        return output["logits"]
    if output.get("start_logits") is not None:
        return torch.stack([output["start_logits"], output["end_logits"]], dim=-1)
    return None


def write_logits(output: ModelOutput, logits: torch.Tensor) -> None:
    if output.get("logits") is not None:
        output["logits"] = logits
    else:
        output["start_logits"], output["end_logits"] = logits[..., 0], logits[..., 1]


# ----------------------------------------------------------------------------------------------- losses


def side_pass(
    side: SideNetwork,
    distiller: DualPathDistiller,
    config: MDPDConfig,
    states: BackboneStates,
    targets: dict[str, torch.Tensor],
    model_config,
    per_token: bool,
    logits_dtype: torch.dtype | None,
    is_vision: bool,
    distil: bool = True,
) -> SidePass:
    """The side network on ``states``, its task loss and the feature distillation (Eq. 1-7): the terms that
    train the side network, shared by the live pass (hooks) and training on cached states."""
    side_output = side(states, per_token=None if logits_dtype is None else per_token)  # the head runs inside (FSDP)
    side_logits = None if side_output.logits is None else side_output.logits.to(logits_dtype)
    # A term whose weight is 0 is not computed at all: even times 0 it would keep its graph (and the
    # backbone activations behind it) alive until backward.
    losses: dict[str, torch.Tensor] = {}
    total = side_output.final_state.new_zeros(())
    task = side_task_loss(side_logits, targets, model_config) if side_logits is not None else None
    if task is not None:
        losses["task"] = task
        total = total + task
    if distil and (config.shallow_loss_weight or config.deep_loss_weight):
        teacher_states = [states.layer_outputs[i].to(feature.dtype) for i, feature in zip(side.distilled_layers, side_output.features)]
        shallow, deep = distiller(side_output.features, teacher_states, states.real, config.mask_ratio, is_vision)
        losses.update(shallow=shallow, deep=deep)
        total = total + config.shallow_loss_weight * shallow + config.deep_loss_weight * deep
    return SidePass(side_logits, losses, total)


def stored_side_pass(stored_logits: torch.Tensor, backbone_logits: torch.Tensor | None) -> SidePass:
    """The frozen side network's pass as the fade phase sees it: its stored logits (B, C), in the backbone logits'
    device and dtype, and no loss term of its own.

    The side terms (task, Eq. 1-2, 4-7) train only the side network and the distillation modules, which the fade
    phase holds still, so they are not computed; Eq. 3 and the backbone task loss are ``with_backbone_terms``'."""
    if backbone_logits is None or backbone_logits.dim() == 3 or stored_logits.shape != backbone_logits.shape:
        raise ValueError(
            f"{SIDE_LOGITS_ARGUMENT}= must be the side network's sequence-level logits, shaped like the model's "
            f"(B, C) logits {None if backbone_logits is None else tuple(backbone_logits.shape)}; got {tuple(stored_logits.shape)}."
        )
    logits = stored_logits.to(device=backbone_logits.device, dtype=backbone_logits.dtype)
    return SidePass(logits, {}, logits.new_zeros(()))


def with_backbone_terms(
    side: SidePass,
    config: MDPDConfig,
    backbone_logits: torch.Tensor | None,
    backbone_task: torch.Tensor | None,
    real: torch.Tensor | None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The side pass's terms plus the backbone's: Eq. 3 (side logits teach the backbone's) and the backbone's
    own task loss (not in the paper: Eq. 3 alone regresses the backbone head to the mean side logits; see
    ``MDPDConfig.backbone_task_loss_weight``). ``real`` (B, N) masks token-level logits. Returns (unweighted
    terms, weighted total)."""
    losses, total = dict(side.losses), side.loss
    if config.logits_loss_weight and side.logits is not None:
        losses["logits"] = logits_distillation_loss(side.logits, backbone_logits, real)
        total = total + config.logits_loss_weight * losses["logits"]
    if config.backbone_task_loss_weight and backbone_task is not None:
        losses["backbone_task"] = backbone_task
        total = total + config.backbone_task_loss_weight * backbone_task
    return losses, total
