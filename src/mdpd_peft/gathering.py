"""Fading a model that 🤗 accelerate may have wrapped or sharded (DDP, FSDP, DeepSpeed ZeRO), or that was sharded
by hand with torch's FSDP2 (``fully_shard``)."""

from __future__ import annotations

import copy

import torch.distributed as dist
from accelerate import Accelerator
from peft import PeftModel, get_peft_model
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor
from transformers import PreTrainedModel


def is_sharded(model: nn.Module) -> bool:
    """Whether some parameter is a DTensor shard: the model went through torch's ``fully_shard``."""
    return any(isinstance(parameter, DTensor) for parameter in model.parameters())


def unsharded_class(module: nn.Module) -> type[nn.Module]:
    """The class a module had before ``fully_shard`` gave it an ``FSDP<Class>`` subclass."""
    return next(cls for cls in type(module).__mro__ if not issubclass(cls, FSDPModule))


def gathered_state_dict(model: nn.Module, accelerator: Accelerator | None) -> dict:
    """The model's full weights on the main process (every process must call it; others may get nothing).

    A model sharded by hand with ``fully_shard`` is gathered by torch (accelerate sees no FSDP there, e.g. on
    CPU, where it sets up DDP); otherwise ``accelerator.get_state_dict`` gathers what accelerate sharded.
    """
    if is_sharded(model):
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return accelerator.get_state_dict(model) if accelerator is not None else model.state_dict()


def gathered_faded_model(model: nn.Module, accelerator: Accelerator | None = None) -> PreTrainedModel | None:
    """The faded (``merge_and_unload()``) copy of a trained MDPD model, on the main process; ``None`` elsewhere.

    Every process must call it: the full weights are gathered first (``gathered_state_dict``), since FSDP and
    DeepSpeed ZeRO-3 keep them sharded across the processes. The main process loads them into an unsharded
    twin of the model, built on the CPU from the base model's config and the active adapter's config, and
    fades that twin. The model being trained is left as it is, so training can go on. Under DDP or on one
    process the gathered weights are simply the model's own. Without ``accelerator`` the main process is
    rank 0 of torch.distributed's default group (or the only process).
    """
    peft_model: PeftModel = accelerator.unwrap_model(model) if accelerator is not None else model
    state = gathered_state_dict(model, accelerator)
    main = accelerator.is_main_process if accelerator is not None else not dist.is_initialized() or dist.get_rank() == 0
    if not main:
        return None
    base = peft_model.get_base_model()
    twin_base = unsharded_class(base)(base.config).to(base.dtype)
    adapter_name = peft_model.active_adapter
    twin = get_peft_model(twin_base, copy.deepcopy(peft_model.peft_config[adapter_name]), adapter_name=adapter_name)
    loaded = twin.load_state_dict({name: tensor.cpu() for name, tensor in state.items()}, strict=False)  # other adapters' weights stay out
    if loaded.missing_keys:
        raise RuntimeError(f"The gathered state dict lacks weights of the model, e.g. {loaded.missing_keys[:3]}.")
    return twin.merge_and_unload()
