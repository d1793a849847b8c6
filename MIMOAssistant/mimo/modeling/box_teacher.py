"""Box teacher: while the mask path trains, keep a box answer close to LiteMedSAM's own answer
to the same box wherever LiteMedSAM's answer is right (training only; never saved).

Fine-tuning LiteMedSAM's decoder on a few hundred images per dataset teaches it the ``<SEG>``
prompt and thin or many-instance targets, but it also forgets some of what made the pretrained
decoder outline a single object from a box on images it never saw (held-out colonoscopy
videos: polyp masks short of the polyp). Learning without Forgetting (Li & Hoiem, 2016) keeps
a fine-tuned network's answers near the original network's on the new data; here the original
is the frozen pretrained decoder given the box alone, exactly the LiteMedSAM baseline.

The term is a per-pixel KL divergence between the pretrained decoder's mask probabilities and
the trained decoder's, on the decoder's own canvas, for the masks answering a box or lasso
whose teacher mask agrees with the reference mask (Dice at least ``min_dice``): on retinal
vessels, membranes or nuclei the pretrained decoder draws a blob (Dice about 0.2), and
following it there would undo what the mask path learnt. No dataset or target is named: the
teacher's own agreement with the reference decides, so new datasets need no configuration.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .grounding import GroundingModel
from .pixel_decoder import decoder_prompt, masks_answering_regions
from .visual_prompt import REGION_TYPES


def binary_kl_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean per-pixel KL(teacher || student) of Bernoulli masks given as logits (0 when equal)."""
    teacher = torch.sigmoid(teacher_logits.float())
    cross_entropy = F.binary_cross_entropy_with_logits(student_logits.float(), teacher)
    entropy = F.binary_cross_entropy_with_logits(teacher_logits.float(), teacher)
    return cross_entropy - entropy


def hard_dice(mask_a: torch.Tensor, mask_b: torch.Tensor) -> torch.Tensor:
    """Dice of boolean masks (K, h, w) -> (K,); 1 where both are empty."""
    overlap = (mask_a & mask_b).flatten(1).sum(-1).float()
    total = (mask_a.flatten(1).sum(-1) + mask_b.flatten(1).sum(-1)).float()
    return torch.where(total > 0, 2 * overlap / total.clamp(min=1), torch.ones_like(total))


class BoxTeacher(nn.Module):
    """The frozen pretrained decoder and the loss that keeps box answers near its own."""

    def __init__(self, pretrained_mask_decoder: nn.Module) -> None:
        super().__init__()
        self.pretrained = pretrained_mask_decoder.requires_grad_(False)  # kept in eval mode by the model's frozen parts

    @torch.no_grad()
    def teacher_logits(self, grounding: GroundingModel, image_embeddings: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """The pretrained decoder's mask logits (K, m, m) for boxes (K, 4) in canvas pixels on
        image embeddings (K, C, h, w): LiteMedSAM given the box alone."""
        prompts = [decoder_prompt(REGION_TYPES["box"], box) for box in boxes]  # a lasso answers by its bounding box
        coords = torch.stack([coords for coords, _ in prompts])
        labels = torch.stack([labels for _, labels in prompts])
        sparse = grounding.embed_points(coords, labels).to(image_embeddings.dtype)
        return grounding.decode(image_embeddings, sparse, mask_decoder=self.pretrained)

    def loss(
        self,
        grounding: GroundingModel,
        image_embeddings: torch.Tensor,
        coarse_logits: torch.Tensor,
        target_masks: torch.Tensor,
        seg_batch_index: torch.Tensor,
        seg_region_index: torch.Tensor,
        region_types: torch.Tensor,
        decoder_boxes: torch.Tensor,
        min_dice: float,
    ) -> torch.Tensor | None:
        """The mean KL over the masks taught; None when no mask of the batch answers a box or
        lasso that the teacher outlines well enough.

        ``coarse_logits`` (K, m, m) are the trained decoder's own masks, ``target_masks``
        (K, H, W) the references; the rest as in :func:`.pixel_decoder.decode_seg_masks`.
        """
        answering = masks_answering_regions(seg_batch_index, seg_region_index, region_types)
        if not answering:
            return None
        index = torch.tensor(answering, device=coarse_logits.device)
        batch, region = seg_batch_index[index], seg_region_index[index]
        teacher = self.teacher_logits(grounding, image_embeddings[batch], decoder_boxes[batch, region])
        teacher_on_target = F.interpolate(teacher[:, None].float(), size=target_masks.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        agreement = hard_dice(teacher_on_target > 0, target_masks[index] > 0.5)
        taught = agreement >= min_dice
        if not bool(taught.any()):
            return None
        return binary_kl_divergence(coarse_logits[index[taught]], teacher[taught])
