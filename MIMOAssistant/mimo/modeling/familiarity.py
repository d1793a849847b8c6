"""How familiar an image and a region are: the signal behind "I can't identify this".

A model trained on ten 2D datasets and some CT/MR slices names *something* for any region it is
shown; on a dermoscopy lesion or a photograph that name is wrong. Before a name is given, the
region is compared with what the model saw in training, in the frozen LiteMedSAM image
embedding it already computed (no second encoder, no extra cost per slice):

* the **image descriptor**: the embedding averaged over a 4 x 4 grid of the image's area (the
  letterbox padding left out), L2-normalised. Layout matters: on the validation split it kept
  the same share of images as channel means and deviations did, and flagged every one of 17
  photographs at the 95 % point where those let three through (a cup of coffee looks like
  endoscopy in channel statistics);
* the **region descriptor**: the embedding averaged inside the region, L2-normalised.

:class:`FamiliarityIndex` holds those descriptors for training images and for every training
mask (labelled by its target name). Image familiarity is the mean cosine similarity of the k
nearest training images; region familiarity for a name is the mean similarity of the k nearest
training regions *of that name*, so a region is judged against the structure it would be
called. Thresholds are chosen on validation data (never the test split) by
:func:`choose_threshold` and stored with the index (``familiarity.json`` +
``familiarity.safetensors`` beside a checkpoint).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import BackendError

INDEX_CONFIG = "familiarity.json"
INDEX_WEIGHTS = "familiarity.safetensors"
INDEX_FORMAT_VERSION = 1


IMAGE_GRID = 4


def image_descriptor(grounding: torch.Tensor, valid: tuple[int, int]) -> torch.Tensor:
    """(C * 16,) descriptor of a (1, C, h, w) embedding whose image covers ``valid`` (rows, cols) of the grid."""
    area = grounding[:1, :, : valid[0], : valid[1]].float()
    return F.normalize(F.adaptive_avg_pool2d(area, IMAGE_GRID).flatten(), dim=0)


def mask_on_grid(mask: torch.Tensor, geometry, grid: int) -> torch.Tensor:
    """A mask at the slice's resolution placed as the image is on the (grid, grid) embedding
    canvas (letterboxed: resized into the top-left ``geometry.on_grid(grid)``)."""
    rows, cols = geometry.on_grid(grid)
    canvas = torch.zeros((grid, grid))
    canvas[:rows, :cols] = F.interpolate(mask[None, None].float(), size=(rows, cols), mode="area")[0, 0]
    return canvas


def region_descriptor(grounding: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
    """(C,) descriptor of the embedding inside ``mask`` (any size, resized to the grid); None when empty."""
    grid = grounding.shape[-2:]
    weights = F.interpolate(mask[None, None].float(), size=grid, mode="area")[0, 0]
    if float(weights.sum()) < 1e-3:
        return None
    pooled = (grounding[0].float() * weights).flatten(1).sum(1) / weights.sum()
    return F.normalize(pooled, dim=0)


@dataclass
class AnswerThresholds:
    image: float = -1.0
    """Below this image familiarity the image is unlike the training data: its modality is withheld."""
    image_named: float = -1.0
    """Below this familiarity with the training images that show the structure named, the name is withheld."""
    region: float = -1.0
    """Below this, a region is unlike the training regions of the name the model gave it."""
    naming: float = 0.0
    """Below this probability of the name's tokens the name is withheld."""
    grounding: float = 0.0
    """Below this probability of a name and its <SEG>, a mask drawn from the question alone is withheld."""
    chosen_on: dict = field(default_factory=dict)


class FamiliarityIndex:
    def __init__(self, image_bank: torch.Tensor, image_datasets: list[str], region_bank: torch.Tensor, region_names: list[str],
                 thresholds: AnswerThresholds | None = None, k: int = 5, image_names: list[list[str]] | None = None) -> None:
        """``image_names``: the structures each bank image shows (its regions' names), so that an
        image can be compared with the training images of the structure it would be said to show."""
        image_names = image_names if image_names is not None else [[] for _ in image_datasets]
        if (image_bank.ndim != 2 or len(image_datasets) != image_bank.shape[0] or len(image_names) != image_bank.shape[0]
                or region_bank.ndim != 2 or len(region_names) != region_bank.shape[0]):
            raise BackendError("familiarity index: banks and their labels disagree in length")
        self.image_names = [list(names) for names in image_names]
        self.image_bank = F.normalize(image_bank.float(), dim=1)
        self.image_datasets = list(image_datasets)
        self.region_bank = F.normalize(region_bank.float(), dim=1)
        self.region_names = list(region_names)
        self.thresholds = thresholds or AnswerThresholds()
        self.k = k
        self._rows_by_name: dict[str, torch.Tensor] = {}
        for name in sorted(set(self.region_names)):
            self._rows_by_name[name.lower()] = torch.tensor([i for i, n in enumerate(self.region_names) if n == name])
        self._images_by_name: dict[str, torch.Tensor] = {}
        for name in sorted({n for names in self.image_names for n in names}):
            self._images_by_name[name.lower()] = torch.tensor([i for i, names in enumerate(self.image_names) if name in names])

    def _top_mean(self, similarities: torch.Tensor) -> float:
        k = min(self.k, similarities.numel())
        return float(torch.topk(similarities, k).values.mean()) if k else -1.0

    def image_familiarity(self, descriptor: torch.Tensor, name: str | None = None) -> tuple[float, str]:
        """(mean similarity of the k nearest training images, the nearest one's dataset); with
        ``name``, among the training images that show that structure only (-1 for a name never trained)."""
        similarities = self.image_bank @ descriptor.float()
        if name is not None:
            rows = self._images_by_name.get(name.lower())
            if rows is None:
                return -1.0, ""
            similarities = torch.full_like(similarities, -1.0).index_copy(0, rows, similarities[rows])
        return self._top_mean(similarities), self.image_datasets[int(torch.argmax(similarities))]

    def region_familiarity(self, descriptor: torch.Tensor | None, name: str) -> float | None:
        """Similarity to the training regions called ``name`` (None: no region, or a name never trained)."""
        rows = self._rows_by_name.get(name.lower())
        if descriptor is None or rows is None:
            return None
        return self._top_mean(self.region_bank[rows] @ descriptor.float())

    def knows(self, name: str) -> bool:
        return name.lower() in self._rows_by_name

    # ----- checkpoints --------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> None:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({"image_bank": self.image_bank.half().contiguous(), "region_bank": self.region_bank.half().contiguous()},
                  str(directory / INDEX_WEIGHTS))
        t = self.thresholds
        data = {"format": "mimo-familiarity", "format_version": INDEX_FORMAT_VERSION, "k": self.k,
                "image_datasets": self.image_datasets, "image_names": self.image_names, "region_names": self.region_names,
                "thresholds": {"image": t.image, "image_named": t.image_named, "region": t.region, "naming": t.naming, "grounding": t.grounding, "chosen_on": t.chosen_on}}
        (directory / INDEX_CONFIG).write_text(json.dumps(data, indent=1))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> FamiliarityIndex:
        from safetensors.torch import load_file

        directory = Path(directory)
        config_path, weights_path = directory / INDEX_CONFIG, directory / INDEX_WEIGHTS
        if not config_path.is_file() or not weights_path.is_file():
            raise BackendError(f"{directory} has no familiarity index ({INDEX_CONFIG} and {INDEX_WEIGHTS})")
        try:
            data = json.loads(config_path.read_text())
        except json.JSONDecodeError as error:
            raise BackendError(f"{config_path} is not valid JSON: {error}") from error
        if data.get("format") != "mimo-familiarity" or data.get("format_version") != INDEX_FORMAT_VERSION:
            raise BackendError(f"{config_path} is not a MIMO familiarity index of version {INDEX_FORMAT_VERSION}")
        banks = load_file(str(weights_path))
        if set(banks) != {"image_bank", "region_bank"}:
            raise BackendError(f"{weights_path} must hold exactly image_bank and region_bank")
        t = data.get("thresholds", {})
        thresholds = AnswerThresholds(float(t.get("image", -1)), float(t.get("image_named", -1)), float(t.get("region", -1)),
                                      float(t.get("naming", 0)), float(t.get("grounding", 0)), dict(t.get("chosen_on", {})))
        return cls(banks["image_bank"], data["image_datasets"], banks["region_bank"], data["region_names"], thresholds, int(data.get("k", 5)),
                   data.get("image_names"))

    @staticmethod
    def is_saved_in(directory: str | Path) -> bool:
        return (Path(directory) / INDEX_CONFIG).is_file()


def choose_threshold(scores: np.ndarray, keep: float) -> float:
    """The largest threshold that keeps at least ``keep`` of ``scores`` (scores of answers that
    should pass: correct names on validation data)."""
    scores = np.sort(np.asarray(scores, dtype=float))
    if scores.size == 0 or not 0 < keep <= 1:
        raise ValueError("choose_threshold needs scores and 0 < keep <= 1")
    index = int(np.floor((1 - keep) * scores.size))
    return float(scores[min(index, scores.size - 1)] - 1e-6)
