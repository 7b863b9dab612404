"""Building a state cache: one eval-mode backbone pass over a dataset, its states written shard by shard.

Before writing, the build estimates the cache's size (``size.py``: real tokens x stored states x D x bytes per
value) and refuses one over ``max_bytes`` or the free disk space. A build writes ``build_key.json`` first, then each shard to a temporary file renamed when complete, and
``state_cache.json`` (the manifest) last: an interrupted build leaves complete shards and no manifest, so it is
never read, and building again into the folder with the same key resumes after the last complete shard.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..capture import BackboneCapture
from ..config import invalid
from .key import DTYPES, StaleStateCacheError, cache_tuner, dtype_name, key_for, model_inputs, rows_of
from .read import StateCache
from .size import CacheSize, check_max_bytes, check_room, estimate_size
from .storage import BUILD_KEY, MANIFEST, SIDE_OUTPUTS, quantized, read_key, shard_name, split_targets, write_json, write_shard


def shard_batches(dataset, start: int, stop: int, batch_size: int, names: list[str]):
    """The batches of rows ``start:stop`` as (positions in the shard, rows).

    Rows with an attention mask (text) run in order of length, so that a batch pads to little more than its own
    rows: Rotten Tomatoes sentences average 27 tokens, where a batch of 64 in reading order pads to about 55. Rows
    without one (images of one size) are read a batch at a time, in order.
    """
    if "attention_mask" not in names:
        for batch_start in range(start, stop, batch_size):
            batch_stop = min(batch_start + batch_size, stop)
            yield range(batch_start - start, batch_stop - start), rows_of(dataset, batch_start, batch_stop)
        return
    rows = rows_of(dataset, start, stop)
    order = sorted(range(len(rows)), key=lambda position: len(rows[position]["attention_mask"]))
    for first in range(0, len(order), batch_size):
        positions = order[first : first + batch_size]
        yield positions, [rows[position] for position in positions]


def padded_inputs(rows: list[dict], names: list[str], tokenizer) -> dict[str, torch.Tensor]:
    features = [{name: row[name] for name in names} for row in rows]
    if tokenizer is not None:
        return dict(tokenizer.pad(features, return_tensors="pt"))
    return {name: torch.stack([torch.as_tensor(row[name]) for row in features]) for name in names}


@torch.no_grad()
def backbone_states(tuner, inputs: dict[str, torch.Tensor], indices: tuple[int, ...]) -> torch.Tensor:
    """One eval-mode backbone pass: the states at ``indices``, (B, N, S, D)."""
    capture = BackboneCapture(tuner.model, tuner.encoder)
    capture.open(inputs.get("attention_mask"))
    try:
        with tuner.encoder_only():
            tuner.model(**inputs)
    finally:
        captured = capture.close()
        capture.remove()
    states = [captured.embeddings, *captured.layer_outputs]
    return torch.stack([states[i] for i in indices], dim=2)


def cache_size(tuner, dataset, tokenizer, indices: tuple[int, ...], dtype: str, examples_per_shard: int) -> CacheSize:
    """``size.estimate_size`` for the states at ``indices`` of ``tuner``'s encoder; rows without a mask or ids (images
    of one size) get the token count of one backbone pass on the first row."""
    names = model_inputs(tuner, rows_of(dataset, 0, 1)[0])
    widths = tuple((tuner.encoder.embedding_width, *tuner.encoder.layer_widths)[i] for i in indices)

    def probe_tokens() -> int:
        device = next(tuner.model.parameters()).device
        inputs = {k: v.to(device) for k, v in padded_inputs(rows_of(dataset, 0, 1), names, tokenizer).items()}
        return backbone_states(tuner, inputs, indices[:1]).shape[1]

    return estimate_size(dataset, names, widths, dtype, examples_per_shard, probe_tokens)


def estimate_state_cache_size(model, dataset, tokenizer=None, dtype: torch.dtype = torch.bfloat16, examples_per_shard: int = 4096) -> CacheSize:
    """The size ``build_state_cache(model, dataset, ...)`` would write, without building it (``size.py``'s formula).

    Returns:
        A ``CacheSize``: ``total`` bytes, ``describe()`` what they are made of, ``in_dtype(name)`` the total in another
        storage dtype.
    """
    tuner = cache_tuner(model)
    return cache_size(tuner, dataset, tokenizer, tuner.cached_state_indices(), dtype_name(dtype), examples_per_shard)


def build_state_cache(
    model,
    dataset,
    cache_dir: str | os.PathLike,
    tokenizer=None,
    max_length: int | None = None,
    dtype: torch.dtype = torch.bfloat16,
    batch_size: int = 64,
    examples_per_shard: int = 4096,
    overwrite: bool = False,
    max_bytes: int | None = None,
) -> "StateCache":
    """Run ``model``'s frozen backbone once over ``dataset`` and store what its side network reads.

    The cache takes about (real tokens) x (stored states) x D x (bytes per value) (the exact formula, with the
    per-example and per-shard overheads, is ``state_cache.size``'s): the stored states are the embeddings and each
    layer the side network reads (``side_layers``), the bytes per value the ``dtype``'s. Before writing anything the
    build estimates it and raises ``StateCacheTooLargeError`` when it exceeds ``max_bytes``, or when the shards still
    to write exceed the free space of ``cache_dir``'s filesystem less a margin (the smaller of 5% of the disk and
    1 GiB stays free).

    Args:
        model: a PeftModel with an MDPD adapter (its side network decides the stored layers; ladder or UniPT:
            SHERL and DTL re-run backbone layers on their own states, which no cache can hold).
        dataset: a tokenized ``datasets.Dataset`` (or any indexable of dicts) with the model's input columns
            and, for training, its targets (``labels``, or ``start_positions``/``end_positions``).
        cache_dir: the folder; a finished cache there with the same key is reused, an unfinished one resumed.
        tokenizer: pads each batch (``tokenizer.pad``) and enters the key; without it rows must have one length.
        max_length: the max length the dataset was tokenized with, for the key; rows longer are refused.
        dtype: storage precision: ``torch.float32``, ``torch.bfloat16`` (default: half the bytes), ``torch.float16``,
            or ``torch.int8`` (a quarter of float32's, plus a float32 scale per token and state: each token's state
            vector x is stored as round(x / s) with s = max|x| / 127 and read back as q * s in the training dtype, off
            by at most s / 2). The dtype is part of the key: a cache is never read as another dtype.
        overwrite: replace a cache of another key in ``cache_dir`` instead of refusing it.
        max_bytes: refuse to build a cache estimated larger than this many bytes (a positive int); None: only the
            free disk space limits it.

    Returns:
        The finished ``StateCache``.
    """
    check_max_bytes(max_bytes)
    tuner = cache_tuner(model)
    folder = Path(cache_dir)
    key = key_for(model, dataset, tokenizer, max_length, dtype)
    found = read_key(folder) if (folder / MANIFEST).exists() or (folder / BUILD_KEY).exists() else None
    if found is not None and found != key and not overwrite:
        raise StaleStateCacheError(
            f"{folder} holds states of another build (differs in {', '.join(key.differences(found))}); "
            "use another cache_dir, or build_state_cache(..., overwrite=True) to replace it."
        )
    if found == key and (folder / MANIFEST).exists():
        return StateCache(folder)
    replaced = []  # the files of another build, replaced (overwrite=True)
    if found is not None and found != key:
        replaced = [*folder.glob("states-*"), *folder.glob(SIDE_OUTPUTS.format("*")), *folder.glob("*.tmp"), folder / MANIFEST, folder / BUILD_KEY]
    elif found == key:
        examples_per_shard = json.loads((folder / BUILD_KEY).read_text())["examples_per_shard"]  # a resumed build keeps its sharding

    names = model_inputs(tuner, rows_of(dataset, 0, 1)[0])
    indices = key.hidden_state_indices
    num_shards = -(-len(dataset) // examples_per_shard)
    first_missing = 0 if replaced else next((i for i in range(num_shards) if not (folder / shard_name(i)).exists()), num_shards)
    size = cache_size(tuner, dataset, tokenizer, indices, key.dtype, examples_per_shard)
    check_room(size, first_missing, folder, max_bytes, freed=sum(path.stat().st_size for path in replaced if path.exists()))
    for path in replaced:
        path.unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / BUILD_KEY).exists():
        write_json(folder / BUILD_KEY, {"key": asdict(key), "examples_per_shard": examples_per_shard})

    training = tuner.model.training
    tuner.model.eval()
    device = next(tuner.model.parameters()).device
    progress = tqdm(total=len(dataset), initial=first_missing * examples_per_shard, desc="Caching backbone states", unit="example")
    try:
        for shard in range(first_missing, num_shards):
            start, stop = shard * examples_per_shard, min((shard + 1) * examples_per_shard, len(dataset))
            examples, targets = [None] * (stop - start), {}  # in the dataset's order, whatever order the batches ran in
            scales = [None] * (stop - start) if key.dtype == "int8" else None
            for positions, rows in shard_batches(dataset, start, stop, batch_size, names):
                inputs = {k: v.to(device) for k, v in padded_inputs(rows, names, tokenizer).items()}
                if max_length is not None and "input_ids" in inputs and inputs["input_ids"].shape[1] > max_length:
                    raise invalid("max_length", max_length, f"at least the length of every row of the dataset (one has {inputs['input_ids'].shape[1]} tokens)", "build_state_cache")
                states = backbone_states(tuner, inputs, indices)  # (B, N, S, D)
                if scales is not None:
                    states, batch_scales = quantized(states)  # int8 (B, N, S, D), float32 (B, N, S)
                    batch_scales = batch_scales.cpu()
                states = states.to(DTYPES[key.dtype]).cpu()
                mask = inputs.get("attention_mask")
                real = mask.bool().cpu() if mask is not None and mask.dim() == 2 else torch.ones(states.shape[:2], dtype=torch.bool)
                for row, (position, row_real) in enumerate(zip(positions, real)):
                    examples[position] = states[row][row_real]  # (n_i, S, D)
                    if scales is not None:
                        scales[position] = batch_scales[row][row_real]  # (n_i, S)
                for name, values in split_targets(rows, real).items():
                    slots = targets.setdefault(name, [None] * (stop - start))
                    for position, value in zip(positions, values):
                        slots[position] = value
                progress.update(len(rows))
            write_shard(folder / shard_name(shard), examples, targets, scales)
    finally:
        progress.close()
        tuner.model.train(training)
    shards = [shard_name(i) for i in range(num_shards)]
    write_json(folder / MANIFEST, {"key": asdict(key), "num_examples": len(dataset), "shards": shards})
    return StateCache(folder)
