"""From ``<SEG>`` hidden states to masks: the projection and the prompting of SAM's mask decoder.

The last hidden state at each ``<SEG>`` token is projected (an MLP, as in LISA) to
``num_seg_tokens`` sparse prompt embeddings of the grounding model. When the turn carries visual
prompts, the k-th ``<SEG>`` of a sample is also given the k-th visual prompt through SAM's own
prompt encoder: a box (a lasso's bounding box, a scribble's grown bounding box) as two box
corners, a point as a labelled point plus SAM's padding point. LiteMedSAM's box embeddings are
trained, so a user's box makes the mask as good as the segmenter's, and the ``<SEG>`` token adds
what the text says.

Masks with the same number of prompt tokens are decoded together, the others in their own
groups, so that every mask sees exactly its own prompt tokens, the same whether it is
decoded alone at inference or in a training batch.

At inference a mask answering a box or a lasso is kept near that region
(:func:`confine_to_regions`): the user drew where the structure is, and the ``<SEG>`` token can
otherwise pull the decoder to a look-alike outside it (a second lesion-like blob beside the box).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .grounding import GroundingModel
from .visual_prompt import POINT_TYPES, REGION_TYPES

BOX_CORNER_LABELS = (2, 3)
#: How far a mask answering a box or lasso may reach beyond the region's bounding box, as a
#: fraction of the box's side (a hand-drawn box can be a little tight) plus a pixel.
REGION_REACH = 0.1
#: Logit written outside the reach: far below any threshold, finite for half precision.
OUTSIDE_LOGIT = -1e4


class SegProjection(nn.Module):
    def __init__(self, hidden_size: int, prompt_dim: int, num_tokens: int) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.prompt_dim = prompt_dim
        self.mlp = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.ReLU(), nn.Linear(hidden_size, prompt_dim * num_tokens))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(K, H) -> (K, num_tokens, prompt_dim)."""
        return self.mlp(hidden).reshape(hidden.shape[0], self.num_tokens, self.prompt_dim)


def decoder_prompt(region_type: int, box: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM point coordinates (N, 2) and labels (N,) for one visual prompt; box in canvas pixels."""
    if region_type in POINT_TYPES:
        label = 1 if region_type == REGION_TYPES["point"] else 0
        coords = torch.stack([box[:2], torch.zeros_like(box[:2])])  # SAM pads a lone point
        labels = torch.tensor([label, -1], device=box.device)
        return coords, labels
    return box.reshape(2, 2), torch.tensor(BOX_CORNER_LABELS, device=box.device)


def decode_seg_masks(
    grounding: GroundingModel,
    image_embeddings: torch.Tensor,
    seg_prompts: torch.Tensor,
    seg_batch_index: torch.Tensor,
    seg_region_index: torch.Tensor,
    region_types: torch.Tensor,
    decoder_boxes: torch.Tensor,
    use_visual_prompts: bool,
    box_mask_decoder: Callable | None = None,
) -> torch.Tensor:
    """Mask logits (K, m, m), one per ``<SEG>``.

    ``seg_prompts`` (K, T, C) are the projected ``<SEG>`` states; ``seg_batch_index`` (K,) the
    sample of each; ``seg_region_index`` (K,) which of the sample's visual prompts goes with it
    (-1 or out of range: none). ``region_types`` (B, R) and ``decoder_boxes`` (B, R, 4).
    ``box_mask_decoder``: a callable with the mask decoder's signature for the masks whose
    visual prompt is a box or a lasso (:mod:`.box_decoder`); the grounding model's own otherwise.
    """
    count = seg_prompts.shape[0]
    if count == 0:
        size = 4 * image_embeddings.shape[-1]  # SAM's decoder upsamples its grid four times
        return image_embeddings.new_zeros((0, size, size))
    extras: list[tuple[torch.Tensor, torch.Tensor] | None] = []
    for k in range(count):
        b, r = int(seg_batch_index[k]), int(seg_region_index[k])
        if use_visual_prompts and 0 <= r < region_types.shape[1] and int(region_types[b, r]) >= 0:
            extras.append(decoder_prompt(int(region_types[b, r]), decoder_boxes[b, r]))
        else:
            extras.append(None)
    by_box_decoder = set(masks_answering_regions(seg_batch_index, seg_region_index, region_types)) if use_visual_prompts and box_mask_decoder else set()
    groups: dict[tuple[int, bool], list[int]] = {}
    for k, extra in enumerate(extras):
        groups.setdefault((0 if extra is None else len(extra[1]), k in by_box_decoder), []).append(k)
    logits: list[torch.Tensor | None] = [None] * count
    for (length, box_decoded), members in groups.items():
        index = torch.tensor(members, device=seg_prompts.device)
        sparse = seg_prompts[index]
        if length:
            coords = torch.stack([extras[k][0] for k in members])
            labels = torch.stack([extras[k][1] for k in members])
            sparse = torch.cat([sparse, grounding.embed_points(coords, labels).to(sparse.dtype)], dim=1)
        decoder = box_mask_decoder if box_decoded else None
        group_logits = grounding.decode(image_embeddings[seg_batch_index[index]], sparse, mask_decoder=decoder)
        for position, k in enumerate(members):
            logits[k] = group_logits[position]
    return torch.stack(logits)


#: Visual prompts that say how far their structure extends (a point or scribble does not).
REGION_BOUNDING_TYPES = (REGION_TYPES["box"], REGION_TYPES["lasso"])


def masks_answering_regions(seg_batch_index: torch.Tensor, seg_region_index: torch.Tensor, region_types: torch.Tensor) -> list[int]:
    """Indices of the ``<SEG>`` masks whose visual prompt is a box or a lasso."""
    return [
        k
        for k in range(seg_batch_index.shape[0])
        if 0 <= int(seg_region_index[k]) < region_types.shape[1]
        and int(region_types[seg_batch_index[k], seg_region_index[k]]) in REGION_BOUNDING_TYPES
    ]


def confine_to_regions(
    mask_logits: torch.Tensor,
    seg_batch_index: torch.Tensor,
    seg_region_index: torch.Tensor,
    region_types: torch.Tensor,
    decoder_boxes: torch.Tensor,
    canvas_size: int,
) -> torch.Tensor:
    """``mask_logits`` (K, S, S) over the square canvas, with every pixel outside the reach of
    the ``<SEG>``'s box or lasso (its bounding box grown by :data:`REGION_REACH`) set to
    :data:`OUTSIDE_LOGIT`. Masks without a region, or with a point or scribble (the structure
    extends beyond those), are returned unchanged. ``decoder_boxes`` are canvas pixels."""
    confined = mask_logits.clone()
    size = mask_logits.shape[-1]
    scale = size / canvas_size
    for k in masks_answering_regions(seg_batch_index, seg_region_index, region_types):
        b, r = int(seg_batch_index[k]), int(seg_region_index[k])
        x0, y0, x1, y1 = (float(v) * scale for v in decoder_boxes[b, r])
        reach_x, reach_y = REGION_REACH * (x1 - x0) + 1, REGION_REACH * (y1 - y0) + 1
        left, top = max(int(x0 - reach_x), 0), max(int(y0 - reach_y), 0)
        right, bottom = min(int(x1 + reach_x) + 1, size), min(int(y1 + reach_y) + 1, size)
        keep = torch.zeros((size, size), dtype=torch.bool, device=mask_logits.device)
        keep[top:bottom, left:right] = True
        confined[k] = torch.where(keep, mask_logits[k], torch.full_like(mask_logits[k], OUTSIDE_LOGIT))
    return confined
