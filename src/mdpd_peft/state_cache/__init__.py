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
``StateCache.with_targets`` serves another task's labels on the same inputs. ``dtype=torch.int8`` stores a quarter
of float32's bytes (a scale per token and state beside them), dequantized to the training dtype when read.

Size: about (real tokens) x (stored states) x D x (bytes per value) (``build_state_cache`` estimates it before writing
and refuses what the disk or ``max_bytes`` cannot hold). After the side phase, ``StateCache.store_side_outputs``
stores the trained side network's eval-mode logits beside the states (one (n, C) tensor), keyed by the side
network's weights and the cache's key: the fade phase's Eq. 3 teacher, read once instead of a side pass per step.

The package: ``key`` (what the states depend on: ``StateCacheKey``; a cache whose key differs from the model's is
refused with ``StaleStateCacheError``), ``storage`` (the folder's files: shards, key files, side outputs, int8 storage), ``size``
(the size estimate and the refusal), ``build`` (``build_state_cache``: resumable, never reads an unfinished build) and
``read`` (``StateCache``).
"""

from .build import build_state_cache, estimate_state_cache_size
from .key import StaleStateCacheError, StateCacheKey, tokenizer_hash, weights_hash
from .read import StateCache
from .size import StateCacheTooLargeError
from .storage import MANIFEST, stored_states, write_json, write_shard

__all__ = [
    "MANIFEST",
    "StaleStateCacheError",
    "StateCache",
    "StateCacheKey",
    "StateCacheTooLargeError",
    "build_state_cache",
    "estimate_state_cache_size",
    "stored_states",
    "tokenizer_hash",
    "weights_hash",
    "write_json",
    "write_shard",
]
