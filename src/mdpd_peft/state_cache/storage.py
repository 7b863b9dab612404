"""The files of a state cache folder: the shards of states and targets, the key files, the stored side outputs.

Storage: safetensors shards of ``examples_per_shard`` examples, memory-mapped when read. Each shard holds one
(tokens, states, D) tensor, so one example is one contiguous slice (one read per example, whatever the number of
layers), and bfloat16 is stored as is (Arrow has no bfloat16 type). Measured with
``benchmarks/state_cache.py --storage``. Every file is written to a temporary name and renamed when complete.

``dtype=torch.int8`` stores each token's state vector x (D,) as int8 with a float32 scale beside it, symmetric
absmax: s = max|x_j| / 127, q = round(x / s); read back as q * s in the training dtype, so every value is off by at
most s / 2 = max|x_j| / 254 (half a step). A shard then holds ``hidden_state_scales`` (T, S) too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..forward_pass import TARGET_ARGUMENTS
from .key import StateCacheKey

MANIFEST = "state_cache.json"  # written last: a folder without it holds an unfinished build
SIDE_OUTPUTS = "side-logits-{}.safetensors"  # one file per side network, named by its side_network_hash
BUILD_KEY = "build_key.json"  # written first: the key the shards in the folder belong to
SCALES = "hidden_state_scales"  # int8 storage: each token's scale per state, beside ``hidden_states``
SAFETENSORS_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16", "int8": "I8"}  # key dtype -> stored


def shard_name(index: int) -> str:
    return f"states-{index:05d}.safetensors"


def write_json(path: Path, content: dict) -> None:
    """Write ``path`` whole or not at all (temporary file, then rename)."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(content, indent=1))
    os.replace(temporary, path)


def write_shard(path: Path, examples: list[torch.Tensor], targets: dict[str, list[torch.Tensor]], scales: list[torch.Tensor] | None = None) -> None:
    """One shard: ``hidden_states`` (T, S, D) of its examples' real tokens, ``offsets`` (n + 1,) where each example
    starts, sequence-level targets stacked (n, ...) and per-token targets flat (T, ...) like the states; for int8
    states their ``scales`` (n_i, S) per example, as ``hidden_state_scales`` (T, S)."""
    lengths = torch.tensor([0] + [len(example) for example in examples])
    tensors = {"hidden_states": torch.cat(examples).contiguous(), "offsets": lengths.cumsum(0)}
    if scales is not None:
        tensors[SCALES] = torch.cat(scales).contiguous()
    for name, values in targets.items():
        per_token = all(v.dim() >= 1 and v.shape[0] == len(e) for v, e in zip(values, examples)) and any(v.dim() >= 1 for v in values)
        tensors[f"{'token' if per_token else 'sequence'}_target.{name}"] = torch.cat(values) if per_token else torch.stack(values)
    write_tensors(path, tensors)


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file whole or not at all (temporary file, then rename)."""
    temporary = path.with_suffix(".tmp")
    save_file(tensors, str(temporary), metadata=metadata)
    os.replace(temporary, path)


def read_key(folder: Path) -> StateCacheKey:
    path = folder / MANIFEST if (folder / MANIFEST).exists() else folder / BUILD_KEY
    fields = json.loads(path.read_text())["key"]
    return StateCacheKey(**{**fields, "hidden_state_indices": tuple(fields["hidden_state_indices"])})


def split_targets(rows: list[dict], real: torch.Tensor) -> dict[str, list[torch.Tensor]]:
    """Each example's targets; per-token labels (one per input position) keep their real tokens only."""
    targets = {}
    for name in TARGET_ARGUMENTS:
        if name in rows[0] and rows[0][name] is not None:
            values = []
            for row, row_real in zip(rows, real):
                value = torch.as_tensor(row[name])
                if value.dim() == 1 and value.shape[0] == row_real.shape[0] and row_real.shape[0] > 1:
                    value = value[row_real]
                values.append(value)
            targets[name] = values
    return targets


def quantized(states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 storage of states (..., D): each vector over D as int8 with a float32 scale, symmetric absmax / 127.
    Returns (int8 (..., D), scales (...)); an all-zero vector gets scale 0."""
    states = states.float()
    scales = states.abs().amax(dim=-1) / 127
    steps = torch.round(states / scales.clamp_min(torch.finfo(torch.float32).tiny).unsqueeze(-1))
    return steps.clamp(-127, 127).to(torch.int8), scales


def stored_states(batch: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """A collated batch's (or an example's) stored states in ``dtype``, (B, N, S, D) (or (n, S, D)); int8 states are
    dequantized (q * s, computed in float32, in place on the converted copy: a third of the time of q.float() * s)."""
    if SCALES in batch:
        return batch["hidden_states"].float().mul_(batch[SCALES].float().unsqueeze(-1)).to(dtype)
    return batch["hidden_states"].to(dtype)
