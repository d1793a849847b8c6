"""A labelled-volume dataset from an image and a label atlas that lie in the same world space.

Atlases such as AAL are drawn once, in a standard space (MNI); any image in that space (a
template, or a scan registered to it) gets the atlas's labels by looking each voxel's world
(physical) coordinates up in the atlas. :func:`write_atlas_dataset` does that (nearest
neighbour, no registration) and writes a ``volumes.json`` dataset that
``mimo-assistant data build --volumes`` reads like any other. The labels are then the atlas's
correspondences, not a delineation on that image: say so wherever they are scored.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from ..errors import MimoError


class AtlasError(MimoError):
    pass


def carry_labels(atlas, reference, inside: np.ndarray | None = None):
    """The label image ``atlas`` (SimpleITK) resampled onto ``reference``'s voxel grid by world
    coordinates (nearest neighbour; 0 outside the atlas); ``inside`` (a boolean array in
    SimpleITK's (z, y, x) order) keeps labels only where it is true (e.g. a brain mask)."""
    import SimpleITK as sitk

    if atlas.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        values = sitk.GetArrayViewFromImage(atlas)
        if not np.array_equal(values, np.rint(values)):
            raise AtlasError("the atlas holds non-integer values: a label map (one integer per region) was expected")
        atlas = sitk.Cast(atlas, sitk.sitkUInt16)
    carried = sitk.Resample(atlas, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, atlas.GetPixelID())
    array = sitk.GetArrayFromImage(carried)
    if inside is not None:
        if inside.shape != array.shape:
            raise AtlasError(f"the mask has shape {inside.shape}, the image {array.shape} (both in (z, y, x) order)")
        array[~inside.astype(bool)] = 0
    if not array.any():
        raise AtlasError("no atlas label falls inside the image: the atlas and the image do not overlap in world "
                         "coordinates (are they in the same space?)")
    result = sitk.GetImageFromArray(array)
    result.CopyInformation(reference)
    return result


def write_atlas_dataset(
    image: str | Path,
    atlas: str | Path,
    names: str | Path,
    out: str | Path,
    dataset: str,
    modality: str = "MR",
    license: str = "unknown",
    source: str = "",
    inside: np.ndarray | None = None,
) -> Path:
    """Write ``out/volumes.json`` (+ the image, the carried labels and the names file) and return
    its path. ``names``: a text file of ``value name`` lines (AAL's ``aal.nii.txt``) or a JSON
    object ``{"value": "name"}``. ``out`` must not exist yet: nothing is overwritten."""
    import SimpleITK as sitk

    image, atlas, names, out = Path(image), Path(atlas), Path(names), Path(out)
    for path in (image, atlas, names):
        if not path.is_file():
            raise AtlasError(f"{path} not found")
    if modality.upper() not in ("CT", "MR"):
        raise AtlasError(f"modality must be CT or MR, got {modality!r}")
    if out.exists():
        raise AtlasError(f"{out} exists; choose a new folder (nothing is overwritten)")
    reference = sitk.ReadImage(str(image))
    labels = carry_labels(sitk.ReadImage(str(atlas)), reference, inside)
    out.mkdir(parents=True)
    image_name = "image" + (".nii.gz" if image.name.endswith(".nii.gz") else image.suffix)
    shutil.copyfile(image, out / image_name)
    sitk.WriteImage(labels, str(out / "labels.nii.gz"), useCompression=True)
    volume = {"id": dataset, "image": image_name, "modality": modality.upper(), "labels": "labels.nii.gz"}
    if names.suffix == ".json":
        volume["names"] = {str(int(k)): str(v) for k, v in json.loads(names.read_text()).items()}
    else:
        shutil.copyfile(names, out / names.name)
        volume["names_from"] = [names.name, None]
    description = {"dataset": dataset, "license": license, "source": source, "volumes": [volume]}
    path = out / "volumes.json"
    path.write_text(json.dumps(description, indent=2) + "\n")
    return path
