"""SideTaskModel: the PEFT tuner that keeps side networks as named tasks of one frozen encoder, all fed by one pass."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from torch import nn
from transformers.utils import ModelOutput

from ..architecture import EncoderMap, backbone_modules, is_norm, map_encoder
from ..batch_checks import BatchLimits, check_batch
from ..capture import BackboneCapture
from ..config import invalid
from ..config import MDPDConfig
from ..distillation import DualPathDistiller, intermediates_kept
from ..forward_pass import SidePass, cached_backbone_states
from ..shared_state import WrapsNoLayer, adapter_names_of, place_adapter_module
from ..side_networks import SIDE_NETWORKS, BackboneStates, LadderSideNetwork, SideNetwork
from ..state_cache import check_cacheable, weights_hash
from ..task_loss import side_task_loss
from ..token_layout import stage_real_tokens
from .config import SideTaskConfig
from .head import TaskHead
from .stacked_ladders import StackedLadders, ladder_shape


# feature_distillation uses MDPD's defaults (the paper's appendix B): lambda of Eq. 5 and the weights of Eq. 4 and 7
MASK_RATIO = MDPDConfig.__dataclass_fields__["mask_ratio"].default
SHALLOW_LOSS_WEIGHT = MDPDConfig.__dataclass_fields__["shallow_loss_weight"].default
DEEP_LOSS_WEIGHT = MDPDConfig.__dataclass_fields__["deep_loss_weight"].default


@dataclass
class SideTaskOutput(ModelOutput):
    """One encoder pass's predictions for every task that ran.

    ``task_logits`` maps each task to its logits, (B, C) or (B, N, C) for token classification. ``logits`` and
    ``loss`` are set when one task ran (what a ``Trainer`` reads); ``loss`` only when ``labels`` were given.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    task_logits: dict[str, torch.Tensor] | None = None
    last_hidden_state: torch.Tensor | None = None


class SideTask(nn.Module):
    """One kept task: a side network reading the encoder's states, the head that predicts from it and, with
    ``SideTaskConfig.feature_distillation``, the modules through which the encoder's features teach it (Eq. 1-7)."""

    def __init__(self, side: SideNetwork, head: TaskHead, distiller: DualPathDistiller | None = None):
        super().__init__()
        self.side = side
        self.head = head
        self.distiller = distiller

    def forward(self, states: BackboneStates, encoder_state: torch.Tensor, per_token: bool, final_state: torch.Tensor | None = None):
        """states of one encoder pass, encoder_state (B, N, D_B) its final representation -> (logits, the side
        network's features for the distilled layers). ``final_state``: the side network's, when it was computed
        already (stacked with other tasks' for serving; no features then)."""
        features = None
        if final_state is None:
            output = self.side(states)
            final_state, features = output.final_state, output.features  # (B, N', D_S); Swin's last stage has fewer tokens
        real = stage_real_tokens(states.real, final_state.shape[1])
        return self.head(final_state, encoder_state, real, per_token), features


def final_norm_of(model: nn.Module, encoder: EncoderMap) -> nn.Module:
    """The norm a pre-norm encoder applies after its layers (ViT's, DINOv2's ``layernorm``), else the identity
    (post-norm encoders such as BERT end on a normalised layer): with it, a task head reads the encoder's own
    final representation, live and from cached layer outputs alike."""
    prefix, past_layers = encoder.layers_path + ".", False
    for name, module in backbone_modules(model):
        in_layers = name.startswith(prefix)
        if past_layers and not in_layers and is_norm(module):
            return module
        past_layers = past_layers or in_layers
    return nn.Identity()


def encoder_fingerprint(model: nn.Module, encoder: EncoderMap) -> dict:
    """What tells encoders apart: the layers, their widths and a hash of every weight and buffer."""
    on_meta = any(p.is_meta for p in model.parameters())
    return {"num_layers": encoder.num_layers, "layer_widths": list(encoder.layer_widths), "weights": None if on_meta else weights_hash(model)}


class SideTaskModel(WrapsNoLayer, BaseTuner):
    """Kept side networks as PEFT adapters: one adapter per task, one encoder pass for all of them.

    Each adapter (``SideTaskConfig``) is a ``SideTask``: a side network and its head, held on the tuner; the
    encoder is never wrapped or changed. Hooks record the encoder's states during its forward pass, and then every
    task that runs reads them: the *active* adapters (``model.base_model.set_adapter([...])``; a fresh model has
    its first task active, ``load_side_tasks`` activates all), or the ``tasks=[...]`` given to the call. The
    forward returns a ``SideTaskOutput`` instead of the encoder's output. ``labels=`` train the one task that runs.

    Tasks are independent: adding or deleting one never changes another's outputs. Every adapter saves and
    loads as an ordinary PEFT adapter (``PeftModel.from_pretrained(encoder, folder)`` loads one task alone).
    """

    prefix: str = "kept_"
    tuner_layer_cls = BaseTunerLayer  # wraps no layer
    target_module_mapping: dict = {}
    uses_shared_state: bool = True  # the tasks live on the tuner; `inject_adapter_in_model` would drop them
    adapter_containers = ("kept_tasks",)

    def _create_and_replace(self, peft_config, adapter_name, target, target_name, parent, current_key, **kwargs):
        raise NotImplementedError("A side task wraps no module; its target_modules are PEFT's dummy targets.")

    # ---------------------------------------------------------------------------------------- set-up

    def inject_adapter(self, model: nn.Module, adapter_name: str, autocast_adapter_dtype: bool = True, **kwargs) -> None:
        """Map the encoder, check the task against it, build the task's side network and head, hook the encoder once."""
        config: SideTaskConfig = self.peft_config[adapter_name]
        config.check_values()  # again: the config may have been changed since it was built
        encoder = map_encoder(model, config)
        if not hasattr(self, "kept_tasks"):
            self.kept_tasks = nn.ModuleDict()
            self.encoder = encoder
            self.encoder_fingerprint = encoder_fingerprint(model, encoder)
            self.final_norm = final_norm_of(model, encoder)
            self._capture = BackboneCapture(model, encoder)
            self._hook_handles = [
                model.register_forward_pre_hook(self._begin_forward, with_kwargs=True),
                model.register_forward_hook(self._finish_forward, with_kwargs=True),
            ]
            self._forward_signature = inspect.signature(model.forward)
            self._batch_limits = BatchLimits.of(model)
            self._stacked_cache: dict[tuple[str, ...], tuple[tuple, StackedLadders]] = {}  # serving: stacked ladder weights
        self._check_encoder(config, encoder)
        config.encoder_fingerprint = self.encoder_fingerprint
        side_layers = sorted(set(config.side_layers)) if config.side_layers is not None else list(range(encoder.num_layers))
        if any(not 0 <= i < encoder.num_layers for i in side_layers):
            raise invalid("side_layers", config.side_layers, f"indices in [0, {encoder.num_layers - 1}] (the encoder has {encoder.num_layers} layers)", "SideTaskConfig")
        side = SIDE_NETWORKS[config.side_network].from_config(encoder, config, side_layers, None)
        head = TaskHead(side.final_width, encoder.hidden_size, config.num_labels, config.head_input, config.head_gate_init, config.pooling, config.per_token)
        distiller = None
        if config.feature_distillation:  # MDPD's backbone -> side path with the paper's settings (see SideTaskConfig)
            distilled = side.distilled_layers
            distiller = DualPathDistiller(distilled, encoder.num_layers // 2, side.feature_width, [encoder.layer_widths[i] for i in distilled], min(16, side.feature_width))
        task = place_adapter_module(SideTask(side, head, distiller), model)
        side.init_from_backbone(model, encoder)
        self.kept_tasks[adapter_name] = task
        super().inject_adapter(model, adapter_name, autocast_adapter_dtype=autocast_adapter_dtype, **kwargs)
        self._sync_trainability()

    def _check_encoder(self, config: SideTaskConfig, encoder: EncoderMap) -> None:
        """A task belongs to one encoder: its layers must be the bundle's, and a saved task's weights hash too."""
        if (encoder.layers_path, encoder.layer_widths) != (self.encoder.layers_path, self.encoder.layer_widths):
            raise invalid("layers_path", config.layers_path, f"the bundle's layer list ({self.encoder.layers_path!r}, widths {list(self.encoder.layer_widths)})", "SideTaskConfig")
        saved, current = config.encoder_fingerprint, self.encoder_fingerprint
        if saved is None:
            return
        differing = [key for key in ("num_layers", "layer_widths", "weights") if None not in (saved.get(key), current[key]) and saved.get(key) != current[key]]
        if differing:
            raise ValueError(
                f"This side task was trained on another encoder: its {', '.join(differing)} differ from this model's "
                "(SideTaskConfig.encoder_fingerprint). A side network reads the states of the encoder it was trained on: "
                "attach it to that encoder, or train the task again on this one."
            )

    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        """Make these tasks the ones that run (and train, unless ``inference_mode``)."""
        unknown = [name for name in adapter_names_of(adapter_name) if name not in self.kept_tasks]
        if unknown:
            raise ValueError(f"Unknown task(s) {unknown}: this model has the tasks {list(self.kept_tasks)}.")
        super().set_adapter(adapter_name, inference_mode=inference_mode)

    @property
    def tasks(self) -> list[str]:
        return list(self.kept_tasks)

    # ------------------------------------------------------------------------------------- the pass

    def tasks_to_run(self, tasks: str | list[str] | None) -> list[str]:
        """The tasks a call runs: ``tasks`` checked against the model's (an unknown name fails, listing them), or
        ``None``: the active ones (none while adapters are disabled)."""
        if tasks is None:
            return [name for name in self.active_adapters if name in self.kept_tasks] if self._adapters_enabled else []
        names = adapter_names_of(tasks)
        unknown = [name for name in names if name not in self.kept_tasks]
        if unknown:
            raise ValueError(f"tasks={tasks!r} names unknown task(s) {unknown}: this model has the tasks {list(self.kept_tasks)}.")
        return names

    def _begin_forward(self, module, args, kwargs):
        """Take our arguments out of the encoder's (``labels``, ``tasks``), check the batch, open the capture."""
        kwargs = dict(kwargs)
        labels, tasks = kwargs.pop("labels", None), kwargs.pop("tasks", None)
        self._running = self.tasks_to_run(tasks)
        self._labels = labels
        if labels is not None and len(self._running) != 1:
            raise ValueError(
                f"labels= train one task, but {len(self._running)} would run ({self._running}): choose it with "
                "tasks=[name] or model.base_model.set_adapter(name)."
            )
        try:
            arguments = self._forward_signature.bind_partial(*args, **kwargs).arguments
        except TypeError:
            arguments = kwargs
        if self._running:
            check_batch({**arguments, "labels": labels}, self._batch_limits, self.peft_config[self._running[0]])
            rerun = frozenset().union(*(self.kept_tasks[name].side.rerun_layers for name in self._running))
            self._capture.open(arguments.get("attention_mask"), rerun)
        return args, kwargs

    def _finish_forward(self, module, args, kwargs, output):
        captured = self._capture.close()
        if not self._running or captured is None or captured.embeddings is None:
            return output
        states = self._capture.states(captured)
        passes = self._task_passes(states, self._running)
        hidden = output.get("last_hidden_state") if isinstance(output, ModelOutput) else None
        result = SideTaskOutput(task_logits={name: logits for name, (logits, _) in passes.items()}, last_hidden_state=hidden)
        if len(passes) == 1:
            (name, (logits, features)), = passes.items()
            result.logits = logits
            if self._labels is not None:
                result.loss = self.training_loss(name, logits, self._labels, states, features).loss
        self._labels = None
        return result

    def run_tasks(self, states: BackboneStates, tasks: list[str]) -> dict[str, torch.Tensor]:
        """Every task in ``tasks`` on one pass's ``states``: task name -> logits."""
        return {name: logits for name, (logits, _) in self._task_passes(states, tasks).items()}

    def _task_passes(self, states: BackboneStates, tasks: list[str]) -> dict[str, tuple]:
        """Task name -> (logits, features). The encoder's final representation is computed once for all tasks; where
        nothing trains, ladders of one shape run stacked (``stacked_ladders.py``). While a task trains, its side steps
        keep their intermediates (no encoder activation is stored: there is nothing to recompute for)."""
        encoder_state = self.final_norm(states.layer_outputs[-1])  # (B, N, D_B)
        if torch.is_grad_enabled():
            # A task may be training: the optimizer step that follows can write its weights in place without bumping
            # their versions (torch's fused AdamW, the Trainer's default), so stacked copies are rebuilt after it.
            self._stacked_cache.clear()
            final_states = {}
        else:
            final_states = self._stacked_final_states(states, tasks)
        with intermediates_kept():
            return {
                name: self.kept_tasks[name](states, encoder_state, self.peft_config[name].per_token, final_states.get(name))
                for name in tasks
            }

    def _stacked_final_states(self, states: BackboneStates, tasks: list[str]) -> dict[str, torch.Tensor]:
        """The final states of the ladders among ``tasks``, each group of one shape run as one."""
        if not self.encoder.uniform_width:
            return {}
        groups: dict[tuple, list[str]] = {}
        for name in tasks:
            side = self.kept_tasks[name].side
            if isinstance(side, LadderSideNetwork):
                groups.setdefault(ladder_shape(side), []).append(name)
        final_states = {}
        for names in groups.values():
            final_states.update(zip(names, self._stacked_ladders(names).final_states(states)))
        return final_states

    def _stacked_ladders(self, names: list[str]) -> StackedLadders:
        """These tasks' ladders stacked, built again after any pass with autograd (training) or when a weight's version
        changed (loaded, edited in place)."""
        ladders = [self.kept_tasks[name].side for name in names]
        versions = tuple((id(p), p._version) for ladder in ladders for p in ladder.parameters())
        cached = self._stacked_cache.get(tuple(names))
        if cached is None or cached[0] != versions:
            cached = self._stacked_cache[tuple(names)] = (versions, StackedLadders(ladders))
        return cached[1]

    def training_loss(self, name: str, logits: torch.Tensor, labels: torch.Tensor, states: BackboneStates, features) -> SidePass:
        """The task loss transformers' head for the problem type would use, plus, with ``feature_distillation``, the
        encoder's features teaching the side network (Eq. 4 and 7, MDPD's weights); ``latest_losses`` keeps the terms."""
        config, task = self.peft_config[name], self.kept_tasks[name]
        terms = {"task": side_task_loss(logits, {"labels": labels}, config, config.label_smoothing)}
        loss = terms["task"]
        if task.distiller is not None and features is not None:
            teachers = [states.layer_outputs[i].to(feature.dtype) for i, feature in zip(task.side.distilled_layers, features)]
            terms["shallow"], terms["deep"] = task.distiller(features, teachers, states.real, MASK_RATIO, self.encoder.is_vision)
            loss = loss + SHALLOW_LOSS_WEIGHT * terms["shallow"] + DEEP_LOSS_WEIGHT * terms["deep"]
        self.latest_losses = {term: value.detach() for term, value in terms.items()}
        return SidePass(logits, terms, loss)

    # ------------------------------------------------------------------------------ cached states

    def cached_state_indices(self, tasks: list[str] | None = None) -> tuple[int, ...]:
        """The states a state cache must hold for ``tasks`` (default: every task), numbered as transformers'
        ``hidden_states`` (0 the embeddings, l + 1 layer l's output): what their side networks read and the last
        layer's output, which the heads read."""
        names = tasks if tasks is not None else self.tasks
        for name in names:
            check_cacheable(self.kept_tasks[name].side, self.encoder, self.peft_config[name], f"task {name!r}")
        layers = {self.encoder.num_layers - 1}.union(*(self.kept_tasks[name].side.distilled_layers for name in names))
        return (0, *sorted(layer + 1 for layer in layers))

    def side_pass_on_cached_states(self, batch: dict[str, torch.Tensor]) -> SidePass:
        """Train the one active task on a batch of cached encoder states (``StateCache.collate``'s), with no encoder
        in the forward: its logits and, with ``labels`` in the batch, its task loss (``.loss``)."""
        tasks = self.tasks_to_run(None)
        if len(tasks) != 1:
            raise ValueError(f"Training on cached states trains one task, but {len(tasks)} are active ({tasks}): model.base_model.set_adapter(name).")
        name = tasks[0]
        dtype = next(self.kept_tasks[name].parameters()).dtype
        indices = tuple(int(i) for i in batch["hidden_state_indices"])
        states = cached_backbone_states(batch, indices, self.encoder.num_layers, dtype)
        logits, features = self._task_passes(states, [name])[name]
        if batch.get("labels") is None:
            return SidePass(logits, {}, logits.new_zeros(()))
        return self.training_loss(name, logits, batch["labels"], states, features)

    # -------------------------------------------------------------------------------------- unloading

    def _unload_and_optionally_merge(self, merge: bool = True, progressbar: bool = False, safe_merge: bool = False, adapter_names=None):
        """``unload()`` removes the hooks and returns the untouched encoder; a kept side network has nothing to merge."""
        if merge:
            raise ValueError(
                "A side task cannot be merged into the encoder: it is a network beside it. Keep the PeftModel to serve it "
                "(unload() returns the untouched encoder), or train with MDPDConfig and fade it into a plain model."
            )
        self._capture.remove()
        for handle in self._hook_handles:
            handle.remove()
        self._hook_handles = []
        return self.model

    def merge_adapter(self, adapter_names=None, safe_merge: bool = False) -> None:
        self._unload_and_optionally_merge(merge=True)


def side_task_model_of(model: nn.Module) -> SideTaskModel:
    """The ``SideTaskModel`` of a ``PeftModel`` (or the tuner itself); a clear error for any other model."""
    tuner = getattr(model, "base_model", model)
    if not isinstance(tuner, SideTaskModel):
        raise TypeError(f"Expected a model from get_peft_model(encoder, SideTaskConfig(...)) or load_side_tasks; got {type(model).__name__}.")
    return tuner
