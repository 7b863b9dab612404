"""Hierarchical feature distillation, backbone -> side (mdpd-paper.txt section 3.2-3.3, Eq. 1, 2/4, 5-7).

The backbone is the teacher here; its features arrive detached, so these losses train only the side
network, its aligners, the generation blocks and the mask token.

Choices the paper leaves open, made here:
- One aligner phi per distilled layer (Eq. 1 indexes phi by nothing, but the layers differ).
- Deep layers align first, then mask (section 3.3: "we first use a bottleneck module to align the
  hidden dimensions"); one learnable mask token of width D_B is shared by all deep layers, and one
  random mask per forward pass is shared by all deep layers (Eq. 5: "unitarily applied"). Where the
  backbone's stages change width and token count (Swin), each width has its mask token and each
  token count its mask.
- G (Eq. 7) is Conv3x3(D_B -> d) -> ReLU -> Conv3x3(d -> D_B) with d the aligner rank, which keeps
  its parameter count near the aligner's instead of 18 * D_B^2.
- Token layout for the 3x3 convolutions: text is a 1 x N image (so a 3x3 kernel sees the previous and
  next token); vision tokens go back to their square patch grid, and prefix tokens (CLS, registers)
  are each convolved as a 1 x 1 image. Padding tokens are zeroed in G's input and hidden map so they leak into no real
  token, and neither they nor unmasked tokens count in Eq. 7.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .token_layout import stage_real_tokens, token_grid


class FeatureAligner(nn.Module):
    """phi(s) = s M_down M_up (Eq. 1): a rank-d bottleneck from side width D_S to backbone width D_B."""

    def __init__(self, side_width: int, backbone_width: int, rank: int):
        super().__init__()
        self.down = nn.Linear(side_width, rank)
        self.up = nn.Linear(rank, backbone_width)

    def forward(self, side_state: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(side_state))  # (B, N, D_S) -> (B, N, D_B)


def sample_token_mask(real: torch.Tensor, mask_ratio: float) -> torch.Tensor:
    """Eq. 5, m_i = 1[r_i < lambda] with r_i ~ U[0, 1), restricted to real tokens: (B, N) bool.

    Data-parallel ranks are seeded alike (transformers' ``set_seed``), so each rank keeps its own slice
    of one (world size, B, N) draw: ranks mask differently, and the random stream stays identical on
    every rank (and across a resume). With one process this is exactly ``torch.rand(B, N)``.
    """
    distributed = dist.is_available() and dist.is_initialized()
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    draw = torch.rand((world_size, *real.shape), device=real.device)[rank]
    return (draw < mask_ratio) & real


class GenerationBlock(nn.Module):
    """G in Eq. 7: two 3x3 convolutions with a ReLU between, over the token layout of ``token_grid``."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.conv_in = nn.Conv2d(width, hidden, kernel_size=3, padding=1)
        self.conv_out = nn.Conv2d(hidden, width, kernel_size=3, padding=1)

    def convolve(self, images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) with padding zeroed, keep (B, 1, H, W) 1 for real tokens. The hidden map is
        zeroed at padding too: the ReLU of conv_in's bias there would otherwise reach the real neighbours."""
        return self.conv_out(F.relu(self.conv_in(images)) * keep)

    def forward(self, tokens: torch.Tensor, real_weight: torch.Tensor, is_vision: bool) -> torch.Tensor:
        """tokens (B, N, D) with padding zeroed, real_weight (B, N, 1) -> generated (B, N, D)."""
        batch, num_tokens, width = tokens.shape
        prefix, height, grid_width = token_grid(num_tokens, is_vision)
        grid = tokens[:, prefix:].transpose(1, 2).reshape(batch, width, height, grid_width)
        keep = real_weight[:, prefix:].transpose(1, 2).reshape(batch, 1, height, grid_width)
        generated = self.convolve(grid, keep).reshape(batch, width, -1).transpose(1, 2)  # (B, N - prefix, D)
        if prefix == 0:
            return generated
        single = tokens[:, :prefix].reshape(batch * prefix, width, 1, 1)
        single_keep = real_weight[:, :prefix].reshape(batch * prefix, 1, 1, 1)
        generated_prefix = self.convolve(single, single_keep).reshape(batch, prefix, width)
        return torch.cat([generated_prefix, generated], dim=1)


class DualPathDistiller(nn.Module):
    """The distillation modules of one adapter: an aligner per side layer, G per deep layer, the mask token."""

    def __init__(self, side_layers: list[int], deep_layers_start: int, side_width: int, layer_widths: list[int], rank: int):
        """``layer_widths``: the backbone width of each side layer's teacher (one width but for Swin's stages)."""
        super().__init__()
        self.is_deep = [layer >= deep_layers_start for layer in side_layers]
        self.aligners = nn.ModuleList(FeatureAligner(side_width, width, rank) for width in layer_widths)
        self.generators = nn.ModuleList(GenerationBlock(width, rank) for width, deep in zip(layer_widths, self.is_deep) if deep)
        # one mask token per backbone width: a single one, as in the paper, unless the stages widen
        self.mask_tokens = nn.ParameterDict(
            {str(width): nn.Parameter(nn.init.trunc_normal_(torch.zeros(width), std=0.02)) for width in layer_widths}
        )

    def forward(
        self,
        side_states: list[torch.Tensor],
        teacher_states: list[torch.Tensor],
        real: torch.Tensor,
        mask_ratio: float,
        is_vision: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum of Eq. 4 over shallow layers and of Eq. 7 over deep layers, each averaged over the batch.

        Each layer's term is recomputed in backward (non-reentrant activation checkpointing): its
        width-D_B intermediates (aligned, masked and generated features, squared errors) would
        otherwise stay alive for every side layer until backward; now only one layer's exist at a
        time. Gradients are unchanged; the cost is one more aligner and G forward per layer.

        Args:
            side_states: s^l, (B, N_l, D_S) per side layer.
            teacher_states: b^l, (B, N_l, D_l) per side layer, detached (N_l = N and D_l = D_B but in Swin).
            real: (B, N) bool, True for real (non-padding) tokens of the input sequence.
        """
        masks: dict[int, torch.Tensor] = {}  # one draw per token count for all deep layers, outside the recomputed part
        shallow = side_states[0].new_zeros(())
        deep = side_states[0].new_zeros(())
        generators = iter(self.generators)
        for is_deep, aligner, side, teacher in zip(self.is_deep, self.aligners, side_states, teacher_states):
            layer_real = stage_real_tokens(real, teacher.shape[1])
            real_weight = layer_real.unsqueeze(-1).to(side.dtype)  # (B, N, 1)
            if is_deep:
                num_tokens = teacher.shape[1]
                if num_tokens not in masks:
                    masks[num_tokens] = sample_token_mask(layer_real, mask_ratio)
                mask_token = self.mask_tokens[str(teacher.shape[-1])]
                deep = deep + recomputed(
                    self.deep_term, aligner, next(generators), mask_token, side, teacher, masks[num_tokens], real_weight, is_vision
                )
            else:
                shallow = shallow + recomputed(self.shallow_term, aligner, side, teacher, real_weight)
        return shallow / real.shape[0], deep / real.shape[0]

    @staticmethod
    def shallow_term(aligner: FeatureAligner, side: torch.Tensor, teacher: torch.Tensor, real_weight: torch.Tensor) -> torch.Tensor:
        """Eq. 4 for one layer, summed over the batch: ||b - phi(s)||^2 over real tokens."""
        return ((teacher - aligner(side)).pow(2) * real_weight).sum()

    @staticmethod
    def deep_term(
        aligner: FeatureAligner,
        generator: GenerationBlock,
        mask_token: torch.Tensor,
        side: torch.Tensor,
        teacher: torch.Tensor,
        masked: torch.Tensor,
        real_weight: torch.Tensor,
        is_vision: bool,
    ) -> torch.Tensor:
        """Eq. 6-7 for one layer, summed over the batch: ||b - G(mask(phi(s)))||^2 over masked tokens."""
        aligned = aligner(side)  # (B, N, D_B)
        # Eq. 6: masked tokens become the shared learnable mask token; padding is zeroed for the convs.
        filled = torch.where(masked.unsqueeze(-1), mask_token.to(aligned.dtype), aligned) * real_weight
        generated = generator(filled, real_weight, is_vision)
        return ((teacher - generated).pow(2) * masked.unsqueeze(-1).to(generated.dtype)).sum()


RECOMPUTING = ContextVar("mdpd_recomputing", default=True)


@contextmanager
def intermediates_kept():
    """Inside, ``recomputed`` keeps its intermediates: for training on cached states, where no backbone
    activation competes for memory and the point is time (one side forward per step instead of two)."""
    token = RECOMPUTING.set(False)
    try:
        yield
    finally:
        RECOMPUTING.reset(token)


def recomputed(function, *args) -> torch.Tensor:
    """``function(*args)``, recomputed in backward instead of keeping its intermediates when autograd records
    (unless inside ``intermediates_kept``)."""
    if not torch.is_grad_enabled() or not RECOMPUTING.get():
        return function(*args)
    return checkpoint(function, *args, use_reentrant=False)


def logits_distillation_loss(side_logits: torch.Tensor, backbone_logits: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Eq. 3, side (teacher, detached) -> backbone (student): squared logit error summed, averaged over the batch.

    The paper writes phi(Y_B); both heads here predict the same label space, so phi is the identity.
    Token-level logits (B, N, C) count real tokens only.
    """
    error = (side_logits.detach() - backbone_logits).pow(2)
    if error.dim() == 3:
        error = error * real.unsqueeze(-1).to(error.dtype)
    return error.sum() / backbone_logits.shape[0]
