"""Training batches: perspectives mixed by weight, augmented, with cached image features.

Batch ``i`` of process ``r`` is a pure function of ``(seed, r, i)``: which samples it holds, their
phrasing, box jitter and mirroring are all drawn from a generator seeded with those numbers.
So a resumed run sees exactly the batches an uninterrupted run would have seen, whatever the
number of DataLoader workers, and no sampler state needs saving.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Sequence

import torch

from ..errors import MimoError
from .augment import allowed_flips, augment_example, flip_mask
from .config import AugmentSection
from .features import FeatureCache, ImageRef, stack_features
from .samples import Example, image_size


def image_ref(example: Example, flip: str = "") -> ImageRef:
    return ImageRef(example.image, tuple(float(v) for v in example.spacing_mm), flip, example.modality)


class BatchBuilder:
    def __init__(
        self,
        examples: Sequence[Example],
        processor,
        cache: FeatureCache,
        batch_size: int,
        perspective_weights: dict[str, float] | None = None,
        augment: AugmentSection | None = None,
        seed: int = 0,
        rank: int = 0,
        dataset_balance: float = 1.0,
        dataset_weights: dict[str, float] | None = None,
    ) -> None:
        if not examples:
            raise MimoError("no training samples: check 'data', the split and the sampling filters")
        self.examples = list(examples)
        self.processor = processor
        self.cache = cache
        self.batch_size = batch_size
        self.augment = augment
        self.seed = seed
        self.rank = rank
        groups: dict[str, list[int]] = defaultdict(list)
        by_dataset: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        for index, example in enumerate(self.examples):
            groups[example.perspective].append(index)
            by_dataset[example.perspective][example.dataset].append(index)
        weights = perspective_weights or {}
        self.perspectives = sorted(p for p in groups if weights.get(p, 1.0) > 0)
        if not self.perspectives:
            raise MimoError(f"every perspective in the data ({', '.join(sorted(groups))}) has weight 0 in sampling.perspective_weights")
        self.groups = {p: groups[p] for p in self.perspectives}
        self.weights = [weights.get(p, 1.0) for p in self.perspectives]
        # Within a perspective a dataset is drawn with weight (its samples) ** dataset_balance:
        # 1 draws samples uniformly (large datasets dominate), 0 draws datasets uniformly; a
        # dataset weight multiplies that (a hard target such as thin vessels drawn more often).
        extra = dataset_weights or {}
        self.uniform_samples = dataset_balance == 1.0 and not extra
        self.dataset_members = {p: dict(sorted(by_dataset[p].items())) for p in self.perspectives}
        self.dataset_weights = {
            p: [len(members) ** dataset_balance * extra.get(dataset, 1.0) for dataset, members in self.dataset_members[p].items()]
            for p in self.perspectives
        }
        self._shapes: dict[str, tuple[int, int]] = {}

    # ----- what to encode ---------------------------------------------------------------------

    def image_refs(self) -> set[ImageRef]:
        """Every image (and mirrored image) a batch may need."""
        refs = set()
        for example in self.examples:
            refs.add(image_ref(example))
            if self.augment is not None:
                refs.update(image_ref(example, flip) for flip in allowed_flips(example, self.augment))
        return refs

    # ----- batches ----------------------------------------------------------------------------

    def rng(self, index: int) -> random.Random:
        return random.Random(f"mimo-batch/{self.seed}/{self.rank}/{index}")

    def draw(self, index: int) -> list[tuple[Example, str]]:
        """The augmented samples of batch ``index`` and the mirroring of each."""
        rng = self.rng(index)
        chosen = []
        for _ in range(self.batch_size):
            perspective = rng.choices(self.perspectives, weights=self.weights)[0]
            if self.uniform_samples:
                example = self.examples[rng.choice(self.groups[perspective])]
            else:
                dataset = rng.choices(list(self.dataset_members[perspective]), weights=self.dataset_weights[perspective])[0]
                example = self.examples[rng.choice(self.dataset_members[perspective][dataset])]
            if self.augment is None:
                chosen.append((example, ""))
            else:
                chosen.append(augment_example(example, self.augment, self.shape(example.image), rng))
        return chosen

    def shape(self, path: str) -> tuple[int, int]:
        if path not in self._shapes:
            self._shapes[path] = image_size(path)
        return self._shapes[path]

    def batch(self, index: int, text_only: bool = False) -> dict:
        return self.build(self.draw(index), text_only)

    def build(self, chosen: Sequence[tuple[Example, str]], text_only: bool = False) -> dict:
        """Collated model inputs (on the CPU) for samples with their mirroring.

        ``text_only`` leaves the masks out and skips the mask decoder (warm-up steps).
        Extra keys: ``sample_ids`` and ``perspectives`` (pop them before calling the model).
        """
        samples, entries, pixels, refine_pixels = [], [], [], []
        for example, flip in chosen:
            ref = image_ref(example, flip)
            if self.cache.enabled:
                entry = self.cache.get(ref)
                geometry = entry.geometry
                entries.append(entry)
                if self.processor.settings.refine_size and not text_only:  # cheap: not cached
                    refine_pixels.append(self.processor.refine_pixels(ref.load(), geometry))
            else:
                inputs = self.processor.preprocess_image(ref.load())
                geometry = inputs.geometry
                pixels.append(inputs)
            masks = None
            if not text_only:
                masks = [flip_mask(mask, flip) for mask in example.load_masks()]
            samples.append(
                self.processor(geometry, example.question, example.prompts, example.history, answer=example.answer, target_masks=masks)
            )
        batch = self.processor.collate(samples)
        if entries:
            batch["image_features"] = stack_features(entries, "cpu", torch.float32, torch.cat(refine_pixels) if refine_pixels else None)
        else:
            batch["grounding_pixel_values"] = torch.cat([p.grounding_pixel_values for p in pixels])
            if pixels[0].vision_pixel_values is not None:
                batch["vision_pixel_values"] = torch.cat([p.vision_pixel_values for p in pixels])
            if pixels[0].refine_pixel_values is not None:
                batch["refine_pixel_values"] = torch.cat([p.refine_pixel_values for p in pixels])
        if text_only:
            batch.pop("target_masks", None)
            batch["decode_masks"] = False
        batch["sample_ids"] = [example.id for example, _ in chosen]
        batch["perspectives"] = dict(Counter(example.perspective for example, _ in chosen))
        return batch


class StepBatches(torch.utils.data.Dataset):
    """Batches ``start, start + 1, ...`` for a DataLoader (``batch_size=None``), so workers build them."""

    def __init__(self, builder: BatchBuilder, start: int, stop: int, text_only_before: int) -> None:
        self.builder, self.start, self.stop, self.text_only_before = builder, start, stop, text_only_before

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)

    def __getitem__(self, offset: int) -> dict:
        index = self.start + offset
        return self.builder.batch(index, text_only=index < self.text_only_before)


def move_batch(batch: dict, device: torch.device, dtype: torch.dtype) -> dict:
    """Tensors to ``device``; floating image inputs to the model's ``dtype``."""
    from ..modeling import ImageFeatures

    moved = {}
    for key, value in batch.items():
        if isinstance(value, ImageFeatures):
            moved[key] = value.to(device, dtype)
        elif isinstance(value, torch.Tensor):
            floating = key in ("grounding_pixel_values", "vision_pixel_values", "refine_pixel_values")
            moved[key] = value.to(device, dtype) if floating else value.to(device)
        else:
            moved[key] = value
    return moved
