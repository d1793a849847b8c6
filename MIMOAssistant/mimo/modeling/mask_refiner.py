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

A trained refiner can be widened (:meth:`MaskRefiner.widened`) without changing what it
computes: its channels keep their weights and every new channel starts with zero weight into
the old ones, so further training adds capacity instead of starting over.
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


def _old_positions(old_sizes: list[int], new_sizes: list[int]) -> torch.Tensor:
    """Where each old channel of a concatenation of pieces sits once every piece is wider."""
    positions, start = [], 0
    for old, new in zip(old_sizes, new_sizes):
        positions.append(torch.arange(start, start + old))
        start += new
    return torch.cat(positions)


class MaskRefiner(nn.Module):
    def __init__(self, prompt_dim: int, size: int, channels: tuple[int, int, int] = (8, 16, 16)) -> None:
        super().__init__()
        c0, c1, c2 = channels
        self.size = size
        self.prompt_dim = prompt_dim
        self.channels = (c0, c1, c2)
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

    def _channel_layout(self) -> dict[str, tuple[list[int], list[int]]]:
        """Per parameterised layer: the sizes of the concatenated pieces of its input and of its
        output (the order of ``torch.cat`` in :meth:`forward`, FiLM's scale then shift)."""
        c0, c1, c2 = self.channels
        return {
            "stem.0": ([3], [c0]), "stem.1": ([], [c0]),
            "down1.0.0": ([c0], [c1]), "down1.0.1": ([], [c1]), "down1.1.0": ([c1], [c1]), "down1.1.1": ([], [c1]),
            "down2.0.0": ([c1], [c2]), "down2.0.1": ([], [c2]), "down2.1.0": ([c2], [c2]), "down2.1.1": ([], [c2]),
            "film": ([self.prompt_dim], [c2, c2]),
            "fuse2.0": ([c2, 1], [c2]), "fuse2.1": ([], [c2]),
            "fuse1.0": ([c2, c1, 1], [c1]), "fuse1.1": ([], [c1]),
            "fuse0.0": ([c1, c0, 1], [c0]), "fuse0.1": ([], [c0]),
            "head": ([c0], [1]),
        }

    @torch.no_grad()
    def widened(self, channels: tuple[int, int, int], seed: int = 0) -> MaskRefiner:
        """A refiner with more channels that computes exactly what this one does.

        Old channels come first in every layer and keep their weights; weights from a new
        channel into an old one are zero, so the old channels (and the output) are unchanged.
        New channels get fresh random weights (seeded) into themselves, FiLM rows of zero and
        GroupNorm's identity, so they start learning at once. GroupNorm groups stay eight
        channels wide, which keeps the old channels' normalisation groups as they were.
        """
        channels = tuple(int(c) for c in channels)
        if len(channels) != 3 or any(new < old for new, old in zip(channels, self.channels)):
            raise ValueError(f"refiner channels {channels} must be three sizes, none below the current {self.channels}")
        if any(c % 8 for c in self.channels + channels):
            raise ValueError(f"widening keeps GroupNorm groups of eight channels: sizes {self.channels} -> {channels} "
                             "must all be multiples of 8")
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            wide = MaskRefiner(self.prompt_dim, self.size, channels)
        old_layout, new_layout = self._channel_layout(), wide._channel_layout()
        old_params = dict(self.named_parameters())
        for name, param in wide.named_parameters():
            layer, kind = name.rsplit(".", 1)
            (old_in, old_out), (new_in, new_out) = old_layout[layer], new_layout[layer]
            old = old_params[name]
            rows = _old_positions(old_out, new_out)
            if layer == "film":  # FiLM of a new channel starts as the identity
                param.zero_()
            if old.dim() == 1:
                param[rows] = old
                continue
            cols = _old_positions(old_in, new_in)
            param[rows] = 0.0  # an old channel reads nothing from a new one
            param[rows[:, None], cols[None, :]] = old
        return wide

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
