"""What tuners that keep adapter modules on themselves (MDPD, DTL) share: checkpoint keys and unloading."""

from __future__ import annotations

import re

from peft.tuners.tuners_utils import _get_submodules
from peft.utils import ModulesToSaveWrapper
from torch import nn


class TunerHeldModules:
    """Mixin for a ``BaseTuner`` that keeps per-adapter modules in ``nn.ModuleDict`` attributes of its own
    (``adapter_containers``): MDPD's side network, DTL's compact side network. Their keys carry the adapter
    name in the middle (``base_model.mdpd_side.default.blocks...``), where PEFT's default looks only at the
    end; saving drops it there, and loading maps keys back through the same rule."""

    adapter_containers: tuple[str, ...] = ()

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        for container in cls.adapter_containers:
            pattern = rf"(^|\.){container}\.{re.escape(adapter_name)}(\.|$)"
            if re.search(pattern, key):
                return re.sub(pattern, rf"\g<1>{container}\g<2>", key, count=1)
        return super()._remove_adapter_name_from_key(key, adapter_name)


def restore_original_modules(model: nn.Module) -> None:
    """Put each ``modules_to_save`` wrapper's original module back: ``unload()`` returns the untouched base
    (PEFT's own keeps the trained copy), so that it really undoes the adapter."""
    for name, module in list(model.named_modules()):
        if isinstance(module, ModulesToSaveWrapper):
            parent, _, child_name = _get_submodules(model, name)
            setattr(parent, child_name, module.original_module)
