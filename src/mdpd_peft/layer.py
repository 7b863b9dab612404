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

    As PEFT's layers do, it exposes the wrapped module's ``in_features`` / ``out_features`` (a norm's width
    for both), and a disabled adapter unmerges first, so that ``disable_adapter()`` gives the base output.
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
        self.in_features, self.out_features = module_features(base_layer)
        self.update_layer(adapter_name, inference_mode)

    def update_layer(self, adapter_name: str, inference_mode: bool = False) -> None:
        self.mdpd_copies[adapter_name] = copy.deepcopy(self.get_base_layer())
        self.set_adapter(adapter_name, inference_mode=inference_mode)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Swap the adapter's trained copy in as the base module. ``safe_merge=True`` first refuses a copy
        holding NaN or inf (there is no arithmetic to check, only the weights that would ship)."""
        adapter_names = check_adapters_to_merge(self, adapter_names)
        if not adapter_names:
            return
        if len(adapter_names) > 1:
            raise ValueError(f"MDPD can merge one adapter per module, got {adapter_names}.")
        name = adapter_names[0]
        if safe_merge:
            require_finite(self.mdpd_copies[name], name, f"its copy of {type(self.base_layer).__name__}")
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
        if self.disable_adapters and self.merged:
            self.unmerge()  # as PEFT's LoRA and LN tuning: a disabled adapter computes the base module
        if self.disable_adapters or self.merged or not self.active_adapters or self.active_adapters[0] not in self.mdpd_copies:
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


def module_features(module: nn.Module) -> tuple[int | None, int | None]:
    """(in_features, out_features) as PEFT's layers expose them; a norm's width for both; None where unknown."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    width = getattr(module, "normalized_shape", None) or getattr(getattr(module, "weight", None), "shape", None)
    return (int(width[-1]),) * 2 if width else (None, None)


def require_finite(module: nn.Module, adapter_name: str, what: str) -> None:
    """``safe_merge=True``: refuse to ship weights that hold NaN or inf, naming them. The message opens with
    PEFT's own sentence, which callers match on."""
    broken = [name for name, parameter in module.named_parameters() if not torch.isfinite(parameter).all()]
    if broken:
        raise ValueError(
            f"NaNs detected in the merged weights. The adapter {adapter_name} seems to be broken: safe_merge=True refused "
            f"to merge {what}, whose {', '.join(broken)} hold NaN or inf values. Nothing was merged."
        )
