"""The high-resolution mask refiner: identity when untrained, learns what the coarse grid loses,
and a model with a refiner refuses features without its pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

from mimo.errors import BackendError
from mimo.evaluation.metrics import dice
from mimo.modeling.mask_refiner import MaskRefiner

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def thin_lines(size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """An image of one-pixel bright lines on noise, and their mask: vessels or membranes in miniature."""
    mask = torch.zeros(size, size)
    for _ in range(3):
        if torch.rand(1, generator=generator) < 0.5:
            mask[int(torch.randint(2, size - 2, (1,), generator=generator)), :] = 1
        else:
            mask[:, int(torch.randint(2, size - 2, (1,), generator=generator))] = 1
    image = 0.2 * torch.rand(size, size, generator=generator) + 0.7 * mask
    return image.expand(3, -1, -1), mask


def test_an_untrained_refiner_returns_the_upsampled_decoder_logits():
    refiner = MaskRefiner(prompt_dim=16, size=48)
    coarse = torch.randn(3, 32, 32)
    refined = refiner(torch.rand(2, 3, 48, 48), coarse, torch.tensor([0, 1, 1]), torch.randn(3, 16))
    expected = F.interpolate(coarse[:, None], size=(48, 48), mode="bilinear", align_corners=False)[:, 0]
    assert refined.shape == (3, 48, 48)
    assert torch.allclose(refined, expected, atol=1e-6)
    empty = refiner(torch.rand(1, 3, 48, 48), coarse[:0], torch.tensor([], dtype=torch.long), torch.randn(0, 16))
    assert empty.shape == (0, 48, 48)


def test_a_widened_refiner_draws_the_same_masks_and_its_new_channels_learn():
    torch.manual_seed(0)
    refiner = MaskRefiner(prompt_dim=16, size=48)
    for parameter in refiner.parameters():  # a trained refiner: no zero head or FiLM any more
        parameter.data.normal_(0.0, 0.3)
    wide = refiner.widened((16, 24, 32))
    assert wide.channels == (16, 24, 32) and wide.fuse0[0].weight.shape == (16, 24 + 16 + 1, 3, 3)
    pixels, coarse = torch.rand(2, 3, 48, 48), 5 * torch.randn(3, 24, 24)
    index, prompts = torch.tensor([0, 1, 1]), torch.randn(3, 16)
    before = refiner(pixels, coarse, index, prompts)
    after = wide(pixels, coarse, index, prompts)
    assert torch.allclose(before, after, atol=1e-5), (before - after).abs().max()

    optimizer = torch.optim.SGD(wide.parameters(), lr=0.1)
    for _ in range(2):  # the head's new inputs move first, then the channels feeding them
        optimizer.zero_grad()
        wide(pixels, coarse, index, prompts).pow(2).mean().backward()
        optimizer.step()
    assert wide.head.weight[0, 8:].abs().sum() > 0 and wide.fuse0[0].weight.grad[8:].abs().sum() > 0

    with pytest.raises(ValueError, match="none below"):
        refiner.widened((8, 8, 16))
    with pytest.raises(ValueError, match="multiples of 8"):
        refiner.widened((12, 16, 16))


def test_the_refiner_recovers_one_pixel_lines_that_the_coarse_grid_blurs():
    """Coarse logits at a quarter of the resolution (what SAM's decoder sees of a thin
    structure) give a poor Dice; the refiner, reading the full-resolution image, fixes it."""
    generator = torch.Generator().manual_seed(0)
    size = 64
    torch.manual_seed(0)
    refiner = MaskRefiner(prompt_dim=8, size=size)
    optimizer = torch.optim.AdamW(refiner.parameters(), lr=3e-3)

    def batch(count: int):
        images, masks = zip(*(thin_lines(size, generator) for _ in range(count)))
        images, masks = torch.stack(images), torch.stack(masks)
        coarse = F.avg_pool2d(masks[:, None], 4)[:, 0] * 8 - 2  # blurred logits on a 16 x 16 grid
        return images, masks, coarse

    for _ in range(150):
        images, masks, coarse = batch(4)
        logits = refiner(images, coarse, torch.arange(4), torch.zeros(4, 8))
        loss = F.binary_cross_entropy_with_logits(logits, masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    images, masks, coarse = batch(8)
    with torch.no_grad():
        refined = refiner(images, coarse, torch.arange(8), torch.zeros(8, 8)) > 0
    upsampled = F.interpolate(coarse[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0] > 0
    truth = masks.bool().numpy()
    refined_dice = np.mean([dice(p, t) for p, t in zip(refined.numpy(), truth)])
    coarse_dice = np.mean([dice(p, t) for p, t in zip(upsampled.numpy(), truth)])
    assert coarse_dice < 0.6, coarse_dice
    assert refined_dice > 0.85 and refined_dice > coarse_dice + 0.25, (refined_dice, coarse_dice)


def test_a_model_with_a_refiner_names_the_missing_pixels():
    from mimo.backend import SliceImage
    from mimo.modeling import ImageFeatures, create_mimo_tiny
    from mimo.modeling.configuration import GroundingConfig
    from mimo.training.synthetic import tiny_sam_config

    model, processor = create_mimo_tiny(GroundingConfig(kind="sam", weights=None, sam_config=tiny_sam_config()))
    assert model.mask_refiner is not None and processor.settings.refine_size == model.config.refiner.size
    image = np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)
    inputs = processor.preprocess_image(SliceImage(image, (1.0, 1.0), "CT"))
    assert inputs.refine_pixel_values.shape == (1, 3, processor.settings.refine_size, processor.settings.refine_size)
    features = model.encode_images(inputs.grounding_pixel_values)
    turn = processor(inputs.geometry, "Segment the liver.", answer="<p>liver</p><SEG>")
    with pytest.raises(BackendError, match="refiner's pixels"):
        model(**turn, image_features=ImageFeatures(features.grounding, features.understanding))
    output = model(**turn, image_features=model.encode_images(inputs.grounding_pixel_values, refine_pixel_values=inputs.refine_pixel_values))
    assert output.mask_logits.shape == (1, processor.settings.refine_size, processor.settings.refine_size)
