"""Box decoder: the mask decoder that answers a box or a lasso, a weight-space blend of the
fine-tuned decoder and the pretrained one (WiSE-FT, Wortsman et al., CVPR 2022).

LiteMedSAM's pretrained decoder, given a box, outlines a single object well on images it was
never fine-tuned on (it learnt from about 1.5 million image-mask pairs); MIMO's fine-tuned decoder
has learnt the ``<SEG>`` prompt, thin and many-instance targets, and the shapes of its training
sets, and follows a box a little less on an unseen group of images (held-out colonoscopy videos:
polyp masks short of the polyp). Averaging the two decoders' *weights*, as WiSE-FT does for
robustness to distribution shift, keeps both kinds of knowledge far better than averaging their
masks (a logit mix near 0.5 ruins retinal vessels; see :mod:`.box_prior`). Shipped MIMO-Tiny
uses 0.85 (chosen on the validation split: held-out CVC-ClinicDB polyps with a box 0.74 -> 0.81,
retinal vessels 0.72 -> 0.71); at 0.5 polyps rise further but thin targets and an unseen MR
brain lose (``Docs/mimo-tiny-training``).

Only masks answering a box or a lasso use the blend; masks from text alone, points or scribbles
use the fine-tuned decoder unchanged, so text-guided grounding is exactly as trained. The blend
is computed from the live fine-tuned weights whenever a box or lasso mask is decoded (a few
million additions), so it always follows the decoder it is built from; the pretrained copy is
frozen and never saved when the grounding weights are referenced from their package. Training
through the blend works (the fine-tuned weights get the gradient scaled by the weight), but the
weight is meant to be chosen after training, on held-out data.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from ..errors import BackendError


class BoxDecoderBlend(nn.Module):
    """``weight`` x fine-tuned + (1 - weight) x pretrained, parameter by parameter. The weight is
    the model configuration's ``segmentation.box_decoder_weight``, passed in at each call."""

    def __init__(self, pretrained_mask_decoder: nn.Module) -> None:
        super().__init__()
        self.pretrained = pretrained_mask_decoder.requires_grad_(False)

    def blended_state(self, fine_tuned: nn.Module, weight: float) -> dict[str, torch.Tensor]:
        pretrained = dict(self.pretrained.named_parameters())
        pretrained.update(self.pretrained.named_buffers())
        state = {}
        for name, tensor in list(fine_tuned.named_parameters()) + list(fine_tuned.named_buffers()):
            if name not in pretrained or pretrained[name].shape != tensor.shape:
                raise BackendError(f"box decoder blend: the fine-tuned decoder's {name!r} has no pretrained counterpart of shape {tuple(tensor.shape)}")
            if tensor.is_floating_point():
                state[name] = weight * tensor + (1 - weight) * pretrained[name].to(tensor.dtype)
            else:
                state[name] = tensor
        return state

    def decoder(self, fine_tuned: nn.Module, weight: float):
        """A callable with the mask decoder's keyword arguments that runs the blended weights."""

        def run(**inputs):
            return functional_call(fine_tuned, self.blended_state(fine_tuned, weight), args=(), kwargs=inputs)

        return run
