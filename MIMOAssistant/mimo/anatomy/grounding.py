"""Named structures in 3D by atlas registration: "Segment the left hippocampus." on a volume.

The atlas's template is registered to the volume once (cached on disk by the volume's voxels
and geometry), then each structure asked for is its labels carried over (linear interpolation
of the structure's mask, kept above 0.5) on the volume's own grid. Left and right are the
patient's: both images carry their orientation, and registration works in physical (LPS)
coordinates, so a volume stored flipped or oblique gets the same structure.

Honesty: a name the atlas does not cover is answered "I cannot ground that here" with what it
does cover; a structure whose carried mask lies mostly outside the volume is "not in this
volume's field of view"; a volume that does not look like the atlas after registration (the
correlation of the registered template with the volume below :data:`MIN_SIMILARITY`) gets
no masks at all.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import MimoError
from ..image import ImageVolume, to_sitk
from ..segments import Segment
from ..terminology import Terminology, TerminologyEntry
from .atlases import WHOLES, Atlas
from .registration import ProgressCallback, RegistrationCache, RegistrationSettings, register, volume_key

#: Below this correlation of the registered template with the volume (inside the template's
#: brain/body), the volume is taken not to show what the atlas shows. Chosen in Docs/anatomy.md:
#: registered brain MRs 0.77-0.93; the brain atlas on an abdominal MR 0.27.
MIN_SIMILARITY = 0.5
#: A structure with less than this share of its atlas volume inside the volume is "not present".
MIN_INSIDE_FRACTION = 0.25


@dataclass
class AnatomyAnswer:
    text: str
    segments: list[Segment]
    atlas: str
    unavailable: list[str] = field(default_factory=list)  # named, not covered by the atlas
    outside: list[str] = field(default_factory=list)  # covered, not in the field of view
    similarity: float | None = None
    timings: dict[str, float] = field(default_factory=dict)


_WORD = re.compile(r"[a-z]+")


def _singular(word: str) -> str:
    if word.endswith("ampi"):  # hippocampi
        return word[:-1] + "us"
    if word.endswith("ei"):  # nuclei
        return word[:-1] + "us"
    if word.endswith("s") and not word.endswith(("ss", "us")):
        return word[:-1]
    return word


class AnatomyGrounder:
    """Grounds structure names on volumes with one atlas."""

    def __init__(self, atlas: Atlas, cache_dir: str | Path | None = None, settings: RegistrationSettings | None = None,
                 terminology: Terminology | None = None) -> None:
        self.atlas = atlas
        self.settings = settings or RegistrationSettings()
        self.terminology = terminology or Terminology.default()
        self.cache = RegistrationCache(cache_dir or Path.home() / ".cache" / "mimo" / "registration")
        self._transforms: dict[str, tuple[object, float]] = {}
        self._lock = threading.Lock()

    # -- what was asked -------------------------------------------------------------------

    def requested(self, question: str) -> tuple[list[str], list[str]]:
        """(atlas structures named, other structures named) in ``question``, in order."""
        words = _WORD.findall(question.lower())
        covered = set(self.atlas.names())
        found, other, used = [], [], [False] * len(words)
        for size in (4, 3, 2, 1):
            for start in range(len(words) - size + 1):
                if any(used[start:start + size]):
                    continue
                phrase = " ".join(words[start:start + size])
                entry = self._entry(phrase) or self._entry(" ".join(_singular(w) for w in words[start:start + size]))
                if entry is None:
                    continue
                name = entry.name
                if name.startswith("bilateral ") or words[start] == "both" or (start and words[start - 1] == "both"):
                    name = re.sub(r"^(left|right|bilateral) ", "", name)
                (found if name in covered else other).append((start, name))
                used[start:start + size] = [True] * size
        order = lambda items: list(dict.fromkeys(name for _, name in sorted(items)))  # noqa: E731
        return order(found), order(other)

    def _entry(self, phrase: str) -> TerminologyEntry | None:
        entry = self.terminology.find(phrase)
        if entry is None or entry.custom:
            return None
        return entry

    # -- registration ---------------------------------------------------------------------

    def transform(self, image, progress: ProgressCallback | None = None, cancel: threading.Event | None = None):
        """(transform, similarity) for a SimpleITK image: from memory, the disk cache, or computed."""
        key = volume_key(image)
        with self._lock:
            if key in self._transforms:
                return self._transforms[key]
        transform = self.cache.get(key, self.atlas.name, self.settings)
        if transform is None:
            transform = register(image, self.atlas.template(), self.settings, progress, cancel)
            self.cache.put(key, self.atlas.name, self.settings, transform)
        result = (transform, self.similarity(image, transform))
        with self._lock:
            self._transforms[key] = result
        return result

    def similarity(self, image, transform) -> float:
        """Correlation of the registered template with the volume, inside the template's foreground (2 mm grid)."""
        import SimpleITK as sitk

        from .registration import working_image

        fixed = working_image(image, self.settings.working_spacing_mm)
        placed = sitk.Resample(sitk.Cast(self.atlas.template(), sitk.sitkFloat32), fixed, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        a, b = sitk.GetArrayViewFromImage(fixed).ravel(), sitk.GetArrayViewFromImage(placed).ravel()
        inside = b > 1e-3 * float(b.max()) if b.size and b.max() > 0 else np.zeros(b.shape, bool)
        if inside.sum() < 100:
            return 0.0
        a, b = a[inside].astype(np.float64), b[inside].astype(np.float64)
        if a.std() == 0 or b.std() == 0:
            return 0.0
        return float(np.corrcoef(a, b)[0, 1])

    # -- grounding ------------------------------------------------------------------------

    def ground(self, volume: ImageVolume, question: str, progress: ProgressCallback | None = None,
               cancel: threading.Event | None = None) -> AnatomyAnswer:
        """The structures ``question`` names, as 3D segments on ``volume``'s grid."""
        import SimpleITK as sitk

        report = progress or (lambda stage, fraction: None)
        timings: dict[str, float] = {}
        names, other = self.requested(question)
        covers = ", ".join(n for n in self.atlas.names() if not n.startswith(("left ", "right ")))
        if not names:
            if other:
                text = (f"I cannot ground the {' or the '.join(other)} here: the atlas {self.atlas.name} "
                        f"({self.atlas.description}) covers {covers}.")
            else:
                text = f"Name a structure to outline in 3D; the atlas {self.atlas.name} covers {covers}."
            return AnatomyAnswer(text, [], self.atlas.name, unavailable=other)
        if volume.is_2d or volume.array.ndim != 3:
            raise MimoError("atlas grounding needs a 3D volume (a single slice has no left/right or depth to register)")
        if volume.modality not in (self.atlas.modality, "OT"):
            raise MimoError(f"the atlas {self.atlas.name} is {self.atlas.modality}; this volume is {volume.modality}: choose a {volume.modality} atlas")
        start = time.perf_counter()
        image = to_sitk(volume, volume.array.astype(np.float32))
        transform, similarity = self.transform(image, lambda stage, f: report(stage, 0.9 * f), cancel)
        timings["registration_s"] = time.perf_counter() - start
        if similarity < MIN_SIMILARITY:
            text = (f"This volume does not look like the atlas's {self.atlas.description} after registration "
                    f"(similarity {similarity:.2f}): I cannot ground the {' or the '.join(names)} here.")
            return AnatomyAnswer(text, [], self.atlas.name, unavailable=other, similarity=similarity, timings=timings)
        start = time.perf_counter()
        labels = self.atlas.labels()
        label_array = sitk.GetArrayViewFromImage(labels)
        atlas_voxel_mm3 = float(np.prod(labels.GetSpacing()))
        volume_voxel_mm3 = float(np.prod(image.GetSpacing()))
        scale = abs(float(np.linalg.det(np.asarray(_affine_matrix(transform)))))  # moving mm3 per fixed mm3
        segments, outside = [], []
        for index, name in enumerate(names):
            report(f"Carrying the {name} over", 0.9 + 0.1 * index / len(names))
            if cancel is not None and cancel.is_set():
                from ..errors import Cancelled

                raise Cancelled("cancelled")
            for part in self._segments_for(name):
                in_atlas = np.isin(label_array, self.atlas.label_values(part))
                binary = sitk.GetImageFromArray(in_atlas.astype(np.float32))
                binary.CopyInformation(labels)
                carried = sitk.Resample(binary, image, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
                mask = sitk.GetArrayFromImage(carried) >= 0.5
                atlas_mm3 = float(np.count_nonzero(in_atlas)) * atlas_voxel_mm3 / max(scale, 1e-9)
                inside = float(mask.sum()) * volume_voxel_mm3 / max(atlas_mm3, 1e-9)
                if inside < MIN_INSIDE_FRACTION:
                    outside.append(part)
                    continue
                entry = self.terminology.lookup(part)
                segments.append(Segment(len(segments) + 1, part, entry, mask))
        timings["carry_s"] = time.perf_counter() - start
        text = self._text(segments, outside, other, volume_voxel_mm3)
        report("Done", 1.0)
        return AnatomyAnswer(text, segments, self.atlas.name, other, outside, similarity, timings)

    def _segments_for(self, name: str) -> list[str]:
        """One segment per side for a bilateral name ("hippocampus" -> left and right); a whole
        made of parts (the cerebellum) stays one."""
        if name in self.atlas.structures or name in WHOLES:
            return [name]
        return self.atlas.parts(name)

    def _text(self, segments: list[Segment], outside: list[str], other: list[str], voxel_mm3: float) -> str:
        sentences = []
        if segments:
            listed = ", ".join(f"{s.name} ({s.voxel_count * voxel_mm3 / 1000:.1f} mL)" for s in segments)
            sentences.append(f"Outlined in 3D from the {self.atlas.description} registered to this volume: {listed}. "
                             "An atlas gives a typical outline: check it on the image.")
        if outside:
            sentences.append(f"The {' and the '.join(outside)} {'is' if len(outside) == 1 else 'are'} not in this volume's field of view.")
        if other:
            sentences.append(f"I cannot ground the {' or the '.join(other)} with this atlas.")
        return " ".join(sentences)


def _affine_matrix(transform) -> np.ndarray:
    """The 3x3 linear part of the affine inside ``transform`` (identity when there is none)."""
    import SimpleITK as sitk

    transforms = [transform]
    if transform.GetName() == "CompositeTransform":
        composite = sitk.CompositeTransform(transform)
        transforms = [composite.GetNthTransform(i) for i in range(composite.GetNumberOfTransforms())]
    for t in transforms:
        if t.GetName() in ("AffineTransform", "Euler3DTransform", "Similarity3DTransform", "VersorRigid3DTransform"):
            return np.asarray(t.GetMatrix(), dtype=np.float64).reshape(3, 3)
    return np.eye(3)
