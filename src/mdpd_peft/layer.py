"""Adapter-held copies of the backbone modules that fading may change (by default every LayerNorm)."""

from __future__ import annotations

import copy

import torch
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn
from torch.func import functional_call


class MDPDLayer(nn.Module, BaseTunerLayer):
    """Wraps one backbone module; each adapter trains its own copy of it.

    The base module stays untouched, so ``unload()`` returns the original model. Merging swaps the
    trained copy in as the base module (and unmerging swaps it back), which makes fading lossless:
    the faded model computes exactly what the adapter's backbone path computed.

    In a half-precision model PEFT upcasts the copy to float32 (``autocast_adapter_dtype``): LayerNorm
    scales near 1.0 cannot take AdamW's small updates in bfloat16, and its state underflows in float16.
    The copy then computes in the model's dtype, and merging rounds it to that dtype.
    """

    adapter_layer_names = ("mdpd_copies",)
    # Set by the tuner before each training pass; False holds the copy still for that pass
    # (``MDPDConfig.fading_interval``), so that no autograd graph is built through the backbone.
    learns: bool = True

    def __init__(self, base_layer: nn.Module, adapter_name: str, inference_mode: bool = False):
        super().__init__()
        self.base_layer = base_layer
        self.mdpd_copies = nn.ModuleDict({})
        self._active_adapter = adapter_name
        self.merged_adapters = []
        self.update_layer(adapter_name, inference_mode)

    def update_layer(self, adapter_name: str, inference_mode: bool = False) -> None:
        self.mdpd_copies[adapter_name] = copy.deepcopy(self.get_base_layer())
        self.set_adapter(adapter_name, inference_mode=inference_mode)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Swap the adapter's trained copy in as the base module (there is no arithmetic, so ``safe_merge`` is moot)."""
        adapter_names = check_adapters_to_merge(self, adapter_names)
        if not adapter_names:
            return
        if len(adapter_names) > 1:
            raise ValueError(f"MDPD can merge one adapter per module, got {adapter_names}.")
        name = adapter_names[0]
        self._copy_dtype = parameter_dtype(self.mdpd_copies[name])
        merged = self.mdpd_copies[name].to(parameter_dtype(self.base_layer))
        self.base_layer, self.mdpd_copies[name] = merged, self.base_layer
        self.merged_adapters.append(name)

    def unmerge(self) -> None:
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            self.base_layer, self.mdpd_copies[name] = self.mdpd_copies[name], self.base_layer
            self.mdpd_copies[name].to(self._copy_dtype)

    def forward(self, *args, **kwargs):
        if self.disable_adapters or self.merged or self.active_adapters[0] not in self.mdpd_copies:
            return self.base_layer(*args, **kwargs)
        trained = self.mdpd_copies[self.active_adapters[0]]
        dtype = parameter_dtype(self.base_layer)
        if self.learns and parameter_dtype(trained) == dtype:
            return trained(*args, **kwargs)
        weights = {  # a differentiable cast, or the values alone when held still
            name: (parameter if self.learns else parameter.detach()).to(dtype) for name, parameter in trained.named_parameters()
        }
        return functional_call(trained, weights, args, kwargs)

    def __repr__(self) -> str:
        return "mdpd." + super().__repr__()


def parameter_dtype(module: nn.Module) -> torch.dtype | None:
    """The dtype of the module's first parameter (None for a module without parameters)."""
    return next((parameter.dtype for parameter in module.parameters()), None)
