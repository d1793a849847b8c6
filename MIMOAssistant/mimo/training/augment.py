"""Augmentations that keep a sample true: box jitter, mirroring where anatomy allows, rephrasing.

* **Box jitter**: users never draw the tight box of a reference mask; each side of a box
  prompt moves by up to ``box_jitter`` times the box's width or height (clipped to the image).
* **Mirroring**: only images of modalities without a canonical side (endoscopy, ultrasound,
  microscopy, ...; configurable) and never a sample whose targets or text carry a laterality
  ("left kidney", "right lung"): mirroring would make its answer false. Chest X-rays, CT and MR
  are not mirrored by default (a mirrored chest has its heart on the wrong side). A mirrored
  image has its own cached features (the encoder is not mirror-equivariant).
* **Rephrasing**: manifest-built samples get a new phrasing each time (:mod:`.phrasings`).

Intensity augmentations are not possible on cached features; they need ``features.cache``
off and the image encoder in the loop.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np

from ..prompts import BoxPrompt, LassoPrompt, PointPrompt, Prompt, ScribblePrompt
from .config import AugmentSection
from .samples import Example, rephrased


def _matches(modality: str, names) -> bool:
    modality = (modality or "").lower()
    return any(name.lower() in modality for name in names)


def allowed_flips(example: Example, augment: AugmentSection) -> list[str]:
    """The mirrorings this sample may get under ``augment`` ("h", "v")."""
    flips = []
    if augment.hflip <= 0 and augment.vflip <= 0:
        return flips
    if example.has_laterality:
        return flips
    if augment.hflip > 0 and _matches(example.modality, augment.flip_modalities):
        flips.append("h")
    if augment.vflip > 0 and _matches(example.modality, augment.vflip_modalities):
        flips.append("v")
    return flips


def choose_flip(example: Example, augment: AugmentSection, rng: random.Random) -> str:
    for flip in allowed_flips(example, augment):
        probability = augment.hflip if flip == "h" else augment.vflip
        if rng.random() < probability:
            return flip
    return ""


def flip_prompt(prompt: Prompt, flip: str, shape: tuple[int, int]) -> Prompt:
    rows, cols = shape

    def fx(x: float) -> float:
        return cols - 1 - x if "h" in flip else x

    def fy(y: float) -> float:
        return rows - 1 - y if "v" in flip else y

    if isinstance(prompt, BoxPrompt):
        x0, x1 = sorted((fx(prompt.x0), fx(prompt.x1)))
        y0, y1 = sorted((fy(prompt.y0), fy(prompt.y1)))
        return BoxPrompt(x0, y0, x1, y1)
    if isinstance(prompt, PointPrompt):
        return PointPrompt(fx(prompt.x), fy(prompt.y), prompt.positive)
    vertices = tuple((fx(x), fy(y)) for x, y in prompt.vertices)
    if isinstance(prompt, ScribblePrompt):
        return ScribblePrompt(vertices, prompt.width)
    return LassoPrompt(vertices)


def jitter_box(box: BoxPrompt, fraction: float, shape: tuple[int, int], rng: random.Random) -> BoxPrompt:
    """Each side moves by up to ``fraction`` of the box size; the result stays a valid box."""
    if fraction <= 0:
        return box
    rows, cols = shape
    width, height = box.x1 - box.x0, box.y1 - box.y0
    x0 = box.x0 + rng.uniform(-fraction, fraction) * width
    x1 = box.x1 + rng.uniform(-fraction, fraction) * width
    y0 = box.y0 + rng.uniform(-fraction, fraction) * height
    y1 = box.y1 + rng.uniform(-fraction, fraction) * height
    x0, x1 = min(max(x0, 0.0), cols - 2.0), min(max(x1, 0.0), cols - 1.0)
    y0, y1 = min(max(y0, 0.0), rows - 2.0), min(max(y1, 0.0), rows - 1.0)
    if x1 - x0 < 1:
        x1 = min(x0 + 1, cols - 1.0)
    if y1 - y0 < 1:
        y1 = min(y0 + 1, rows - 1.0)
    return BoxPrompt(round(x0, 2), round(y0, 2), round(x1, 2), round(y1, 2))


def augment_example(example: Example, augment: AugmentSection, shape: tuple[int, int], rng: random.Random) -> tuple[Example, str]:
    """A randomly varied copy of ``example`` and the mirroring to apply to its image and masks."""
    if augment.rephrase:
        example = rephrased(example, rng)
    flip = choose_flip(example, augment, rng)
    prompts = [jitter_box(p, augment.box_jitter, shape, rng) if isinstance(p, BoxPrompt) else p for p in example.prompts]
    if flip:
        prompts = [flip_prompt(p, flip, shape) for p in prompts]
    return dataclasses.replace(example, prompts=prompts), flip


def flip_mask(mask: np.ndarray, flip: str) -> np.ndarray:
    if "h" in flip:
        mask = mask[:, ::-1]
    if "v" in flip:
        mask = mask[::-1]
    return np.ascontiguousarray(mask)
