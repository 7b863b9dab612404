"""MDPDModel: the PEFT tuner that runs the side network beside the encoder through hooks, and fades it."""

from __future__ import annotations

import torch
from peft.tuners.tuners_utils import BaseTuner
from peft.utils import ModulesToSaveWrapper
from torch import nn

from .architecture import EncoderMap, head_outputs, map_encoder
from .cached_passes import CachedStatePasses
from .config import EVAL_PATHS, MDPDConfig, invalid
from .distillation import DualPathDistiller
from .fading import FADING_POLICIES, checkpoints, disable_checkpointing, norm_targets
from .forward_pass import SidePass, side_pass
from .hooks import LivePassHooks
from .layer import MDPDLayer, require_finite
from .shared_state import TunerHeldModules, adapter_names_of, place_adapter_module, restore_original_modules
from .side_networks import SIDE_NETWORKS, BackboneStates
from .side_networks.base import full_value

# The heads PEFT's task wrappers save; some wrappers add them only after the tuner is built, too late for
# sizing the side network's head, so MDPD fills them in first.
TASK_HEADS = {"SEQ_CLS": ["classifier", "score"], "TOKEN_CLS": ["classifier", "score"], "QUESTION_ANS": ["qa_outputs"]}


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


class MDPDModel(TunerHeldModules, LivePassHooks, CachedStatePasses, BaseTuner):
    """Masked Dual Path Distillation (MDPD) as a PEFT tuner.

    Beside the frozen encoder runs a trainable side network (``MDPDConfig.side_network``: the LST ladder
    by default, or UniPT, SHERL, DTL; see ``side_networks``); during training the two paths distil each
    other (``DualPathDistiller``, Eq. 1-7) and the loss of the wrapped model's output becomes ``task(side logits) +
    w_sha * L_sha + w_deep * L_deep + w_log * L_log + w_bt * task(backbone logits)`` (the last term is ours, not the
    paper's: see ``MDPDConfig``). The backbone itself only trains adapter-held copies of ``target_modules``
    (LayerNorms by default) and the ``modules_to_save`` task head, as the adapter's fading policy says
    (``MDPDConfig.fading``, ``fading.py``). Everything runs in forward hooks on the base model's modules
    (``hooks.LivePassHooks``), so every PEFT task wrapper works, including ``task_type=None`` where PeftModel calls
    the base model directly. In eval mode the backbone predicts (``eval_path="backbone"``) and the side network is
    skipped; ``merge_and_unload()`` returns the plain transformers model ("fading").

    Each output of a training forward pass carries ``mdpd_losses``: the unweighted ``task``,
    ``shallow``, ``deep``, ``logits`` and ``backbone_task`` terms, for logging. ``latest_losses`` holds
    the same terms, detached, on the tuner itself: wrappers may rebuild the output and drop the
    attribute (DDP does with ``find_unused_parameters=True``, the Trainer's setting for PEFT models).

    A training forward given ``mdpd_side_logits=`` (B, C), a frozen side network's stored logits (the fade phase of
    ``MDPDTrainer(state_cache=...)``), records no state and runs no side network: its loss is Eq. 3 against them
    plus the backbone task loss (``forward_pass.stored_side_pass``). The side network also trains on cached
    backbone states, with no backbone in the forward (``cached_passes.CachedStatePasses``).
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
        """Map and check the model, build the adapter's side network and fading policy, let PEFT wrap the targets,
        hook the model.

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
            self.mdpd_fading: dict = {}  # adapter name -> its FadingPolicy
            self._hook_handles: list = []
            self._capture = None  # the open pass's ForwardCapture
            self._adapters_enabled = True
            self.latest_losses: dict[str, torch.Tensor] = {}
            self._training_passes = 0  # counts fading_interval
            self.latest_skipped = False  # the last training pass had a non-finite loss term (nonfinite_loss="skip")
        self.mdpd_encoders[adapter_name] = encoder
        config.target_modules = norm_targets(config, model, encoder)
        self._build_side_network(adapter_name)
        self.mdpd_fading[adapter_name] = FADING_POLICIES[config.fading](config)
        self.mdpd_fading[adapter_name].attach(self, adapter_name, encoder)
        super().inject_adapter(model, adapter_name, autocast_adapter_dtype=autocast_adapter_dtype, **kwargs)
        self._register_hooks()
        self._sync_side_trainability()

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

    def _sync_side_trainability(self, inference_mode: bool | None = None) -> None:
        """Side network and distiller train with their adapter's layers: when it is active, enabled and not in
        inference mode (``None``: each adapter's ``config.inference_mode``)."""
        for name in self.mdpd_side:
            frozen = self.peft_config[name].inference_mode if inference_mode is None else inference_mode
            self._set_side_requires_grad(name, name in self.active_adapters and self._adapters_enabled and not frozen)

    def _set_side_requires_grad(self, adapter_name: str, requires_grad: bool) -> None:
        """The distiller trains only when a feature loss is on (else nothing reaches it); the fading policy sets its
        own modules (``fading="block_local"``'s probes) and may hold the norm copies still (``"head_only"``)."""
        config = self.peft_config[adapter_name]
        self.mdpd_side[adapter_name].requires_grad_(requires_grad)
        self.mdpd_distill[adapter_name].requires_grad_(requires_grad and bool(config.shallow_loss_weight or config.deep_loss_weight))
        self.mdpd_fading[adapter_name].set_requires_grad(self, adapter_name, requires_grad)

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
        del self.mdpd_fading[adapter_name]
        self._sync_side_trainability()

    # ------------------------------------------------------------------------------------ public api

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

    def gate_values(self) -> torch.Tensor:
        """The active adapter's ladder gates g_l (weight of the side state against the backbone input), detached.
        ``side_network="ladder"`` only."""
        side_network = self.peft_config[self.active_adapters[0]].side_network
        if not hasattr(self.mdpd_side[self.active_adapters[0]], "gates"):
            raise invalid("side_network", side_network, "'ladder' for gate_values() (only the ladder has gates)")
        return full_value(self.mdpd_side[self.active_adapters[0]].gates())

    # ------------------------------------------------------------------------------------- side path

    def _side_pass(self, states: BackboneStates, targets: dict, per_token: bool, logits_dtype: torch.dtype | None, distil: bool = True) -> SidePass:
        """The active adapter's ``forward_pass.side_pass``: for the live pass and for cached states alike."""
        adapter_name = self.active_adapters[0]
        return side_pass(
            self.mdpd_side[adapter_name], self.mdpd_distill[adapter_name], self.peft_config[adapter_name], states, targets,
            self.model.config, per_token, logits_dtype, self.mdpd_encoders[adapter_name].is_vision, distil,
        )

    def _per_token_task(self) -> bool:
        return self.peft_config[self.active_adapters[0]].task_type in ("TOKEN_CLS", "QUESTION_ANS")

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
            disable_checkpointing(self.model)
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
