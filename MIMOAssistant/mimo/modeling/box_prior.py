"""Box prior: the pretrained box segmenter mixed into masks that answer a box or a lasso.

A user's box says where one object is. LiteMedSAM's pretrained mask decoder, given that box
alone, outlines a single object very well (polyps, breast lesions) and many-instance or thin
targets badly (nuclei, vessels: it fills the box). MIMO's fine-tuned decoder, given the box and
the ``<SEG>`` token, is far better on the latter and a little worse on the former: fine-tuning
on text-guided masks wore off some of the box-following. So each box- or lasso-answering mask
is a mixture of the two experts,

    logits = (1 - g) * mimo_logits + g * pretrained_box_logits,   g = sigmoid(w . prompt + b),

with the gate ``g`` read from the ``<SEG>`` prompt, i.e. from what the answer grounds and how the
image looks: a learned choice of expert, as in a mixture of experts, not a rule per target. The
mixing comes after MIMO's mask refiner, so g = 1 draws what LiteMedSAM draws for that box.
The pretrained decoder is a frozen copy of the grounding model's decoder as its package ships it
(never fine-tuned, never saved in a checkpoint when the grounding weights are referenced), and
the gate starts closed (g about 0.25 %), so adding a box prior to a trained model leaves its
masks as they were until the gate learns. Masks without a box or lasso are left alone: a point
or scribble does not say how far the structure extends.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .pixel_decoder import BOX_CORNER_LABELS, masks_answering_regions

#: The gate's starting bias: sigmoid(-6) = 0.25 %, so a new box prior barely changes any mask.
CLOSED_GATE_BIAS = -6.0


class BoxPrior(nn.Module):
    def __init__(self, pretrained_mask_decoder: nn.Module, prompt_dim: int) -> None:
        super().__init__()
        self.mask_decoder = pretrained_mask_decoder.requires_grad_(False)
        self.gate = nn.Linear(prompt_dim, 1)
        nn.init.zeros_(self.gate.weight)
        nn.init.constant_(self.gate.bias, CLOSED_GATE_BIAS)

    def forward(
        self,
        grounding,
        image_embeddings: torch.Tensor,
        mask_logits: torch.Tensor,
        seg_prompts: torch.Tensor,
        seg_batch_index: torch.Tensor,
        seg_region_index: torch.Tensor,
        region_types: torch.Tensor,
        decoder_boxes: torch.Tensor,
    ) -> torch.Tensor:
        """``mask_logits`` (K, m, m), MIMO's final (refined) masks, with the box-answering ones mixed;
        the pretrained decoder's logits are resized to ``m`` as LiteMedSAM's own output is.

        ``seg_prompts`` (K, T, C) are the projected ``<SEG>`` states; the indices and region
        tensors are those of :func:`mimo.modeling.pixel_decoder.decode_seg_masks` (boxes in canvas
        pixels). The pretrained decoder sees the box alone (a lasso: its bounding box), as
        LiteMedSAM does."""
        chosen = masks_answering_regions(seg_batch_index, seg_region_index, region_types)
        if not chosen:
            return mask_logits
        index = torch.tensor(chosen, device=mask_logits.device)
        batch, region = seg_batch_index[index], seg_region_index[index]
        corners = decoder_boxes[batch, region].reshape(-1, 2, 2)
        labels = torch.tensor(BOX_CORNER_LABELS, device=corners.device).expand(len(chosen), 2)
        sparse = grounding.embed_points(corners, labels).to(image_embeddings.dtype)
        with torch.no_grad():
            prior = grounding.decode(image_embeddings[batch], sparse, mask_decoder=self.mask_decoder)
        if prior.shape[-2:] != mask_logits.shape[-2:]:
            prior = F.interpolate(prior[:, None], size=mask_logits.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        gate = self.gate_values(seg_prompts[index])[:, None, None]
        mixed = (1 - gate) * mask_logits[index] + gate * prior.to(mask_logits.dtype)
        return mask_logits.index_put((index,), mixed.to(mask_logits.dtype))

    def gate_inputs(self, seg_prompts: torch.Tensor) -> torch.Tensor:
        """(K, C) what the gate reads from the (K, T, C) ``<SEG>`` prompts (their mean token)."""
        return seg_prompts.mean(dim=1).to(self.gate.weight.dtype)

    def gate_values(self, seg_prompts: torch.Tensor) -> torch.Tensor:
        """(K,) how much of each mask the pretrained box segmenter would draw."""
        return torch.sigmoid(self.gate(self.gate_inputs(seg_prompts)))[:, 0]
