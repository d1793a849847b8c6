"""Visual-prompt encoder: one embedding per box, point, scribble or lasso.

Every prompt is first rasterised to a mask (by the processor, with :func:`mimo.prompts.prompt_mask`),
so the four kinds share one path: the understanding features are averaged inside the mask
(mask pooling: *what* is there), the prompt's bounding box is embedded (*where* it is), and a
learned type embedding says *how* the user pointed (a negative point means "not this"). A point
covers a single pixel; area-weighted pooling keeps its cell's features instead of losing them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: Prompt type ids used in ``region_types`` (-1 pads a batch).
REGION_TYPES = {"box": 0, "point": 1, "negative_point": 2, "scribble": 3, "lasso": 4}
POINT_TYPES = (REGION_TYPES["point"], REGION_TYPES["negative_point"])


def mask_pool(features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mean feature inside each mask: (B, C, h, w), (B, R, M, M) soft masks -> (B, R, C)."""
    weights = F.adaptive_avg_pool2d(masks.to(features.dtype), features.shape[-2:])
    weights = weights.flatten(2)
    weights = weights / weights.sum(-1, keepdim=True).clamp_min(1e-12)
    return torch.einsum("brn,bcn->brc", weights, features.flatten(2))


class VisualPromptEncoder(nn.Module):
    def __init__(self, feature_dim: int, hidden_size: int) -> None:
        super().__init__()
        self.feature_projection = nn.Linear(feature_dim, hidden_size)
        # Pooled features are small (see the aligner): normalised, what the prompt covers is
        # not outweighed by where it is and what kind of prompt it is.
        self.feature_norm = nn.LayerNorm(hidden_size)
        self.box_embedding = nn.Linear(4, hidden_size)
        self.type_embedding = nn.Embedding(len(REGION_TYPES), hidden_size)
        self.norm = nn.LayerNorm(hidden_size)

    def forward(self, features: torch.Tensor, masks: torch.Tensor, types: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) features, (B, R, M, M) masks, (B, R) types, (B, R, 4) boxes in [0, 1] -> (B, R, D).

        Padded regions (type -1) get the embedding of type 0; the caller masks them out.
        """
        pooled = mask_pool(features, masks)
        embedding = self.feature_norm(self.feature_projection(pooled)) + self.box_embedding(boxes.to(pooled.dtype) * 2 - 1)
        embedding = embedding + self.type_embedding(types.clamp_min(0))
        return self.norm(embedding)
