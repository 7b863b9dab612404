"""UniPT (Universal Parallel Tuning) as an MDPD side network.

From the reference code (Paranioar/UniPT, ``adapter_for_transformer.py``): every hidden state b_i
(the embeddings and each layer's output) is projected, ``F_i = LN(W_i b_i)`` at width d; the last one
is the anchor ``A``. Each other state interacts with the anchor token by token,

    W_i = rownorm_L1(ReLU(A F_i^T) * key_mask) + I,    M_i = W_i F_i,

and a softmax over the states of a shared confidence ``c_i = Linear(mean(A) * mean(F_i))`` merges them:
``out = A + LN(W_p sum_i alpha_i M_i)``. The backbone's states arrive detached, so nothing but the
side network trains from this path.

Choices made here: d is ``hidden_size / reduction_factor``; the side head reads ``out`` at width d
(UniPT's ReLU + Linear up-projection exists to feed a fixed joint space, which MDPD's own head
replaces); the means pool real tokens only. **Distilled features:** M_i for every layer output mixed
in (the embeddings are mixed but are no layer's output) and ``out`` for the anchor layer, all at
width d. Models whose stages change the token count (Swin) need ``side_network="ladder"``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import BackboneStates, SideNetwork, SideOutput, masked_mean, projection, register_side_network, require_uniform_width


@register_side_network("unipt")
class UniPTSideNetwork(SideNetwork):
    title = "UniPT"

    def __init__(self, encoder, side_layers: list[int], reduction_factor: int, num_outputs: int | None):
        super().__init__()
        self.side_layers = list(side_layers)  # the last is the anchor
        self.distilled_layers = self.side_layers
        self.width = self.feature_width = max(1, encoder.hidden_size // reduction_factor)
        # states mixed into the anchor: the embeddings (None) and every side layer but the anchor
        self.mixed = [None, *self.side_layers[:-1]]
        self.projections = nn.ModuleList(projection(encoder.hidden_size, self.width, encoder.norm_eps) for _ in range(len(self.mixed) + 1))
        self.confidence = nn.Linear(self.width, 1)  # shared by all states
        self.merge = projection(self.width, self.width, encoder.norm_eps)  # W_p, then LN
        self.final_width = self.width
        self.head = nn.Linear(self.width, num_outputs) if num_outputs else None

    @classmethod
    def from_config(cls, encoder, config, side_layers, num_outputs):
        require_uniform_width(encoder, config.side_network)
        return cls(encoder, side_layers, config.reduction_factor, num_outputs)

    def run(self, states: BackboneStates) -> SideOutput:
        real = states.real  # (B, N)
        anchor = self.projections[-1](states.output_of(self.side_layers[-1]))  # A: (B, N, d)
        anchor_pooled = masked_mean(anchor, real)  # (B, d)
        key_mask = real[:, None, :].to(anchor.dtype)  # (B, 1, N)
        interacted, confidences = [], []
        for layer, project in zip(self.mixed, self.projections):
            features = project(states.input_of(0) if layer is None else states.output_of(layer))  # F_i: (B, N, d)
            weights = F.normalize(F.relu(anchor @ features.transpose(1, 2)) * key_mask, p=1, dim=-1)  # (B, N, N)
            interacted.append(weights @ features + features)  # M_i = (W + I) F_i
            confidences.append(self.confidence(anchor_pooled * masked_mean(features, real)))  # c_i: (B, 1)
        alphas = torch.softmax(torch.cat(confidences, dim=-1), dim=-1)  # (B, number of mixed states)
        merged = sum(alpha[:, None, None] * state for alpha, state in zip(alphas.unbind(-1), interacted))
        final_state = anchor + self.merge(merged)  # (B, N, d)
        return SideOutput(features=[*interacted[1:], final_state], final_state=final_state)
