"""How big a state cache will be, told before anything is written, and the refusal of one that would not fit.

A cache stores, for every example, each stored state of each real token (padding is never stored):

    bytes ~= sum over examples of  n_i * (sum over stored states s of D_s) * b   (the states)
                                 + n_i * S * 4                               (int8 only: a float32 scale per token and state)
                                 + 8 + target bytes                          (the example's offset and its targets)
             + 512 per shard + 1 KiB                                         (safetensors headers, the key and manifest)

with n_i the example's real tokens (its attention mask's sum, its ``input_ids``' length, or for rows of one size
without either, images, the token count of one backbone pass), S the stored states (the embeddings and each layer
the side networks read: ``side_layers``), D_s their widths and b the storage dtype's bytes per value (float32 4,
bfloat16 and float16 2, int8 1). Per-token targets (token classification) cost n_i times their item size.
BERT-base, 128 real tokens, all 13 states, bfloat16: 128 * 13 * 768 * 2 = 2.4 MiB per example, ~240 GiB for 100k.

``build_state_cache`` refuses, before writing, a cache over the caller's ``max_bytes``, and one whose still
missing shards would not fit in the free space of the target filesystem less a margin (``MARGIN``: the smaller of
5% of the disk and 1 GiB stays free).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from shutil import disk_usage

import torch

from ..config import invalid, is_integer
from ..forward_pass import TARGET_ARGUMENTS
from .key import rows_of

VALUE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "int8": 1}
SCALE_BYTES = 4  # int8 storage: one float32 scale per token and stored state
EXAMPLE_OVERHEAD = 8  # its int64 offset in the shard
SHARD_OVERHEAD = 512  # a shard's safetensors header
FOLDER_OVERHEAD = 1024  # build_key.json and state_cache.json
MARGIN_FRACTION, MARGIN_MAX = 0.05, 1 << 30  # kept free: the smaller of 5% of the disk and 1 GiB


class StateCacheTooLargeError(ValueError):
    """A state cache that would exceed ``max_bytes`` or the free disk space: refused before anything is written."""


def token_bytes(widths: tuple[int, ...], dtype: str) -> int:
    """The bytes of one real token's stored states (and their int8 scales)."""
    return sum(widths) * VALUE_BYTES[dtype] + (len(widths) * SCALE_BYTES if dtype == "int8" else 0)


def readable(num_bytes: float) -> str:
    """Bytes as a person reads them: "1,000 bytes", "12.3 KiB", "240.0 GiB"."""
    if num_bytes < 1024:
        return f"{num_bytes:,.0f} bytes"
    for unit in ("KiB", "MiB", "GiB"):
        num_bytes /= 1024
        if num_bytes < 1024 or unit == "GiB":
            return f"{num_bytes:,.1f} {unit}"


@dataclass
class CacheSize:
    """The estimated size of a cache: each example's bytes in its shard, and what the folder adds."""

    example_bytes: list[int]
    examples_per_shard: int
    tokens: int  # real tokens over all examples
    widths: tuple[int, ...]  # D_s of each stored state
    dtype: str

    @property
    def num_shards(self) -> int:
        return -(-len(self.example_bytes) // self.examples_per_shard)

    def shard_bytes(self, shard: int) -> int:
        start = shard * self.examples_per_shard
        return sum(self.example_bytes[start : start + self.examples_per_shard]) + SHARD_OVERHEAD

    @property
    def total(self) -> int:
        return sum(self.example_bytes) + SHARD_OVERHEAD * self.num_shards + FOLDER_OVERHEAD

    def from_shard(self, first: int) -> int:
        """The bytes still to write when shards ``first`` onwards are missing (the key files included)."""
        return sum(self.shard_bytes(shard) for shard in range(first, self.num_shards)) + FOLDER_OVERHEAD

    def in_dtype(self, dtype: str) -> int:
        """The total in another storage dtype (the same tokens and states)."""
        return self.total + self.tokens * (token_bytes(self.widths, dtype) - token_bytes(self.widths, self.dtype))

    def describe(self) -> str:
        scales = f" + {len(self.widths)} x {SCALE_BYTES} bytes of int8 scales" if self.dtype == "int8" else ""
        return (
            f"{len(self.example_bytes):,} examples, {self.tokens:,} real tokens x {len(self.widths)} stored states x "
            f"D={self.widths[0]} x {VALUE_BYTES[self.dtype]} bytes ({self.dtype}){scales}"
        )


def real_token_counts(dataset, names: list[str], probe_tokens) -> list[int]:
    """Each row's real tokens, as the build stores them: its attention mask's sum, else its ``input_ids``' length;
    rows with neither (images of one size) all have ``probe_tokens()``, the tokens of one backbone pass."""
    column = "attention_mask" if "attention_mask" in names else "input_ids" if "input_ids" in names else None
    if column is None:
        return [probe_tokens()] * len(dataset)
    counts = []
    for start in range(0, len(dataset), 1024):
        for row in rows_of(dataset, start, min(start + 1024, len(dataset))):
            value = torch.as_tensor(row[column])
            counts.append(int(value.sum()) if column == "attention_mask" else int(value.shape[-1]))
    return counts


def target_bytes(row: dict) -> tuple[int, int]:
    """(bytes per example, bytes per real token) of the targets a row carries, from its values' sizes."""
    per_example = per_token = 0
    length = len(row["attention_mask"]) if "attention_mask" in row else len(row.get("input_ids", ()))
    for name in TARGET_ARGUMENTS:
        if row.get(name) is not None:
            value = torch.as_tensor(row[name])
            if value.dim() == 1 and value.shape[0] == length and length > 1:
                per_token += value.element_size()
            else:
                per_example += value.numel() * value.element_size()
    return per_example, per_token


def estimate_size(dataset, names: list[str], widths: tuple[int, ...], dtype: str, examples_per_shard: int, probe_tokens) -> CacheSize:
    """The cache's size by the module's formula: ``widths`` are the stored states' D_s, ``dtype`` the storage dtype."""
    counts = real_token_counts(dataset, names, probe_tokens)
    per_example, per_target_token = target_bytes(rows_of(dataset, 0, 1)[0])
    per_token = token_bytes(widths, dtype) + per_target_token
    example_bytes = [n * per_token + EXAMPLE_OVERHEAD + per_example for n in counts]
    return CacheSize(example_bytes, examples_per_shard, sum(counts), widths, dtype)


def check_max_bytes(max_bytes) -> None:
    if max_bytes is not None and not (is_integer(max_bytes) and max_bytes > 0):
        raise invalid("max_bytes", max_bytes, "a positive int (bytes), or None for no limit but the free disk space", "build_state_cache")


def free_bytes(folder: Path) -> tuple[int, int]:
    """(free bytes, margin kept free) on the filesystem that holds, or will hold, ``folder``."""
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    usage = disk_usage(existing)
    return usage.free, int(min(usage.total * MARGIN_FRACTION, MARGIN_MAX))


def shrink_advice(size: CacheSize) -> str:
    smaller = [f"dtype=torch.{name} ({readable(size.in_dtype(name))})" for name in ("bfloat16", "int8") if VALUE_BYTES[name] < VALUE_BYTES[size.dtype]]
    per_state = readable(size.tokens * token_bytes(size.widths[:1], size.dtype))
    return (
        f"To shrink it, store fewer layers (side_layers= in the adapter's config: each of the {len(size.widths)} stored "
        f"states costs about {per_state})"
        + (f", or a smaller dtype: {' or '.join(smaller)}" if smaller else "")
        + "."
    )


def check_room(size: CacheSize, first_missing_shard: int, folder: Path, max_bytes: int | None, freed: int = 0) -> None:
    """Refuse, before anything is written, a cache over ``max_bytes``, or one whose missing shards the filesystem
    cannot hold with ``MARGIN`` to spare (``freed``: the bytes of an older cache the build replaces)."""
    if max_bytes is not None and size.total > max_bytes:
        raise StateCacheTooLargeError(
            f"build_state_cache: the cache would take about {readable(size.total)} ({size.describe()}), over "
            f"max_bytes={max_bytes:,} ({readable(max_bytes)}). {shrink_advice(size)}"
        )
    needed = size.from_shard(first_missing_shard)
    free, margin = free_bytes(folder)
    if needed > free + freed - margin:
        still = "" if first_missing_shard == 0 else f" for its {size.num_shards - first_missing_shard} shards still to write"
        raise StateCacheTooLargeError(
            f"build_state_cache: the cache in {folder} needs about {readable(needed)}{still} ({size.describe()}), "
            f"but its filesystem has {readable(free + freed)} free, of which {readable(margin)} is kept free (the smaller of "
            f"5% of the disk and 1 GiB). {shrink_advice(size)} Or free space, or choose another cache_dir."
        )
