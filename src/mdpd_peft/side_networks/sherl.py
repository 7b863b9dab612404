"""SHERL as an MDPD side network: an early route that merges every layer, a late route through the last layer.

From the reference code (Paranioar/SHERL, ``adapter_for_transformer.py``): the inputs of every layer
but the last are collected (the embeddings and the outputs of layers 0 .. L-2) and projected,
``S_j = LN(Down_j b_j)`` at width d. The deepest, ``e``, guides the others token by token:

    redundancy  r_j = sum_k ReLU(cos(S_j, S_k))             (S_k: the other shallow states, itself included)
    weight      m_j = normL1_j(ReLU(Linear(S_j * e)) / r_j)  (over the shallow states)
    aggregate   agg = sum_j m_j S_j + e

``out = fc_out(agg) + tanh(g / 0.1) * b_{L-1}`` (fc_out: ReLU, Linear d -> D_B, LayerNorm; g starts at
0, so the skip from the last layer's input starts closed), and the frozen last backbone layer runs on
``out`` (the late route): the side task's gradient crosses that one layer, into the side modules only.

Choices made here: d is ``hidden_size / reduction_factor``; the last layer re-runs as loaded (its
LayerNorm copies, which fading trains, are bypassed) with the attention mask of the pass; the side
head reads its output at width D_B. **Distilled features:** the projections ``S_j`` of the collected
layer outputs (width d). SHERL has no deeper per-layer state, so here the feature terms ask each
projection to keep what rebuilds its layer (masked tokens from their neighbours, for deep layers);
the late layer's output learns from the task alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import invalid
from .base import BackboneStates, SideNetwork, SideOutput, full_value, projection, register_side_network, require_uniform_width

SKIP_GATE_TEMPERATURE = 0.1  # SHERL's tanh(g / 0.1)


@register_side_network("sherl")
class SHERLSideNetwork(SideNetwork):
    title = "SHERL"

    def __init__(self, encoder, collected: list[int], reduction_factor: int, num_outputs: int | None):
        super().__init__()
        self.last_layer = encoder.num_layers - 1
        self.collected = list(collected)  # layer outputs collected beside the embeddings; the last is the guide
        self.distilled_layers = self.collected
        self.rerun_layers = frozenset({self.last_layer})
        self.width = self.feature_width = max(1, encoder.hidden_size // reduction_factor)
        self.downs = nn.ModuleList(projection(encoder.hidden_size, self.width, encoder.norm_eps) for _ in range(len(self.collected) + 1))
        self.layer_scores = nn.Linear(self.width, 1)
        self.fc_out = nn.Sequential(nn.ReLU(), projection(self.width, encoder.hidden_size, encoder.norm_eps))
        self.skip_gate = nn.Parameter(torch.zeros(1))
        self.final_width = encoder.hidden_size
        self.head = nn.Linear(encoder.hidden_size, num_outputs) if num_outputs else None

    @classmethod
    def from_config(cls, encoder, config, side_layers, num_outputs):
        require_uniform_width(encoder, config.side_network)
        last = encoder.num_layers - 1
        if config.side_layers is not None and last in config.side_layers:
            raise invalid("side_layers", config.side_layers, f"indices below {last} with side_network='sherl' (layer {last} is its late module)")
        if last < 1:
            raise invalid("side_network", config.side_network, "another side network for a one-layer model (SHERL's late module is the last layer)")
        return cls(encoder, [layer for layer in side_layers if layer < last], config.reduction_factor, num_outputs)

    def logged_values(self) -> dict[str, float]:
        return {"skip_gate": full_value(torch.tanh(self.skip_gate / SKIP_GATE_TEMPERATURE)).item()}

    def run(self, states: BackboneStates) -> SideOutput:
        inputs = [states.input_of(0), *(states.output_of(layer) for layer in self.collected)]
        projected = [down(state) for down, state in zip(self.downs, inputs)]
        *shallow, guide = projected
        stacked = torch.stack(shallow, dim=2)  # (B, N, J, d): the embeddings and every collected layer but the guide
        unit = F.normalize(stacked, dim=-1)
        redundancy = F.relu(unit @ unit.transpose(-1, -2)).sum(dim=-1, keepdim=True)  # (B, N, J, 1)
        scores = F.relu(self.layer_scores(stacked * guide.unsqueeze(2))) / redundancy  # (B, N, J, 1)
        weights = F.normalize(scores, p=1, dim=2)
        aggregate = (weights * stacked).sum(dim=2) + guide  # (B, N, d)
        last_input = states.input_of(self.last_layer)  # (B, N, D_B)
        fused = self.fc_out(aggregate) + torch.tanh(self.skip_gate / SKIP_GATE_TEMPERATURE) * last_input
        final_state = states.rerun(self.last_layer, fused).to(fused.dtype)  # the late route: (B, N, D_B)
        return SideOutput(features=projected[1:], final_state=final_state)
