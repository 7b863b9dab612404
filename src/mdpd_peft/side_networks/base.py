"""What every side network is: its inputs and its outputs.

A side network reads the frozen backbone's states (detached) and produces
- ``features``: one state per *distilled* backbone layer, which the backbone teaches through the
  hierarchical feature loss (Eq. 1, 4 for shallow layers, Eq. 5-7 for deep ones);
- ``final_state``: what its task head reads, whose logits teach the backbone's head (Eq. 3).

Where the features come from is each network's own choice, documented in its module. A new side
network is one module: subclass ``SideNetwork``, decorate it with ``register_side_network("name")``
and import the module in ``side_networks/__init__.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from ..architecture import EncoderMap
from ..config import MDPDConfig, invalid
from ..side_network_registry import SIDE_NETWORKS, register_side_network  # noqa: F401 (re-exported)
from ..token_layout import stage_real_tokens

@dataclass
class BackboneStates:
    """What one backbone forward pass gives the side network (every tensor detached)."""

    embeddings: torch.Tensor  # (B, N, D_0): the input of layer 0
    layer_outputs: list[torch.Tensor]  # (B, N_l, D_l): every layer's output, in call order
    real: torch.Tensor  # (B, N) bool, True for real (non-padding) tokens
    # rerun(i, hidden): backbone layer i as loaded (frozen, LayerNorm copies bypassed), called on ``hidden``
    # with the other arguments of its call in this pass; only for the layers in ``SideNetwork.rerun_layers``.
    rerun: Callable[[int, torch.Tensor], torch.Tensor]
    dtype: torch.dtype | None = None  # the side network's compute dtype, set by its forward; states arrive in the backbone's

    def input_of(self, layer: int) -> torch.Tensor:
        """The hidden states layer ``layer`` was called with, in the side network's dtype."""
        return (self.embeddings if layer == 0 else self.layer_outputs[layer - 1]).to(self.dtype)

    def output_of(self, layer: int) -> torch.Tensor:
        return self.layer_outputs[layer].to(self.dtype)


@dataclass
class SideOutput:
    features: list[torch.Tensor]  # (B, N_l, feature_width), one per ``SideNetwork.distilled_layers``
    final_state: torch.Tensor  # (B, N, C): what the side head reads
    logits: torch.Tensor | None = None  # Y_S: (B, C) or (B, N, C); None without a head or when not asked for


def exporting_graph() -> bool:
    """Whether this forward is being captured as a graph (``torch.export``, ``torch.onnx.export``, ``torch.jit.trace``):
    a Python branch on a tensor's values would then be fixed in the graph for every later input."""
    return torch.compiler.is_exporting() or torch.jit.is_tracing()


def every_token_real(real: torch.Tensor) -> bool:
    """Whether no token of the batch is padding (``real``: (B, N) bool), so that attention may drop its key mask for a
    faster kernel. Never while a graph is exported: the graph keeps the mask, correct for padded and full batches."""
    return not exporting_graph() and bool(real.all())


def masked_mean(tokens: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Global average pooling over real tokens: (B, N, C), (B, N) bool -> (B, C)."""
    weights = real.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def projection(in_width: int, out_width: int, norm_eps: float) -> nn.Sequential:
    """Linear then LayerNorm: UniPT's and SHERL's per-layer down-projection."""
    return nn.Sequential(nn.Linear(in_width, out_width), nn.LayerNorm(out_width, eps=norm_eps))


def full_value(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor's whole value, detached. Under FSDP, outside the forward pass, a parameter and what is computed
    from it are DTensors of which each process holds a shard (possibly empty); gathering it is a collective,
    so every process must call this."""
    if isinstance(tensor, DTensor):
        tensor = tensor.full_tensor()
    return tensor.detach()


def require_uniform_width(encoder, side_network: str) -> None:
    """UniPT, SHERL and DTL combine every layer's tokens; stages that merge patches (Swin) break that."""
    if not encoder.uniform_width:
        raise invalid("side_network", side_network, "'ladder' for a model whose stages change width and token count (Swin)")


class SideNetwork(nn.Module, ABC):
    """Base class of the side networks.

    Subclasses set ``title``, ``distilled_layers`` (the backbone layer each feature imitates), ``feature_width``,
    ``final_width`` (the final state's), ``rerun_layers`` (backbone layers they call again, e.g. SHERL's late module) and ``head``
    (``nn.Linear`` on the final state's width, or None without a task head), and implement
    ``from_config`` and ``run``; ``init_from_backbone`` and ``logged_values`` are optional.

    ``forward`` runs ``run`` and the head in one call, so that a side network sharded as its own FSDP unit has
    its head's weights gathered while the head runs.
    """

    title: str  # for model cards: "a side network (<title>) trained beside the frozen encoder"
    distilled_layers: list[int]
    feature_width: int
    final_width: int
    rerun_layers: frozenset[int] = frozenset()
    head: nn.Linear | None

    @classmethod
    @abstractmethod
    def from_config(cls, encoder: EncoderMap, config: MDPDConfig, side_layers: list[int], num_outputs: int | None) -> "SideNetwork":
        """Build for ``encoder``. ``side_layers``: the backbone layers that feed it (``config.side_layers`` or all);
        ``num_outputs``: the task head's output size, None for feature extraction."""

    @abstractmethod
    def run(self, states: BackboneStates) -> SideOutput:
        """The features for the distilled layers and the final state, from one pass's backbone states."""

    def forward(self, states: BackboneStates, per_token: bool | None = None) -> SideOutput:
        """``run``, then the side logits when the network has a head and ``per_token`` says their kind (None: no logits).

        The states are cast to the dtype the parameters have now, inside the pass: under FSDP mixed precision
        that is the compute dtype (``MixedPrecisionPolicy.param_dtype``), not the sharded parameters' own."""
        output = self.run(replace(states, dtype=next(self.parameters()).dtype))
        if self.head is not None and per_token is not None:
            output.logits = self.logits(output.final_state, states.real, per_token)
        return output

    def init_from_backbone(self, model: nn.Module, encoder: EncoderMap) -> None:
        """Initialise from the backbone's weights once built (the ladder's pruned init); nothing by default."""

    def logged_values(self) -> dict[str, float]:
        """Scalars worth a line in the training log (the ladder's gates); none by default. Read parameters through
        ``full_value``: every process calls this at each log, the Trainer's way."""
        return {}

    def logits(self, final_state: torch.Tensor, real: torch.Tensor, per_token: bool) -> torch.Tensor:
        """Side logits Y_S: the head on the pooled final state (paper: GAP), or on every token for token-level tasks."""
        if per_token:
            return self.head(final_state)  # (B, N, C)
        return self.head(masked_mean(final_state, stage_real_tokens(real, final_state.shape[1])))  # (B, C)
