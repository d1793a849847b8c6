"""Reading a built data set back for training and evaluation.

    from mimo.data.dataset import load_samples
    for sample in load_samples("/tmp/mimoseg-open", "train"):
        image = sample.load_image()      # mimo.backend.SliceImage: uint8 RGB pixels + spacing
        masks = sample.load_masks()      # bool arrays, one per <SEG> token, in order
        prompts = sample.prompts()       # BoxPrompt / PointPrompt / ScribblePrompt / LassoPrompt
        question, answer = sample.question, sample.answer

Paths in ``samples.jsonl`` are relative to a *root* named by each sample; ``datasheet.json``
maps root names to folders ("out" is the data set folder itself). Pass ``roots`` to point a
root elsewhere (for example when ../shared/data moved).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

from ..backend import SliceImage
from ..errors import MimoError
from ..prompts import Prompt, prompt_from_dict
from .catalog import MODALITY_CODE

SPLITS = ("train", "val", "test")


class DatasetError(MimoError):
    pass


@dataclass
class Sample:
    """One instruction sample; ``data`` is the JSON record."""

    data: dict
    root: Path = field(repr=False)

    @property
    def id(self) -> str:
        return self.data["id"]

    @property
    def split(self) -> str:
        return self.data["split"]

    @property
    def perspective(self) -> str:
        return self.data["perspective"]

    @property
    def question(self) -> str:
        return self.data["conversation"][0]["text"]

    @property
    def answer(self) -> str:
        return self.data["conversation"][-1]["text"]

    @property
    def targets(self) -> list[str]:
        return list(self.data["targets"])

    @property
    def is_negative(self) -> bool:
        return self.data["perspective"] == "negative"

    @property
    def image_path(self) -> Path:
        return self.root / self.data["image"]

    @property
    def mask_paths(self) -> list[Path]:
        return [self.root / path for path in self.data["masks"]]

    def load_image(self) -> SliceImage:
        """The image as the model sees it: uint8 ``(rows, cols, 3)`` plus pixel spacing."""
        from PIL import Image

        try:
            with Image.open(self.image_path) as image:
                pixels = np.asarray(image.convert("RGB"))
        except OSError as error:
            raise DatasetError(f"sample {self.id}: cannot read image {self.image_path}: {error}") from error
        return SliceImage(
            pixels=pixels,
            spacing_mm=tuple(self.data.get("spacing_mm") or (1.0, 1.0)),
            modality=MODALITY_CODE.get(self.data.get("modality", ""), "OT"),
            calibrated=bool(self.data.get("calibrated", True)),
        )

    def load_masks(self) -> list[np.ndarray]:
        """Boolean masks ``(rows, cols)``, one per ``<SEG>`` token, in the order of the tokens."""
        from PIL import Image

        masks = []
        for path in self.mask_paths:
            try:
                with Image.open(path) as image:
                    array = np.asarray(image)
            except OSError as error:
                raise DatasetError(f"sample {self.id}: cannot read mask {path}: {error}") from error
            masks.append((array[..., 0] if array.ndim == 3 else array) > 127)
        return masks

    def prompts(self) -> list[Prompt]:
        return [prompt_from_dict(item) for item in self.data.get("prompts", [])]


def read_datasheet(folder: str | Path) -> dict:
    path = Path(folder) / "datasheet.json"
    if not path.is_file():
        raise DatasetError(f"{folder} is not a built data set: {path} is missing")
    return json.loads(path.read_text(encoding="utf-8"))


def iter_samples(folder: str | Path, split: str | None = None, roots: Mapping[str, str | Path] | None = None) -> Iterator[Sample]:
    """Samples of ``split`` (all splits when None) in file order."""
    folder = Path(folder)
    if split is not None and split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    sheet = read_datasheet(folder)
    resolved: dict[str, Path] = {}
    for name, location in {**sheet.get("roots", {}), **(roots or {})}.items():
        location = Path(location)
        resolved[name] = location if location.is_absolute() else (folder / location)
    with open(folder / "samples.jsonl", encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            data = json.loads(line)
            if split is not None and data["split"] != split:
                continue
            root = data.get("root", "out")
            if root not in resolved:
                raise DatasetError(f"samples.jsonl line {number}: unknown root {root!r} (datasheet roots: {sorted(resolved)})")
            yield Sample(data, resolved[root])


def load_samples(folder: str | Path, split: str | None = None, roots: Mapping[str, str | Path] | None = None) -> list[Sample]:
    """All samples of ``split`` ("train", "val", "test"; None for all)."""
    return list(iter_samples(folder, split, roots))
