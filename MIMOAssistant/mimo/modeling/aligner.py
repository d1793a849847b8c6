"""Multi-modal Input Aligner: what the language model sees of the image and the visual prompts.

A fixed number of learnable queries cross-attend to three sources at once: the image tokens,
the text prompt (the question's token embeddings) and the visual-prompt embeddings. Reading
the question lets the queries pick the image content the question is about (as in MIMO and
InstructBLIP) instead of summarising the image blindly. The queries then become the
``<image>`` token embeddings of the language model; each visual-prompt embedding becomes the
embedding of its ``<region>`` token. Both projections into the LM space live here, so this
module is the single bridge from vision to language.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

SOURCE_IMAGE, SOURCE_TEXT, SOURCE_PROMPT = 0, 1, 2


def sincos_grid(size: int, dim: int) -> torch.Tensor:
    """(size * size, dim) fixed 2D sine-cosine positions: any grid size, no weights to save."""
    quarter = dim // 4
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(quarter, dtype=torch.float32) / max(quarter, 1))
    coords = torch.arange(size, dtype=torch.float32)
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    angles_x = x.flatten()[:, None] * frequencies[None]
    angles_y = y.flatten()[:, None] * frequencies[None]
    encoding = torch.cat([angles_x.sin(), angles_x.cos(), angles_y.sin(), angles_y.cos()], dim=1)
    return F.pad(encoding, (0, dim - encoding.shape[1]))


def projection(in_dim: int, out_dim: int) -> nn.Sequential:
    """Two-layer MLP into the LM embedding space (LLaVA-1.5's projector)."""
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))


class AlignerLayer(nn.Module):
    """Pre-norm block: queries attend to each other, then to the sources, then an MLP."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.self_norm = nn.LayerNorm(hidden_size)
        self.self_attention = nn.MultiheadAttention(hidden_size, num_heads, batch_first=True)
        self.cross_norm = nn.LayerNorm(hidden_size)
        self.memory_norm = nn.LayerNorm(hidden_size)
        self.cross_attention = nn.MultiheadAttention(hidden_size, num_heads, batch_first=True)
        self.mlp_norm = nn.LayerNorm(hidden_size)
        inner = int(hidden_size * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden_size, inner), nn.GELU(), nn.Linear(inner, hidden_size))

    def forward(self, queries: torch.Tensor, memory: torch.Tensor, memory_padding: torch.Tensor) -> torch.Tensor:
        normed = self.self_norm(queries)
        queries = queries + self.self_attention(normed, normed, normed, need_weights=False)[0]
        memory = self.memory_norm(memory)
        queries = queries + self.cross_attention(
            self.cross_norm(queries), memory, memory, key_padding_mask=memory_padding, need_weights=False
        )[0]
        return queries + self.mlp(self.mlp_norm(queries))


class MultiModalInputAligner(nn.Module):
    def __init__(
        self,
        image_dim: int,
        text_dim: int,
        hidden_size: int,
        output_dim: int,
        num_queries: int,
        num_layers: int,
        num_heads: int,
        mlp_ratio: float,
        image_token_grid: int,
    ) -> None:
        super().__init__()
        self.image_token_grid = image_token_grid
        self.queries = nn.Parameter(torch.randn(num_queries, hidden_size) * 0.02)
        self.image_input = nn.Linear(image_dim, hidden_size)
        self.text_input = nn.Linear(text_dim, hidden_size)
        # Image features (a SAM embedding has a standard deviation near 0.1) and fresh token
        # embeddings are small: normalised, their content outweighs the position and source
        # codes added to them, instead of being drowned by them.
        self.image_norm = nn.LayerNorm(hidden_size)
        self.text_norm = nn.LayerNorm(hidden_size)
        self.source_embedding = nn.Embedding(3, hidden_size)
        nn.init.normal_(self.source_embedding.weight, std=0.02)
        self.layers = nn.ModuleList(AlignerLayer(hidden_size, num_heads, mlp_ratio) for _ in range(num_layers))
        self.norm = nn.LayerNorm(hidden_size)
        self.image_projection = projection(hidden_size, output_dim)
        self.region_projection = projection(hidden_size, output_dim)
        # A direct path from the image to each <image> token, as LLaVA's projector: query k
        # also carries cell k of a sqrt(Q) x sqrt(Q) pooled grid. Learned queries alone
        # start as constants that the language model learns to ignore before they learn to
        # read the image; this path cannot be ignored and trains in a few hundred steps.
        self.direct_grid = math.isqrt(num_queries)  # MimoConfig.validate: num_queries is a square
        self.direct_norm = nn.LayerNorm(image_dim)
        self.direct_projection = projection(image_dim, output_dim)

    @property
    def num_queries(self) -> int:
        return self.queries.shape[0]

    def forward(
        self,
        image_features: torch.Tensor,
        text_embeddings: torch.Tensor,
        text_mask: torch.Tensor,
        prompt_embeddings: torch.Tensor,
        prompt_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Image (B, C, h, w), text (B, T, Dt) with mask (B, T), prompts (B, R, D) with mask (B, R)
        -> image tokens (B, Q, D_lm) and region tokens (B, R, D_lm) for the language model."""
        grid = min(self.image_token_grid, image_features.shape[-1])
        image = F.adaptive_avg_pool2d(image_features, grid).flatten(2).transpose(1, 2)
        image = self.image_norm(self.image_input(image)) + 0.1 * sincos_grid(grid, self.queries.shape[1]).to(image)
        text = self.text_norm(self.text_input(text_embeddings.to(image.dtype)))
        batch = image.shape[0]
        sources = self.source_embedding.weight
        memory = torch.cat([image + sources[SOURCE_IMAGE], text + sources[SOURCE_TEXT], prompt_embeddings + sources[SOURCE_PROMPT]], dim=1)
        keep = torch.cat([torch.ones(image.shape[:2], dtype=torch.bool, device=image.device), text_mask.bool(), prompt_mask.bool()], dim=1)
        queries = self.queries[None].expand(batch, -1, -1)
        for layer in self.layers:
            queries = layer(queries, memory, ~keep)
        cells = F.adaptive_avg_pool2d(image_features, self.direct_grid).flatten(2).transpose(1, 2)
        direct = self.direct_projection(self.direct_norm(cells.to(queries.dtype)))
        return self.image_projection(self.norm(queries)) + direct, self.region_projection(prompt_embeddings)
