"""Reading a state cache: ``StateCache``, a map-style dataset of a finished cache, its checks and stored side outputs."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import safe_open
from torch.utils.data import Dataset

from .key import StaleStateCacheError, cache_tuner, config_hash, inputs_hash, model_inputs, rows_of, sha256_of, side_network_hash, weights_hash
from .storage import BUILD_KEY, MANIFEST, SAFETENSORS_DTYPES, SCALES, SIDE_OUTPUTS, read_key, split_targets, write_tensors


def mdpd_tuner(model):
    """The MDPD tuner of ``model``: stored side outputs are the teacher of MDPD's fade phase."""
    tuner = cache_tuner(model)
    if not hasattr(tuner, "side_logits_on_cached_states"):
        raise TypeError(f"Stored side outputs teach an MDPD fade phase: they need a model from get_peft_model(model, MDPDConfig(...)); got {type(tuner).__name__}.")
    return tuner


class StateCache(Dataset):
    """A finished cache, as a map-style dataset of examples ``{"hidden_states": (n, S, D), <targets>}``.

    Shards are memory-mapped (``safe_open``): an example is read from disk when it is indexed. ``collate``
    re-pads a list of examples into the batch ``MDPDModel.side_pass_on_cached_states`` takes. States come as
    stored (``key.dtype``); an int8 cache's examples and batches carry their scales (``hidden_state_scales``,
    (n, S)) beside them, and ``storage.stored_states`` dequantizes a batch to the training dtype.
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
        self._check_storage()

    def _check_storage(self) -> None:
        """The shards hold states in the key's dtype (and int8 states their scales): never read one dtype as another."""
        file = self._file(0)
        stored = file.get_slice("hidden_states").get_dtype()
        scaled = SCALES in file.keys()
        if stored != SAFETENSORS_DTYPES.get(self.key.dtype) or scaled != (self.key.dtype == "int8"):
            raise StaleStateCacheError(
                f"{self.folder}: its key says dtype={self.key.dtype}, but its shards hold {stored} states "
                f"{'with' if scaled else 'without'} int8 scales: build the cache again (build_state_cache(..., overwrite=True))."
            )
        self._files.clear()

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
        if self.key.dtype == "int8":
            example[SCALES] = file.get_slice(SCALES)[start:stop]  # (n, S)
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
        """Pad a list of examples to the batch's longest: ``hidden_states`` (B, N, S, D), zeros at padding (an int8
        cache's ``hidden_state_scales`` (B, N, S) too), ``attention_mask`` (B, N), ``hidden_state_indices`` (S,),
        targets stacked (per-token ones padded with -100, the ignored label)."""
        lengths = torch.tensor([len(example["hidden_states"]) for example in examples])
        states = torch.nn.utils.rnn.pad_sequence([example["hidden_states"] for example in examples], batch_first=True)
        mask = (torch.arange(states.shape[1])[None, :] < lengths[:, None]).long()
        batch = {"hidden_states": states, "attention_mask": mask, "hidden_state_indices": torch.tensor(self.hidden_state_indices)}
        if SCALES in examples[0]:
            batch[SCALES] = torch.nn.utils.rnn.pad_sequence([example[SCALES] for example in examples], batch_first=True)
        for name in sorted(examples[0].keys() - {"hidden_states", SCALES}):
            values = [example[name] for example in examples]
            if values[0].dim() >= 1 and all(len(v) == n for v, n in zip(values, lengths.tolist())):
                batch[name] = torch.nn.utils.rnn.pad_sequence(values, batch_first=True, padding_value=-100)
            else:
                batch[name] = torch.stack(values)
        return batch
