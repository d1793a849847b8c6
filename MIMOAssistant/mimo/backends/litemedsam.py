"""The LiteMedSAM backend: a segmentation-only backend driven by visual prompts.

LiteMedSAM was trained with box prompts only; its point embeddings are untrained (a point
given to its prompt encoder yields an empty mask), and mixing points into a box lowers Dice
(measured on shared/data/open2d, see README). So every prompt is turned into boxes:

* box: used as is;
* lasso: its bounding box, and the mask is kept inside the lasso;
* scribble and positive points: boxes of several sizes around them; the candidate whose mask
  covers the scribble/points, avoids negative points and has the best predicted IoU wins;
* negative points: remove the connected parts of a mask that contain them.

A turn segments one target. Several region prompts are one target with several components
(both lungs), unless the question names as many known structures as there are regions: then
the i-th region is the i-th named structure. The answer says what was done (named structure
when the user named it, area) and never claims to recognise anything.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from .. import __version__
from ..backend import ALL_PROMPT_TYPES, Answer, Backend, BackendInfo, Capabilities, GroundedSpan, ProgressCallback, SliceImage, Turn, check_cancel
from ..prompts import BoxPrompt, LassoPrompt, PointPrompt, Prompt, ScribblePrompt, prompt_bbox, prompt_mask
from ..terminology import Terminology

THRESHOLD = 0.5
#: Half-sizes of the square candidate boxes: multiples of the scribble's longer half-extent
#: (squares beat boxes shaped like the scribble: mean Dice 0.88 vs 0.54 on 18 open2d images
#: with a scribble across the middle of the target), and pixels added around points.
SCRIBBLE_EXPANSIONS = (1.0, 1.3, 1.7, 2.2, 3.0)
POINT_HALF_SIZES = (8, 16, 32, 64, 128)
LASSO_MARGIN_PIXELS = 2


@dataclass
class Region:
    """One component of the target: the prompt that outlines it and points that refine it."""

    prompt: Prompt | None
    positives: list[PointPrompt] = field(default_factory=list)
    negatives: list[PointPrompt] = field(default_factory=list)


def group_prompts(prompts: list[Prompt], shape: tuple[int, int]) -> list[Region]:
    """Attach points to the region prompt (box, scribble, lasso) whose box contains them."""
    regions = [Region(p) for p in prompts if not isinstance(p, PointPrompt)]
    for point in (p for p in prompts if isinstance(p, PointPrompt)):
        home = None
        for region in regions:
            if region.prompt is None:  # a region made of points only: a later point joins the first such region
                home = region
                break
            x0, y0, x1, y1 = prompt_bbox(region.prompt, shape)
            if x0 <= point.x <= x1 and y0 <= point.y <= y1:
                home = region
                break
        if home is None and point.positive:
            home = Region(None)
            regions.append(home)
        if home is not None:
            (home.positives if point.positive else home.negatives).append(point)
        else:
            # A negative point outside every region constrains all of them.
            for region in regions:
                region.negatives.append(point)
    if not regions:
        # Only negative points: nothing was indicated to segment.
        from ..errors import PromptError

        raise PromptError("only negative points were given: add a box, scribble, lasso or positive point on the target")
    return regions


def _clip_box(box, shape) -> list[float]:
    rows, cols = shape
    x0, y0, x1, y1 = box
    return [max(0.0, x0), max(0.0, y0), min(cols - 1.0, x1), min(rows - 1.0, y1)]


def _remove_negative_components(mask: np.ndarray, negatives: list[PointPrompt]) -> np.ndarray:
    from scipy import ndimage

    if not negatives or not mask.any():
        return mask
    labels, _ = ndimage.label(mask)
    for point in negatives:
        value = labels[int(round(point.y)), int(round(point.x))]
        if value:
            mask = mask & (labels != value)
    return mask


class LiteMedSAMBackend(Backend):
    def __init__(self, checkpoint: str | None = None, device: str = "auto", max_sessions: int = 8) -> None:
        super().__init__(max_sessions=max_sessions)
        from ..models.litemedsam import LiteMedSAM

        self.model = LiteMedSAM.from_pretrained(checkpoint, device)
        self.terminology = Terminology.default()

    def info(self) -> BackendInfo:
        return BackendInfo(
            name="litemedsam",
            version=__version__,
            model=str(self.model.checkpoint.name),
            device=str(self.model.device),
            capabilities=Capabilities(text_answers=False, prompt_types=ALL_PROMPT_TYPES, requires_prompt=True),
        )

    def _encode(self, image: SliceImage):
        return self.model.encode(image.pixels, image.spacing_mm)

    def _candidates(self, region: Region, shape: tuple[int, int]) -> tuple[list[list[float]], np.ndarray | None]:
        """Candidate boxes for a region, and the pixels its mask must cover (None: no constraint)."""
        prompt = region.prompt
        if isinstance(prompt, BoxPrompt):
            return [_clip_box((prompt.x0, prompt.y0, prompt.x1, prompt.y1), shape)], None
        if isinstance(prompt, LassoPrompt):
            return [_clip_box(prompt_bbox(prompt, shape), shape)], None
        must_cover = np.zeros(shape, dtype=bool)
        for point in region.positives:
            must_cover[int(round(point.y)), int(round(point.x))] = True
        if isinstance(prompt, ScribblePrompt):
            must_cover |= prompt_mask(prompt, shape)
        rows, cols = np.nonzero(must_cover)
        cx, cy = (cols.min() + cols.max()) / 2, (rows.min() + rows.max()) / 2
        half_x, half_y = (cols.max() - cols.min()) / 2, (rows.max() - rows.min()) / 2
        if isinstance(prompt, ScribblePrompt):
            half = max(half_x, half_y, 4.0)
            sizes = [(half * f, half * f) for f in SCRIBBLE_EXPANSIONS]
        else:
            sizes = [(half_x + s, half_y + s) for s in POINT_HALF_SIZES]
        boxes = [_clip_box((cx - hx, cy - hy, cx + hx, cy + hy), shape) for hx, hy in sizes]
        return boxes, must_cover

    def _segment_region(self, encoded, region: Region, shape: tuple[int, int]) -> np.ndarray:
        boxes, must_cover = self._candidates(region, shape)
        probabilities, ious = self.model.decode(encoded, boxes=np.array(boxes))
        masks = probabilities > THRESHOLD
        if must_cover is None:
            mask = masks[0]
        else:
            scores = []
            covered_total = max(int(must_cover.sum()), 1)
            for candidate, iou in zip(masks, ious):
                coverage = (candidate & must_cover).sum() / covered_total
                hits_negative = any(candidate[int(round(p.y)), int(round(p.x))] for p in region.negatives)
                scores.append(coverage * float(iou) * (0.1 if hits_negative else 1.0))
            mask = masks[int(np.argmax(scores))]
        if isinstance(region.prompt, LassoPrompt):
            from scipy import ndimage

            inside = ndimage.binary_dilation(prompt_mask(region.prompt, shape), iterations=LASSO_MARGIN_PIXELS)
            mask = mask & inside
        return _remove_negative_components(mask, region.negatives)

    def _answer(self, image: SliceImage, encoded, turn: Turn, progress: ProgressCallback, cancel: threading.Event | None) -> Answer:
        start = time.perf_counter()
        regions = group_prompts(turn.prompts, image.shape)
        region_masks = []
        for index, region in enumerate(regions):
            check_cancel(cancel)
            region_masks.append(self._segment_region(encoded, region, image.shape))
            progress("decode", (index + 1) / len(regions))
        decode_seconds = time.perf_counter() - start
        named = [entry.name for _, _, entry in self.terminology.find_terms(turn.question)]
        if len(named) > 1 and len(named) == len(regions):
            targets = list(zip(named, ([m] for m in region_masks)))
        else:
            targets = [(named[0] if len(named) == 1 else None, region_masks)]
        text, spans, masks = self._describe(targets, image, len(regions))
        return Answer(text, spans, masks, {"decode_s": decode_seconds}, {"regions": len(regions)})

    def _describe(self, targets, image: SliceImage, region_count: int) -> tuple[str, list[GroundedSpan], list[np.ndarray]]:
        """Plain statement of what was segmented; the structure names come from the question only."""
        pixel_area_mm2 = image.spacing_mm[0] * image.spacing_mm[1]
        sentences, spans, masks = [], [], []
        offset = 0
        for name, parts in targets:
            mask = np.logical_or.reduce(parts)
            term = name or "region"
            pixels = int(mask.sum())
            lead = "Segmented the " if name else "Segmented a "
            if image.calibrated:
                size = f"{pixels * pixel_area_mm2:.1f} mm² ({pixels} pixels)"
            else:
                size = f"{pixels} pixels (the image carries no physical pixel size)"
            components = f" in {len(parts)} parts" if len(parts) > 1 else ""
            sentence = f"{lead}{term}{components}: {size}."
            if pixels == 0:
                sentence = f"Found no {term} inside the prompt{'s' if region_count > 1 else ''}; nothing was segmented."
            else:
                start = offset + len(lead)
                spans.append(GroundedSpan(term, start, start + len(term), len(masks)))
                masks.append(mask)
            sentences.append(sentence)
            offset += len(sentence) + 1
        note = (
            "LiteMedSAM outlines what the prompts enclose; it does not identify structures"
            + (" (names come from your question)." if any(name for name, _ in targets) else ".")
        )
        return " ".join(sentences + [note]), spans, masks
