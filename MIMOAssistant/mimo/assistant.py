"""One turn end to end: volume + slice geometry + prompts -> backend -> coded segments.

The command line, the Slicer module and the server all go through these functions, so a
mask lands on the same voxels whichever front end asked.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from .backend import Answer, Backend, Message, ProgressCallback, SliceImage, Turn
from .errors import PromptError
from .geometry import SliceGeometry, axis_slice, extract_slice, paste_mask, slice_axis_index
from .image import ImageVolume
from .intensity import to_display_rgb
from .prompts import BoxPrompt, LassoPrompt, PointPrompt, Prompt, ScribblePrompt
from .segments import Segment
from .terminology import Terminology


@dataclass
class AskResult:
    answer: Answer
    geometry: SliceGeometry
    image: SliceImage
    segments: list[Segment]


def default_geometry(volume: ImageVolume, axis: str | None = None, index: int | None = None) -> SliceGeometry:
    """The slice to use when the caller names none: a 2D image itself, else the middle axial slice."""
    axis = axis or "axial"
    if index is None:
        steps = tuple(reversed(volume.shape))[slice_axis_index(volume.ijk_to_ras, axis)]
        index = steps // 2
    return axis_slice(volume.shape, volume.ijk_to_ras, axis, index)


def slice_image(volume: ImageVolume, geometry: SliceGeometry, window: str | tuple[float, float] | None = None) -> SliceImage:
    """The pixels of ``geometry`` as a backend sees them (display-scaled RGB, pixel size)."""
    pixels = extract_slice(volume.array, geometry)
    return SliceImage(to_display_rgb(pixels, volume.modality, window), geometry.spacing_mm, volume.modality, volume.calibrated)


def prompt_from_ras(kind: str, points_ras: np.ndarray, geometry: SliceGeometry, positive: bool = True, width_mm: float = 3.0) -> Prompt:
    """A prompt drawn in patient space (Slicer markups) -> slice pixel coordinates."""
    points = geometry.ras_to_pixels(points_ras)
    if kind == "box":
        if len(points) < 2:
            raise PromptError("a box needs two opposite corners")
        (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
        return BoxPrompt(float(x0), float(y0), float(x1), float(y1))
    if kind == "point":
        if len(points) != 1:
            raise PromptError(f"a point prompt has exactly one point, got {len(points)}")
        return PointPrompt(float(points[0, 0]), float(points[0, 1]), positive)
    vertices = tuple((float(x), float(y)) for x, y in points)
    if kind == "scribble":
        width_pixels = width_mm / min(geometry.spacing_mm)
        return ScribblePrompt(vertices, width_pixels)
    if kind == "lasso":
        return LassoPrompt(vertices)
    raise PromptError(f"unknown prompt type {kind!r}")


def answer_to_segments(
    answer: Answer, geometry: SliceGeometry, volume_shape: tuple[int, int, int], terminology: Terminology, first_label: int = 1
) -> list[Segment]:
    """Each mask of an answer -> a coded segment on the volume grid, named after its term."""
    segments = []
    used: dict[str, int] = {}
    for index, mask in enumerate(answer.masks):
        term = answer.term_of_mask(index)
        entry = terminology.lookup(term)
        used[entry.name] = used.get(entry.name, 0) + 1
        name = entry.name if used[entry.name] == 1 else f"{entry.name} {used[entry.name]}"
        segments.append(Segment(first_label + index, name, entry, paste_mask(mask, geometry, volume_shape)))
    return segments


def ask_volume(
    backend: Backend,
    volume: ImageVolume,
    question: str,
    prompts: list[Prompt],
    geometry: SliceGeometry,
    history: list[Message] | None = None,
    window: str | tuple[float, float] | None = None,
    terminology: Terminology | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> AskResult:
    """Open a session on the slice, answer one turn, map masks back to the volume."""
    image = slice_image(volume, geometry, window)
    session = backend.open_session(image)
    try:
        answer = backend.ask(session, Turn(question, list(prompts), list(history or [])), progress, cancel)
    finally:
        backend.close_session(session)
    segments = answer_to_segments(answer, geometry, volume.shape, terminology or Terminology.default())
    return AskResult(answer, geometry, image, segments)
