"""Carry a 2D segment through neighbouring slices with a box-prompted backend (no MRML, no Qt).

Starting from a mask on one voxel slice, each neighbouring slice is prompted with the
bounding box of the previous slice's mask plus a margin; the backend's mask becomes the next
slice's mask. Propagation runs in both directions and stops in a direction when

* the mask vanishes or shrinks below ``minAreaFraction`` of the previous slice's mask;
* the mask's median intensity leaves the start mask's intensity range (its interquartile
  range widened by ``intensityTolerance`` IQRs): a box-prompted segmenter keeps outlining
  *something* past the end of an organ, and that something looks different;
* the volume ends, or ``maxSlices`` slices were added in that direction.

Only the connected parts of a new mask that touch the previous slice's (dilated) mask are
kept, so the result is one connected 3D segment. Runs on a worker thread: it reads numpy
arrays only and checks ``cancel`` between slices.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from mimo.assistant import slice_image
from mimo.backend import Backend, Turn, check_cancel
from mimo.errors import GeometryError, PromptError
from mimo.geometry import SliceGeometry, extract_slice, paste_mask
from mimo.image import ImageVolume
from mimo.prompts import BoxPrompt

ProgressCallback = Callable[[str, float], None]


@dataclass
class PropagationSettings:
    marginPixels: float = 3.0
    minAreaFraction: float = 0.3
    intensityTolerance: float | None = 1.0
    maxSlices: int | None = None
    minPixels: int = 4
    #: Engine display window for CT (preset name or (level, width)); None for the default.
    window: str | tuple[float, float] | None = None


@dataclass
class PropagationResult:
    mask: np.ndarray  # bool (K, J, I): the start slice and every propagated slice
    slices: dict[int, int] = field(default_factory=dict)  # voxel index along the stepped axis -> pixel count
    stopReasons: dict[int, str] = field(default_factory=dict)  # direction (+1 / -1) -> why it stopped

    @property
    def sliceCount(self) -> int:
        return len(self.slices)


def normalAxisOf(geometry: SliceGeometry) -> int:
    """The volume axis (0 = i, 1 = j, 2 = k) a voxel-aligned slice steps along."""
    if not geometry.is_voxel_aligned:
        raise GeometryError(
            "propagation works on slice views aligned with the volume's voxel planes; "
            "this view is oblique (reset the view orientation or rotate it to the volume plane)"
        )
    linear = np.abs(geometry.pixel_to_ijk[:3, :2]).sum(axis=1)
    return int(np.argmin(linear))


def shiftedGeometry(geometry: SliceGeometry, normalAxis: int, steps: int) -> SliceGeometry:
    """The parallel voxel slice ``steps`` voxels further along ``normalAxis``."""
    matrix = geometry.pixel_to_ijk.copy()
    matrix[normalAxis, 3] += steps
    index = None if geometry.index is None else geometry.index + steps
    return SliceGeometry(matrix, geometry.ijk_to_ras, geometry.shape, geometry.axis, index)


def sliceIndex(geometry: SliceGeometry, normalAxis: int) -> int:
    return int(round(geometry.pixel_to_ijk[normalAxis, 3]))


def boxAround(mask: np.ndarray, margin: float) -> BoxPrompt:
    rows, cols = np.nonzero(mask)
    height, width = mask.shape
    return BoxPrompt(
        float(max(cols.min() - margin, 0)),
        float(max(rows.min() - margin, 0)),
        float(min(cols.max() + margin, width - 1)),
        float(min(rows.max() + margin, height - 1)),
    )


def _intensity(pixels: np.ndarray) -> np.ndarray:
    pixels = np.asarray(pixels, dtype=np.float64)
    return pixels.mean(axis=-1) if pixels.ndim == 3 else pixels


def _connectedTo(mask: np.ndarray, previous: np.ndarray, margin: int) -> np.ndarray:
    """The connected components of ``mask`` that touch ``previous`` dilated by ``margin`` pixels."""
    from scipy import ndimage

    if not mask.any():
        return mask
    near = ndimage.binary_dilation(previous, iterations=max(1, int(margin))) if margin > 0 else previous
    labels, count = ndimage.label(mask)
    keep = np.unique(labels[near & mask])
    keep = keep[keep > 0]
    return np.isin(labels, keep) if len(keep) else np.zeros_like(mask)


def propagate(
    backend: Backend,
    volume: ImageVolume,
    geometry: SliceGeometry,
    startMask: np.ndarray,
    question: str = "Segment the region",
    settings: PropagationSettings | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> PropagationResult:
    """Propagate ``startMask`` (2D, on ``geometry``) through the volume; returns the 3D mask."""
    settings = settings or PropagationSettings()
    report = progress or (lambda stage, fraction: None)
    startMask = np.asarray(startMask, dtype=bool)
    if startMask.shape != tuple(geometry.shape):
        raise PromptError(f"start mask has shape {startMask.shape}, the slice {tuple(geometry.shape)}")
    if startMask.sum() < settings.minPixels:
        raise PromptError("the segment is empty on this slice: segment it on the slice shown, then propagate")
    normalAxis = normalAxisOf(geometry)
    count = tuple(reversed(volume.shape))[normalAxis]
    start = sliceIndex(geometry, normalAxis)

    seedPixels = _intensity(extract_slice(volume.array, geometry))[startMask]
    q25, q75 = np.percentile(seedPixels, [25, 75])
    iqr = max(float(q75 - q25), 1e-6)
    low = q25 - (settings.intensityTolerance or 0) * iqr
    high = q75 + (settings.intensityTolerance or 0) * iqr

    result = PropagationResult(paste_mask(startMask, geometry, volume.shape), {start: int(startMask.sum())})
    total = max(1, count - 1)
    done = 0
    for direction in (+1, -1):
        previous = startMask
        steps = 0
        reason = "reached the end of the volume"
        while True:
            index = start + direction * (steps + 1)
            if not 0 <= index < count:
                break
            if settings.maxSlices is not None and steps >= settings.maxSlices:
                reason = f"reached the limit of {settings.maxSlices} slices"
                break
            check_cancel(cancel)
            sliceGeometry = shiftedGeometry(geometry, normalAxis, index - start)
            image = slice_image(volume, sliceGeometry, settings.window)
            session = backend.open_session(image)
            try:
                answer = backend.ask(session, Turn(question, [boxAround(previous, settings.marginPixels)]), cancel=cancel)
            finally:
                backend.close_session(session)
            mask = np.logical_or.reduce(answer.masks) if answer.masks else np.zeros(geometry.shape, dtype=bool)
            mask = _connectedTo(np.asarray(mask, dtype=bool), previous, int(round(settings.marginPixels)))
            area = int(mask.sum())
            done += 1
            report(f"Propagating: slice {index + 1} of {count}", min(0.99, done / total))
            if area < max(settings.minPixels, settings.minAreaFraction * previous.sum()):
                reason = "the segment vanished" if area < settings.minPixels else "the segment shrank below the set fraction"
                break
            if settings.intensityTolerance is not None:
                median = float(np.median(_intensity(extract_slice(volume.array, sliceGeometry))[mask]))
                if not low <= median <= high:
                    reason = "the outlined region no longer looks like the start slice's"
                    break
            result.mask |= paste_mask(mask, sliceGeometry, volume.shape)
            result.slices[index] = area
            previous = mask
            steps += 1
        result.stopReasons[direction] = reason
    report("Propagation done", 1.0)
    return result
