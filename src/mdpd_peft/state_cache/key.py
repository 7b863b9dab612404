"""The key of a state cache: what the stored states depend on, so that a cache is never read for other states.

``StateCacheKey`` covers the weights that compute the states (embeddings, layers and the adapter's LayerNorm copies;
the task head is not read), the model config, the input token ids (what the tokenizer and max length produced), the
tokenizer, the max length, the stored layers and the storage dtype. Opening or extending a cache whose key differs
raises ``StaleStateCacheError`` naming the fields that differ. The helpers that read a dataset's rows and a tuner's
inputs live here too: the key hashes the inputs, and building and reading iterate them alike.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import asdict, dataclass

import torch
from peft.utils import ModulesToSaveWrapper

from ..config import invalid
from ..forward_pass import TARGET_ARGUMENTS

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "int8": torch.int8}  # storage dtypes, by key name
FORMAT_VERSION = 1
CONFIG_FIELDS_IGNORED = ("use_cache",)  # a decoding switch


class StaleStateCacheError(ValueError):
    """The cache was built for other weights, config, inputs, layers or dtype than it is used with."""


@dataclass(frozen=True)
class StateCacheKey:
    """What the stored states depend on; two equal keys mean equal states."""

    weights: str  # sha256 of the parameters and buffers that compute the states (head excluded)
    config: str  # sha256 of the model config
    inputs: str  # sha256 of the input token ids (or pixels) of every example, in order
    tokenizer: str | None  # sha256 of the tokenizer's vocabulary and rules, when one was given
    max_length: int | None
    hidden_state_indices: tuple[int, ...]  # 0: embeddings, l + 1: output of layer l
    dtype: str
    format: int = FORMAT_VERSION

    def differences(self, other: "StateCacheKey", fields: tuple[str, ...] | None = None) -> list[str]:
        names = fields or tuple(asdict(self))
        return [name for name in names if getattr(self, name) != getattr(other, name)]


def sha256_of(chunks) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk if isinstance(chunk, bytes) else str(chunk).encode())
    return digest.hexdigest()


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def state_hash(state: dict[str, torch.Tensor]) -> str:
    """sha256 of named tensors: names, shapes, dtypes and bytes."""
    return sha256_of(f"{name}:{tuple(t.shape)}:{t.dtype}".encode() + tensor_bytes(t) for name, t in state.items())


def weights_hash(model: torch.nn.Module) -> str:
    """sha256 of every parameter and buffer of the transformers model under the tuner except the task head's
    (``modules_to_save``): the head reads no stored state and trains in the side phase."""
    heads = tuple(name + "." for name, module in model.named_modules() if isinstance(module, ModulesToSaveWrapper))
    return state_hash({name: t for name, t in model.state_dict().items() if not name.startswith(heads)})


def side_network_hash(tuner) -> str:
    """sha256 of the active side network's class and weights (its head included): besides the stored states,
    all its eval-mode logits depend on."""
    side = tuner.mdpd_side[tuner.active_adapters[0]]
    return sha256_of([type(side).__name__, state_hash(side.state_dict())])


def config_hash(model: torch.nn.Module) -> str:
    """sha256 of the model config, less the fields that change no state (the Trainer turns ``use_cache`` off)."""
    fields = {name: value for name, value in model.config.to_dict().items() if name not in CONFIG_FIELDS_IGNORED}
    return sha256_of([json.dumps(fields, sort_keys=True, default=str)])


def tokenizer_hash(tokenizer) -> str | None:
    """The vocabulary and rules that turn text into ids. A fast tokenizer's truncation and padding settings are left
    out: each call with ``truncation=``/``padding=`` (and ``tokenizer.pad``) rewrites them in the backend, so they
    tell which call ran last (none, when 🤗 datasets took a tokenized split from its own cache), not the ids."""
    if tokenizer is None:
        return None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        settings = {name: value for name, value in json.loads(backend.to_str()).items() if name not in ("truncation", "padding")}
        rules = json.dumps(settings, sort_keys=True)
    else:
        rules = json.dumps(sorted(tokenizer.get_vocab().items()))
    return sha256_of([rules, type(tokenizer).__name__, tokenizer.padding_side])


def cache_tuner(model):
    """The tuner of a PeftModel (or the tuner itself) whose side networks can train on cached states: MDPD's, or the
    kept side tasks' (``SideTaskModel``). Both give ``encoder``, ``cached_state_indices()``, ``encoder_only()`` and
    ``side_pass_on_cached_states(batch)``."""
    tuner = getattr(model, "base_model", model)
    if not hasattr(tuner, "cached_state_indices"):
        raise TypeError(
            "The state cache needs a model from get_peft_model(model, MDPDConfig(...)) or get_peft_model(encoder, "
            f"SideTaskConfig(...)); got {type(model).__name__}."
        )
    return tuner


def model_inputs(tuner, row_names) -> list[str]:
    """The columns the transformers model takes as inputs (targets excluded)."""
    parameters = inspect.signature(tuner.model.forward).parameters
    return [name for name in row_names if name in parameters and name not in TARGET_ARGUMENTS]


def rows_of(dataset, start: int, stop: int) -> list[dict]:
    if hasattr(dataset, "select"):  # datasets.Dataset: one Arrow read per batch
        batch = dataset[start:stop]
        return [dict(zip(batch, values)) for values in zip(*batch.values())]
    return [dataset[i] for i in range(start, stop)]


def inputs_hash(dataset, names: list[str], batch_size: int = 256) -> str:
    def chunks():
        for start in range(0, len(dataset), batch_size):
            for row in rows_of(dataset, start, min(start + batch_size, len(dataset))):
                for name in names:
                    yield tensor_bytes(torch.as_tensor(row[name])) + b"|"

    return sha256_of(chunks())


def key_for(model, dataset, tokenizer, max_length, dtype: torch.dtype) -> StateCacheKey:
    """The key of the states ``model`` computes for ``dataset`` (every field, inputs included)."""
    tuner = cache_tuner(model)
    names = model_inputs(tuner, rows_of(dataset, 0, 1)[0])
    return StateCacheKey(
        weights=weights_hash(tuner.model),
        config=config_hash(tuner.model),
        inputs=inputs_hash(dataset, names),
        tokenizer=tokenizer_hash(tokenizer),
        max_length=max_length,
        hidden_state_indices=tuner.cached_state_indices(),
        dtype=dtype_name(dtype),
    )


def dtype_name(dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise invalid("dtype", dtype, f"one of {tuple(DTYPES)}", "build_state_cache")
    return name
