"""Serving several ladder side networks as one: every step batched over the tasks, their weights stacked.

A ladder at r = 8 costs a few percent of the encoder's FLOPs, but run one task after another its many small
matrix products and elementwise steps cost far more than their FLOPs on a CPU. Ladders of one shape (the same
layers read, width, heads, FFN width, activation and norm placement) read the same encoder states, so the N
tasks' steps can run as one: the down-projections of an encoder state, which every task reads, become one matrix
product with the tasks' weights side by side; each other ``Linear`` one batched product over a (N, in, out) stack
of the tasks' weights; each LayerNorm one normalisation with per-task scale and shift; and the attention one call
over N x B sequences. A task's outputs do not depend on which other tasks run with it (tested bit for bit).

Used only where nothing trains (inference mode or no autograd): training runs each task's own ``LadderSideNetwork``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..side_networks import BackboneStates
from ..side_networks.ladder import LadderSideNetwork, SideBlock


def ladder_shape(ladder: LadderSideNetwork) -> tuple:
    """What ladders must share to run stacked."""
    block: SideBlock = ladder.blocks[0]
    return (tuple(ladder.side_layers), ladder.width, block.num_heads, block.ffn_in.out_features, type(block.act), block.norm_position, ladder.is_vision)


def stacked(linears: list[nn.Linear], *side_by_side: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, in, out) weights and (N, 1, out) biases of N ``nn.Linear``s; with ``side_by_side`` lists, each task's
    Linears of one input side by side (q, k and v as one product: out = the sum of their outputs)."""
    groups = list(zip(linears, *side_by_side))
    weights = torch.stack([torch.cat([linear.weight.t() for linear in group], dim=1) for group in groups])
    biases = torch.stack([torch.cat([linear.bias for linear in group]) for group in groups]).unsqueeze(1)
    return weights, biases


def stacked_norm(norms: list[nn.LayerNorm]) -> tuple[torch.Tensor, torch.Tensor, float]:
    return torch.stack([norm.weight for norm in norms]).unsqueeze(1), torch.stack([norm.bias for norm in norms]).unsqueeze(1), norms[0].eps


def shared_input_weights(linears: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """N ``nn.Linear``s that read the same input as one: an (in, N x out) weight, an (N x out,) bias, and N."""
    return torch.cat([linear.weight.t() for linear in linears], dim=1), torch.cat([linear.bias for linear in linears]), len(linears)


def linear(x: torch.Tensor, weights: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """(N, T, in) -> (N, T, out), task i through its own weights."""
    weight, bias = weights
    return torch.baddbmm(bias, x, weight)


def shared_input_linear(x: torch.Tensor, weights: tuple[torch.Tensor, torch.Tensor, int]) -> torch.Tensor:
    """(T, in), read by every task -> (N, T, out): one matrix product for all N tasks (their outputs as a view)."""
    weight, bias, tasks = weights
    return torch.addmm(bias, x, weight).view(x.shape[0], tasks, -1).transpose(0, 1)


def layer_norm(x: torch.Tensor, norm: tuple[torch.Tensor, torch.Tensor, float]) -> torch.Tensor:
    weight, bias, eps = norm
    return torch.addcmul(bias, F.layer_norm(x, x.shape[-1:], eps=eps), weight)


class StackedBlock:
    """N ``SideBlock``s of one shape, as one block over (N, B x T, D_S) states."""

    def __init__(self, blocks: list[SideBlock]):
        self.num_heads, self.norm_position, self.act = blocks[0].num_heads, blocks[0].norm_position, blocks[0].act
        self.qkv = stacked([block.query for block in blocks], [block.key for block in blocks], [block.value for block in blocks])
        self.attn_out, self.ffn_in, self.ffn_out = (stacked([getattr(block, name) for block in blocks]) for name in ("attn_out", "ffn_in", "ffn_out"))
        self.attn_norm = stacked_norm([block.attn_norm for block in blocks])
        self.ffn_norm = stacked_norm([block.ffn_norm for block in blocks])

    def attention(self, x: torch.Tensor, batch: int, key_mask: torch.Tensor | None) -> torch.Tensor:
        tasks, _, width = x.shape
        # (N, B x T, D_S) -> 3 x (N x B, H, T, D_S / H)
        q, k, v = (part.reshape(tasks * batch, -1, self.num_heads, width // self.num_heads).transpose(1, 2) for part in linear(x, self.qkv).chunk(3, dim=-1))
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)  # (N x B, H, T, D_S / H)
        return linear(context.transpose(1, 2).reshape(tasks, -1, width), self.attn_out)

    def ffn(self, x: torch.Tensor) -> torch.Tensor:
        return linear(self.act(linear(x, self.ffn_in)), self.ffn_out)

    def __call__(self, x: torch.Tensor, batch: int, key_mask: torch.Tensor | None) -> torch.Tensor:
        if self.norm_position == "pre":
            x = x + self.attention(layer_norm(x, self.attn_norm), batch, key_mask)
            return x + self.ffn(layer_norm(x, self.ffn_norm))
        x = layer_norm(x + self.attention(x, batch, key_mask), self.attn_norm)
        return layer_norm(x + self.ffn(x), self.ffn_norm)


class StackedLadders:
    """N ``LadderSideNetwork``s of one ``ladder_shape``, run as one; built from their current weights."""

    def __init__(self, ladders: list[LadderSideNetwork]):
        self.side_layers = ladders[0].side_layers
        self.embed_down = shared_input_weights([ladder.embed_down for ladder in ladders])
        self.downs = [shared_input_weights([ladder.downs[i] for ladder in ladders]) for i in range(len(self.side_layers))]
        self.gates = torch.stack([ladder.gates() for ladder in ladders]).t()[:, :, None, None]  # (L, N, 1, 1)
        self.blocks = [StackedBlock([ladder.blocks[i] for ladder in ladders]) for i in range(len(self.side_layers))]
        self.final_norm = stacked_norm([ladder.final_norm for ladder in ladders])

    def final_states(self, states: BackboneStates) -> torch.Tensor:
        """The N ladders' final states (N, B, T, D_S) on one pass's encoder states (every layer keeps its tokens)."""
        dtype = self.embed_down[0].dtype
        batch, tokens = states.real.shape
        real = states.real
        key_mask = None if bool(real.all()) else real[:, None, None, :].repeat(self.gates.shape[1], 1, 1, 1)  # (N x B, 1, 1, T)
        side = shared_input_linear(states.embeddings.to(dtype).reshape(batch * tokens, -1), self.embed_down)  # (N, B x T, D_S)
        for gate, down, block, layer in zip(self.gates, self.downs, self.blocks, self.side_layers):
            state = states.layer_outputs[layer].to(dtype).reshape(batch * tokens, -1)  # (B x T, D_l)
            side = block(torch.lerp(shared_input_linear(state, down), side, gate), batch, key_mask)  # gate * side + (1 - gate) * Down(b)
        return layer_norm(side, self.final_norm).view(-1, batch, tokens, side.shape[-1])
