"""How the backbone's trainables learn during MDPD training: the fading policies (``MDPDConfig.fading``).

The backbone task loss and Eq. 3 act on the backbone's logits, so their gradient must cross the frozen backbone to
reach the LayerNorm copies that fading ships. Each policy is one way to pay for that, and the tuner asks the active
adapter's policy at a few points of a forward pass:

- ``attach`` at injection (modules or model settings the policy needs),
- ``before_training_forward`` before each training forward of the wrapped model,
- ``norm_copies_learn`` whether this training pass records the backbone for backward (``fading_interval``),
- ``after_layer`` after each encoder layer call, which may rewrite its output,
- ``check_stored_side_logits`` and ``logged_terms`` while the pass runs and ends.

| ``fading`` | class | backward through the backbone |
|---|---|---|
| ``"backprop"`` | ``FadingPolicy`` | plain autograd, every activation stored (the paper as written) |
| ``"checkpointed"`` | ``CheckpointedFading`` | non-reentrant gradient checkpointing: layer inputs stored, layers recomputed |
| ``"head_only"`` | ``HeadOnlyFading`` | none: the LayerNorm copies stay frozen, only the head learns |
| ``"block_local"`` | ``BlockLocalFading`` | one layer at a time, inside the forward, from a probe per layer |

``fading_layers=k`` is no policy of its own: it chooses the default targets (``norm_targets``), the LayerNorms of
the last k layers, so that with any policy the backward stops k layers deep.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from .architecture import EncoderMap, backbone_modules, head_outputs, is_norm
from .config import MDPDConfig, invalid
from .forward_pass import SIDE_LOGITS_ARGUMENT, layer_output, real_tokens, with_layer_output
from .layer import MDPDLayer
from .shared_state import place_adapter_module
from .side_networks.base import masked_mean
from .task_loss import side_task_loss


def checkpoints(model: nn.Module) -> bool:
    """Whether any module of the model runs gradient checkpointing."""
    return any(getattr(module, "gradient_checkpointing", False) for module in model.modules())


def uses_reentrant_checkpointing(model: nn.Module) -> bool:
    """Whether some checkpointed layer may use reentrant checkpointing, which reaches the weights inside a
    layer only when the layer's input requires grad (unknown settings count as reentrant)."""
    for module in model.modules():
        if getattr(module, "gradient_checkpointing", False):
            function = getattr(module, "_gradient_checkpointing_func", None)
            if getattr(function, "keywords", {}).get("use_reentrant") is not False:
                return True
    return False


def disable_checkpointing(model: nn.Module) -> None:
    """A faded model is a plain inference model: no checkpointing, and no input-grad hook of transformers' (which
    hooks the embeddings of each sub-model)."""
    getattr(model, "activation_checkpointing_disable", model.gradient_checkpointing_disable)()
    for module in model.modules():
        if hasattr(module, "disable_input_require_grads"):
            module.disable_input_require_grads()


def default_norm_targets(model: nn.Module, head_names, encoder: EncoderMap, last_layers: int | None) -> set[str]:
    """Every LayerNorm outside the task head; with ``last_layers=k`` only those inside the last k encoder
    layers or after the layer list (a pre-norm model's final norm). For a second adapter: the wrappers of
    the already wrapped norms."""
    heads = set(head_names or [])
    prefix = encoder.layers_path + "."
    first_trained = encoder.num_layers - (last_layers or encoder.num_layers)
    targets, past_layers = set(), False
    for name, module in backbone_modules(model):
        in_layers = name.startswith(prefix)
        past_layers = past_layers or in_layers
        if not is_norm(module) or heads.intersection(name.split(".")):
            continue
        after_layers = past_layers and not in_layers
        in_trained_layer = in_layers and int(name[len(prefix) :].split(".")[0]) >= first_trained
        if last_layers is None or after_layers or in_trained_layer:
            targets.add(name)
    return targets


def norm_targets(config: MDPDConfig, model: nn.Module, encoder: EncoderMap):
    """The backbone modules fading may change: ``config.target_modules``, or by default the LayerNorms that
    ``fading_layers`` selects (``default_norm_targets``)."""
    defaults = default_norm_targets(model, config.modules_to_save, encoder, config.fading_layers)
    if config.target_modules is None:
        return defaults
    if config.fading_layers is not None and config.target_modules != defaults:  # equal when reloading a saved adapter
        raise invalid("fading_layers", config.fading_layers, "None when target_modules is given (it selects among the default targets)")
    return config.target_modules


class FadingPolicy:
    """``fading="backprop"``: the backbone's terms backpropagate through the frozen backbone with plain autograd,
    which stores every backbone activation. The base of every policy: its methods do nothing, except
    ``norm_copies_learn``, which every policy shares (``fading_interval``).

    A policy holds its adapter's settings; the tuner passes itself to the methods that act on the model, so a
    policy holds no reference to it (``copy.deepcopy`` of the model copies policies as plain values).
    """

    def __init__(self, config: MDPDConfig):
        self.interval = config.fading_interval

    def attach(self, tuner, adapter_name: str, encoder: EncoderMap) -> None:
        """At injection, after the side network is built and before PEFT wraps the targets: build the modules the
        policy trains (in ``tuner.mdpd_local``) or prepare the model."""

    def before_training_forward(self, tuner) -> None:
        """Before each training forward of the wrapped model (when the tuner's side path runs or not)."""

    def norm_copies_learn(self, training_pass: int) -> bool:
        """``fading_interval=n``: the LayerNorm copies learn on training passes 0, n, 2n, ...; on the others they are
        held still, so the backbone runs without autograd."""
        return training_pass % self.interval == 0

    def set_requires_grad(self, tuner, adapter_name: str, requires_grad: bool) -> None:
        """Beside the side network's: the trainability of the modules this policy adds or holds still."""

    def check_stored_side_logits(self) -> None:
        """Refuse a training forward given stored side logits (the fade phase's) where the policy cannot use them."""

    def after_layer(self, tuner, output):
        """After each encoder layer call of a training forward that records states: the layer's output replaced, or
        None to keep it."""
        return None

    def logged_terms(self, local_losses: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Loss terms learnt outside the pass's total, logged beside it."""
        return {}


class CheckpointedFading(FadingPolicy):
    """``fading="checkpointed"`` (default): transformers' non-reentrant gradient checkpointing on the backbone, turned on
    at the first training forward: only each layer's input is stored and the layer is recomputed in backward, same
    gradients as ``"backprop"``. A model without checkpointing support falls back to ``"backprop"``, with a warning."""

    def __init__(self, config: MDPDConfig):
        super().__init__(config)
        self.pending = False  # checkpointing is turned on at the first training forward

    def attach(self, tuner, adapter_name: str, encoder: EncoderMap) -> None:
        if getattr(tuner.model, "supports_gradient_checkpointing", False):
            self.pending = True
        else:
            warnings.warn(
                f'MDPDConfig.fading="checkpointed": {type(tuner.model).__name__} does not support gradient checkpointing, '
                'so the backbone path stores its activations as with fading="backprop".',
                stacklevel=3,
            )

    def before_training_forward(self, tuner) -> None:
        """Non-reentrant checkpointing, from the first training pass on rather than at injection: a model that
        checkpoints when PeftModel wraps it gets the input embeddings hooked to require grad, which only reentrant
        checkpointing needs (PEFT expects none right after ``get_peft_model``). Non-reentrant, the layer hooks, which
        run again during recomputation, find no capture open and record nothing. Checkpointing the user turned on
        first is kept."""
        if not self.pending:
            return
        self.pending = False
        if checkpoints(tuner.model):
            return
        if hasattr(tuner.model, "activation_checkpointing_enable"):  # transformers >= 5
            tuner.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            tuner.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


class HeadOnlyFading(FadingPolicy):
    """``fading="head_only"``: the LayerNorm copies stay frozen and only the head learns, so nothing backpropagates
    through the backbone (the floor: a probe taught by the side network)."""

    def set_requires_grad(self, tuner, adapter_name: str, requires_grad: bool) -> None:
        for module in tuner.model.modules():
            if isinstance(module, MDPDLayer) and adapter_name in module.mdpd_copies:
                module.mdpd_copies[adapter_name].requires_grad_(False)


class BlockLocalFading(FadingPolicy):
    """``fading="block_local"`` (ours): each encoder layer's LayerNorms learn from a target local to that layer, the task
    loss of a linear probe of the layer's pooled output (``tuner.mdpd_local``, dropped at fading). The backward runs
    inside the forward, right after each layer, and the layer's output goes on detached, so no backward crosses more
    than one layer and nothing is stored or recomputed. Sequence-level tasks, one process, no gradient
    checkpointing."""

    def attach(self, tuner, adapter_name: str, encoder: EncoderMap) -> None:
        config: MDPDConfig = tuner.peft_config[adapter_name]
        outputs = head_outputs(tuner.model, config.modules_to_save)
        if outputs is None or config.task_type in ("TOKEN_CLS", "QUESTION_ANS"):
            raise invalid("fading", config.fading, "another fading: block_local needs a sequence-level task head (its layer probes pool tokens)")
        probes = nn.ModuleList(nn.Linear(width, outputs) for width in encoder.layer_widths)
        tuner.mdpd_local[adapter_name] = place_adapter_module(probes, tuner.model)

    def set_requires_grad(self, tuner, adapter_name: str, requires_grad: bool) -> None:
        tuner.mdpd_local[adapter_name].requires_grad_(requires_grad)

    def check_stored_side_logits(self) -> None:
        raise invalid(
            "fading", "block_local", f"another fading to train on stored side logits ({SIDE_LOGITS_ARGUMENT}=): block_local learns from states recorded in the forward"
        )

    def after_layer(self, tuner, output):
        """Layer call i's trainables learn now, from the task loss of probe i; its output goes on detached."""
        recorded = tuner._backbone_capture.current
        hidden = layer_output(output)
        if recorded is None or not hidden.requires_grad:
            return None
        index = len(recorded.layer_outputs) - 1  # the capture's hook has recorded this call's output already
        if index == 0 and torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            raise RuntimeError('MDPDConfig.fading="block_local" runs its backward inside the forward, which DDP does not allow; use fading="checkpointed".')
        if index == 0 and checkpoints(tuner.model):
            raise RuntimeError('MDPDConfig.fading="block_local" cannot run under gradient checkpointing: recomputed layers would learn twice.')
        capture = tuner._capture
        real = real_tokens(capture.attention_mask, *hidden.shape[:2], hidden.device)
        probe = tuner.mdpd_local[tuner.active_adapters[0]][index]
        loss = side_task_loss(probe(masked_mean(hidden, real).to(probe.weight.dtype)), capture.targets, tuner.model.config)
        if loss is not None and tuner._loss_is_finite({f"local_{index}": loss}):
            loss.backward()
            capture.local_losses.append(loss.detach())
        return with_layer_output(output, hidden.detach())  # no backward crosses this layer again

    def logged_terms(self, local_losses: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The probes' losses, already backpropagated layer by layer: logged only, as ``local``."""
        return {"local": torch.stack(local_losses).mean()} if local_losses else {}


FADING_POLICIES: dict[str, type[FadingPolicy]] = {
    "backprop": FadingPolicy,
    "checkpointed": CheckpointedFading,
    "head_only": HeadOnlyFading,
    "block_local": BlockLocalFading,
}
