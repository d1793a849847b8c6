"""Writing segmentation results to files that Slicer, ITK-SNAP, PACS and plain viewers read.

:func:`write_segmentation` picks the format from the file name:

``.seg.nrrd``
    Slicer segmentation (written with ``slicerio``, the maintained reader/writer of Slicer's
    format): names, colours, label values, terminology (category / type / modifier codes) and
    the exact voxel grid of the input. Lossless: segments that overlap go to separate layers
    (a 4D labelmap, as Slicer itself stores them).
``.nii.gz`` / ``.nii``
    NIfTI label map (uint8, or uint16 when a label exceeds 255) on the input's grid, with three
    sidecars next to it: ``<stem>.label.json`` (values, names, colours, codes, Slicer
    terminology strings), ``<stem>.ctbl`` (Slicer colour table, ``value name r g b a``) and
    ``<stem>.labels.csv`` (Slicer's CSV colour table, which also carries the terminology
    codes, anatomic region included). A label map holds one value per voxel: where segments
    overlap, the segment listed later wins and a warning is logged. Use ``.seg.nrrd`` to keep
    overlaps.
``.png``
    2D inputs only: a label image of the input's size (0 background, each segment's label
    value elsewhere; 8-bit when every label fits, else 16-bit). Overlaps as for NIfTI.
``.dcm``
    DICOM Segmentation (BINARY, via highdicom) referencing the DICOM images the volume came
    from, with coded segment descriptions (category, type, type modifier, anatomic region and
    its modifier), display colours and algorithm identification (AUTOMATIC, "MIMOAssistant").

Every writer refuses to replace an existing file unless ``overwrite=True``, creates the
parent folder, and writes to a temporary file in the target folder first, then renames it,
so a failure never leaves a partial file behind.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from . import __version__
from .errors import OutputError
from .image import ImageVolume, to_sitk
from .segments import Segment

log = logging.getLogger(__name__)

SUPPORTED_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".png", ".dcm")

#: ITK / DICOM work in LPS, Slicer and the engine in RAS.
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

_MAX_LABEL = 65535


# --------------------------------------------------------------------------------------------
# Public API


def write_segmentation(
    path: str | os.PathLike,
    volume: ImageVolume,
    segments: Sequence[Segment],
    overwrite: bool = False,
) -> Path:
    """Write ``segments`` (masks on ``volume``'s grid) to ``path``; the suffix picks the format.

    Returns the path of the main file written. Raises :class:`OutputError` for an unsupported
    suffix, invalid segments, an existing file without ``overwrite``, a format that does not
    fit the input (PNG for 3D, DICOM SEG for non-DICOM input) or a failed write.
    """
    path = Path(path)
    suffix = output_suffix(path)
    if suffix is None:
        raise OutputError(
            f"{path}: unsupported output file type; use one of {', '.join(SUPPORTED_SUFFIXES)}"
            " (.seg.nrrd keeps overlapping segments and all metadata)"
        )
    segments = list(segments)
    masks = _validate(volume, segments)
    existing = check_output_names(path)  # fail fast; _commit checks every file again
    if existing and not overwrite and not path.is_dir():
        raise OutputError(f"{existing[0]}: file already exists; choose another name or allow overwriting")
    if suffix == ".seg.nrrd":
        return _write_seg_nrrd(path, volume, segments, masks, overwrite)
    if suffix in (".nii.gz", ".nii"):
        return _write_nifti(path, volume, segments, masks, overwrite, suffix)
    if suffix == ".png":
        return _write_label_png(path, volume, segments, masks, overwrite)
    return _write_dicom_seg(path, volume, segments, masks, overwrite)


def check_output_names(path: str | os.PathLike) -> list[Path]:
    """The files writing ``path`` creates (a NIfTI's sidecars too), after checking that the file
    system can hold their names and that none exists, a dangling or looping link included;
    raises :class:`OutputError` naming the problem. Returns the existing ones."""
    path = Path(path)
    targets = [path]
    if output_suffix(path) in (".nii.gz", ".nii"):
        targets += list(nifti_sidecars(path).values())
    existing = []
    for target in targets:
        name_max = _name_max(target.parent)
        if len(os.fsencode(target.name)) > name_max:
            raise OutputError(f"{_shortened(target)}: the file name is {len(os.fsencode(target.name))} bytes long; "
                              f"at most {name_max} bytes can be written here")
        if len(os.fsencode(str(target.absolute()))) >= 4096:
            raise OutputError(f"{_shortened(target)}: the path is longer than the file system allows (4096 bytes)")
        if os.path.lexists(target):
            existing.append(target)
    return existing


def _shortened(path: Path) -> str:
    """A path fit for one line of error: a long one keeps its start and its end (the suffix says which file)."""
    text = str(path)
    return text if len(text) <= 100 else f"{text[:50]}...{text[-40:]}"


def _name_max(folder: Path) -> int:
    """Longest file name the file system holding ``folder`` (or its nearest existing parent) allows."""
    for candidate in (folder, *folder.absolute().parents):
        try:
            if candidate.is_dir():
                return int(os.pathconf(candidate, "PC_NAME_MAX"))
        except (OSError, ValueError):
            break
    return 255


def output_suffix(path: str | os.PathLike) -> str | None:
    """The supported suffix ``path`` ends with (lower case), or None."""
    name = Path(path).name.lower()
    for suffix in SUPPORTED_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    return None


def nifti_sidecars(path: str | os.PathLike) -> dict[str, Path]:
    """Paths of the label-table files written next to a NIfTI label map."""
    path = Path(path)
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return {
        "json": path.with_name(f"{name}.label.json"),
        "ctbl": path.with_name(f"{name}.ctbl"),
        "csv": path.with_name(f"{name}.labels.csv"),
    }


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """A label PNG as a 2D integer array (uint8 or uint16), exactly as stored."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        if image.mode in ("L", "P", "1"):
            return np.asarray(image, dtype=np.uint8) if image.mode != "1" else np.asarray(image).astype(np.uint8)
        if image.mode.startswith("I"):
            return np.asarray(image).astype(np.uint16)
        raise OutputError(f"{path}: not a label image (PNG mode {image.mode})")


def write_overlay_png(
    path: str | os.PathLike,
    volume_slice_rgb: np.ndarray,
    masks: Sequence[np.ndarray],
    colors: Sequence[tuple[int, int, int]],
    outline: bool = True,
    alpha: float = 0.4,
    overwrite: bool = True,
) -> Path:
    """Blend segment colours over a slice image and save it as PNG (for previews and demos).

    ``volume_slice_rgb`` is ``(H, W, 3)`` uint8 (a ``(H, W)`` grey image is accepted too);
    each mask is ``(H, W)`` and is filled with its colour at opacity ``alpha``; with
    ``outline`` its border is drawn in the full colour. Later masks are drawn over earlier ones.
    A preview, not a result: it replaces an existing file unless ``overwrite=False``.
    """
    from PIL import Image

    path = Path(path)
    image = np.asarray(volume_slice_rgb)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise OutputError(f"overlay needs an (H, W, 3) RGB slice image, got shape {image.shape}")
    image = image[..., :3]
    if image.dtype != np.uint8:
        raise OutputError(f"overlay needs a uint8 slice image, got {image.dtype}; window it to 0-255 first")
    if len(masks) != len(colors):
        raise OutputError(f"overlay got {len(masks)} masks but {len(colors)} colours")
    if not 0.0 <= alpha <= 1.0:
        raise OutputError(f"overlay opacity must be between 0 and 1, got {alpha}")
    out = image.astype(np.float32)
    for index, (mask, color) in enumerate(zip(masks, colors)):
        mask = np.asarray(mask)
        if mask.shape != image.shape[:2]:
            raise OutputError(f"overlay mask {index} has shape {mask.shape}, the slice image {image.shape[:2]}")
        mask = mask != 0
        rgb = np.asarray(color, dtype=np.float32)[:3]
        if rgb.shape != (3,):
            raise OutputError(f"overlay colour {index} must be (r, g, b), got {color!r}")
        out[mask] = (1.0 - alpha) * out[mask] + alpha * rgb
        if outline:
            out[_boundary(mask)] = rgb
    result = np.clip(np.rint(out), 0, 255).astype(np.uint8)

    def save(tmp: Path) -> None:
        Image.fromarray(result, mode="RGB").save(tmp, format="PNG")

    _commit(path, overwrite, [(path, save)])
    return path


# --------------------------------------------------------------------------------------------
# Validation and helpers


def _validate(volume: ImageVolume, segments: list[Segment]) -> list[np.ndarray]:
    if not isinstance(volume, ImageVolume):
        raise OutputError(f"expected an ImageVolume, got {type(volume).__name__}")
    if not segments:
        raise OutputError("no segments to write")
    masks = []
    seen: dict[int, str] = {}
    for index, segment in enumerate(segments):
        label = segment.label
        if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
            raise OutputError(f"segment {index} ({segment.name!r}): label must be an integer, got {label!r}")
        label = int(label)
        if not 1 <= label <= _MAX_LABEL:
            raise OutputError(f"segment {index} ({segment.name!r}): label must be between 1 and {_MAX_LABEL}, got {label}")
        if label in seen:
            raise OutputError(f"segments {seen[label]!r} and {segment.name!r} have the same label {label}; labels must be unique")
        seen[label] = segment.name
        mask = np.asarray(segment.mask)
        if mask.shape != volume.shape:
            raise OutputError(
                f"segment {segment.name!r}: mask shape {mask.shape} does not match the image grid {volume.shape} (k, j, i)"
            )
        masks.append(mask if mask.dtype == bool else mask != 0)
    return masks


def _label_dtype(segments: Sequence[Segment]) -> np.dtype:
    return np.dtype(np.uint8) if max(int(s.label) for s in segments) <= 255 else np.dtype(np.uint16)


def _label_map(segments: Sequence[Segment], masks: Sequence[np.ndarray], what: str) -> tuple[np.ndarray, int]:
    """One label map, and how many voxels are in several segments (the later one wins there; logged)."""
    shape = masks[0].shape
    labels = np.zeros(shape, dtype=_label_dtype(segments))
    covered = np.zeros(shape, dtype=bool)
    shared = np.zeros(shape, dtype=bool)
    for segment, mask in zip(segments, masks):
        shared |= covered & mask
        covered |= mask
        labels[mask] = int(segment.label)
    overlap = int(np.count_nonzero(shared))
    if overlap:
        log.warning(
            "%s: %d voxels belong to more than one segment; a label map keeps only the segment listed last there."
            " Write a .seg.nrrd to keep overlapping segments.",
            what,
            overlap,
        )
    return labels, overlap


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (image border counts as outside)."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def _code_dict(code) -> dict | None:
    if code is None:
        return None
    return {"scheme": code.scheme, "value": code.value, "meaning": code.meaning}


def _commit(path: Path, overwrite: bool, outputs: list[tuple[Path, Callable[[Path], None]]]) -> None:
    """Write each ``(target, writer)`` to a temporary file beside the target, then rename them all.

    Nothing is written when any target exists (without ``overwrite``); on any error every
    temporary file is removed and the targets are left as they were.
    """
    for target, _ in outputs:
        if target.is_dir():
            raise OutputError(f"{target}: is a folder; give a file name")
        # lexists: a link, even a dangling or looping one, is something the user made.
        if os.path.lexists(target) and not overwrite:
            raise OutputError(f"{target}: file already exists; choose another name or allow overwriting")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"{path.parent}: cannot create the output folder ({error})") from error
    token = uuid.uuid4().hex[:12]
    temps: list[tuple[Path, Path]] = []
    try:
        for target, writer in outputs:
            # Same folder (so the rename is atomic), same suffix (writers pick formats by it), and a
            # short name, so that any name the target may have fits the file system.
            tmp = target.with_name(f"{_TEMPORARY_PREFIX}{token}{_format_suffix(target)}")
            temps.append((tmp, target))
            writer(tmp)
            if not tmp.is_file():
                raise OutputError(f"{target}: the writer produced no file")
        for tmp, target in temps:
            os.replace(tmp, target)
    except OutputError:
        _remove(temps)
        raise
    except Exception as error:  # any library or OS error: clean up, report as an output error
        _remove(temps)
        raise OutputError(f"{path}: cannot write the file ({type(error).__name__}: {error})") from error


_TEMPORARY_PREFIX = ".mimo-tmp-"


def _format_suffix(target: Path) -> str:
    name = target.name.lower()
    return next((s for s in (".seg.nrrd", ".nii.gz") if name.endswith(s)), target.suffix)


def _remove(temps: list[tuple[Path, Path]]) -> None:
    for tmp, _ in temps:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        except OSError:  # pragma: no cover - best effort
            log.warning("could not remove temporary file %s", tmp)


# --------------------------------------------------------------------------------------------
# Slicer .seg.nrrd


def _assign_layers(masks: Sequence[np.ndarray]) -> list[int]:
    """Layer of each segment: the first layer where it overlaps no earlier segment."""
    layer_union: list[np.ndarray] = []
    layers = []
    for mask in masks:
        for index, union in enumerate(layer_union):
            if not np.any(union & mask):
                union |= mask
                layers.append(index)
                break
        else:
            layer_union.append(mask.copy())
            layers.append(len(layer_union) - 1)
    return layers


def _conversion_parameters(volume: ImageVolume) -> list[dict]:
    """Slicer's conversion parameters, with the input as reference geometry for surface->labelmap."""
    k, j, i = volume.shape
    matrix = ";".join(repr(float(v)) for v in volume.ijk_to_ras.reshape(-1))
    geometry = f"{matrix};0;{i - 1};0;{j - 1};0;{k - 1};"
    return [
        {"name": "Collapse labelmaps", "value": "1", "description": "Merge the labelmaps into as few shared labelmaps as possible."},
        {"name": "Compute surface normals", "value": "1", "description": "Compute surface normals."},
        {"name": "Crop to reference image geometry", "value": "0", "description": "Crop the model to the extent of reference geometry."},
        {"name": "Decimation factor", "value": "0.0", "description": "Desired reduction in the total number of polygons."},
        {"name": "Default slice thickness", "value": "0.0", "description": "Default thickness for contours if slice spacing cannot be calculated."},
        {"name": "End capping", "value": "1", "description": "Create end cap to close surface inside contours on the top and bottom of the structure."},
        {"name": "Fractional labelmap oversampling factor", "value": "1", "description": "Oversampling of the reference image geometry for fractional labelmaps."},
        {"name": "Joint smoothing", "value": "0", "description": "Perform joint smoothing."},
        {"name": "Oversampling factor", "value": "1", "description": "Oversampling of the reference image geometry."},
        {"name": "Reference image geometry", "value": geometry, "description": "Image geometry of the labelmap created in course of conversion."},
        {"name": "Smoothing factor", "value": "-0.5", "description": "Smoothing factor."},
        {"name": "Threshold fraction", "value": "0.5", "description": "Threshold for the closed surface as a fraction between 0 and 1."},
    ]


def _header_text(text: str) -> str:
    """NRRD key/value lines cannot hold line breaks."""
    return " ".join(str(text).splitlines()).strip()


def _write_seg_nrrd(path: Path, volume: ImageVolume, segments: list[Segment], masks: list[np.ndarray], overwrite: bool) -> Path:
    import slicerio

    layer_of = _assign_layers(masks)
    n_layers = max(layer_of) + 1
    k, j, i = volume.shape
    # slicerio (index order F) takes voxels [i, j, k], or [layer, i, j, k] with layers.
    layers = np.zeros((n_layers, k, j, i), dtype=_label_dtype(segments))
    for segment, mask, layer in zip(segments, masks, layer_of):
        layers[layer][mask] = int(segment.label)
    voxels = layers.transpose(0, 3, 2, 1)
    if n_layers == 1:
        voxels = voxels[0]
    full_extent = [0, i - 1, 0, j - 1, 0, k - 1]
    seg_dicts = []
    for segment, layer in zip(segments, layer_of):
        seg_dicts.append(
            {
                "id": f"Segment_{int(segment.label)}",
                "name": _header_text(segment.name),
                "nameAutoGenerated": False,
                "color": [round(c / 255.0, 6) for c in segment.entry.color],
                "colorAutoGenerated": False,
                "labelValue": int(segment.label),
                "layer": int(layer),
                # The full grid, as slicerio does: some Slicer versions crop every segment of a
                # shared layer to the extent of the first one.
                "extent": list(full_extent),
                # Verbatim, so the file holds exactly the engine's Slicer terminology string.
                "tags": {"TerminologyEntry": _header_text(segment.entry.to_slicer_string())},
            }
        )
    segmentation = {
        "voxels": voxels,
        "ijkToLPS": _RAS_TO_LPS @ volume.ijk_to_ras,
        "encoding": "gzip",
        "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap",
        "referenceImageExtentOffset": [0, 0, 0],
        "conversionParameters": _conversion_parameters(volume),
        "segments": seg_dicts,
    }

    def save(tmp: Path) -> None:
        slicerio.write_segmentation(str(tmp), segmentation, compression_level=6)

    _commit(path, overwrite, [(path, save)])
    return path


# --------------------------------------------------------------------------------------------
# NIfTI label map + label tables


def _ctbl_name(name: str) -> str:
    # Slicer's .ctbl is whitespace separated: Slicer itself writes spaces as underscores.
    cleaned = "_".join(str(name).split())
    return cleaned or "unnamed"


def _csv_field(value) -> str:
    return '"' + str(value).replace('"', '""') + '"'


def _write_nifti(
    path: Path, volume: ImageVolume, segments: list[Segment], masks: list[np.ndarray], overwrite: bool, suffix: str
) -> Path:
    import SimpleITK as sitk

    labels, overlapping = _label_map(segments, masks, str(path))
    image = to_sitk(volume, labels)
    counts = {int(s.label): int(np.count_nonzero(labels == int(s.label))) for s in segments}
    sidecars = nifti_sidecars(path)

    table = {
        "format": "MIMOAssistant label table",
        "version": 1,
        "labelmap": path.name,
        "background": 0,
        "overlap_policy": "where segments overlap, the segment listed later holds the voxel",
        "overlapping_voxels": overlapping,
        "generator": f"MIMOAssistant {__version__}",
        "labels": [
            {
                "value": int(s.label),
                "name": s.name,
                "color": [int(c) for c in s.entry.color],
                "category": _code_dict(s.entry.category),
                "type": _code_dict(s.entry.type),
                "modifier": _code_dict(s.entry.modifier),
                "region": _code_dict(getattr(s.entry, "region", None)),
                "region_modifier": _code_dict(getattr(s.entry, "region_modifier", None)),
                "custom": bool(getattr(s.entry, "custom", False)),
                "slicer_terminology": s.entry.to_slicer_string(),
                "voxel_count": counts[int(s.label)],
            }
            for s in segments
        ],
    }
    ordered = sorted(segments, key=lambda s: int(s.label))

    def save_image(tmp: Path) -> None:
        sitk.WriteImage(image, str(tmp), useCompression=suffix == ".nii.gz")

    def save_json(tmp: Path) -> None:
        tmp.write_text(json.dumps(table, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    def save_ctbl(tmp: Path) -> None:
        lines = [f"# Color table file {sidecars['ctbl'].name}", f"# {len(ordered) + 1} values", "0 Background 0 0 0 0"]
        for s in ordered:
            r, g, b = (int(c) for c in s.entry.color)
            lines.append(f"{int(s.label)} {_ctbl_name(s.name)} {r} {g} {b} 255")
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def save_csv(tmp: Path) -> None:
        columns = ["LabelValue", "Name", "Color_R", "Color_G", "Color_B", "Color_A"]
        for part in ("Category", "Type", "TypeModifier", "Region", "RegionModifier"):
            columns += [f"{part}_CodingScheme", f"{part}_CodeValue", f"{part}_CodeMeaning"]
        rows = [",".join(_csv_field(c) for c in columns), "0," + _csv_field("Background") + ",0,0,0,0" + ',""' * 15]
        for s in ordered:
            r, g, b = (int(c) for c in s.entry.color)
            fields = [str(int(s.label)), _csv_field(s.name), str(r), str(g), str(b), "255"]
            region, region_modifier = getattr(s.entry, "region", None), getattr(s.entry, "region_modifier", None)
            for code in (s.entry.category, s.entry.type, s.entry.modifier, region, region_modifier):
                fields += [_csv_field(code.scheme), _csv_field(code.value), _csv_field(code.meaning)] if code else ['""'] * 3
            rows.append(",".join(fields))
        tmp.write_text("\n".join(rows) + "\n", encoding="utf-8")

    _commit(
        path,
        overwrite,
        [(path, save_image), (sidecars["json"], save_json), (sidecars["ctbl"], save_ctbl), (sidecars["csv"], save_csv)],
    )
    return path


# --------------------------------------------------------------------------------------------
# PNG label image


def _write_label_png(path: Path, volume: ImageVolume, segments: list[Segment], masks: list[np.ndarray], overwrite: bool) -> Path:
    from PIL import Image

    if not volume.is_2d:
        raise OutputError(
            f"{path}: a PNG label image needs a 2D input, this image has {volume.shape[0]} slices;"
            " write .seg.nrrd, .nii.gz or .dcm instead"
        )
    labels, _ = _label_map(segments, [m[0] for m in masks], str(path))

    def save(tmp: Path) -> None:
        Image.fromarray(labels).save(tmp, format="PNG")

    _commit(path, overwrite, [(path, save)])
    return path


# --------------------------------------------------------------------------------------------
# DICOM SEG


def _coded(code):
    from highdicom.sr import CodedConcept

    return CodedConcept(value=str(code.value), scheme_designator=str(code.scheme), meaning=str(code.meaning)[:64])


def _write_dicom_seg(path: Path, volume: ImageVolume, segments: list[Segment], masks: list[np.ndarray], overwrite: bool) -> Path:
    if not volume.dicom_files:
        raise OutputError(f"{path}: DICOM SEG needs a DICOM input (the image was not read from DICOM files)")
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    try:
        sources = [pydicom.dcmread(str(f)) for f in volume.dicom_files]
    except Exception as error:
        raise OutputError(f"{path}: cannot read the source DICOM files ({error})") from error
    for source in sources:
        # Real files often carry an empty Specific Character Set, which means the default
        # repertoire; highdicom rejects the empty value, so drop it (in memory only).
        if "SpecificCharacterSet" in source and not source.SpecificCharacterSet:
            del source.SpecificCharacterSet
    frames = sum(int(getattr(ds, "NumberOfFrames", 1) or 1) for ds in sources)
    if frames != volume.shape[0]:
        raise OutputError(
            f"{path}: the {len(sources)} source DICOM files hold {frames} frames but the image has {volume.shape[0]} slices"
        )
    first = sources[0]
    if (int(first.Rows), int(first.Columns)) != volume.shape[1:]:
        raise OutputError(
            f"{path}: source DICOM images are {first.Rows}x{first.Columns}, the segments {volume.shape[1]}x{volume.shape[2]}"
        )

    algorithm = hd.AlgorithmIdentificationSequence(
        name="MIMOAssistant", family=codes.cid7162.ArtificialIntelligence, version=__version__
    )
    descriptions = []
    for number, segment in enumerate(segments, start=1):
        entry = segment.entry
        region, region_modifier = getattr(entry, "region", None), getattr(entry, "region_modifier", None)
        description = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=(segment.name or f"segment {number}")[:64],
            segmented_property_category=_coded(entry.category),
            segmented_property_type=_coded(entry.type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=hd.UID(),
            tracking_id=f"{segment.name} ({int(segment.label)})"[:64],
            anatomic_regions=[_coded(region)] if region is not None else None,
            display_color=hd.color.CIELabColor.from_rgb(*(int(c) for c in entry.color)),
        )
        # highdicom has no arguments for the modifiers; the standard nests each in its code item.
        if entry.modifier is not None:
            description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                _coded(entry.modifier)
            ]
        if region_modifier is not None and region is not None:
            description.AnatomicRegionSequence[0].AnatomicRegionModifierSequence = [_coded(region_modifier)]
        descriptions.append(description)

    # Frames follow the source images (k order). Without overlap a label array (values are
    # segment numbers) is enough; with overlap each segment gets its own channel.
    # A single multi-frame source takes all frames in its own frame order, which is k here too.
    pixels = np.zeros(volume.shape, dtype=np.uint8 if len(masks) < 256 else np.uint16)
    covered = np.zeros(volume.shape, dtype=bool)
    overlap = False
    for number, mask in enumerate(masks, start=1):
        overlap = overlap or bool(np.any(covered & mask))
        covered |= mask
        pixels[mask] = number
    if overlap:
        pixels = np.stack(masks, axis=-1)

    series_number = int(getattr(first, "SeriesNumber", 0) or 0) + 1000
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            seg = hd.seg.Segmentation(
                source_images=sources,
                pixel_array=pixels,
                segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=descriptions,
                series_instance_uid=hd.UID(),
                series_number=series_number,
                sop_instance_uid=hd.UID(),
                instance_number=1,
                manufacturer="MIMOAssistant",
                manufacturer_model_name="MIMOAssistant",
                software_versions=__version__,
                device_serial_number="0",
                content_label="MIMO_SEG",
                content_description="MIMOAssistant segmentation (research use)",
                series_description="MIMOAssistant segmentation",
            )
        for warning in caught:  # source-file quirks (e.g. one-component patient names): not the user's problem
            log.info("DICOM SEG %s: %s", path.name, warning.message)
    except Exception as error:
        raise OutputError(f"{path}: cannot build the DICOM SEG ({type(error).__name__}: {error})") from error

    def save(tmp: Path) -> None:
        seg.save_as(str(tmp), enforce_file_format=True)

    _commit(path, overwrite, [(path, save)])
    return path
