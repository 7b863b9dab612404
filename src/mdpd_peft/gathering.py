"""Fading a model that 🤗 accelerate may have wrapped or sharded (DDP, FSDP, DeepSpeed ZeRO)."""

from __future__ import annotations

import copy

from accelerate import Accelerator
from peft import PeftModel, get_peft_model
from torch import nn
from transformers import PreTrainedModel


def gathered_faded_model(model: nn.Module, accelerator: Accelerator) -> PreTrainedModel | None:
    """The faded (``merge_and_unload()``) copy of a trained MDPD model, on the main process; ``None`` elsewhere.

    Every process must call it: ``accelerator.get_state_dict`` gathers the full weights, which FSDP and
    DeepSpeed ZeRO-3 keep sharded across the processes. The main process loads them into an unsharded twin
    of the model, built on the CPU from the base model's config and the active adapter's config, and fades
    that twin. The model being trained is left as it is, so training can go on. Under DDP or on one
    process the gathered weights are simply the model's own.
    """
    peft_model: PeftModel = accelerator.unwrap_model(model)
    state = accelerator.get_state_dict(model)
    if not accelerator.is_main_process:
        return None
    base = peft_model.get_base_model()
    twin_base = type(base)(base.config).to(base.dtype)
    adapter_name = peft_model.active_adapter
    twin = get_peft_model(twin_base, copy.deepcopy(peft_model.peft_config[adapter_name]), adapter_name=adapter_name)
    loaded = twin.load_state_dict({name: tensor.cpu() for name, tensor in state.items()}, strict=False)  # other adapters' weights stay out
    if loaded.missing_keys:
        raise RuntimeError(f"The gathered state dict lacks weights of the model, e.g. {loaded.missing_keys[:3]}.")
    return twin.merge_and_unload()
