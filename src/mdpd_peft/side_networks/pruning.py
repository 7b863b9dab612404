"""Structured-pruning initialisation of the side blocks from the backbone's own weights (LST).

LST ranks channels by accumulated squared gradients; the L1 norm of the weights that read or write a
channel is the cheaper, data-free proxy used here. The same kept channels are used consistently:
one set of residual-stream channels for every side block (the residual stream is one coordinate
system across layers), and per block the kept head dimensions (shared by q and k so partial dot
products stay meaningful, and by v and the output projection) and FFN neurons.
"""

from __future__ import annotations

import torch
from torch import nn

from ..architecture import BlockParts, EncoderMap, Projection, PruningNotApplicable, find_block_parts
from ..config import invalid


def top_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores, in increasing index order (keeps the channels' original order)."""
    return scores.topk(k).indices.sort().values


def residual_channel_scores(parts: BlockParts) -> torch.Tensor:
    """(D_B,) importance of each residual channel: L1 of the columns that read it and rows that write it."""
    reads = sum(weight.abs().sum(dim=0) for weight, _ in (parts.query, parts.key, parts.value, parts.ffn_in))
    writes = parts.attn_out[0].abs().sum(dim=1) + parts.ffn_out[0].abs().sum(dim=1)
    return reads + writes


def head_rows(scores: torch.Tensor, backbone_heads: int, side_heads: int, side_head_dim: int) -> torch.Tensor:
    """Rows of a q/k/v projection to keep: the best ``side_heads`` heads, the best ``side_head_dim`` dims in each."""
    per_head = scores.view(backbone_heads, -1)  # (H_B, D_B / H_B)
    if side_head_dim > per_head.shape[1]:
        return top_indices(scores, side_heads * side_head_dim)
    heads = top_indices(per_head.sum(dim=1), side_heads)
    return torch.cat([head * per_head.shape[1] + top_indices(per_head[head], side_head_dim) for head in heads.tolist()])


def copy_linear(target: nn.Linear, source: Projection, rows: torch.Tensor, cols: torch.Tensor) -> None:
    weight, bias = source
    target.weight.copy_(weight[rows][:, cols])
    if bias is not None:
        target.bias.copy_(bias[rows])


def copy_norm(target: nn.LayerNorm, source: nn.Module | None, channels: torch.Tensor) -> None:
    if source is None:
        return
    target.weight.copy_(source.weight[channels])
    if getattr(source, "bias", None) is not None:
        target.bias.copy_(source.bias[channels])


def prune_block(block: nn.Module, parts: BlockParts, hidden: torch.Tensor, backbone_heads: int) -> None:
    """Copy the kept rows and columns of one backbone layer into a side block (the ladder's ``SideBlock``:
    ``query``, ``key``, ``value``, ``attn_out``, ``ffn_in``, ``ffn_out``, ``attn_norm``, ``ffn_norm``, ``num_heads``)."""
    side_head_dim = block.query.out_features // block.num_heads
    qk_scores = parts.query[0].abs().sum(dim=1) + parts.key[0].abs().sum(dim=1)
    vo_scores = parts.value[0].abs().sum(dim=1) + parts.attn_out[0].abs().sum(dim=0)
    qk_rows = head_rows(qk_scores, backbone_heads, block.num_heads, side_head_dim)
    vo_rows = head_rows(vo_scores, backbone_heads, block.num_heads, side_head_dim)
    neuron_scores = parts.ffn_in[0].abs().sum(dim=1) + parts.ffn_out[0].abs().sum(dim=0)
    neurons = top_indices(neuron_scores, block.ffn_in.out_features)

    copy_linear(block.query, parts.query, qk_rows, hidden)
    copy_linear(block.key, parts.key, qk_rows, hidden)
    copy_linear(block.value, parts.value, vo_rows, hidden)
    copy_linear(block.attn_out, parts.attn_out, hidden, vo_rows)
    copy_linear(block.ffn_in, parts.ffn_in, neurons, hidden)
    copy_linear(block.ffn_out, parts.ffn_out, hidden, neurons)
    copy_norm(block.attn_norm, parts.attn_norm, hidden)
    copy_norm(block.ffn_norm, parts.ffn_norm, hidden)


@torch.no_grad()
def prune_into_side_network(blocks: list[nn.Module], side_layers: list[int], width: int, model: nn.Module, encoder: EncoderMap) -> None:
    """Initialise side block i from backbone layer ``side_layers[i]``, keeping ``width`` residual channels."""
    if not encoder.uniform_width:
        raise PruningNotApplicable(*invalid(
            "side_init", "pruned", f"'random' for a model whose layers change width ({type(model).__name__}: "
            f"{encoder.embedding_width} -> {list(encoder.layer_widths)}); pruning keeps one set of residual channels"
        ).args)
    parts = [
        find_block_parts(encoder.layer_module(model, i), encoder.hidden_size, encoder.intermediate_size) for i in side_layers
    ]
    hidden = top_indices(sum(residual_channel_scores(p).float() for p in parts), width)
    for block, block_parts in zip(blocks, parts):
        prune_block(block, block_parts, hidden, encoder.num_heads)
