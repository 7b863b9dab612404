"""The head of a kept side network: its own final state, gated with the encoder's own final representation."""

from __future__ import annotations

import torch
from torch import nn

from ..side_networks.base import masked_mean


class TaskHead(nn.Module):
    """Logits of one task from the side network's final state ``s`` and the encoder's final representation ``b``.

    ``head_input="gated"`` (QST, arXiv 2401.07159): ``h = g * Up(s) + (1 - g) * b`` with ``g = sigmoid(alpha)`` per
    channel of the encoder's width, then a linear classifier; a linear probe of the encoder is the case g = 0, so
    the task starts from, and can always fall back to, what a probe reads. ``head_input="side"`` (LST): a linear
    classifier on ``s`` alone. Sequence-level heads pool first (``Up`` is linear, so pooling before it is exact):
    the mean over real tokens, the first token, or (``"first_and_mean"``, DINOv2's classifier) the first token beside
    the mean of the others, each of the two parts through the same ``Up``, with gates of their own.
    """

    def __init__(self, side_width: int, encoder_width: int, num_labels: int, head_input: str, gate_init: float, pooling: str, per_token: bool = False):
        super().__init__()
        self.pooling = pooling
        self.parts = 2 if pooling == "first_and_mean" and not per_token else 1  # pooled vectors laid side by side
        self.gated = head_input == "gated"
        if self.gated:
            self.up = nn.Linear(side_width, encoder_width)
            self.gate_logits = nn.Parameter(torch.full((self.parts * encoder_width,), float(gate_init)))
        self.classifier = nn.Linear(self.parts * (encoder_width if self.gated else side_width), num_labels)

    def pool(self, tokens: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, C), or (B, 2 x C) for ``"first_and_mean"``."""
        if self.pooling == "first":
            return tokens[:, 0]
        if self.pooling == "first_and_mean":
            return torch.cat([tokens[:, 0], masked_mean(tokens[:, 1:], real[:, 1:])], dim=-1)
        return masked_mean(tokens, real)

    def forward(self, side_state: torch.Tensor, encoder_state: torch.Tensor, real: torch.Tensor, per_token: bool) -> torch.Tensor:
        """side_state (B, N, D_S), encoder_state (B, N, D_B), real (B, N) -> logits (B, C), or (B, N, C) per token."""
        if not per_token:
            side_state, encoder_state = self.pool(side_state, real), self.pool(encoder_state, real)
        if not self.gated:
            return self.classifier(side_state)
        gate = torch.sigmoid(self.gate_logits)  # (parts x D_B,)
        up = self.up(side_state.unflatten(-1, (self.parts, -1))).flatten(-2)  # each pooled part through Up
        return self.classifier(gate * up + (1.0 - gate) * encoder_state.to(side_state.dtype))
