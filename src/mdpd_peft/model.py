"""MDPDModel: the PEFT tuner that runs the side network beside the encoder through hooks, and fades it."""

from __future__ import annotations

import inspect
import math
import warnings
from contextlib import nullcontext

import torch
from peft.tuners.tuners_utils import BaseTuner
from peft.utils import ModulesToSaveWrapper
from torch import nn
from transformers.utils import ModelOutput

from .architecture import EncoderMap, backbone_modules, is_norm, map_encoder
from .batch_checks import BatchLimits, check_batch
from .capture import BackboneCapture
from .config import EVAL_PATHS, MDPDConfig, invalid
from .distillation import DualPathDistiller, intermediates_kept
from .forward_pass import (
    SIDE_LOGITS_ARGUMENT,
    TARGET_ARGUMENTS,
    ForwardCapture,
    SidePass,
    backbone_logits_of,
    cached_backbone_states,
    layer_output,
    real_tokens,
    side_pass,
    stored_side_pass,
    with_backbone_terms,
    with_layer_output,
    write_logits,
)
from .layer import MDPDLayer, require_finite
from .shared_state import TunerHeldModules, adapter_names_of, place_adapter_module, restore_original_modules
from .side_networks import SIDE_NETWORKS, BackboneStates
from .side_networks.base import full_value, masked_mean
from .state_cache import check_cacheable
from .task_loss import side_task_loss

# The heads PEFT's task wrappers save; some wrappers add them only after the tuner is built, too late for
# sizing the side network's head, so MDPD fills them in first.
TASK_HEADS = {"SEQ_CLS": ["classifier", "score"], "TOKEN_CLS": ["classifier", "score"], "QUESTION_ANS": ["qa_outputs"]}


def head_outputs(model: nn.Module, head_names: list[str] | set[str] | None) -> int | None:
    """Output size of the task head, or None: the last Linear of the *last* ``modules_to_save`` module found
    (the head comes after, e.g., BERT's ``pooler`` in module order)."""
    outputs = None
    for name, module in model.named_modules():
        if head_names and name.rsplit(".", 1)[-1] in head_names:
            linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
            if linears:
                outputs = linears[-1].out_features
    return outputs


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


def base_model_shape(model: nn.Module, encoder: EncoderMap, config: MDPDConfig) -> dict:
    """What an adapter's weights are shaped by: the layers, their widths and the task head's outputs."""
    return {"num_layers": encoder.num_layers, "layer_widths": list(encoder.layer_widths), "head_outputs": head_outputs(model, config.modules_to_save)}


def check_against_model(config: MDPDConfig, encoder: EncoderMap, model: nn.Module) -> None:
    """The settings whose allowed values depend on the model."""
    layers = encoder.num_layers
    shape = base_model_shape(model, encoder, config)
    for key, current in shape.items():
        saved = (config.base_model_shape or {}).get(key, current)
        if current != saved:
            hint = f" (e.g. from_pretrained(..., num_labels={saved}))" if key == "head_outputs" else ""
            raise ValueError(
                f"This MDPD adapter was trained on a base model with {key}={saved}, but this model has {key}={current}: "
                f"attach it to a model of the shape it was trained on{hint} (MDPDConfig.base_model_shape={config.base_model_shape})."
            )
    if config.side_layers is not None:
        if any(not 0 <= i < layers for i in config.side_layers):
            raise invalid("side_layers", config.side_layers, f"indices in [0, {layers - 1}] (the model has {layers} layers)")
    if config.deep_layers_start is not None and not 0 <= config.deep_layers_start <= layers:
        raise invalid("deep_layers_start", config.deep_layers_start, f"None or an integer in [0, {layers}]")
    side_width = encoder.hidden_size // config.reduction_factor
    if side_width < 1:
        raise invalid("reduction_factor", config.reduction_factor, f"an integer in [1, {encoder.hidden_size}] (the hidden size)")
    if config.fading_layers is not None and config.fading_layers > layers:
        raise invalid("fading_layers", config.fading_layers, f"None or an integer in [1, {layers}] (the model has {layers} layers)")
    if not config.inference_mode and config.modules_to_save and any(p.dtype == torch.float16 for p in model.parameters()):
        raise ValueError(
            "MDPD cannot train the task head of a model loaded in float16: PEFT trains it as a float16 modules_to_save "
            "copy, which AdamW turns to NaN in one step (LoRA's does the same). Load the model in float32 and train with "
            "fp16 autocast (Trainer(fp16=True), accelerate mixed_precision='fp16'), or load it in bfloat16. A float16 "
            "model can still load a trained adapter for inference (PeftModel.from_pretrained(..., is_trainable=False))."
        )
    if config.fading_layers is not None and layers != len(encoder.layers(model)):
        raise invalid("fading_layers", config.fading_layers, "None for a model whose layers share weights (every layer runs the same LayerNorms)")
    if config.aligner_rank is not None and config.aligner_rank > side_width:
        raise invalid("aligner_rank", config.aligner_rank, f"None or an integer in [1, {side_width}] (the side width)")


class MDPDModel(TunerHeldModules, BaseTuner):
    """Masked Dual Path Distillation (MDPD) as a PEFT tuner.

    Beside the frozen encoder runs a trainable side network (``MDPDConfig.side_network``: the LST ladder
    by default, or UniPT, SHERL, DTL; see ``side_networks``); during training the two paths distil each
    other (``DualPathDistiller``, Eq. 1-7) and the loss of the wrapped model's output becomes ``task(side logits) + w_sha * L_sha + w_deep * L_deep + w_log * L_log
    + w_bt * task(backbone logits)`` (the last term is ours, not the paper's: see ``MDPDConfig``).
    The backbone itself only trains adapter-held copies of ``target_modules`` (LayerNorms by default)
    and the ``modules_to_save`` task head. Everything runs in forward hooks on the base model's modules,
    so every PEFT task wrapper works, including ``task_type=None`` where PeftModel calls the base model
    directly. In eval mode the backbone predicts (``eval_path="backbone"``) and the side network is
    skipped; ``merge_and_unload()`` returns the plain transformers model ("fading").

    Each output of a training forward pass carries ``mdpd_losses``: the unweighted ``task``,
    ``shallow``, ``deep``, ``logits`` and ``backbone_task`` terms, for logging. ``latest_losses`` holds
    the same terms, detached, on the tuner itself: wrappers may rebuild the output and drop the
    attribute (DDP does with ``find_unused_parameters=True``, the Trainer's setting for PEFT models).

    A training forward given ``mdpd_side_logits=`` (B, C), a frozen side network's stored logits (the fade phase of
    ``MDPDTrainer(state_cache=...)``), records no state and runs no side network: its loss is Eq. 3 against them
    plus the backbone task loss (``forward_pass.stored_side_pass``).
    """

    prefix: str = "mdpd_"
    tuner_layer_cls = MDPDLayer
    target_module_mapping: dict = {}
    # The side network lives on the tuner; `inject_adapter_in_model` would drop it.
    uses_shared_state: bool = True
    adapter_containers = ("mdpd_side", "mdpd_distill", "mdpd_local", "mdpd_copies")

    # ---------------------------------------------------------------------------------------- set-up

    def _create_and_replace(self, peft_config, adapter_name, target, target_name, parent, current_key, **kwargs):
        if isinstance(target, MDPDLayer):
            target.update_layer(adapter_name, peft_config.inference_mode)
            return
        new_module = MDPDLayer(target, adapter_name, peft_config.inference_mode)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    def _replace_module(self, parent: nn.Module, child_name: str, new_module: nn.Module, child: nn.Module) -> None:
        """Wrapping goes through PEFT (device placement); unloading puts back a complete module as it is.

        PEFT's version re-assigns ``weight``/``bias`` from the wrapper, which fails for heads without a
        ``weight`` of their own (RoBERTa's ``RobertaClassificationHead``).
        """
        if isinstance(new_module, MDPDLayer):
            super()._replace_module(parent, child_name, new_module, child)
        else:
            setattr(parent, child_name, new_module)

    def inject_adapter(self, model: nn.Module, adapter_name: str, autocast_adapter_dtype: bool = True, **kwargs) -> None:
        """Map and check the model, build the adapter's side network, let PEFT wrap the targets, hook the model.

        Runs for ``get_peft_model`` and for ``add_adapter``/``load_adapter`` alike, so every bad setting
        fails here, before the model is changed.
        """
        config: MDPDConfig = self.peft_config[adapter_name]
        config.check_values()  # again: the config may have been changed since it was built
        config.check_saved_weights()
        if config.modules_to_save is None and config.task_type in TASK_HEADS:
            config.modules_to_save = list(TASK_HEADS[config.task_type])
        encoder = map_encoder(model, config)
        check_against_model(config, encoder, model)
        config.base_model_shape = base_model_shape(model, encoder, config)
        if not hasattr(self, "mdpd_side"):
            self.mdpd_side = nn.ModuleDict()
            self.mdpd_distill = nn.ModuleDict()
            self.mdpd_local = nn.ModuleDict()  # fading="block_local": a probe per layer
            self.mdpd_encoders: dict[str, EncoderMap] = {}
            self._hook_handles: list = []
            self._capture: ForwardCapture | None = None
            self._adapters_enabled = True
            self.latest_losses: dict[str, torch.Tensor] = {}
            self._training_passes = 0  # counts fading_interval
            self.latest_skipped = False  # the last training pass had a non-finite loss term (nonfinite_loss="skip")
            self._checkpointing_pending = False  # fading="checkpointed": turn checkpointing on at the first training pass
        self.mdpd_encoders[adapter_name] = encoder
        if config.target_modules is None:
            config.target_modules = default_norm_targets(model, config.modules_to_save, encoder, config.fading_layers)
        elif config.fading_layers is not None and config.target_modules != default_norm_targets(
            model, config.modules_to_save, encoder, config.fading_layers
        ):  # equal when reloading a saved adapter
            raise invalid("fading_layers", config.fading_layers, "None when target_modules is given (it selects among the default targets)")
        self._build_side_network(adapter_name)
        super().inject_adapter(model, adapter_name, autocast_adapter_dtype=autocast_adapter_dtype, **kwargs)
        self._register_hooks()
        self._sync_side_trainability()
        if config.fading == "checkpointed":
            if getattr(self.model, "supports_gradient_checkpointing", False):
                self._checkpointing_pending = True
            else:
                warnings.warn(
                    f'MDPDConfig.fading="checkpointed": {type(self.model).__name__} does not support gradient checkpointing, '
                    'so the backbone path stores its activations as with fading="backprop".',
                    stacklevel=2,
                )

    def _enable_backbone_checkpointing(self) -> None:
        """Non-reentrant checkpointing, from the first training pass on rather than at injection: a model that
        checkpoints when PeftModel wraps it gets the input embeddings hooked to require grad, which only reentrant
        checkpointing needs (PEFT expects none right after ``get_peft_model``). Non-reentrant, the layer hooks, which
        run again during recomputation, find no capture open and record nothing. Checkpointing the user turned on
        first is kept."""
        self._checkpointing_pending = False
        if checkpoints(self.model):
            return
        if hasattr(self.model, "activation_checkpointing_enable"):  # transformers >= 5
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def _build_side_network(self, adapter_name: str) -> None:
        config: MDPDConfig = self.peft_config[adapter_name]
        encoder = self.mdpd_encoders[adapter_name]
        side_layers = sorted(set(config.side_layers)) if config.side_layers is not None else list(range(encoder.num_layers))
        deep_start = config.deep_layers_start if config.deep_layers_start is not None else encoder.num_layers // 2
        side = SIDE_NETWORKS[config.side_network].from_config(encoder, config, side_layers, head_outputs(self.model, config.modules_to_save))
        distilled = side.distilled_layers
        rank = config.aligner_rank or min(16, side.feature_width)
        distiller = DualPathDistiller(distilled, deep_start, side.feature_width, [encoder.layer_widths[i] for i in distilled], rank)
        place_adapter_module(side, self.model)
        place_adapter_module(distiller, self.model)
        side.init_from_backbone(self.model, encoder)
        self.mdpd_side[adapter_name] = side
        self.mdpd_distill[adapter_name] = distiller
        if config.fading == "block_local":
            outputs = head_outputs(self.model, config.modules_to_save)
            if outputs is None or config.task_type in ("TOKEN_CLS", "QUESTION_ANS"):
                raise invalid("fading", config.fading, "another fading: block_local needs a sequence-level task head (its layer probes pool tokens)")
            probes = nn.ModuleList(nn.Linear(width, outputs) for width in encoder.layer_widths)
            self.mdpd_local[adapter_name] = place_adapter_module(probes, self.model)

    def _sync_side_trainability(self, inference_mode: bool | None = None) -> None:
        """Side network and distiller train with their adapter's layers: when it is active, enabled and not in
        inference mode (``None``: each adapter's ``config.inference_mode``)."""
        for name in self.mdpd_side:
            frozen = self.peft_config[name].inference_mode if inference_mode is None else inference_mode
            self._set_side_requires_grad(name, name in self.active_adapters and self._adapters_enabled and not frozen)

    def _set_side_requires_grad(self, adapter_name: str, requires_grad: bool) -> None:
        """The distiller trains only when a feature loss is on (else nothing reaches it), and with
        ``fading="head_only"`` the norm copies never train."""
        config = self.peft_config[adapter_name]
        self.mdpd_side[adapter_name].requires_grad_(requires_grad)
        self.mdpd_distill[adapter_name].requires_grad_(requires_grad and bool(config.shallow_loss_weight or config.deep_loss_weight))
        if adapter_name in self.mdpd_local:
            self.mdpd_local[adapter_name].requires_grad_(requires_grad)
        if config.fading == "head_only":
            for module in self.model.modules():
                if isinstance(module, MDPDLayer) and adapter_name in module.mdpd_copies:
                    module.mdpd_copies[adapter_name].requires_grad_(False)

    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        super().set_adapter(adapter_name, inference_mode=inference_mode)
        self._sync_side_trainability(inference_mode)

    def set_requires_grad(self, adapter_names: str | list[str], requires_grad: bool = True) -> None:
        super().set_requires_grad(adapter_names, requires_grad=requires_grad)
        for name in adapter_names_of(adapter_names):
            if name in self.mdpd_side:
                self._set_side_requires_grad(name, requires_grad)

    def _enable_adapter_layers(self, enabled: bool = True) -> None:
        super()._enable_adapter_layers(enabled)
        self._adapters_enabled = enabled
        self._sync_side_trainability()

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        for container in (self.mdpd_side, self.mdpd_distill, self.mdpd_local):
            if adapter_name in container:
                del container[adapter_name]
        del self.mdpd_encoders[adapter_name]
        self._sync_side_trainability()

    def set_eval_path(self, path: str) -> None:
        """Choose which path predicts in eval mode: "backbone" (what fading ships) or "side"."""
        if path not in EVAL_PATHS:
            raise invalid("eval_path", path, f"one of {EVAL_PATHS}")
        for name in self.active_adapters:
            self.peft_config[name].eval_path = path

    def side_parameters(self) -> list[nn.Parameter]:
        """Every adapter's side-network and distillation-module parameters: what the side phase trains and what
        ``MDPDTrainer(side_learning_rate=...)`` sets apart from the faded parameters."""
        return [*self.mdpd_side.parameters(), *self.mdpd_distill.parameters()]

    @property
    def encoder(self) -> EncoderMap:
        """The active adapter's map of the encoder."""
        return self.mdpd_encoders[self.active_adapters[0]]

    def cached_state_indices(self) -> tuple[int, ...]:
        """The states a state cache holds for the active adapter's side network, numbered as transformers'
        ``hidden_states``: the embeddings (0) and the output of each layer it reads and distils (l + 1)."""
        side = self.mdpd_side[self.active_adapters[0]]
        check_cacheable(side, self.encoder, self.peft_config[self.active_adapters[0]], "the side network")
        return (0, *(layer + 1 for layer in side.distilled_layers))

    def gate_values(self) -> torch.Tensor:
        """The active adapter's ladder gates g_l (weight of the side state against the backbone input), detached.
        ``side_network="ladder"`` only."""
        side_network = self.peft_config[self.active_adapters[0]].side_network
        if not hasattr(self.mdpd_side[self.active_adapters[0]], "gates"):
            raise invalid("side_network", side_network, "'ladder' for gate_values() (only the ladder has gates)")
        return full_value(self.mdpd_side[self.active_adapters[0]].gates())

    # ------------------------------------------------------------------------------------------ hooks

    def _register_hooks(self) -> None:
        if self._hook_handles:
            return
        self._forward_signature = inspect.signature(self.model.forward)
        self._batch_limits = BatchLimits.of(self.model)
        encoder = next(iter(self.mdpd_encoders.values()))
        self._backbone_capture = BackboneCapture(self.model, encoder)  # records the states the side network reads
        # Bound methods, not closures: copy.deepcopy of the model rebinds them to the copy. The block-local hooks run
        # after the capture's (registered later), so layer call i's output is recorded when they see it.
        self._hook_handles = [
            self.model.register_forward_pre_hook(self._begin_forward, with_kwargs=True),
            *(layer.register_forward_hook(self._learn_locally_after) for layer in encoder.layers(self.model)),
            self.model.register_forward_hook(self._finish_forward, with_kwargs=True),
        ]

    def _remove_hooks(self) -> None:
        for handle in self._hook_handles:
            handle.remove()
        self._hook_handles = []
        self._backbone_capture.remove()

    def _side_path_needed(self) -> bool:
        if not self._adapters_enabled or not self.active_adapters or self.active_adapters[0] not in self.mdpd_side:
            return False
        return self.model.training or self.peft_config[self.active_adapters[0]].eval_path == "side"

    def _begin_forward(self, module, args, kwargs):
        """Open the pass's capture; a batch's stored side logits (``mdpd_side_logits``, the fade phase's) are taken
        out of the model's arguments here, so the transformers model never sees them."""
        self._capture = None
        self.latest_losses = {}
        self.latest_skipped = False
        stored_side_logits = kwargs.pop(SIDE_LOGITS_ARGUMENT, None)
        try:
            arguments = self._forward_signature.bind_partial(*args, **kwargs).arguments
        except TypeError:
            arguments = kwargs
        arguments = {**arguments.pop("kwargs", {}), **arguments}
        check_batch(arguments, self._batch_limits, self.model.config)
        targets = {name: arguments[name] for name in TARGET_ARGUMENTS if arguments.get(name) is not None}
        if self.model.training and not targets and self._side_path_needed() and self.mdpd_side[self.active_adapters[0]].head is not None:
            raise ValueError(
                "An MDPD training forward needs the task's targets: pass labels= (start_positions= and end_positions= for "
                "question answering), or call model.eval() to predict. Without them only the distillation terms would "
                "train, silently (a dataset without a label column does this under the Trainer)."
            )
        if self._checkpointing_pending and self.model.training:
            self._enable_backbone_checkpointing()
        if getattr(self.model, "_require_grads_hook", None) is not None and not uses_reentrant_checkpointing(self.model):
            # PeftModel hooks the input embeddings to require grad when the model checkpoints (so do transformers
            # and the Trainer's gradient_checkpointing=True). Only reentrant checkpointing needs that; with it, every
            # backward would cross the whole backbone even when only the last layers' norms train (fading_layers),
            # and every forward of an adapter loaded for inference would record the backbone for a backward.
            self.model.disable_input_require_grads()
        learns = True
        if self.model.training and self._side_path_needed():
            learns = self._training_passes % self.peft_config[self.active_adapters[0]].fading_interval == 0
            self._training_passes += 1
        self._let_norm_copies_learn(learns)
        if not self._side_path_needed():
            return args, kwargs
        if not self.model.training:
            stored_side_logits = None  # eval_path="side" runs the side network itself
        elif stored_side_logits is not None and self.active_adapters[0] in self.mdpd_local:
            raise invalid("fading", "block_local", f"another fading to train on stored side logits ({SIDE_LOGITS_ARGUMENT}=): block_local learns from states recorded in the forward")
        self._capture = ForwardCapture(attention_mask=arguments.get("attention_mask"), targets=targets, stored_side_logits=stored_side_logits)
        if self._capture.records_states:
            self._backbone_capture.open(self._capture.attention_mask, self.mdpd_side[self.active_adapters[0]].rerun_layers)
        return args, kwargs

    def _let_norm_copies_learn(self, learns: bool) -> None:
        """Held-still copies (``fading_interval``) give a backbone pass that autograd does not record."""
        for module in self.model.modules():
            if isinstance(module, MDPDLayer):
                module.learns = learns

    def _learn_locally_after(self, module, args, output):
        """``fading="block_local"``: after each layer call, its trainables learn, and its output goes on detached."""
        recorded = self._backbone_capture.current
        hidden = layer_output(output)
        if recorded is None or not hidden.requires_grad or self.active_adapters[0] not in self.mdpd_local:
            return None
        self._learn_locally(len(recorded.layer_outputs) - 1, hidden)
        return with_layer_output(output, hidden.detach())  # no backward crosses this layer again

    def _learn_locally(self, index: int, hidden: torch.Tensor) -> None:
        """``fading="block_local"``: layer call ``index``'s trainables learn now, from the task loss of its probe."""
        if index == 0 and torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            raise RuntimeError('MDPDConfig.fading="block_local" runs its backward inside the forward, which DDP does not allow; use fading="checkpointed".')
        if index == 0 and checkpoints(self.model):
            raise RuntimeError('MDPDConfig.fading="block_local" cannot run under gradient checkpointing: recomputed layers would learn twice.')
        capture = self._capture
        real = real_tokens(capture.attention_mask, *hidden.shape[:2], hidden.device)
        probe = self.mdpd_local[self.active_adapters[0]][index]
        loss = side_task_loss(probe(masked_mean(hidden, real).to(probe.weight.dtype)), capture.targets, self.model.config)
        if loss is not None and self._loss_is_finite({f"local_{index}": loss}):
            loss.backward()
            capture.local_losses.append(loss.detach())

    def _finish_forward(self, module, args, kwargs, output):
        capture, self._capture = self._capture, None
        recorded = self._backbone_capture.close()
        if capture is None or (capture.records_states and (recorded is None or recorded.embeddings is None)):
            return output
        if not isinstance(output, ModelOutput):
            raise ValueError("MDPD needs the model to return a ModelOutput; call it with return_dict=True.")
        config: MDPDConfig = self.peft_config[self.active_adapters[0]]
        backbone_logits = backbone_logits_of(output)
        logits_dtype = backbone_logits.dtype if backbone_logits is not None else None
        per_token = backbone_logits is not None and backbone_logits.dim() == 3
        if not capture.records_states:  # the fade phase: Eq. 3 against the side network's stored logits
            if backbone_logits is None or per_token or capture.stored_side_logits.shape != backbone_logits.shape:
                raise ValueError(
                    f"{SIDE_LOGITS_ARGUMENT}= must be the side network's sequence-level logits, shaped like the model's "
                    f"(B, C) logits {None if backbone_logits is None else tuple(backbone_logits.shape)}; got {tuple(capture.stored_side_logits.shape)}."
                )
            real = None  # Eq. 3 reads it for token-level logits only
            side = stored_side_pass(capture.stored_side_logits.to(device=backbone_logits.device, dtype=logits_dtype))
        else:
            states = self._backbone_capture.states(recorded)
            real = states.real
            side = self._side_pass(states, capture.targets, per_token, logits_dtype, distil=self.model.training)

        if not self.model.training:  # eval_path == "side": the side network predicts
            if side.logits is not None:
                write_logits(output, side.logits)
            if "task" in side.losses:
                output["loss"] = side.losses["task"]
            return output

        losses, total = with_backbone_terms(side, config, backbone_logits, output.get("loss"), real)
        if capture.local_losses:  # already backpropagated, layer by layer (fading="block_local"): logged only
            losses["local"] = torch.stack(capture.local_losses).mean()
        if not self._loss_is_finite({**losses, "total": total}):  # before backward() or an optimizer can use it
            total = total.detach() + sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0  # zero gradients
        output["loss"] = total
        output.mdpd_losses = losses
        output.mdpd_skipped = self.latest_skipped
        self.latest_losses = {name: value.detach() for name, value in losses.items()}
        return output

    # ------------------------------------------------------------------------------------- side path

    def _side_pass(self, states: BackboneStates, targets: dict, per_token: bool, logits_dtype: torch.dtype | None, distil: bool = True) -> SidePass:
        """The active adapter's ``forward_pass.side_pass``: for the live pass and for cached states alike."""
        adapter_name = self.active_adapters[0]
        return side_pass(
            self.mdpd_side[adapter_name], self.mdpd_distill[adapter_name], self.peft_config[adapter_name], states, targets,
            self.model.config, per_token, logits_dtype, self.mdpd_encoders[adapter_name].is_vision, distil,
        )

    def side_pass_on_cached_states(self, batch: dict[str, torch.Tensor], recompute: bool = True) -> SidePass:
        """Train the side network without the backbone: its loss terms on one batch of cached backbone states.

        ``batch`` is ``StateCache.collate``'s (``hidden_states`` (B, N, S, D), ``attention_mask``, targets). The
        terms are the live pass's side terms (side task, shallow, deep), computed by the same code; the ones that
        need the backbone's logits (Eq. 3, the backbone task loss) are the fade phase's. ``loss`` is their
        weighted sum; ``latest_losses`` holds them for logging, as after a live pass.

        ``recompute=False`` keeps the side steps' and feature terms' intermediates instead of recomputing them in
        backward, as the live pass does: faster, at the side network's full activation memory (BERT-base shape,
        batch 16 x 128: a step's peak 158 MiB recomputed, 417 MiB kept; ``benchmarks/state_cache.py --memory``).
        """
        states, dtype = self._cached_states(batch)
        targets = {name: batch[name] for name in TARGET_ARGUMENTS if batch.get(name) is not None}
        with nullcontext() if recompute else intermediates_kept():
            result = self._side_pass(states, targets, self._per_token_task(), dtype)
        self.latest_losses = {name: value.detach() for name, value in result.losses.items()}
        return result

    @torch.no_grad()
    def side_logits_on_cached_states(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The side network's logits Y_S, float32 (B, C), on one ``StateCache.collate`` batch, in its current mode
        (``StateCache.store_side_outputs`` runs it in eval mode): no loss term, nothing recorded for backward."""
        if self._per_token_task():
            config = self.peft_config[self.active_adapters[0]]
            raise invalid("task_type", config.task_type, "a sequence-level task (e.g. 'SEQ_CLS') for side logits on cached states")
        states, _ = self._cached_states(batch)
        return self._side_pass(states, {}, False, torch.float32, distil=False).logits

    def _cached_states(self, batch: dict[str, torch.Tensor]) -> tuple[BackboneStates, torch.dtype]:
        """The ``BackboneStates`` of a collated cache batch, in the side network's dtype (returned too)."""
        adapter_name = self.active_adapters[0]
        dtype = next(self.mdpd_side[adapter_name].parameters()).dtype
        indices = tuple(int(i) for i in batch["hidden_state_indices"])
        return cached_backbone_states(batch, indices, self.mdpd_encoders[adapter_name].num_layers, dtype), dtype

    def _per_token_task(self) -> bool:
        return self.peft_config[self.active_adapters[0]].task_type in ("TOKEN_CLS", "QUESTION_ANS")

    def _loss_is_finite(self, terms: dict[str, torch.Tensor]) -> bool:
        """Whether every term is finite; if not, raise or warn naming them (``MDPDConfig.nonfinite_loss``)."""
        values = torch.stack([value.detach().float() for value in terms.values()])
        if torch.isfinite(values).all():
            return True
        bad = ", ".join(f"{name}={value:g}" for name, value in zip(terms, values.tolist()) if not math.isfinite(value))
        message = (
            f"MDPD loss term(s) {bad} at training forward pass {self._training_passes}: a NaN or inf input, weight or "
            "loss weight upstream of them (check the batch and the model's weights)."
        )
        if self.peft_config[self.active_adapters[0]].nonfinite_loss == "raise":
            raise FloatingPointError(f"{message} Nothing was written to the weights. MDPDConfig(nonfinite_loss='skip') skips such steps instead.")
        warnings.warn(f"{message} Skipping this step (MDPDConfig.nonfinite_loss='skip').", RuntimeWarning, stacklevel=2)
        self.latest_skipped = True
        return False

    # ----------------------------------------------------------------------------------------- fading

    def _unload_and_optionally_merge(self, merge: bool = True, progressbar: bool = False, safe_merge: bool = False, adapter_names=None):
        """Fading: remove the hooks, then write back (merge) or drop (unload) the LayerNorm copies and the task head.

        PEFT's own ``unload()`` keeps the trained ``modules_to_save`` copy; MDPD's returns the untouched base,
        original head included, so that ``unload()`` really undoes the adapter.
        """
        if merge and safe_merge:  # refuse before anything changes
            self._require_finite_merge(adapter_names)
        self._remove_hooks()
        if checkpoints(self.model):
            # the faded model is a plain inference model: no checkpointing, no input-grad hook of transformers'
            getattr(self.model, "activation_checkpointing_disable", self.model.gradient_checkpointing_disable)()
            for module in self.model.modules():  # transformers hooks the embeddings of each sub-model
                if hasattr(module, "disable_input_require_grads"):
                    module.disable_input_require_grads()
        if not merge:
            restore_original_modules(self.model)
        return super()._unload_and_optionally_merge(merge=merge, progressbar=progressbar, safe_merge=safe_merge, adapter_names=adapter_names)

    def _require_finite_merge(self, adapter_names: list[str] | None) -> None:
        """``safe_merge=True``: every norm copy and task head copy that fading would ship is finite."""
        names = adapter_names or self.active_adapters
        for module_name, module in self.model.named_modules():
            if isinstance(module, MDPDLayer):
                for name in set(names) & set(module.mdpd_copies):
                    require_finite(module.mdpd_copies[name], name, f"its copy of {module_name}")
            elif isinstance(module, ModulesToSaveWrapper):
                for name in set(names) & set(module.modules_to_save):
                    require_finite(module.modules_to_save[name], name, f"its task head {module_name}")
