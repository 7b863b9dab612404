"""The side networks' passes on cached backbone states: a ``StateCache`` batch in place of a backbone forward.

Both tuners train on a cache: MDPD's side phase (``MDPDModel.side_pass_on_cached_states``, through the
``CachedStatePasses`` mixin here) and a kept side task (``SideTaskModel.side_pass_on_cached_states``). Either
rebuilds the pass's ``BackboneStates`` from the collated batch (``cached_backbone_states``: stored layers in place,
every other layer missing) and runs the same side pass as the live forward on them. ``check_cacheable`` refuses
the side networks no cache can feed.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from .config import invalid
from .distillation import intermediates_kept
from .forward_pass import TARGET_ARGUMENTS, SidePass
from .side_networks import BackboneStates
from .state_cache import stored_states


def cached_backbone_states(batch: dict[str, torch.Tensor], num_layers: int, dtype: torch.dtype) -> BackboneStates:
    """``BackboneStates`` from a collated ``StateCache`` batch: the stored states in place, every other layer missing.

    The states are converted to ``dtype`` (the side network's) once, here (int8 ones dequantized): converted per
    use, every layer the side network reads and every distilled layer would hold a copy of its own until backward.
    """
    indices = tuple(int(i) for i in batch["hidden_state_indices"])
    stored = dict(zip(indices, stored_states(batch, dtype).unbind(dim=2)))  # hidden-state index -> (B, N, D)

    def missing(index: int, hidden: torch.Tensor) -> torch.Tensor:
        raise RuntimeError(f"backbone layer {index} cannot run on cached states")

    layer_outputs = [stored.get(layer + 1) for layer in range(num_layers)]
    return BackboneStates(stored[0], layer_outputs, batch["attention_mask"].bool(), missing, dtype)


def states_for(batch: dict[str, torch.Tensor], num_layers: int, module: nn.Module) -> tuple[BackboneStates, torch.dtype]:
    """The batch's ``BackboneStates`` in ``module``'s dtype (a side network's, a task's), and that dtype."""
    dtype = next(module.parameters()).dtype
    return cached_backbone_states(batch, num_layers, dtype), dtype


def check_cacheable(side, encoder, config, what: str) -> None:
    """Refuse, naming the setting, a side network whose inputs no cache holds: one that re-runs encoder layers on its
    own states (SHERL, DTL), or any side network of an encoder whose layers change width or token count (Swin).
    ``what`` names what would train (``"the side network"``, ``"task 'x'"``); ``config`` is its PEFT config."""
    owner = type(config).__name__
    if side.rerun_layers:
        raise invalid(
            "side_network", config.side_network,
            f"'ladder' or 'unipt' to train {what} on cached states: it re-runs encoder layers {sorted(side.rerun_layers)} "
            "on its own states, which no cache holds; train it live (on the dataset)",
            owner,
        )  # fmt: skip
    if not encoder.uniform_width:
        raise invalid("side_network", config.side_network, "a side network of an encoder whose layers keep one width and token count to cache its states (not Swin); train it live", owner)


class CachedStatePasses:
    """Mixin of ``MDPDModel``: the active adapter's side network on cached states. It reads the tuner's
    ``mdpd_side``, ``mdpd_encoders``, ``peft_config`` and its ``_side_pass``, as the live pass does."""

    def cached_state_indices(self) -> tuple[int, ...]:
        """The states a state cache holds for the active adapter's side network, numbered as transformers'
        ``hidden_states``: the embeddings (0) and the output of each layer it reads and distils (l + 1)."""
        side = self.mdpd_side[self.active_adapters[0]]
        check_cacheable(side, self.encoder, self.peft_config[self.active_adapters[0]], "the side network")
        return (0, *(layer + 1 for layer in side.distilled_layers))

    def side_pass_on_cached_states(self, batch: dict[str, torch.Tensor], recompute: bool = True) -> SidePass:
        """Train the side network without the backbone: its loss terms on one batch of cached backbone states.

        ``batch`` is ``StateCache.collate``'s (``hidden_states`` (B, N, S, D), ``attention_mask``, targets). The
        terms are the live pass's side terms (side task, shallow, deep), computed by the same code; the ones that
        need the backbone's logits (Eq. 3, the backbone task loss) are the fade phase's. ``loss`` is their
        weighted sum; ``latest_losses`` holds them for logging, as after a live pass.

        ``recompute=False`` keeps the side steps' and feature terms' intermediates instead of recomputing them in
        backward, as the live pass does: faster, at the side network's full activation memory (BERT-base shape,
        batch 16 x 128: a step's peak 158 MiB recomputed, 417 MiB kept; ``benchmarks/state_cache.py --memory``).
        """
        states, dtype = self._cached_states(batch)
        targets = {name: batch[name] for name in TARGET_ARGUMENTS if batch.get(name) is not None}
        with nullcontext() if recompute else intermediates_kept():
            result = self._side_pass(states, targets, self._per_token_task(), dtype)
        self.latest_losses = {name: value.detach() for name, value in result.losses.items()}
        return result

    @torch.no_grad()
    def side_logits_on_cached_states(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The side network's logits Y_S, float32 (B, C), on one ``StateCache.collate`` batch, in its current mode
        (``StateCache.store_side_outputs`` runs it in eval mode): no loss term, nothing recorded for backward."""
        if self._per_token_task():
            config = self.peft_config[self.active_adapters[0]]
            raise invalid("task_type", config.task_type, "a sequence-level task (e.g. 'SEQ_CLS') for side logits on cached states")
        states, _ = self._cached_states(batch)
        return self._side_pass(states, {}, False, torch.float32, distil=False).logits

    def _cached_states(self, batch: dict[str, torch.Tensor]) -> tuple[BackboneStates, torch.dtype]:
        """The ``BackboneStates`` of a collated cache batch, in the side network's dtype (returned too)."""
        adapter_name = self.active_adapters[0]
        return states_for(batch, self.mdpd_encoders[adapter_name].num_layers, self.mdpd_side[adapter_name])
