"""What tuners that keep adapter modules on themselves (MDPD, DTL) share: checkpoint keys and unloading."""

from __future__ import annotations

import re
from contextlib import contextmanager

import torch
from peft.tuners.tuners_utils import _get_submodules
from peft.utils import ModulesToSaveWrapper
from torch import nn


class TunerHeldModules:
    """Mixin for a ``BaseTuner`` that keeps per-adapter modules in ``nn.ModuleDict`` attributes of its own
    (``adapter_containers``): MDPD's side network, DTL's compact side network. Their keys carry the adapter
    name in the middle (``base_model.mdpd_side.default.blocks...``), where PEFT's default looks only at the
    end; saving drops it there, and loading maps keys back through the same rule. Their dtype follows
    ``autocast_adapter_dtype`` as PEFT's layers do."""

    adapter_containers: tuple[str, ...] = ()

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        for container in cls.adapter_containers:
            pattern = rf"(^|\.){container}\.{re.escape(adapter_name)}(\.|$)"
            if re.search(pattern, key):
                return re.sub(pattern, rf"\g<1>{container}\g<2>", key, count=1)
        return super()._remove_adapter_name_from_key(key, adapter_name)

    @contextmanager
    def encoder_only(self):
        """Run the encoder as loaded with the tuner's copies, but no side network, inside the block (how a state cache
        records it)."""
        enabled = self._adapters_enabled
        self._adapters_enabled = False
        try:
            yield
        finally:
            self._adapters_enabled = enabled

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        """PEFT casts its layers' weights once the adapter is injected; the modules held here follow the same rule."""
        super()._cast_adapter_dtype(adapter_name, autocast_adapter_dtype=autocast_adapter_dtype)
        for container in self.adapter_containers:
            modules = getattr(self, container, None)
            if isinstance(modules, nn.ModuleDict) and adapter_name in modules:
                place_adapter_module(modules[adapter_name], self.model, autocast_adapter_dtype)


class WrapsNoLayer(TunerHeldModules):
    """Mixin for a tuner whose adapters are only the modules it holds (DTL, kept side tasks): nothing in the model is
    wrapped, so PEFT's layer-based bookkeeping of trainability and active adapters is done here. An adapter's modules
    train when it is active, adapters are enabled and it is not in inference mode."""

    _adapters_enabled = True

    def _held_modules(self, adapter_name: str) -> list[nn.Module]:
        return [getattr(self, c)[adapter_name] for c in self.adapter_containers if adapter_name in getattr(self, c, {})]

    def _sync_trainability(self, inference_mode: bool | None = None) -> None:
        """(``None``: each adapter's ``config.inference_mode``.)"""
        for name in self.peft_config:
            frozen = self.peft_config[name].inference_mode if inference_mode is None else inference_mode
            for module in self._held_modules(name):
                module.requires_grad_(name in self.active_adapters and self._adapters_enabled and not frozen)

    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        super().set_adapter(adapter_name, inference_mode=inference_mode)
        self._sync_trainability(inference_mode)

    def set_requires_grad(self, adapter_names: str | list[str], requires_grad: bool = True) -> None:
        super().set_requires_grad(adapter_names, requires_grad=requires_grad)
        for name in adapter_names_of(adapter_names):
            for module in self._held_modules(name):
                module.requires_grad_(requires_grad)

    def _enable_adapter_layers(self, enabled: bool = True) -> None:
        super()._enable_adapter_layers(enabled)
        self._adapters_enabled = enabled
        self._sync_trainability()

    def delete_adapter(self, adapter_name: str) -> None:
        """PEFT reads the adapters left active from the wrapped layers; there are none, so they are picked here."""
        still_active = [name for name in self.active_adapters if name != adapter_name]
        super().delete_adapter(adapter_name)
        for container in self.adapter_containers:
            del getattr(self, container)[adapter_name]
        remaining = still_active or list(self.peft_config)[:1]
        if remaining:
            self.set_adapter(remaining, inference_mode=self.peft_config[remaining[0]].inference_mode)


def restore_original_modules(model: nn.Module) -> None:
    """Put each ``modules_to_save`` wrapper's original module back: ``unload()`` returns the untouched base
    (PEFT's own keeps the trained copy), so that it really undoes the adapter."""
    for name, module in list(model.named_modules()):
        if isinstance(module, ModulesToSaveWrapper):
            parent, _, child_name = _get_submodules(model, name)
            setattr(parent, child_name, module.original_module)


def adapter_names_of(adapter_names: str | list[str]) -> list[str]:
    """PEFT's ``adapter_names`` arguments take one name or several."""
    return [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)


def place_adapter_module(module: nn.Module, model: nn.Module, autocast_adapter_dtype: bool = True) -> nn.Module:
    """Put a tuner-held adapter module where PEFT puts its layers' weights: on the model's device, in the model's
    float dtype, upcast from half precision to float32 when ``autocast_adapter_dtype`` (PEFT's default). Under
    ``low_cpu_mem_usage=True`` it stays on the meta device, where the loaded weights replace it."""
    reference = next(p for p in model.parameters() if p.is_floating_point())
    dtype = reference.dtype
    if autocast_adapter_dtype and dtype in (torch.float16, torch.bfloat16):
        dtype = torch.float32
    on_meta = any(p.is_meta for p in module.parameters())
    return module.to(device=None if on_meta else reference.device, dtype=dtype)
