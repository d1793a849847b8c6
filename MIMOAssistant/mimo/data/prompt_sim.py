"""Visual prompts simulated from a reference mask, with the noise of a real user.

- box: the mask's bounding box, each edge moved outward by a small margin (0-4 % of the box
  side) plus Gaussian jitter (sigma 3 % of the side, clipped to +-8 %), clipped to the image;
- points: 1-3 positive points drawn inside the mask with probability proportional to the
  squared distance to its border (users click the middle of things, not the edge); with
  probability 0.3 one negative point in a ring just outside the mask;
- scribble: a polyline along the longest path of the mask's skeleton (or its principal axis
  when the skeleton is too short), trimmed at both ends, subsampled, jittered by up to a pixel
  while staying inside the mask, painted with a brush about half the local thickness;
- lasso: the outer contour of the mask dilated by a few pixels (skimage find_contours),
  simplified with approximate_polygon; it always covers at least 95 % of the mask.

Targets with several large parts (the two lungs, patchy COVID-19 infection, a structure cut
twice by a slice) get a box around all parts, one positive point per part (up to four) or a
lasso around their convex hull; a scribble cannot mark several parts, so they get none. Parts
smaller than 5 % of the mask are ignored when deciding this. Masks under 30 pixels get a box or
points only. Diffuse targets (vessels, nuclei, membranes) get no visual prompt at all: a box
around a vessel tree or hundreds of nuclei says nothing.

Every prompt is checked with :func:`mimo.prompts.validate_prompt`; coordinates are rounded to
0.1 pixel so the output is byte-stable.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from ..prompts import BoxPrompt, LassoPrompt, PointPrompt, Prompt, ScribblePrompt, prompt_mask, validate_prompt

PROMPT_KINDS = ("box", "point", "scribble", "lasso")
SMALL_MASK_PIXELS = 30
PART_FRACTION = 0.05


def _r(value: float) -> float:
    return round(float(value), 1)


def significant_parts(mask: np.ndarray) -> list[np.ndarray]:
    """Connected parts (8-connectivity) of at least 5 % of the mask and 10 pixels, largest first."""
    from scipy import ndimage

    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return []
    sizes = np.bincount(labels.ravel())[1:]
    total = sizes.sum()
    order = sorted(range(count), key=lambda i: (-sizes[i], i))
    parts = [labels == (i + 1) for i in order if sizes[i] >= max(10, PART_FRACTION * total)]
    return parts or [labels == (order[0] + 1)]


def available_kinds(mask: np.ndarray) -> tuple[str, ...]:
    """Prompt kinds that make sense for this mask."""
    area = int(mask.sum())
    if area == 0:
        return ()
    if area < SMALL_MASK_PIXELS:
        return ("box", "point")
    if len(significant_parts(mask)) > 1:
        return ("box", "point", "lasso")
    return PROMPT_KINDS


def simulate_box(mask: np.ndarray, rng: np.random.Generator) -> BoxPrompt:
    rows, cols = np.nonzero(mask)
    height, width = mask.shape
    x0, x1, y0, y1 = cols.min(), cols.max(), rows.min(), rows.max()
    w, h = x1 - x0 + 1, y1 - y0 + 1

    def edge(value, side, outward):
        margin = rng.uniform(0.0, 0.04) * side
        noise = float(np.clip(rng.normal(0.0, 0.03), -0.08, 0.08)) * side
        return value + outward * margin + noise

    bx0 = float(np.clip(edge(x0, w, -1), 0, width - 1))
    bx1 = float(np.clip(edge(x1, w, +1), 0, width - 1))
    by0 = float(np.clip(edge(y0, h, -1), 0, height - 1))
    by1 = float(np.clip(edge(y1, h, +1), 0, height - 1))
    bx0, bx1 = min(bx0, bx1), max(bx0, bx1)
    by0, by1 = min(by0, by1), max(by0, by1)
    if bx1 - bx0 < 1:  # a box must span a pixel; widen around the mask
        bx0, bx1 = float(max(x0 - 1, 0)), float(min(x1 + 1, width - 1))
    if by1 - by0 < 1:
        by0, by1 = float(max(y0 - 1, 0)), float(min(y1 + 1, height - 1))
    box = BoxPrompt(_r(bx0), _r(by0), _r(bx1), _r(by1))
    return validate_prompt(box, mask.shape)


def _interior_weights(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    distance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    return distance**2


def _sample_pixel(weights: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    flat = weights.ravel().astype(np.float64)
    total = flat.sum()
    index = int(rng.choice(flat.size, p=flat / total)) if total > 0 else int(np.flatnonzero(weights.ravel() >= 0)[0])
    return divmod(index, weights.shape[1])


def simulate_points(mask: np.ndarray, rng: np.random.Generator) -> list[PointPrompt]:
    parts = significant_parts(mask)
    points: list[PointPrompt] = []
    if len(parts) > 1:
        for part in parts[:4]:
            row, col = _sample_pixel(_interior_weights(part), rng)
            points.append(PointPrompt(float(col), float(row), True))
    else:
        weights = _interior_weights(mask)
        chosen: set[tuple[int, int]] = set()
        for _ in range(int(rng.integers(1, 4))):
            row, col = _sample_pixel(weights, rng)
            if (row, col) not in chosen:
                chosen.add((row, col))
                points.append(PointPrompt(float(col), float(row), True))
    if rng.random() < 0.3:
        from scipy import ndimage

        radius = max(3, int(round(0.15 * np.sqrt(mask.sum()))))
        outer = ndimage.binary_dilation(mask, iterations=radius)
        inner = ndimage.binary_dilation(mask, iterations=2)
        ring = outer & ~inner
        if ring.any():
            rows, cols = np.nonzero(ring)
            pick = int(rng.integers(len(rows)))
            points.append(PointPrompt(float(cols[pick]), float(rows[pick]), False))
    return [validate_prompt(p, mask.shape) for p in points]


def _longest_skeleton_path(skeleton: np.ndarray) -> list[tuple[int, int]]:
    """Longest shortest path (in steps) through an 8-connected skeleton: two breadth-first searches."""
    pixels = set(zip(*np.nonzero(skeleton)))
    if not pixels:
        return []
    offsets = [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if dr or dc]

    def bfs(start):
        parent = {start: None}
        queue = deque([start])
        last = start
        while queue:
            last = queue.popleft()
            for dr, dc in offsets:
                nxt = (last[0] + dr, last[1] + dc)
                if nxt in pixels and nxt not in parent:
                    parent[nxt] = last
                    queue.append(nxt)
        return last, parent

    start = min(pixels)
    far, _ = bfs(start)
    end, parent = bfs(far)
    path = []
    node = end
    while node is not None:
        path.append(node)
        node = parent[node]
    return path


def _principal_axis_path(mask: np.ndarray) -> list[tuple[int, int]]:
    rows, cols = np.nonzero(mask)
    centre = np.array([rows.mean(), cols.mean()])
    coords = np.column_stack([rows, cols]) - centre
    if len(coords) < 2:
        return [tuple(int(v) for v in np.rint(centre))]
    _, _, vt = np.linalg.svd(coords, full_matrices=False)
    axis = vt[0]
    extent = np.abs(coords @ axis).max()
    path = []
    for t in np.linspace(-extent, extent, max(int(2 * extent), 2)):
        r, c = np.rint(centre + t * axis).astype(int)
        if 0 <= r < mask.shape[0] and 0 <= c < mask.shape[1] and mask[r, c]:
            path.append((int(r), int(c)))
    return path


def simulate_scribble(mask: np.ndarray, rng: np.random.Generator) -> ScribblePrompt | None:
    from scipy import ndimage
    from skimage.morphology import skeletonize

    part = significant_parts(mask)[0]
    path = _longest_skeleton_path(skeletonize(part))
    axis_path = _principal_axis_path(part)
    if len(axis_path) > len(path):
        path = axis_path
    if not path:
        return None
    trim = int(len(path) * rng.uniform(0.08, 0.2))
    if len(path) - 2 * trim >= 2:
        path = path[trim : len(path) - trim]
    count = int(np.clip(len(path) // 8, 2, 12)) if len(path) >= 2 else 1
    picks = np.unique(np.linspace(0, len(path) - 1, count).round().astype(int))
    vertices = []
    for index in picks:
        r, c = path[index]
        jr, jc = r + rng.uniform(-1, 1), c + rng.uniform(-1, 1)
        rr, cc = int(round(jr)), int(round(jc))
        if 0 <= rr < mask.shape[0] and 0 <= cc < mask.shape[1] and part[rr, cc]:
            r, c = jr, jc
        vertices.append((_r(c), _r(r)))
    distance = ndimage.distance_transform_edt(np.pad(part, 1))[1:-1, 1:-1]
    thickness = float(np.median([distance[r, c] for r, c in path]))
    width = float(np.clip(round(thickness), 2, 8))
    return validate_prompt(ScribblePrompt(tuple(vertices), width), mask.shape)


def simulate_lasso(mask: np.ndarray, rng: np.random.Generator) -> LassoPrompt | None:
    from scipy import ndimage
    from skimage.measure import approximate_polygon, find_contours
    from skimage.morphology import convex_hull_image

    parts = significant_parts(mask)
    region = convex_hull_image(np.logical_or.reduce(parts)) if len(parts) > 1 else parts[0]
    region = region | (mask & ndimage.binary_dilation(region, iterations=2))
    grow = max(2, int(round(0.04 * np.sqrt(region.sum())))) + int(rng.integers(0, 3))
    grown = ndimage.binary_dilation(region, iterations=grow)
    padded = np.pad(grown, 1).astype(np.float32)
    contours = find_contours(padded, 0.5)
    if not contours:
        return None
    contour = max(contours, key=len) - 1.0
    height, width = mask.shape
    contour[:, 0] = np.clip(contour[:, 0], 0, height - 1)
    contour[:, 1] = np.clip(contour[:, 1], 0, width - 1)
    for tolerance in (rng.uniform(1.0, 2.5), 0.5):
        polygon = approximate_polygon(contour, tolerance=tolerance)
        if len(polygon) > 3 and np.allclose(polygon[0], polygon[-1]):
            polygon = polygon[:-1]
        if len(polygon) < 3:
            continue
        lasso = LassoPrompt(tuple((_r(c), _r(r)) for r, c in polygon))
        covered = prompt_mask(lasso, mask.shape)
        if (covered & mask).sum() >= 0.95 * mask.sum():
            return validate_prompt(lasso, mask.shape)
    return None


def simulate(mask: np.ndarray, kind: str, rng: np.random.Generator) -> list[Prompt]:
    """One visual prompt of ``kind`` for ``mask`` (a point prompt is a set of points)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError("cannot simulate a prompt on an empty mask")
    if kind == "box":
        return [simulate_box(mask, rng)]
    if kind == "point":
        return simulate_points(mask, rng)
    if kind == "scribble":
        scribble = simulate_scribble(mask, rng)
        return [scribble] if scribble else [simulate_box(mask, rng)]
    if kind == "lasso":
        lasso = simulate_lasso(mask, rng)
        return [lasso] if lasso else [simulate_box(mask, rng)]
    raise ValueError(f"unknown prompt kind {kind!r}; expected one of {', '.join(PROMPT_KINDS)}")


def prompt_kind(prompts: list[Prompt]) -> str:
    return prompts[0].kind if prompts else ""
