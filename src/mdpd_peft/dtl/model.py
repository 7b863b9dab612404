"""DTLModel: DTL's compact side network as a PEFT tuner, acting on the encoder through forward hooks."""

from __future__ import annotations

from functools import partial

import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from torch import nn

from ..architecture import map_encoder
from ..config import invalid
from ..fading import checkpoints
from ..forward_pass import layer_input, layer_output
from ..shared_state import WrapsNoLayer, place_adapter_module, restore_original_modules
from ..side_networks.base import require_uniform_width
from ..side_networks.dtl import CompactSideNetwork, dtl_inject_from
from .config import DTLConfig


MERGE_ERROR = (
    "DTL cannot be merged: from block M on, every block's output gets a sum of maps of all earlier blocks' inputs, "
    "which no weight of one block can express. Keep the PeftModel for inference (unload() removes DTL), or train with "
    "MDPDConfig(side_network='dtl') and fade it with merge_and_unload() into a plain model."
)


def with_hidden(output, hidden: torch.Tensor):
    """``output`` (a tensor or a tuple led by the hidden states) with its hidden states replaced."""
    return hidden if isinstance(output, torch.Tensor) else (hidden, *output[1:])


class DTLModel(WrapsNoLayer, BaseTuner):
    """DTL as a PEFT tuner: ``get_peft_model(model, DTLConfig(...))``.

    Each adapter's ``CompactSideNetwork`` lives on the tuner. Hooks on the encoder layers add each
    block input's low-rank map to a running sum before the block runs and, from block M on, add the
    side information to the block's output; the base model's weights stay frozen and unwrapped, so
    gradients reach the maps through the frozen blocks from M on (what DTL's memory saving rests on:
    blocks before M store nothing for backward).
    """

    prefix: str = "dtl_"
    tuner_layer_cls = BaseTunerLayer  # DTL wraps no layer
    target_module_mapping: dict = {}
    uses_shared_state: bool = True
    adapter_containers = ("dtl_csn",)

    def _create_and_replace(self, peft_config, adapter_name, target, target_name, parent, current_key, **kwargs):
        raise NotImplementedError("DTL wraps no module; its target_modules are PEFT's dummy targets.")

    def inject_adapter(self, model: nn.Module, adapter_name: str, autocast_adapter_dtype: bool = True, **kwargs) -> None:
        config: DTLConfig = self.peft_config[adapter_name]
        encoder = map_encoder(model, config)
        require_uniform_width(encoder, "dtl")
        if encoder.num_layers != len(encoder.layers(model)):
            raise invalid("layers_path", config.layers_path, "the layer list of a model whose layers do not share weights (DTL maps each block)", "DTLConfig")
        inject_from = dtl_inject_from(encoder, config.inject_from, "inject_from", "DTLConfig")
        if not hasattr(self, "dtl_csn"):
            self.dtl_csn = nn.ModuleDict()
            self._hook_handles: list = []
            self._running_sum: torch.Tensor | None = None
            self._real: torch.Tensor | None = None
        csn = CompactSideNetwork(encoder.hidden_size, encoder.num_layers, config.rank, inject_from, config.conv_kernel, encoder.is_vision)
        self.dtl_csn[adapter_name] = place_adapter_module(csn, model)
        self._layers_path = encoder.layers_path
        super().inject_adapter(model, adapter_name, autocast_adapter_dtype=autocast_adapter_dtype, **kwargs)
        self._register_hooks()
        self._sync_trainability()

    # ------------------------------------------------------------------------------------------ hooks

    def _register_hooks(self) -> None:
        if self._hook_handles:
            return
        # Bound methods (in partials), not closures: copy.deepcopy of the model rebinds them to the copy's tuner.
        self._hook_handles = [self.model.register_forward_pre_hook(self._begin_forward, with_kwargs=True)]
        for index, layer in enumerate(self.model.get_submodule(self._layers_path)):
            self._hook_handles.append(layer.register_forward_pre_hook(partial(self._accumulate, index), with_kwargs=True))
            self._hook_handles.append(layer.register_forward_hook(partial(self._inject, index)))
        self._hook_handles.append(self.model.register_forward_hook(self._finish_forward))

    def _active_csn(self) -> CompactSideNetwork | None:
        if not self._adapters_enabled or not self.active_adapters or self.active_adapters[0] not in self.dtl_csn:
            return None
        return self.dtl_csn[self.active_adapters[0]]

    def _begin_forward(self, module, args, kwargs):
        if self.model.training and self._active_csn() is not None and checkpoints(self.model):
            raise ValueError(
                "DTL cannot train with gradient checkpointing: a recomputed block would add the side information again "
                "outside the forward pass. Disable it (model.gradient_checkpointing_disable(), or gradient_checkpointing="
                "False in TrainingArguments); DTL stores only the blocks from inject_from on."
            )
        mask = kwargs.get("attention_mask")
        self._real = mask.bool() if mask is not None and mask.dim() == 2 else None
        self._running_sum = None

    def _finish_forward(self, module, args, output):
        self._running_sum = self._real = None  # hold no graph between passes

    def _accumulate(self, index: int, module, args, kwargs):
        """Before block ``index``: z <- z + B A x."""
        csn = self._active_csn()
        if csn is None:
            return
        hidden = layer_input(args, kwargs)
        mapped = csn.maps[index](hidden.to(csn.maps[index].up.weight.dtype))
        self._running_sum = mapped if self._running_sum is None else self._running_sum + mapped

    def _inject(self, index: int, module, args, output):
        """After block ``index`` >= M: add the side information."""
        csn = self._active_csn()
        if csn is None or index < csn.inject_from or self._running_sum is None:
            return output
        hidden = layer_output(output)
        real = self._real if self._real is not None and self._real.shape == hidden.shape[:2] else None
        return with_hidden(output, hidden + csn.side_information(self._running_sum, real).to(hidden.dtype))

    # ------------------------------------------------------------------------------------- unloading

    def merge_adapter(self, adapter_names=None, safe_merge: bool = False) -> None:
        raise ValueError(MERGE_ERROR)

    def _unload_and_optionally_merge(self, merge: bool = True, progressbar: bool = False, safe_merge: bool = False, adapter_names=None):
        """``unload()`` removes the hooks and returns the untouched base model; merging is impossible."""
        if merge:
            raise ValueError(MERGE_ERROR)
        for handle in self._hook_handles:
            handle.remove()
        self._hook_handles = []
        restore_original_modules(self.model)
        return self.model
