"""The backbone-state cache: run the frozen backbone once per example, not once per training step.

A side network reads the frozen backbone's states and never changes them; while nothing in the backbone
trains, those states depend only on the input, so every epoch after the first recomputes what the first
already computed. ``build_state_cache`` runs the backbone once over a dataset, in eval mode (no dropout),
and stores what the side networks read (the tuner's ``cached_state_indices()``): the embeddings and the outputs
of the layers they read (``side_layers``; transformers' ``hidden_states`` numbering: 0 is the embeddings, l + 1
the output of layer l), real tokens only, in ``dtype`` (bfloat16 by default). ``StateCache`` serves them as a
map-style dataset whose ``collate`` re-pads each batch, and the tuner's ``side_pass_on_cached_states`` trains
on such a batch with no backbone in the forward: MDPD's side network (``MDPDTrainer(state_cache=...)``) or a kept
side task (``SideTaskTrainer``). A cache holding more layers than a side network reads serves it too, and
``StateCache.with_targets`` serves another task's labels on the same inputs.

Storage: safetensors shards of ``examples_per_shard`` examples, memory-mapped when read. Each shard holds
one (tokens, states, D) tensor, so one example is one contiguous slice (one read per example, whatever the
number of layers), and bfloat16 is stored as is (Arrow has no bfloat16 type). Measured with
``benchmarks/state_cache.py --storage``.

The key (``StateCacheKey``) covers what makes states differ: the weights that compute them (embeddings,
layers and the adapter's LayerNorm copies; the task head is not read), the model config, the input token
ids (what the tokenizer and max length produced, so any change of either that changes a token changes the
key), the tokenizer, the max length, the stored layers and the dtype. Opening a cache for a model whose
key differs raises ``StaleStateCacheError`` naming the fields that differ.

After the side phase, ``StateCache.store_side_outputs`` stores the trained side network's eval-mode logits on
the cached states beside them (``side-logits-<hash>.safetensors``, one (n, C) tensor), keyed by the side network's
weights and the cache's key: the fade phase's Eq. 3 teacher, read once instead of a side pass per step.

A build writes each shard to a temporary file and renames it when complete, and writes ``state_cache.json``
(the manifest) last: an interrupted build leaves complete shards and no manifest, so it is never read, and
building again into the folder resumes after the last complete shard.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from peft.utils import ModulesToSaveWrapper
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .capture import BackboneCapture
from .config import invalid
from .forward_pass import TARGET_ARGUMENTS

MANIFEST = "state_cache.json"  # written last: a folder without it holds an unfinished build
SIDE_OUTPUTS = "side-logits-{}.safetensors"  # one file per side network, named by its side_network_hash
BUILD_KEY = "build_key.json"  # written first: the key the shards in the folder belong to
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
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


def mdpd_tuner(model):
    """The MDPD tuner of ``model``: stored side outputs are the teacher of MDPD's fade phase."""
    tuner = cache_tuner(model)
    if not hasattr(tuner, "side_logits_on_cached_states"):
        raise TypeError(f"Stored side outputs teach an MDPD fade phase: they need a model from get_peft_model(model, MDPDConfig(...)); got {type(tuner).__name__}.")
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
) -> "StateCache":
    """Run ``model``'s frozen backbone once over ``dataset`` and store what its side network reads.

    Args:
        model: a PeftModel with an MDPD adapter (its side network decides the stored layers; ladder or UniPT:
            SHERL and DTL re-run backbone layers on their own states, which no cache can hold).
        dataset: a tokenized ``datasets.Dataset`` (or any indexable of dicts) with the model's input columns
            and, for training, its targets (``labels``, or ``start_positions``/``end_positions``).
        cache_dir: the folder; a finished cache there with the same key is reused, an unfinished one resumed.
        tokenizer: pads each batch (``tokenizer.pad``) and enters the key; without it rows must have one length.
        max_length: the max length the dataset was tokenized with, for the key; rows longer are refused.
        dtype: storage precision, one of float32, bfloat16 (default: half the bytes), float16.
        overwrite: replace a cache of another key in ``cache_dir`` instead of refusing it.
    """
    tuner = cache_tuner(model)
    folder = Path(cache_dir)
    key = key_for(model, dataset, tokenizer, max_length, dtype)
    if (folder / MANIFEST).exists() or (folder / BUILD_KEY).exists():
        found = read_key(folder)
        if found != key and not overwrite:
            raise StaleStateCacheError(
                f"{folder} holds states of another build (differs in {', '.join(key.differences(found))}); "
                "use another cache_dir, or build_state_cache(..., overwrite=True) to replace it."
            )
        if found != key:
            for path in [*folder.glob("states-*"), *folder.glob(SIDE_OUTPUTS.format("*")), *folder.glob("*.tmp"), folder / MANIFEST, folder / BUILD_KEY]:
                path.unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / MANIFEST).exists():
        return StateCache(folder)
    if not (folder / BUILD_KEY).exists():
        write_json(folder / BUILD_KEY, {"key": asdict(key), "examples_per_shard": examples_per_shard})
    examples_per_shard = json.loads((folder / BUILD_KEY).read_text())["examples_per_shard"]  # a resumed build keeps its sharding

    names = model_inputs(tuner, rows_of(dataset, 0, 1)[0])
    indices = key.hidden_state_indices
    num_shards = -(-len(dataset) // examples_per_shard)
    first_missing = next((i for i in range(num_shards) if not (folder / shard_name(i)).exists()), num_shards)
    training = tuner.model.training
    tuner.model.eval()
    device = next(tuner.model.parameters()).device
    progress = tqdm(total=len(dataset), initial=first_missing * examples_per_shard, desc="Caching backbone states", unit="example")
    try:
        for shard in range(first_missing, num_shards):
            start, stop = shard * examples_per_shard, min((shard + 1) * examples_per_shard, len(dataset))
            examples, targets = [None] * (stop - start), {}  # in the dataset's order, whatever order the batches ran in
            for positions, rows in shard_batches(dataset, start, stop, batch_size, names):
                inputs = {k: v.to(device) for k, v in padded_inputs(rows, names, tokenizer).items()}
                if max_length is not None and "input_ids" in inputs and inputs["input_ids"].shape[1] > max_length:
                    raise invalid("max_length", max_length, f"at least the length of every row of the dataset (one has {inputs['input_ids'].shape[1]} tokens)", "build_state_cache")
                states = backbone_states(tuner, inputs, indices).to(dtype).cpu()  # (B, N, S, D)
                mask = inputs.get("attention_mask")
                real = mask.bool().cpu() if mask is not None and mask.dim() == 2 else torch.ones(states.shape[:2], dtype=torch.bool)
                for position, row_states, row_real in zip(positions, states, real):
                    examples[position] = row_states[row_real]  # (n_i, S, D)
                for name, values in split_targets(rows, real).items():
                    slots = targets.setdefault(name, [None] * (stop - start))
                    for position, value in zip(positions, values):
                        slots[position] = value
                progress.update(len(rows))
            write_shard(folder / shard_name(shard), examples, targets)
    finally:
        progress.close()
        tuner.model.train(training)
    shards = [shard_name(i) for i in range(num_shards)]
    write_json(folder / MANIFEST, {"key": asdict(key), "num_examples": len(dataset), "shards": shards})
    return StateCache(folder)


def shard_name(index: int) -> str:
    return f"states-{index:05d}.safetensors"


def write_json(path: Path, content: dict) -> None:
    """Write ``path`` whole or not at all (temporary file, then rename)."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(content, indent=1))
    os.replace(temporary, path)


def write_shard(path: Path, examples: list[torch.Tensor], targets: dict[str, list[torch.Tensor]]) -> None:
    """One shard: ``hidden_states`` (T, S, D) of its examples' real tokens, ``offsets`` (n + 1,) where each example
    starts, sequence-level targets stacked (n, ...) and per-token targets flat (T, ...) like the states."""
    lengths = torch.tensor([0] + [len(example) for example in examples])
    tensors = {"hidden_states": torch.cat(examples).contiguous(), "offsets": lengths.cumsum(0)}
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


def stored_states(batch: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """A collated batch's (or an example's) stored states in ``dtype``, (B, N, S, D) (or (n, S, D))."""
    return batch["hidden_states"].to(dtype)


class StateCache(Dataset):
    """A finished cache, as a map-style dataset of examples ``{"hidden_states": (n, S, D), <targets>}``.

    Shards are memory-mapped (``safe_open``): an example is read from disk when it is indexed. ``collate``
    re-pads a list of examples into the batch ``MDPDModel.side_pass_on_cached_states`` takes.
    """

    def __init__(self, cache_dir: str | os.PathLike):
        self.folder = Path(cache_dir)
        if not (self.folder / MANIFEST).exists():
            state = "an unfinished build: call build_state_cache again to resume it" if (self.folder / BUILD_KEY).exists() else "no state cache"
            raise FileNotFoundError(f"{self.folder} holds {state}.")
        manifest = json.loads((self.folder / MANIFEST).read_text())
        self.key = read_key(self.folder)
        self.shard_names: list[str] = manifest["shards"]
        self._files: dict[int, object] = {}
        self._targets: dict[str, list[torch.Tensor]] = {}  # another task's targets (with_targets), by example
        self._offsets = [self._file(i).get_tensor("offsets") for i in range(len(self.shard_names))]
        self._starts = torch.tensor([0] + [len(offsets) - 1 for offsets in self._offsets]).cumsum(0)
        self._files.clear()  # reopened lazily, also in DataLoader workers
        if int(self._starts[-1]) != manifest["num_examples"]:
            raise StaleStateCacheError(f"{self.folder}: the shards hold {int(self._starts[-1])} examples, the manifest {manifest['num_examples']}.")

    @property
    def hidden_state_indices(self) -> tuple[int, ...]:
        return self.key.hidden_state_indices

    @property
    def lengths(self) -> list[int]:
        """Each example's number of stored tokens (padding is never stored), read from the shards' offsets."""
        return [length for offsets in self._offsets for length in offsets.diff().tolist()]

    @property
    def num_bytes(self) -> int:
        return sum((self.folder / name).stat().st_size for name in self.shard_names)

    def _file(self, shard: int):
        if shard not in self._files:
            self._files[shard] = safe_open(str(self.folder / self.shard_names[shard]), framework="pt")
        return self._files[shard]

    def __getstate__(self):
        return {**self.__dict__, "_files": {}}

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        shard = int(torch.searchsorted(self._starts, index, right=True)) - 1
        row = index - int(self._starts[shard])
        start, stop = (int(v) for v in self._offsets[shard][row : row + 2])
        file = self._file(shard)
        example = {"hidden_states": file.get_slice("hidden_states")[start:stop]}
        for name in file.keys():
            kind, _, target = name.partition("_target.")
            if target:
                example[target] = file.get_slice(name)[start:stop] if kind == "token" else file.get_slice(name)[row : row + 1][0]
        example.update({name: values[index] for name, values in self._targets.items()})  # with_targets
        return example

    def check(self, model, dataset=None) -> None:
        """Raise ``StaleStateCacheError`` unless ``model`` computes the stored states: same weights (LayerNorm copies
        included) and config, and every layer its side networks read stored; with ``dataset``, also the same inputs
        (``MDPDTrainer`` passes its train_dataset)."""
        tuner = cache_tuner(model)
        current = dict(weights=weights_hash(tuner.model), config=config_hash(tuner.model))
        if dataset is not None:
            current["inputs"] = inputs_hash(dataset, model_inputs(tuner, rows_of(dataset, 0, 1)[0]))
        differing = [name for name, value in current.items() if getattr(self.key, name) != value]
        if not set(tuner.cached_state_indices()) <= set(self.key.hidden_state_indices):
            differing.append("hidden_state_indices")
        if differing:
            raise StaleStateCacheError(
                f"The state cache in {self.folder} was built for another model: its {', '.join(differing)} differ "
                "(a trained LayerNorm copy changes the weights). Build a new cache for this model with build_state_cache."
            )

    def with_targets(self, model, dataset) -> "StateCache":
        """This cache with the targets of ``dataset`` (another task's labels on the same inputs, in the same order):
        two tasks on one set of inputs share one cache. Refused unless ``dataset`` holds the cached inputs."""
        tuner = cache_tuner(model)
        if inputs_hash(dataset, model_inputs(tuner, rows_of(dataset, 0, 1)[0])) != self.key.inputs:
            raise StaleStateCacheError(f"The state cache in {self.folder} holds other inputs than this dataset's: build a cache for it.")
        relabelled = StateCache(self.folder)
        rows = rows_of(dataset, 0, len(dataset))
        real = [torch.as_tensor(row.get("attention_mask", [True])).bool() for row in rows]  # per-token labels: real tokens
        relabelled._targets = split_targets(rows, real)
        return relabelled

    @property
    def key_hash(self) -> str:
        return sha256_of([json.dumps(asdict(self.key), sort_keys=True)])

    def store_side_outputs(self, model, batch_size: int = 64) -> torch.Tensor:
        """Run ``model``'s side network once over the cached states, in eval mode (no dropout), and store its logits
        beside them: the fade phase's fixed Eq. 3 teacher (``MDPDTrainer(fade_side_outputs="stored")``).

        Returns the logits, float32 (n, C) in cache order. The file is named by the side network's weights and
        records this cache's key, so ``side_outputs`` serves them to that side network on these states only; the
        backbone's weights do not enter (the fade phase trains its LayerNorm copies, the teacher stays fixed).
        """
        tuner = mdpd_tuner(model)
        side = tuner.mdpd_side[tuner.active_adapters[0]]
        device = next(side.parameters()).device
        training = side.training
        side.eval()
        try:
            logits = []
            for start in range(0, len(self), batch_size):
                batch = self.collate([self[i] for i in range(start, min(start + batch_size, len(self)))])
                logits.append(tuner.side_logits_on_cached_states({k: v.to(device) for k, v in batch.items()}).cpu())  # (B, C)
        finally:
            side.train(training)
        logits = torch.cat(logits)
        side_hash = side_network_hash(tuner)
        write_tensors(self.folder / SIDE_OUTPUTS.format(side_hash[:16]), {"logits": logits}, {"side_network": side_hash, "states": self.key_hash})
        return logits

    def side_outputs(self, model) -> torch.Tensor:
        """The logits ``store_side_outputs`` stored for ``model``'s side network, float32 (n, C) in cache order.

        Raises ``StaleStateCacheError`` when only another side network's are stored (its weights differ: it trained on
        since) or they were stored on other states, ``FileNotFoundError`` when none are stored."""
        side_hash = side_network_hash(mdpd_tuner(model))
        path = self.folder / SIDE_OUTPUTS.format(side_hash[:16])
        advice = "Store this side network's with StateCache.store_side_outputs(model)."
        if not path.exists():
            if any(self.folder.glob(SIDE_OUTPUTS.format("*"))):
                raise StaleStateCacheError(f"{self.folder} holds side outputs of another side network: its side network weights differ. {advice}")
            raise FileNotFoundError(f"{self.folder} holds no side outputs. {advice}")
        with safe_open(str(path), framework="pt") as file:
            found = file.metadata()
            if found["side_network"] != side_hash or found["states"] != self.key_hash:
                differing = [name for name, value in (("side_network", side_hash), ("states", self.key_hash)) if found[name] != value]
                raise StaleStateCacheError(f"The side outputs in {path} were stored for another build: they differ in {', '.join(differing)}. {advice}")
            return file.get_tensor("logits")

    def collate(self, examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Pad a list of examples to the batch's longest: ``hidden_states`` (B, N, S, D), zeros at padding,
        ``attention_mask`` (B, N), ``hidden_state_indices`` (S,), targets stacked (per-token ones padded with
        -100, the ignored label)."""
        lengths = torch.tensor([len(example["hidden_states"]) for example in examples])
        states = torch.nn.utils.rnn.pad_sequence([example["hidden_states"] for example in examples], batch_first=True)
        mask = (torch.arange(states.shape[1])[None, :] < lengths[:, None]).long()
        batch = {"hidden_states": states, "attention_mask": mask, "hidden_state_indices": torch.tensor(self.hidden_state_indices)}
        for name in sorted(examples[0].keys() - {"hidden_states"}):
            values = [example[name] for example in examples]
            if values[0].dim() >= 1 and all(len(v) == n for v, n in zip(values, lengths.tolist())):
                batch[name] = torch.nn.utils.rnn.pad_sequence(values, batch_first=True, padding_value=-100)
            else:
                batch[name] = torch.stack(values)
        return batch
