"""The head of a kept side network: its own final state, gated with the encoder's own final representation."""

from __future__ import annotations

import torch
from torch import nn

from ..side_networks.base import masked_mean

# The probe's L2 penalty: scikit-learn's LogisticRegression() default (C = 1) on unit-norm features, SetFit's head
PROBE_INVERSE_REGULARISATION = 1.0


class TaskHead(nn.Module):
    """Logits of one task from the side network's final state ``s`` and the encoder's final representation ``b``.

    ``head_input="gated"`` (QST, arXiv 2401.07159): ``h = g * Up(s) + (1 - g) * b`` with ``g = sigmoid(alpha)`` per
    channel of the encoder's width, then a linear classifier; a linear probe of the encoder is the case g = 0, so
    the task starts from, and can always fall back to, what a probe reads. ``head_input="side"`` (LST): a linear
    classifier on ``s`` alone. Sequence-level heads pool first (``Up`` is linear, so pooling before it is exact):
    the mean over real tokens, the first token, (``"first_and_mean"``, DINOv2's classifier) the first token beside
    the mean of the others, each of the two parts through the same ``Up``, with gates of their own, or
    (``"attention"``) a weighted mean whose weights a learned query reads from the encoder's final states.
    """

    def __init__(self, side_width: int, encoder_width: int, num_labels: int, head_input: str, gate_init: float, pooling: str, per_token: bool = False):
        super().__init__()
        self.pooling = pooling
        self.parts = 2 if pooling == "first_and_mean" and not per_token else 1  # pooled vectors laid side by side
        self.gated = head_input == "gated"
        if self.gated:
            self.up = nn.Linear(side_width, encoder_width)
            self.gate_logits = nn.Parameter(torch.full((self.parts * encoder_width,), float(gate_init)))
        if pooling == "attention" and not per_token:
            # zeros: every real token weighs the same, so the head starts as mean pooling (and its probe fit is that probe)
            self.pooling_query = nn.Parameter(torch.zeros(encoder_width))
        self.classifier = nn.Linear(self.parts * (encoder_width if self.gated else side_width), num_labels)

    def pooling_weights(self, encoder_state: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Attention pooling's weights (B, N): a softmax over the real tokens of the learned query's dot product with
        each token's final encoder state (attention pooling with one query and no projections, as Lee et al. 2019's
        PMA or the MAP head of ViT classifiers, over the frozen states). One set of weights pools the side and the
        encoder states alike, so the gated mix of the two stays a mix of the same tokens."""
        scores = encoder_state.float() @ self.pooling_query.float()  # (B, N), in float32 whatever the model's dtype
        return torch.softmax(scores.masked_fill(real == 0, float("-inf")), dim=-1)

    def pool(self, tokens: torch.Tensor, real: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, C) -> (B, C), or (B, 2 x C) for ``"first_and_mean"``; ``weights`` (B, N) are attention pooling's."""
        if weights is not None:
            return (weights.to(tokens.dtype).unsqueeze(-1) * tokens).sum(dim=1)
        if self.pooling == "first":
            return tokens[:, 0]
        if self.pooling == "first_and_mean":
            return torch.cat([tokens[:, 0], masked_mean(tokens[:, 1:], real[:, 1:])], dim=-1)
        return masked_mean(tokens, real)

    def forward(self, side_state: torch.Tensor, encoder_state: torch.Tensor, real: torch.Tensor, per_token: bool) -> torch.Tensor:
        """side_state (B, N, D_S), encoder_state (B, N, D_B), real (B, N) -> logits (B, C), or (B, N, C) per token."""
        if not per_token:
            weights = self.pooling_weights(encoder_state, real) if self.pooling == "attention" else None
            side_state, encoder_state = self.pool(side_state, real, weights), self.pool(encoder_state, real, weights)
        if not self.gated:
            return self.classifier(side_state)
        gate = torch.sigmoid(self.gate_logits)  # (parts x D_B,)
        up = self.up(side_state.unflatten(-1, (self.parts, -1))).flatten(-2)  # each pooled part through Up
        return self.classifier(gate * up + (1.0 - gate) * encoder_state.to(side_state.dtype))

    @torch.no_grad()
    def fit_classifier_as_probe(self, features: torch.Tensor, labels: torch.Tensor, max_iterations: int = 500) -> None:
        """Set the classifier to an L2-regularised logistic regression of ``labels`` on ``features`` (N, D): what the
        classifier reads for N training examples. The penalty is scikit-learn's ``LogisticRegression()`` (C = 1) on
        unit-norm features (sentence-transformers' normalised embedding, SetFit's head), rescaled to the features'
        mean squared norm: on the encoder's pooled representation this is that probe, without the normalisation."""
        features, labels = features.float(), labels.long()
        weight = torch.zeros(self.classifier.out_features, features.shape[1], requires_grad=True)
        bias = torch.zeros(self.classifier.out_features, requires_grad=True)
        penalty = features.pow(2).sum(-1).mean() / (PROBE_INVERSE_REGULARISATION * len(labels))
        optimizer = torch.optim.LBFGS([weight, bias], max_iter=max_iterations, tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")

        def objective():
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(features @ weight.T + bias, labels) + 0.5 * penalty * weight.pow(2).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            optimizer.step(objective)
        self.classifier.weight.copy_(weight.detach())
        self.classifier.bias.copy_(bias.detach())
