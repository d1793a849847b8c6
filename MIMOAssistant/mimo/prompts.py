"""Visual prompts drawn on a slice: box, point, scribble and lasso, in slice pixel coordinates.

Coordinates are ``x`` (column) and ``y`` (row) with pixel centres on integers, so a point
is inside an image of ``W x H`` pixels when ``-0.5 <= x <= W - 0.5`` and likewise for y.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np

from .errors import PromptError

PROMPT_TYPES = ("box", "point", "scribble", "lasso")


@dataclass(frozen=True)
class BoxPrompt:
    x0: float
    y0: float
    x1: float
    y1: float
    kind = "box"

    def points(self) -> np.ndarray:
        return np.array([[self.x0, self.y0], [self.x1, self.y1]], dtype=np.float64)


@dataclass(frozen=True)
class PointPrompt:
    x: float
    y: float
    positive: bool = True
    kind = "point"

    def points(self) -> np.ndarray:
        return np.array([[self.x, self.y]], dtype=np.float64)


@dataclass(frozen=True)
class ScribblePrompt:
    """A polyline painted with a brush ``width`` pixels wide."""

    vertices: tuple[tuple[float, float], ...]
    width: float = 3.0
    kind = "scribble"

    def points(self) -> np.ndarray:
        return np.asarray(self.vertices, dtype=np.float64).reshape(-1, 2)


@dataclass(frozen=True)
class LassoPrompt:
    """A closed polygon around the region of interest."""

    vertices: tuple[tuple[float, float], ...]
    kind = "lasso"

    def points(self) -> np.ndarray:
        return np.asarray(self.vertices, dtype=np.float64).reshape(-1, 2)


Prompt = Union[BoxPrompt, PointPrompt, ScribblePrompt, LassoPrompt]


def parse_vertices(text: str, what: str) -> tuple[tuple[float, float], ...]:
    """``"x,y x,y ..."`` -> vertices; a clear error for anything else."""
    vertices = []
    for token in text.replace(";", " ").split():
        parts = token.split(",")
        if len(parts) != 2:
            raise PromptError(f"{what}: {token!r} is not an 'x,y' pair (expected \"x,y x,y ...\")")
        try:
            vertices.append((float(parts[0]), float(parts[1])))
        except ValueError as error:
            raise PromptError(f"{what}: {token!r} is not a pair of numbers") from error
    if not vertices:
        raise PromptError(f"{what} is empty: give at least one 'x,y' point")
    return tuple(vertices)


def _polygon_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def validate_prompt(prompt: Prompt, shape: tuple[int, int]) -> Prompt:
    """Check one prompt against an image of ``shape = (rows, cols)``; returns it normalised."""
    rows, columns = shape
    if not isinstance(prompt, (BoxPrompt, PointPrompt, ScribblePrompt, LassoPrompt)):
        raise PromptError(f"unknown prompt {prompt!r}; expected one of {', '.join(PROMPT_TYPES)}")
    points = prompt.points()
    if len(points) == 0:
        raise PromptError(f"{prompt.kind} prompt is empty: it has no points")
    if not np.all(np.isfinite(points)):
        raise PromptError(f"{prompt.kind} prompt has coordinates that are not finite numbers")
    outside = (points[:, 0] < -0.5) | (points[:, 0] > columns - 0.5) | (points[:, 1] < -0.5) | (points[:, 1] > rows - 0.5)
    if np.any(outside):
        x, y = points[int(np.argmax(outside))]
        raise PromptError(
            f"{prompt.kind} prompt point ({x:g}, {y:g}) is outside the image "
            f"(x must be in 0..{columns - 1}, y in 0..{rows - 1})"
        )
    if isinstance(prompt, BoxPrompt):
        x0, x1 = sorted((prompt.x0, prompt.x1))
        y0, y1 = sorted((prompt.y0, prompt.y1))
        if x1 - x0 < 1 or y1 - y0 < 1:
            raise PromptError(f"box ({prompt.x0:g}, {prompt.y0:g}, {prompt.x1:g}, {prompt.y1:g}) is degenerate: it must span at least 1 pixel in x and y")
        return BoxPrompt(x0, y0, x1, y1)
    if isinstance(prompt, ScribblePrompt):
        if not prompt.width > 0 or not np.isfinite(prompt.width):
            raise PromptError(f"scribble brush width must be a positive number, got {prompt.width}")
        widest = int(np.ceil(np.hypot(rows, columns)))  # a wider brush covers nothing more
        if prompt.width > widest:
            raise PromptError(f"scribble brush width {prompt.width:g} is wider than the image ({columns} x {rows} pixels): "
                              f"at most its diagonal, {widest} pixels")
    if isinstance(prompt, LassoPrompt):
        if len(points) < 3 or _polygon_area(points) < 1.0:
            raise PromptError("lasso is degenerate: it needs at least 3 points enclosing an area of 1 pixel or more")
    return prompt


def validate_prompts(prompts: list[Prompt], shape: tuple[int, int]) -> list[Prompt]:
    return [validate_prompt(prompt, shape) for prompt in prompts]


def prompt_mask(prompt: Prompt, shape: tuple[int, int]) -> np.ndarray:
    """The pixels a prompt covers: a box's rectangle, a painted scribble, a filled lasso."""
    from skimage.draw import line, polygon

    mask = np.zeros(shape, dtype=bool)
    points = prompt.points()
    if isinstance(prompt, BoxPrompt):
        x0, y0, x1, y1 = (int(round(v)) for v in (prompt.x0, prompt.y0, prompt.x1, prompt.y1))
        mask[max(y0, 0) : y1 + 1, max(x0, 0) : x1 + 1] = True
    elif isinstance(prompt, PointPrompt):
        mask[int(round(prompt.y)), int(round(prompt.x))] = True
    elif isinstance(prompt, LassoPrompt):
        rr, cc = polygon(points[:, 1], points[:, 0], shape=shape)
        mask[rr, cc] = True
        for (xa, ya), (xb, yb) in zip(points, np.roll(points, -1, axis=0)):  # the outline belongs to it too
            rr, cc = line(int(round(ya)), int(round(xa)), int(round(yb)), int(round(xb)))
            keep = (rr >= 0) & (rr < shape[0]) & (cc >= 0) & (cc < shape[1])
            mask[rr[keep], cc[keep]] = True
    else:
        # The brush: every pixel within half the width of the polyline. One distance transform of
        # the 1-pixel line costs the same for any width and number of points (painting a disk per
        # step took minutes for a wide brush on a large image).
        from scipy.ndimage import distance_transform_edt

        rows, columns = shape
        pixels = np.rint(points[:, ::-1]).astype(np.int64).clip(0, [rows - 1, columns - 1])
        track = np.zeros(shape, dtype=bool)
        track[pixels[0, 0], pixels[0, 1]] = True
        for (ya, xa), (yb, xb) in zip(pixels[:-1], pixels[1:]):
            rr, cc = line(int(ya), int(xa), int(yb), int(xb))
            track[rr, cc] = True
        mask = distance_transform_edt(~track) <= max(prompt.width / 2.0, 0.5) + 1e-6
    return mask


def prompt_bbox(prompt: Prompt, shape: tuple[int, int]) -> tuple[float, float, float, float]:
    """Tight ``(x0, y0, x1, y1)`` around what a prompt covers."""
    if isinstance(prompt, BoxPrompt):
        return (prompt.x0, prompt.y0, prompt.x1, prompt.y1)
    rows, columns = np.nonzero(prompt_mask(prompt, shape))
    return (float(columns.min()), float(rows.min()), float(columns.max()), float(rows.max()))


def prompt_to_dict(prompt: Prompt) -> dict:
    if isinstance(prompt, BoxPrompt):
        return {"type": "box", "box": [prompt.x0, prompt.y0, prompt.x1, prompt.y1]}
    if isinstance(prompt, PointPrompt):
        return {"type": "point", "point": [prompt.x, prompt.y], "positive": prompt.positive}
    if isinstance(prompt, ScribblePrompt):
        return {"type": "scribble", "points": [list(v) for v in prompt.vertices], "width": prompt.width}
    return {"type": "lasso", "points": [list(v) for v in prompt.vertices]}


def prompt_from_dict(data: dict) -> Prompt:
    """Inverse of :func:`prompt_to_dict`, with a clear error for malformed input."""
    try:
        kind = data["type"]
        if kind == "box":
            x0, y0, x1, y1 = (float(v) for v in data["box"])
            return BoxPrompt(x0, y0, x1, y1)
        if kind == "point":
            x, y = (float(v) for v in data["point"])
            return PointPrompt(x, y, bool(data.get("positive", True)))
        if kind == "scribble":
            return ScribblePrompt(tuple((float(x), float(y)) for x, y in data["points"]), float(data.get("width", 3.0)))
        if kind == "lasso":
            return LassoPrompt(tuple((float(x), float(y)) for x, y in data["points"]))
    except (KeyError, TypeError, ValueError) as error:
        raise PromptError(f"malformed prompt {data!r}: {error}") from error
    raise PromptError(f"unknown prompt type {data.get('type')!r}; expected one of {', '.join(PROMPT_TYPES)}")
