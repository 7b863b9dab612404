"""DTL's compact side network (CSN) as an MDPD side network; its parts also build the standalone ``"dtl"`` method.

From the reference code (heekhero/DTL, ``vision_transformer.py``): before block i runs, a rank-d' map
of its input is added to a running sum, ``z <- z + B_i A_i x_i`` (A Kaiming-uniform, B zero, no bias,
d' = 2); from block M on, the block's output gets ``swish(z) = z * sigmoid(100 z)`` added (z includes
the block's own input). DTL+ passes swish(z) through one depthwise convolution over the patch grid,
shared by all blocks, with CLS and other prefix tokens left out. Gradient reaches the maps through
the frozen blocks from M on; the blocks before M run as they were.

As an MDPD side network the "side path" is the backbone with DTL's additions: the clean states of
the captured pass stand in for blocks before M and for block M itself (its input is clean), and blocks
M+1 .. L-1 re-run as loaded on the changed states. Choices made here: the side head reads a LayerNorm
of the last changed state (DTL reads the backbone's frozen final norm, which a post-norm encoder does
not have), pooled over real tokens; text tokens form a 1 x N row for DTL+'s convolution, and padding
tokens are zeroed before it. **Distilled features:** the changed block outputs from M on, at the
backbone's width: the backbone's own features keep them near what it computed without the side
information.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import invalid
from ..token_layout import token_grid
from .base import BackboneStates, SideNetwork, SideOutput, register_side_network, require_uniform_width

SWISH_BETA = 100.0


class LowRankMap(nn.Module):
    """B A x with A: D -> d' (Kaiming-uniform) and B: d' -> D (zero), no bias: every map starts at zero."""

    def __init__(self, width: int, rank: int):
        super().__init__()
        self.down = nn.Linear(width, rank, bias=False)
        self.up = nn.Linear(rank, width, bias=False)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(hidden))  # (B, N, D) -> (B, N, D)


class TokenDepthwiseConv(nn.Module):
    """DTL+'s depthwise k x k convolution over the token layout of ``token_grid``; prefix tokens pass unchanged."""

    def __init__(self, width: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv2d(width, width, kernel_size, padding=kernel_size // 2, groups=width, bias=False)

    def forward(self, tokens: torch.Tensor, is_vision: bool) -> torch.Tensor:
        batch, num_tokens, width = tokens.shape
        prefix, height, grid_width = token_grid(num_tokens, is_vision)
        grid = tokens[:, prefix:].transpose(1, 2).reshape(batch, width, height, grid_width)
        convolved = self.conv(grid).reshape(batch, width, -1).transpose(1, 2)  # (B, N - prefix, D)
        return torch.cat([tokens[:, :prefix], convolved], dim=1)


class CompactSideNetwork(nn.Module):
    """The CSN: one ``LowRankMap`` per block, the start block M and, for DTL+, the shared convolution."""

    def __init__(self, width: int, num_layers: int, rank: int, inject_from: int, conv_kernel: int | None, is_vision: bool):
        super().__init__()
        self.inject_from = inject_from
        self.is_vision = is_vision
        self.maps = nn.ModuleList(LowRankMap(width, rank) for _ in range(num_layers))
        self.fusion = TokenDepthwiseConv(width, conv_kernel) if conv_kernel else None

    def side_information(self, running_sum: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
        """What block i >= M adds to its output: swish(z), through the convolution for DTL+ (padding zeroed first)."""
        information = running_sum * torch.sigmoid(SWISH_BETA * running_sum)
        if self.fusion is None:
            return information
        if real is not None:
            information = information * real.unsqueeze(-1).to(information.dtype)
        return self.fusion(information, self.is_vision)


def dtl_inject_from(encoder, requested: int | None, field_name: str, owner: str = "MDPDConfig") -> int:
    """M (0-based), checked against the model: ``None`` is the middle block."""
    start = encoder.num_layers // 2 if requested is None else requested
    if not 0 <= start < encoder.num_layers:
        allowed = f"None or an integer in [0, {encoder.num_layers - 1}] (the model has {encoder.num_layers} layers)"
        raise invalid(field_name, requested, allowed, owner)
    return start


@register_side_network("dtl")
class DTLSideNetwork(SideNetwork):
    title = "DTL's compact side network"

    def __init__(self, encoder, rank: int, inject_from: int, conv_kernel: int | None, num_outputs: int | None):
        super().__init__()
        self.csn = CompactSideNetwork(encoder.hidden_size, encoder.num_layers, rank, inject_from, conv_kernel, encoder.is_vision)
        self.distilled_layers = list(range(inject_from, encoder.num_layers))
        self.rerun_layers = frozenset(range(inject_from + 1, encoder.num_layers))
        self.feature_width = encoder.hidden_size
        self.final_norm = nn.LayerNorm(encoder.hidden_size, eps=encoder.norm_eps)
        self.final_width = encoder.hidden_size
        self.head = nn.Linear(encoder.hidden_size, num_outputs) if num_outputs else None

    @classmethod
    def from_config(cls, encoder, config, side_layers, num_outputs):
        require_uniform_width(encoder, config.side_network)
        inject_from = dtl_inject_from(encoder, config.dtl_inject_from, "dtl_inject_from")
        conv_kernel = config.dtl_conv_kernel if config.side_network == "dtl+" else None
        return cls(encoder, config.dtl_rank, inject_from, conv_kernel, num_outputs)

    def run(self, states: BackboneStates) -> SideOutput:
        start = self.csn.inject_from
        running_sum = sum(self.csn.maps[i](states.input_of(i)) for i in range(start + 1))  # z after block M's input
        hidden = states.output_of(start) + self.csn.side_information(running_sum, states.real)  # (B, N, D_B)
        changed = [hidden]
        for i in range(start + 1, len(self.csn.maps)):
            running_sum = running_sum + self.csn.maps[i](hidden)
            hidden = states.rerun(i, hidden).to(hidden.dtype) + self.csn.side_information(running_sum, states.real)
            changed.append(hidden)
        return SideOutput(features=changed, final_state=self.final_norm(hidden))


register_side_network("dtl+")(DTLSideNetwork)
