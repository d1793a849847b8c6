"""Patient / near-duplicate groups and the train/val/test split by group.

The open2d manifest has no group key ("near-duplicate images were grouped" refers to its
separation from other sets), so groups are derived, per dataset, in two ways and merged
(union-find):

1. from the id, where the source encodes the patient or the video:
   - hc18 ``001_HC``, ``001_2HC``, ``001_3HC``: patient 001;
   - ddti ``106_1_1``, ``106_2``: case 106;
   - monuseg ``TCGA-A7-A13E-01Z-00-DX1``: TCGA participant ``TCGA-A7-A13E``;
   - cvc_clinicdb frame numbers: the 29 video sequences of CVC-ClinicDB (frame ranges as
     distributed with the dataset, e.g. in dataset-ninja/cvc-612; they coincide with the
     drops in frame-to-frame similarity measured on these images);
   - isbi2012 section numbers: blocks of 5 consecutive serial sections of the one EM stack
     (neighbouring sections are nearly the same tissue);
   - anything else (kvasir, busi, covidqu, dsb2018, drive, unknown datasets): the id itself;
2. from the pixels: two images whose 24x24 thumbnails of the central 70 % (grey, with the
   dataset's mean thumbnail subtracted so shared frames, borders and overlays do not count)
   correlate at 0.9 or more are near-duplicates (this finds e.g. BUSI images stored under
   both "benign" and "malignant", DDTI cases whose images are identical, Kvasir/COVID-QU-Ex
   re-captures). Datasets with fewer than 20 images skip the mean subtraction and need a
   correlation of 0.97.

Over-grouping is safe (a few unrelated images share a split); under-grouping would leak.

Splits are made per dataset: groups are ordered by a hash of (seed, dataset, group) and
filled into test, then val, until each holds its fraction of the dataset's images; the rest
is train. With three or more groups and a non-zero fraction, val and test get at least one
group each. Volumes are one group each, so every slice of a volume lands in one split.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

#: CVC-ClinicDB: frame ranges of its 29 video sequences.
CVC_CLINICDB_SEQUENCES = (
    (1, 25), (26, 50), (51, 67), (68, 78), (79, 103), (104, 126), (127, 151), (152, 177), (178, 199), (200, 205),
    (206, 227), (228, 252), (253, 277), (278, 297), (298, 317), (318, 342), (343, 363), (364, 383), (384, 408),
    (409, 428), (429, 447), (448, 466), (467, 478), (479, 503), (504, 528), (529, 546), (547, 571), (572, 591),
    (592, 612),
)
ISBI_BLOCK = 5
NEAR_DUPLICATE_CORRELATION = 0.9
SMALL_SET_CORRELATION = 0.97
SMALL_SET = 20
SPLITS = ("train", "val", "test")


def id_group(dataset: str, local_id: str) -> str:
    """The group a record belongs to by its id alone (see the module docstring)."""
    if dataset == "hc18":
        match = re.match(r"^(\d+)_\d*HC$", local_id)
        if match:
            return f"patient{int(match.group(1)):03d}"
    elif dataset == "ddti":
        match = re.match(r"^(\d+)_", local_id)
        if match:
            return f"case{int(match.group(1))}"
    elif dataset == "monuseg":
        match = re.match(r"^(TCGA-[A-Z0-9]{2}-[A-Z0-9]{4})", local_id)
        if match:
            return match.group(1)
    elif dataset == "cvc_clinicdb":
        if local_id.isdigit():
            frame = int(local_id)
            for number, (first, last) in enumerate(CVC_CLINICDB_SEQUENCES, start=1):
                if first <= frame <= last:
                    return f"sequence{number:02d}"
    elif dataset == "isbi2012":
        if local_id.isdigit():
            block = int(local_id) // ISBI_BLOCK
            return f"sections{block * ISBI_BLOCK}-{block * ISBI_BLOCK + ISBI_BLOCK - 1}"
    return local_id


def thumbnail(path: Path) -> np.ndarray:
    """24x24 grey thumbnail of the central 70 % of an image, float32, flattened."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("L")
        width, height = image.size
        box = (int(width * 0.15), int(height * 0.15), max(int(width * 0.85), int(width * 0.15) + 1), max(int(height * 0.85), int(height * 0.15) + 1))
        small = image.crop(box).resize((24, 24), Image.BILINEAR)
        return np.asarray(small, dtype=np.float32).ravel()


def near_duplicate_pairs(thumbnails: np.ndarray) -> list[tuple[int, int]]:
    """Index pairs of near-duplicate images among one dataset's thumbnails."""
    count = len(thumbnails)
    if count < 2:
        return []
    features = np.asarray(thumbnails, dtype=np.float64).copy()
    threshold = SMALL_SET_CORRELATION
    if count >= SMALL_SET:
        features -= features.mean(axis=0, keepdims=True)
        threshold = NEAR_DUPLICATE_CORRELATION
    features -= features.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    features = np.divide(features, norms, out=np.zeros_like(features), where=norms > 1e-9)
    pairs = []
    for start in range(0, count, 512):
        block = features[start : start + 512] @ features.T
        rows, cols = np.nonzero(block >= threshold)
        for r, c in zip(rows, cols):
            a, b = start + int(r), int(c)
            if a < b:
                pairs.append((a, b))
    return pairs


class UnionFind:
    def __init__(self, items: Iterable[str]) -> None:
        self.parent = {item: item for item in items}

    def find(self, item: str) -> str:
        root = item
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[item] != root:
            self.parent[item], item = root, self.parent[item]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            # the smaller name becomes the root: the result does not depend on the order of unions
            if rb < ra:
                ra, rb = rb, ra
            self.parent[rb] = ra


def group_records(dataset: str, local_ids: Sequence[str], thumbnails: np.ndarray | None) -> tuple[dict[str, str], int]:
    """``local id -> group name`` for one dataset, and the number of near-duplicate links found.

    A group is named after its smallest id-derived key, so names are stable.
    """
    keys = {local_id: id_group(dataset, local_id) for local_id in local_ids}
    union = UnionFind(sorted(set(keys.values())))
    links = 0
    if thumbnails is not None:
        for a, b in near_duplicate_pairs(thumbnails):
            ka, kb = keys[local_ids[a]], keys[local_ids[b]]
            if union.find(ka) != union.find(kb):
                links += 1
            union.union(ka, kb)
    return {local_id: union.find(key) for local_id, key in keys.items()}, links


def _order_key(seed: int, dataset: str, group: str) -> str:
    return hashlib.sha256(f"{seed}\x1f{dataset}\x1f{group}".encode()).hexdigest()


def assign_splits(group_sizes: Mapping[str, int], dataset: str, seed: int, val_fraction: float, test_fraction: float) -> dict[str, str]:
    """``group -> split`` for one dataset; ``group_sizes`` counts images (or slices) per group."""
    groups = sorted(group_sizes, key=lambda g: _order_key(seed, dataset, g))
    total = sum(group_sizes.values())
    wanted = {"test": test_fraction * total, "val": val_fraction * total}
    filled = {"test": 0, "val": 0}
    result: dict[str, str] = {}
    queue = list(groups)
    for split in ("test", "val"):
        fraction = test_fraction if split == "test" else val_fraction
        minimum_one = len(groups) >= 3 and fraction > 0
        while queue and len(queue) > 1:
            need = wanted[split] - filled[split]
            size = group_sizes[queue[0]]
            if filled[split] == 0 and minimum_one:
                pass  # always take one group
            elif need <= 0 or (need < size / 2):
                break
            group = queue.pop(0)
            result[group] = split
            filled[split] += group_sizes[group]
    for group in queue:
        result[group] = "train"
    return result
