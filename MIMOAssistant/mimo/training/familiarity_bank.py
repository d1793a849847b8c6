"""Descriptors of images and of their reference masks, for the familiarity index
(:mod:`mimo.modeling.familiarity`): the training split fills the index, validation data
chooses its thresholds.

Images are encoded through the training feature cache, so an evaluation run afterwards finds
them encoded already.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..modeling.familiarity import image_descriptor, mask_on_grid, region_descriptor
from .batches import image_ref
from .samples import Example, read_mask


@dataclass
class Descriptors:
    images: list[torch.Tensor] = field(default_factory=list)
    image_datasets: list[str] = field(default_factory=list)
    image_paths: list[str] = field(default_factory=list)
    image_names: list[list[str]] = field(default_factory=list)
    regions: list[torch.Tensor] = field(default_factory=list)
    region_names: list[str] = field(default_factory=list)
    region_datasets: list[str] = field(default_factory=list)


def collect_descriptors(examples: Sequence[Example], cache, progress: Callable[[int, int], None] | None = None) -> Descriptors:
    """One image descriptor per distinct image and one region descriptor per distinct (image, mask)."""
    by_image: dict[str, list[Example]] = {}
    for example in examples:
        by_image.setdefault(example.image, []).append(example)
    out = Descriptors()
    grid = None
    for number, (path, group) in enumerate(sorted(by_image.items())):
        entry = cache.get(image_ref(group[0]))
        grounding = entry.features.grounding.float()
        grid = grounding.shape[-1]
        out.images.append(image_descriptor(grounding, entry.geometry.on_grid(grid)))
        out.image_datasets.append(group[0].dataset)
        out.image_paths.append(path)
        seen: set[str] = set()
        names: list[str] = []
        for example in group:
            for target, mask_file in zip(example.targets, example.mask_files):
                if mask_file in seen:
                    continue
                seen.add(mask_file)
                mask = torch.from_numpy(read_mask(mask_file))
                canvas = mask_on_grid(mask, entry.geometry, grid)
                descriptor = region_descriptor(grounding, canvas)
                if descriptor is not None:
                    names.append(target)
                    out.regions.append(descriptor)
                    out.region_names.append(target)
                    out.region_datasets.append(example.dataset)
        out.image_names.append(sorted(set(names)))
        if progress is not None:
            progress(number + 1, len(by_image))
    return out
