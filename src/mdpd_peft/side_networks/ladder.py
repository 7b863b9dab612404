"""The ladder side network (Ladder Side-Tuning, LST) that runs beside the frozen encoder.

A reduced-width copy of the backbone's block structure: width ``D_S = D_B / r``, FFN width ``D_ff / r``, the same
activation and LayerNorm placement, and (LST) the same number of heads with head dimension divided by r, or heads
of ``side_head_dim`` channels (``SideTaskConfig``'s default: 16). Before side block l the side state is mixed with a down-projection of backbone layer l's
output through a learned gate (LST): ``s <- g_l * s + (1 - g_l) * Down_l(b_l)``, ``g_l = sigmoid(alpha_l / T)``.
The first side state is ``Down_0`` of the embeddings (the input of backbone layer 0). Backbone states
arrive detached: no gradient of the side path crosses a backbone weight. Where a backbone stage merges
patches (Swin), the side state is average-pooled to the stage's grid before the mix, and each stage's
down-projection reads that stage's width.

Attention uses ``F.scaled_dot_product_attention`` with a key-padding mask, so padding tokens are never
attended to and no attention matrix is stored. The side blocks have no dropout.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from ..architecture import EncoderMap, PruningNotApplicable
from ..distillation import recomputed
from ..token_layout import pool_tokens
from .pruning import prune_into_side_network
from .base import BackboneStates, SideNetwork, SideOutput, full_value, register_side_network

logger = logging.getLogger(__name__)


def side_head_count(side_width: int, num_heads: int, head_dim: int | None = None) -> int:
    """LST keeps the backbone's head count (``head_dim=None``); else ``side_width // head_dim`` heads. Either way, when
    the count does not divide the side width, the largest smaller count that does."""
    most = num_heads if head_dim is None else max(1, side_width // head_dim)
    return max(h for h in range(1, most + 1) if side_width % h == 0)


class SideBlock(nn.Module):
    """One transformer block at side width; pre- or post-norm like the backbone block it mirrors."""

    def __init__(self, width: int, num_heads: int, intermediate: int, activation: str, norm_eps: float, norm_position: str):
        super().__init__()
        self.num_heads = num_heads
        self.norm_position = norm_position
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)
        self.attn_out = nn.Linear(width, width)
        self.attn_norm = nn.LayerNorm(width, eps=norm_eps)
        self.ffn_in = nn.Linear(width, intermediate)
        self.act = ACT2FN[activation]
        self.ffn_out = nn.Linear(intermediate, width)
        self.ffn_norm = nn.LayerNorm(width, eps=norm_eps)

    def attention(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        batch, tokens, width = x.shape
        # (B, N, D_S) -> (B, H, N, D_S / H)
        q, k, v = (
            proj(x).view(batch, tokens, self.num_heads, -1).transpose(1, 2) for proj in (self.query, self.key, self.value)
        )
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)  # (B, H, N, D_S / H)
        return self.attn_out(context.transpose(1, 2).reshape(batch, tokens, width))

    def ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn_out(self.act(self.ffn_in(x)))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        if self.norm_position == "pre":
            x = x + self.attention(self.attn_norm(x), key_mask)
            return x + self.ffn(self.ffn_norm(x))
        x = self.attn_norm(x + self.attention(x, key_mask))
        return self.ffn_norm(x + self.ffn(x))


@register_side_network("ladder")
class LadderSideNetwork(SideNetwork):
    """Gated down-projections, side blocks, a final LayerNorm and the side task head (``W_S`` in Eq. 3).

    Distilled features: the side state after each side block imitates the output of the backbone layer
    that fed it, at the side width.
    """

    title = "an LST ladder"

    def __init__(
        self,
        encoder: EncoderMap,
        side_layers: list[int],
        reduction_factor: int,
        gate_init: float,
        gate_temperature: float,
        num_outputs: int | None,
        side_init: str = "random",
        head_dim: int | None = None,
    ):
        super().__init__()
        self.side_init = side_init
        self.side_layers = list(side_layers)
        self.distilled_layers = self.side_layers
        self.width = self.feature_width = max(1, encoder.hidden_size // reduction_factor)
        self.gate_temperature = gate_temperature
        heads = side_head_count(self.width, encoder.num_heads, head_dim)
        intermediate = max(1, encoder.intermediate_size // reduction_factor)
        self.is_vision = encoder.is_vision
        self.embed_down = nn.Linear(encoder.embedding_width, self.width)
        self.downs = nn.ModuleList(nn.Linear(encoder.layer_widths[i], self.width) for i in self.side_layers)
        self.gate_logits = nn.Parameter(torch.full((len(self.side_layers),), float(gate_init)))
        self.blocks = nn.ModuleList(
            SideBlock(self.width, heads, intermediate, encoder.activation, encoder.norm_eps, encoder.norm_position)
            for _ in self.side_layers
        )
        self.final_norm = nn.LayerNorm(self.width, eps=encoder.norm_eps)
        self.final_width = self.width
        self.head = nn.Linear(self.width, num_outputs) if num_outputs else None

    @classmethod
    def from_config(cls, encoder, config, side_layers, num_outputs):
        return cls(encoder, side_layers, config.reduction_factor, config.gate_init, config.gate_temperature, num_outputs, config.side_init, config.side_head_dim)

    def init_from_backbone(self, model: nn.Module, encoder: EncoderMap) -> None:
        """LST's pruned initialisation (``MDPDConfig.side_init``, see ``pruning.py``); with ``"auto"``, random where
        the backbone's blocks are not standard, said in one log line."""
        if self.side_init == "random":
            return
        try:
            prune_into_side_network(list(self.blocks), self.side_layers, self.width, model, encoder)
        except PruningNotApplicable as reason:
            if self.side_init == "pruned":
                raise
            logger.warning("MDPDConfig.side_init='auto' initialises the ladder randomly for %s: %s", type(model).__name__, reason)

    def gates(self) -> torch.Tensor:
        """g_l = sigmoid(alpha_l / T), one per side layer."""
        return torch.sigmoid(self.gate_logits / self.gate_temperature)

    def logged_values(self) -> dict[str, float]:
        return {f"gate_{layer}": gate for layer, gate in zip(self.side_layers, full_value(self.gates()).tolist())}

    def run(self, states: BackboneStates) -> SideOutput:
        """Run the ladder: the side state starts as ``Down_0`` of the embeddings, and before side block l takes
        in backbone layer l's output (B, N_l, D_l) through its gate (Swin's stages: fewer tokens, more channels)."""
        real = states.real
        key_mask = None if bool(real.all()) else real[:, None, None, :]  # (B, 1, 1, N): attend to real keys only
        side = self.embed_down(states.input_of(0))
        side_states = []
        for gate, down, block, layer in zip(self.gates(), self.downs, self.blocks, self.side_layers):
            state = states.output_of(layer)
            side = pool_tokens(side, state.shape[1], self.is_vision)  # follows merged patches; else unchanged
            side = recomputed(self.ladder_step, gate, down, block, side, state, key_mask)
            side_states.append(side)
        return SideOutput(features=side_states, final_state=self.final_norm(side))

    @staticmethod
    def ladder_step(gate, down: nn.Linear, block: SideBlock, side: torch.Tensor, state: torch.Tensor, key_mask) -> torch.Tensor:
        """The gated mix of the side state (B, N, D_S) with backbone state (B, N, D_l), then one side block."""
        return block(gate * side + (1.0 - gate) * down(state), key_mask)
