"""Grounded results on the volume grid: one labelled, terminology-coded mask per term."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .terminology import TerminologyEntry


@dataclass
class Segment:
    """A named mask on the volume's voxel grid, ``mask[k, j, i]``."""

    label: int  # 1, 2, ...: value in label-map outputs
    name: str
    entry: TerminologyEntry
    mask: np.ndarray  # bool (K, J, I)

    @property
    def color(self) -> tuple[int, int, int]:
        return self.entry.color

    @property
    def voxel_count(self) -> int:
        return int(np.count_nonzero(self.mask))

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "name": self.name,
            "terminology": self.entry.to_dict(),
            "color": list(self.entry.color),
            "pixel_count": self.voxel_count,
        }
