"""Mask refiner: the decoder's masks sharpened at a higher resolution from the image itself.

SAM's mask decoder sees only the image embedding (LiteMedSAM: a 64 x 64 grid for a 256 px
canvas) and upsamples it four times, so a structure one or two pixels wide (retinal vessels,
EM membranes, the gaps between touching nuclei) is lost before the mask is drawn. Like HQ-SAM,
which fuses early high-resolution features into SAM's output, the refiner reads the image at a
finer canvas (``size``, e.g. 384 px: the native resolution of most 2D inputs) through a small
convolutional encoder, and for every mask runs a light U-Net decoder on the coarse logits,
conditioned on the mask's ``<SEG>`` prompt (FiLM). It predicts a correction added to the
upsampled coarse logits; the correction starts at zero, so an untrained refiner returns the
decoder's mask unchanged.

The image encoder runs once per image; only the decoder runs per mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_block(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    groups = max(1, out_channels // 8)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(groups, out_channels),
        nn.GELU(),
    )


class MaskRefiner(nn.Module):
    def __init__(self, prompt_dim: int, size: int, channels: tuple[int, int, int] = (8, 16, 16)) -> None:
        super().__init__()
        c0, c1, c2 = channels
        self.size = size
        self.stem = conv_block(3, c0)
        self.down1 = nn.Sequential(conv_block(c0, c1, stride=2), conv_block(c1, c1))
        self.down2 = nn.Sequential(conv_block(c1, c2, stride=2), conv_block(c2, c2))
        self.film = nn.Linear(prompt_dim, 2 * c2)
        self.fuse2 = conv_block(c2 + 1, c2)
        self.fuse1 = conv_block(c2 + c1 + 1, c1)
        self.fuse0 = conv_block(c1 + c0 + 1, c0)
        self.head = nn.Conv2d(c0, 1, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def encode(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, S, S) canvas -> image features at S, S/2 and S/4."""
        full = self.stem(pixels)
        half = self.down1(full)
        return [full, half, self.down2(half)]

    def forward(
        self, pixels: torch.Tensor, coarse_logits: torch.Tensor, batch_index: torch.Tensor, prompts: torch.Tensor
    ) -> torch.Tensor:
        """(B, 3, S, S) pixels, (K, m, m) coarse logits, (K,) image of each mask, (K, C) prompt
        embeddings -> (K, S, S) refined logits."""
        if coarse_logits.shape[0] == 0:
            return coarse_logits.new_zeros((0, self.size, self.size))
        images, position = torch.unique(batch_index, return_inverse=True)  # encode only images with masks
        full, half, quarter = (level[position] for level in self.encode(pixels[images].to(coarse_logits.dtype)))
        coarse = coarse_logits[:, None]
        # Logits are squashed (tanh) before they enter the convolutions: a confident decoder writes
        # magnitudes in the tens, which would swamp the normalised image features.
        scaled = [F.interpolate(coarse, size=level.shape[-2:], mode="bilinear", align_corners=False) for level in (full, half, quarter)]
        hints = [torch.tanh(s / 4) for s in scaled]
        scale, shift = self.film(prompts.to(coarse_logits.dtype)).chunk(2, dim=-1)
        x = self.fuse2(torch.cat([quarter, hints[2]], dim=1))
        x = x * (1 + scale[..., None, None]) + shift[..., None, None]
        x = F.interpolate(x, size=half.shape[-2:], mode="bilinear", align_corners=False)
        x = self.fuse1(torch.cat([x, half, hints[1]], dim=1))
        x = F.interpolate(x, size=full.shape[-2:], mode="bilinear", align_corners=False)
        x = self.fuse0(torch.cat([x, full, hints[0]], dim=1))
        return (scaled[0] + self.head(x))[:, 0]
