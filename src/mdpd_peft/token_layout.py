"""Where tokens sit: text is a 1 x N row, vision tokens a square patch grid after prefix tokens (CLS, registers)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def token_grid(num_tokens: int, is_vision: bool) -> tuple[int, int, int]:
    """(prefix tokens, grid height, grid width) of a token sequence."""
    if is_vision:
        side = math.isqrt(num_tokens)
        for prefix in range(num_tokens - side * side, num_tokens):
            grid = num_tokens - prefix
            if math.isqrt(grid) ** 2 == grid and grid > 0:
                return prefix, math.isqrt(grid), math.isqrt(grid)
    return 0, 1, num_tokens


def pool_tokens(tokens: torch.Tensor, num_tokens: int, is_vision: bool) -> torch.Tensor:
    """(B, N, C) -> (B, num_tokens, C) by average pooling over the grid, prefix tokens kept: how the side
    state follows a backbone stage that merges patches (Swin halves the grid's side at every stage)."""
    batch, tokens_in, width = tokens.shape
    if tokens_in == num_tokens:
        return tokens
    prefix, height, grid_width = token_grid(tokens_in, is_vision)
    _, new_height, new_width = token_grid(num_tokens - prefix, is_vision)
    if not is_vision or new_height * new_width != num_tokens - prefix:
        raise ValueError(
            f"MDPD cannot follow the backbone from {tokens_in} to {num_tokens} tokens: only vision models whose "
            "layers merge patches of a square grid (as Swin's stages) may change the number of tokens."
        )
    grid = tokens[:, prefix:].transpose(1, 2).reshape(batch, width, height, grid_width)
    pooled = F.adaptive_avg_pool2d(grid, (new_height, new_width)).reshape(batch, width, -1).transpose(1, 2)
    return torch.cat([tokens[:, :prefix], pooled], dim=1)  # (B, num_tokens, C)


def stage_real_tokens(real: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """The real-token mask (B, N) at a layer with ``num_tokens`` tokens; only vision stages that merge
    patches change the count, and images have no padding."""
    if real.shape[1] == num_tokens:
        return real
    return torch.ones(real.shape[0], num_tokens, dtype=torch.bool, device=real.device)
