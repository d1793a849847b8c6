"""Labelled 3D volumes: what is in a folder, and slices sampled per structure in three planes.

A folder given with ``--volumes`` is either one volume dataset or a parent of several. A
dataset is described by a ``volumes.json`` file::

    {"dataset": "my_ct", "license": "CC BY 4.0", "source": "where it came from",
     "volumes": [
       {"id": "case1", "image": "case1.nii.gz", "modality": "CT",
        "labels": "case1_seg.nii.gz", "names": {"1": "liver", "2": "spleen"}},
       {"id": "case2", "image": "dicom_folder", "modality": "CT",
        "masks": [{"file": "liver.nrrd", "name": "liver"}]}]}

or is one of the folders in ``../shared/data/volumes`` this module knows by name and layout
(totalseg_example, ivadomed_spleen_spine, dcmqi_ct3slice, mricron_colin27_aal). Label maps
must share the image's voxel grid (checked).

Slices are exact voxel slices as Slicer displays them (:func:`mimo.geometry.axis_slice` and
:func:`mimo.geometry.extract_slice`); the image is converted with
:func:`mimo.intensity.to_display_rgb` (CT windows chosen per structure: lung window for lung
structures, bone window for bones, soft-tissue otherwise; MR percentiles).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import MimoError
from ..geometry import AXES, axis_slice, extract_slice, slice_axis_index
from ..image import ImageVolume, load_image

#: A slice needs at least this many pixels of a structure to show it (or to ground it).
MIN_PIXELS = 20
#: (A structure with fewer pixels but more than none is "marginal" in a slice: neither shown nor called absent.)
#: Slices are sampled where the structure covers at least this fraction of its largest cross-section.
AREA_FRACTION = 0.25
#: Planes whose slices are smaller than this on a side are skipped (e.g. 3-slice CT stacks).
MIN_SLICE_SIDE = 16

LUNG_WORDS = ("lung", "trachea")
BONE_WORDS = ("vertebra", "rib ", "sacrum", "skull", "humerus", "scapula", "clavicle", "femur", "hip", "sternum", "spine")

#: The known layouts in ../shared/data/volumes (README licences).
BUILTIN = {
    "totalseg_example": {
        "license": "Apache-2.0 (TotalSegmentator repository test files); labels are TotalSegmentator model output, not manual",
        "source": "TotalSegmentator tests/reference_files (example_ct_sm, example_mr_sm)",
        "volumes": [
            {"id": "example_ct_sm", "image": "example_ct_sm.nii.gz", "modality": "CT", "labels": "example_seg.nii.gz",
             "names_from": ("labels.json", "example_seg.nii.gz")},
            {"id": "example_mr_sm", "image": "example_mr_sm.nii.gz", "modality": "MR", "labels": "example_seg_mr.nii.gz",
             "names_from": ("labels.json", "example_seg_mr.nii.gz")},
        ],
    },
    "ivadomed_spleen_spine": {
        "license": "spleen CT: CC BY-SA 4.0 (Medical Segmentation Decathlon Task09); spinal-cord MR: licence unverified",
        "source": "ivadomed test data (MSD spleen_2 crop; spinal-cord T2w)",
        "volumes": [
            {"id": "sub-spleen2_ct", "image": "sub-spleen2_ct.nii.gz", "modality": "CT", "labels": "sub-spleen2_ct_seg-manual.nii.gz", "names": {"1": "spleen"}},
            {"id": "sub-unf01_T2w", "image": "sub-unf01_T2w.nii.gz", "modality": "MR", "labels": "sub-unf01_T2w_seg-manual.nii.gz", "names": {"1": "spinal cord"}},
        ],
    },
    "dcmqi_ct3slice": {
        "license": "BSD-3-Clause (QIICR/dcmqi test data)",
        "source": "QIICR/dcmqi data/segmentations (ct-3slice, liver/spine/heart NRRD masks)",
        "volumes": [
            {"id": "ct-3slice", "image": "ct-3slice", "modality": "CT",
             "masks": [{"file": "liver_seg.nrrd", "name": "Liver"}, {"file": "spine_seg.nrrd", "name": "Thoracic spine"},
                       {"file": "heart_seg.nrrd", "name": "Heart"}]},
        ],
    },
    "mricron_colin27_aal": {
        "license": "Debian package mricron-data (BSD-3-Clause); the Colin27 template and the AAL atlas are third-party, research use",
        "source": "MRIcron templates: ch2bet.nii.gz (Colin27 T1, brain-extracted) with aal.nii.gz (AAL, 116 regions)",
        "volumes": [
            {"id": "colin27_aal", "image": "ch2bet.nii.gz", "modality": "MR", "labels": "aal.nii.gz", "names_from": ("aal.nii.txt", None)},
        ],
    },
}

#: Label names whose terminology display name is singular but whose mask holds many (MR labels).
NAME_OVERRIDES = {"vertebrae": "vertebrae", "intervertebral_discs": "intervertebral discs"}


@dataclass
class LabelSource:
    """One label array on the image grid and the structure name of each label value."""

    array: np.ndarray  # integer [k, j, i]
    names: dict[int, str]  # value -> display name


@dataclass
class VolumeSpec:
    dataset: str
    volume_id: str
    folder: Path
    image: Path
    modality: str  # "CT" or "MR"
    license: str
    source: str
    labels: list[tuple[Path, dict[int, str]]] = field(default_factory=list)  # (label file, value -> raw name)
    masks: list[tuple[Path, str]] = field(default_factory=list)  # (binary mask file, raw name)

    @property
    def uid(self) -> str:
        return f"{self.dataset}/{self.volume_id}"


class VolumeError(MimoError):
    pass


def display_name(raw: str, knowledge=None) -> str:
    """The structure name used in samples: the terminology display name ("kidney_left" -> "left kidney")."""
    from ..terminology import Terminology

    if raw in NAME_OVERRIDES:
        name = NAME_OVERRIDES[raw]
    elif knowledge is not None and raw in knowledge.aal_names:
        name = knowledge.aal_names[raw]
    else:
        name = Terminology.default().lookup(raw).name
    entry = knowledge.get(name) if knowledge is not None else None
    return entry.name if entry is not None else name


def _names_from(folder: Path, spec: tuple[str, str | None]) -> dict[int, str]:
    file_name, key = spec
    path = folder / file_name
    if file_name.endswith(".json"):
        data = json.loads(path.read_text())
        for section, names in data.items():
            if section.split()[0] == key:
                return {int(v): n for v, n in names.items()}
        raise VolumeError(f"{path}: no label names for {key}")
    names = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            names[int(parts[0])] = parts[1]
    return names


def _spec_from_dict(folder: Path, dataset: str, info: dict) -> list[VolumeSpec]:
    specs = []
    for item in info["volumes"]:
        spec = VolumeSpec(
            dataset=dataset, volume_id=str(item["id"]), folder=folder, image=folder / item["image"],
            modality=str(item.get("modality", "CT")).upper().replace("MRI", "MR"),
            license=str(info.get("license", "unknown")), source=str(info.get("source", "")),
        )
        if spec.modality not in ("CT", "MR"):
            raise VolumeError(f"{folder}: volume {spec.volume_id}: modality must be CT or MR, got {spec.modality}")
        if "labels" in item:
            if "names" in item:
                names = {int(v): str(n) for v, n in item["names"].items()}
            else:
                names = _names_from(folder, tuple(item["names_from"]))
            spec.labels.append((folder / item["labels"], names))
        for mask in item.get("masks", []):
            spec.masks.append((folder / mask["file"], str(mask["name"])))
        if not spec.labels and not spec.masks:
            raise VolumeError(f"{folder}: volume {spec.volume_id} has neither 'labels' nor 'masks'")
        specs.append(spec)
    return specs


def discover(folder: Path) -> list[VolumeSpec]:
    """Volume datasets in ``folder`` (itself one, or its sub-folders), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise VolumeError(f"volumes folder not found: {folder}")
    described = folder / "volumes.json"
    if described.is_file():
        info = json.loads(described.read_text())
        return _spec_from_dict(folder, str(info.get("dataset", folder.name)), info)
    if folder.name in BUILTIN and all((folder / v["image"]).exists() for v in BUILTIN[folder.name]["volumes"]):
        return _spec_from_dict(folder, folder.name, BUILTIN[folder.name])
    specs = []
    for child in sorted(p for p in folder.iterdir() if p.is_dir()):
        if (child / "volumes.json").is_file() or child.name in BUILTIN:
            specs.extend(discover(child))
    return specs


def _same_grid(a: ImageVolume, b: ImageVolume) -> bool:
    return a.shape == b.shape and np.allclose(a.ijk_to_ras, b.ijk_to_ras, atol=1e-3)


@dataclass
class LoadedVolume:
    spec: VolumeSpec
    image: ImageVolume
    sources: list[LabelSource]

    def __post_init__(self) -> None:
        counts: dict[str, int] = {}
        for source in self.sources:
            table = np.bincount(np.clip(source.array, 0, max(source.names) + 1).ravel().astype(np.int64))
            for value, name in source.names.items():
                counts[name] = counts.get(name, 0) + (int(table[value]) if value < len(table) else 0)
        #: Structures with at least MIN_PIXELS voxels somewhere in the volume.
        self.present = {name for name, n in counts.items() if n >= MIN_PIXELS}

    def structure_names(self) -> list[str]:
        return sorted({name for source in self.sources for name in source.names.values()})


def load(spec: VolumeSpec, knowledge=None) -> LoadedVolume:
    image = load_image(spec.image, modality=spec.modality)
    sources = []
    for path, raw_names in spec.labels:
        labels = load_image(path)
        if not _same_grid(labels, image):
            raise VolumeError(f"{path}: label map does not share the voxel grid of {spec.image}")
        array = np.rint(labels.array).astype(np.int32) if labels.array.dtype.kind == "f" else labels.array.astype(np.int32)
        sources.append(LabelSource(array, {value: display_name(raw, knowledge) for value, raw in raw_names.items()}))
    for path, raw in spec.masks:
        labels = load_image(path)
        if not _same_grid(labels, image):
            raise VolumeError(f"{path}: mask does not share the voxel grid of {spec.image}")
        sources.append(LabelSource((labels.array != 0).astype(np.int32), {1: display_name(raw, knowledge)}))
    return LoadedVolume(spec, image, sources)


def ct_window(name: str) -> str:
    lowered = f" {name} "
    if any(word in lowered for word in LUNG_WORDS):
        return "lung"
    if any(word in lowered for word in BONE_WORDS):
        return "bone"
    return "soft-tissue"


def per_slice_areas(volume: LoadedVolume, axis: str) -> dict[str, np.ndarray]:
    """Per structure, its pixel count in each slice along ``axis`` (index = slice number)."""
    numpy_axis = 2 - slice_axis_index(volume.image.ijk_to_ras, axis)
    count = volume.image.shape[numpy_axis]
    areas: dict[str, np.ndarray] = {}
    for source in volume.sources:
        top = max(source.names) + 1
        planes = np.clip(np.moveaxis(source.array, numpy_axis, 0).reshape(count, -1), 0, top).astype(np.int64)
        offsets = (np.arange(count, dtype=np.int64) * (top + 1))[:, None]
        table = np.bincount((planes + offsets).ravel(), minlength=count * (top + 1)).reshape(count, top + 1)
        for value, name in sorted(source.names.items()):
            areas[name] = areas.get(name, 0) + table[:, value]
    return areas


def slice_shape(volume: LoadedVolume, axis: str) -> tuple[int, int]:
    return axis_slice(volume.image.shape, volume.image.ijk_to_ras, axis, 0).shape


def sample_slices(volume: LoadedVolume, slices_per_structure: int, rng: np.random.Generator) -> dict[tuple[str, int], list[str]]:
    """``(axis, index) -> structures`` the slice was chosen for: per structure and plane, up to
    ``slices_per_structure`` slices where it is well represented."""
    chosen: dict[tuple[str, int], list[str]] = {}
    for axis in AXES:
        if min(slice_shape(volume, axis)) < MIN_SLICE_SIDE:
            continue
        areas = per_slice_areas(volume, axis)
        for name in sorted(areas):
            area = areas[name]
            if area.max() < MIN_PIXELS:
                continue
            eligible = np.flatnonzero(area >= max(MIN_PIXELS, AREA_FRACTION * area.max()))
            picks = rng.choice(eligible, size=min(slices_per_structure, len(eligible)), replace=False)
            for index in sorted(int(i) for i in picks):
                chosen.setdefault((axis, index), []).append(name)
    return chosen


@dataclass
class VolumeSlice:
    """One displayed slice: RGB pixels, per-structure masks, and what was found in it."""

    pixels: np.ndarray  # uint8 (rows, cols, 3)
    spacing_mm: tuple[float, float]
    masks: dict[str, np.ndarray]  # structures with >= MIN_PIXELS pixels
    marginal: list[str]  # structures with 1..MIN_PIXELS-1 pixels
    absent: list[str]  # structures of the volume with no pixel in this slice


def extract(volume: LoadedVolume, axis: str, index: int, window: str | None) -> VolumeSlice:
    from ..intensity import to_display_rgb

    geometry = axis_slice(volume.image.shape, volume.image.ijk_to_ras, axis, index)
    raw = extract_slice(volume.image.array, geometry)
    pixels = to_display_rgb(raw, volume.spec.modality, window=window if volume.spec.modality == "CT" else None)
    masks: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for source in volume.sources:
        plane = extract_slice(source.array, geometry)
        for value, name in source.names.items():
            mask = plane == value
            counts[name] = counts.get(name, 0) + int(mask.sum())
            masks[name] = masks[name] | mask if name in masks else mask
    present_in_volume = volume.present
    shown = {name: masks[name] for name in sorted(masks) if counts[name] >= MIN_PIXELS}
    marginal = sorted(name for name in masks if 0 < counts[name] < MIN_PIXELS)
    absent = sorted(name for name in present_in_volume if counts.get(name, 0) == 0)
    return VolumeSlice(pixels, geometry.spacing_mm, shown, marginal, absent)


def iter_specs(folders: list[Path]) -> Iterator[VolumeSpec]:
    seen = set()
    for folder in folders:
        for spec in discover(folder):
            if spec.uid not in seen:
                seen.add(spec.uid)
                yield spec
