"""Reading images with their geometry: PNG/JPEG, NIfTI, NRRD, a DICOM file or a DICOM series.

Every image becomes an :class:`ImageVolume`: a numpy array indexed ``[k, j, i]`` (plus a
trailing channel axis for RGB), exactly as Slicer's ``arrayFromVolume`` returns it, and the
4x4 IJK-to-RAS matrix that places voxel centres in patient space. A 2D image is a volume
with one slice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ImageLoadError

# ITK works in LPS; Slicer and this engine in RAS.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")

#: Modalities the intensity handling knows. DICOM codes where one exists.
MODALITIES = ("CT", "MR", "US", "XR", "PT", "RGB", "OT")

#: Largest 2D image read (pixels): above a digital mammogram (about 14 MP), far below what a
#: few-kilobyte compressed "decompression bomb" declares (12000 x 12000 took 9.9 GB and 34 s).
MAX_RASTER_PIXELS = 6000 * 6000
#: Largest volume read (voxels, and bytes as stored): a 512 x 512 x 2048 CT. Checked against the
#: file's header before any voxel is read, so a small file declaring 2048^3 cannot exhaust memory.
MAX_VOLUME_VOXELS = 512 * 512 * 2048
MAX_VOLUME_BYTES = 4 * 1024**3


@dataclass
class ImageVolume:
    """Pixels plus geometry. ``array`` is ``[k, j, i]`` or ``[k, j, i, channel]`` (RGB)."""

    array: np.ndarray
    ijk_to_ras: np.ndarray
    modality: str = "OT"
    source: Path | None = None
    #: DICOM files in slice order (index k); empty when the input was not DICOM.
    dicom_files: list[Path] = field(default_factory=list)
    #: False when the file records no physical pixel size (PNG/JPEG): spacing is then 1 mm by convention.
    calibrated: bool = True

    def __post_init__(self) -> None:
        self.ijk_to_ras = np.asarray(self.ijk_to_ras, dtype=np.float64)
        if self.ijk_to_ras.shape != (4, 4):
            raise ImageLoadError(f"IJK-to-RAS must be a 4x4 matrix, got shape {self.ijk_to_ras.shape}")
        if not np.all(np.isfinite(self.ijk_to_ras)) or abs(np.linalg.det(self.ijk_to_ras[:3, :3])) < 1e-12:
            raise ImageLoadError("IJK-to-RAS matrix is singular or not finite")
        if self.array.ndim == 3:
            pass
        elif self.array.ndim == 4 and self.array.shape[3] in (3, 4):
            self.array = self.array[..., :3]
        else:
            raise ImageLoadError(
                f"expected a 2D or 3D image (array [k, j, i] or [k, j, i, rgb]), got array shape {self.array.shape}"
            )
        if min(self.shape) < 1:
            raise ImageLoadError(f"image is empty (shape {self.shape})")
        if self.modality not in MODALITIES:
            raise ImageLoadError(f"unknown modality {self.modality!r}; expected one of {', '.join(MODALITIES)}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """Voxel counts ``(K, J, I)``."""
        return tuple(int(n) for n in self.array.shape[:3])

    @property
    def is_rgb(self) -> bool:
        return self.array.ndim == 4

    @property
    def is_2d(self) -> bool:
        return self.shape[0] == 1

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along i, j, k."""
        return tuple(float(v) for v in np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0))

    @property
    def is_dicom(self) -> bool:
        return bool(self.dicom_files)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in VOLUME_SUFFIXES + RASTER_SUFFIXES + DICOM_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def _geometry_from_sitk(image) -> np.ndarray:
    """IJK-to-RAS of a 3D SimpleITK image (2D images are lifted to 3D first)."""
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.array(image.GetSpacing(), dtype=np.float64)
    origin = np.array(image.GetOrigin(), dtype=np.float64)
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = direction * spacing[None, :]
    ijk_to_lps[:3, 3] = origin
    return LPS_TO_RAS @ ijk_to_lps


def to_sitk(volume: "ImageVolume", array: np.ndarray | None = None):
    """A SimpleITK image of ``array`` (``[k, j, i]``; default: the volume's own voxels) with
    the volume's geometry (SimpleITK works in LPS)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(volume.array if array is None else array)  # [k, j, i] -> size (i, j, k)
    ijk_to_lps = LPS_TO_RAS @ volume.ijk_to_ras  # the flip is its own inverse
    columns = ijk_to_lps[:3, :3]
    spacing = np.linalg.norm(columns, axis=0)
    image.SetSpacing([float(v) for v in spacing])
    image.SetDirection([float(v) for v in (columns / spacing[None, :]).reshape(-1)])
    image.SetOrigin([float(v) for v in ijk_to_lps[:3, 3]])
    return image


def volume_from_sitk(image, modality: str) -> "ImageVolume":
    """An ImageVolume of a 3D scalar SimpleITK image (e.g. an atlas file read by ``read_image``)."""
    import SimpleITK as sitk

    return ImageVolume(sitk.GetArrayFromImage(image), _geometry_from_sitk(image), modality)


def guess_modality(array: np.ndarray, is_rgb: bool) -> str:
    """A cautious guess for files that do not record a modality (NIfTI, NRRD, PNG).

    CT is recognised by Hounsfield units (air near -1000 together with dense tissue); colour
    images are RGB; anything else is MR-like scaling ("OT" behaves as MR for intensity).
    """
    if is_rgb:
        return "RGB"
    sample = array if array.size <= 2_000_000 else array.reshape(-1)[:: max(1, array.size // 2_000_000)]
    low, high = np.percentile(sample, [0.5, 99.5])
    if low <= -500 and high >= 100:
        return "CT"
    return "OT"


def _from_sitk(image, path: Path, modality: str | None, dicom_files: list[Path]) -> ImageVolume:
    import SimpleITK as sitk

    dimension = image.GetDimension()
    if dimension == 4:
        raise ImageLoadError(f"{path}: 4D images (time series or multi-volume) are not supported; extract one 3D volume first")
    if dimension not in (2, 3):
        raise ImageLoadError(f"{path}: {dimension}D images are not supported")
    components = image.GetNumberOfComponentsPerPixel()
    if components not in (1, 3, 4):
        raise ImageLoadError(f"{path}: images with {components} components per pixel are not supported (expected 1 or RGB)")
    if dimension == 2:
        image = sitk.JoinSeries(image)
    array = sitk.GetArrayFromImage(image)
    if components == 1:
        array = array.astype(np.float32) if array.dtype == np.float64 else array
    ijk_to_ras = _geometry_from_sitk(image)
    is_rgb = components > 1
    return ImageVolume(
        array=array,
        ijk_to_ras=ijk_to_ras,
        modality=modality or guess_modality(array, is_rgb),
        source=path,
        dicom_files=dicom_files,
    )


def _raster(path: Path, modality: str | None) -> ImageVolume:
    import warnings

    from PIL import Image, UnidentifiedImageError

    # PIL refuses text and ICC chunks that decompress beyond 1 MB (a ValueError) and images beyond
    # twice its bomb limit; below that it only warns, so the pixel count is checked here first.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            pil_image = Image.open(path)
        with pil_image as pil:
            columns, rows = pil.size
            if columns * rows > MAX_RASTER_PIXELS:
                raise ImageLoadError(
                    f"{path}: the image declares {columns} x {rows} pixels ({columns * rows / 1e6:.0f} MP); at most "
                    f"{MAX_RASTER_PIXELS / 1e6:.0f} MP are read. Crop or downsample it first")
            pil.load()
            if pil.mode == "1":  # 1-bit black and white: 0 and 255, as an 8-bit grey image
                pil = pil.convert("L")
            if pil.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LA"):
                pil = pil.convert("RGB")
                array = np.asarray(pil)
                # Grey images stored as RGB stay grey: the model sees the same pixels either way,
                # and the modality guess must not call an ultrasound "RGB".
                if np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 0], array[..., 2]):
                    array = array[..., 0]
            elif pil.mode in ("L", "I", "I;16", "F"):
                array = np.asarray(pil)
            else:
                raise ImageLoadError(f"{path}: unsupported image mode {pil.mode}")
    except Image.DecompressionBombError as error:
        raise ImageLoadError(
            f"{path}: the image declares over {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} MP; at most {MAX_RASTER_PIXELS / 1e6:.0f} MP "
            "are read. Crop or downsample it first") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as error:
        # ValueError: PIL's refusal of an oversized text or ICC chunk ("Decompressed data too large").
        raise ImageLoadError(f"{path}: not a readable image file ({error})") from error
    is_rgb = array.ndim == 3
    array = array[None, ...]
    # The same geometry Slicer gives a 2D image it loads through ITK: 1 mm pixels, LPS axes.
    return ImageVolume(
        array=array, ijk_to_ras=LPS_TO_RAS.copy(), modality=modality or ("RGB" if is_rgb else "OT"), source=path, calibrated=False
    )


def dicom_series(folder: str | Path) -> list[tuple[str, list[str]]]:
    """(Series Instance UID, files in slice order) of each image series in a folder, in a fixed
    order (by UID)."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    return [(uid, list(reader.GetGDCMSeriesFileNames(str(folder), uid))) for uid in sorted(reader.GetGDCMSeriesIDs(str(folder)))]


def _series_line(index: int, uid: str, files: list[str]) -> str:
    import pydicom

    try:
        first = pydicom.dcmread(files[0], stop_before_pixels=True)
        about = " ".join(str(v) for v in (first.get("Modality", ""), first.get("SeriesDescription", "")) if str(v).strip())
    except Exception:  # a description is a courtesy: the UID and file count identify the series
        about = ""
    return f"  {index}: {uid} ({len(files)} files{', ' + about if about else ''})"


def _choose_series(folder: Path, found: list[tuple[str, list[str]]], series: str | None) -> list[str]:
    """The files of the series the user named (UID or index); with several series and none named,
    an error that lists them: picking one would be a guess (the series with most slices is often
    not the one the user means, and a tie has no right answer)."""
    if series is None:
        if len(found) == 1:
            return found[0][1]
        listing = "\n".join(_series_line(i, uid, files) for i, (uid, files) in enumerate(found))
        raise ImageLoadError(f"{folder}: the folder holds {len(found)} DICOM series; choose one with --series "
                             f"(its index or Series Instance UID):\n{listing}")
    for index, (uid, files) in enumerate(found):
        if series in (uid, str(index)):
            return files
    raise ImageLoadError(f"{folder}: no DICOM series {series!r} here; the series are:\n"
                         + "\n".join(_series_line(i, uid, files) for i, (uid, files) in enumerate(found)))


def _dicom_series(folder: Path, modality: str | None, series: str | None = None) -> ImageVolume:
    import SimpleITK as sitk

    found = dicom_series(folder)
    if not found:
        raise ImageLoadError(f"{folder}: no DICOM image series found in this folder")
    files = _choose_series(folder, found, series)
    reader = sitk.ImageSeriesReader()
    _check_declared_size(folder, _declared_size(Path(files[0]), slices=len(files)))
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise ImageLoadError(f"{folder}: cannot read the DICOM series ({error})") from error
    return _from_sitk(image, folder, modality or _dicom_modality(Path(files[0])), [Path(f) for f in files])


def _dicom_modality(path: Path) -> str | None:
    import pydicom

    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as error:  # pydicom raises many types for a bad file
        raise ImageLoadError(f"{path}: not a readable DICOM file ({error})") from error
    if "PixelData" not in dataset and not hasattr(dataset, "Rows"):
        raise ImageLoadError(f"{path}: DICOM file holds no image (SOP class {dataset.get('SOPClassUID', '?')})")
    value = str(dataset.get("Modality", "")).upper()
    return {"CT": "CT", "MR": "MR", "US": "US", "CR": "XR", "DX": "XR", "MG": "XR", "PT": "PT"}.get(value)


def load_image(path: str | Path, modality: str | None = None, series: str | None = None) -> ImageVolume:
    """Read an image with its geometry. ``modality`` overrides what the file says or suggests;
    ``series`` picks one of several DICOM series in a folder (index or Series Instance UID)."""
    import SimpleITK as sitk

    path = Path(path)
    if modality is not None and modality not in MODALITIES:
        raise ImageLoadError(f"unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}")
    try:
        exists, is_dir = path.exists(), path.is_dir()
    except OSError as error:  # a name too long for the file system, a loop of links, no permission
        raise ImageLoadError(f"{str(path)[:200]}: cannot be opened ({error.strerror or error})") from error
    if not exists:
        raise ImageLoadError(f"{path}: no such file or folder")
    if is_dir:
        return _dicom_series(path, modality, series)
    if series is not None:
        raise ImageLoadError(f"{path}: --series chooses among the DICOM series of a folder; this is a single file")
    suffix = _suffix(path)
    if suffix in RASTER_SUFFIXES:
        return _raster(path, modality)
    if suffix in DICOM_SUFFIXES or (suffix not in VOLUME_SUFFIXES and _is_dicom_file(path)):
        file_modality = _dicom_modality(path)
        _check_declared_size(path, _declared_size(path))
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as error:
            raise ImageLoadError(f"{path}: cannot read the DICOM image ({error})") from error
        return _from_sitk(image, path, modality or file_modality, [path])
    if suffix in VOLUME_SUFFIXES:
        _check_volume_file(path, suffix)
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as error:
            raise ImageLoadError(f"{path}: cannot read the image; the file is corrupt or not {suffix} ({_first_line(error)})") from error
        return _from_sitk(image, path, modality, [])
    raise ImageLoadError(
        f"{path}: unsupported file type {suffix!r}; use PNG/JPEG, NIfTI (.nii/.nii.gz), NRRD, or DICOM (file or series folder)"
    )


def _check_declared_size(path: Path, declared: tuple[tuple[int, ...], int]) -> None:
    """Refuse an image whose header declares more voxels or bytes than are read."""
    size, bytes_per_voxel = declared
    voxels = int(np.prod([int(n) for n in size], dtype=np.float64))
    shown = " x ".join(str(int(n)) for n in size)
    if voxels > MAX_VOLUME_VOXELS or voxels * bytes_per_voxel > MAX_VOLUME_BYTES:
        raise ImageLoadError(
            f"{path}: the header declares {shown} voxels ({voxels * bytes_per_voxel / 1024**3:.1f} GiB); at most "
            f"{MAX_VOLUME_VOXELS / 1e6:.0f} million voxels and {MAX_VOLUME_BYTES / 1024**3:.0f} GiB are read. Crop or resample it first")


def _declared_size(path: Path, slices: int = 1) -> tuple[tuple[int, ...], int]:
    """(size, bytes per voxel) that an image file's header declares, read without its voxels."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise ImageLoadError(f"{path}: cannot read the image header ({_first_line(error)})") from error
    bits = re.search(r"(\d+)-bit", sitk.GetPixelIDValueAsString(reader.GetPixelID()))  # "16-bit signed integer"
    component_bytes = int(bits.group(1)) // 8 if bits else 8
    size = tuple(reader.GetSize())
    if slices > 1:
        size = size[:2] + (slices * (size[2] if len(size) > 2 else 1),)
    return size, component_bytes * reader.GetNumberOfComponents()


def _check_volume_file(path: Path, suffix: str) -> None:
    """Refuse a volume whose header declares more than is read, or more data than the file holds
    (a cut-off file would otherwise read as zeros where its slices are missing)."""
    declared = _declared_size(path)
    _check_declared_size(path, declared)
    if suffix in (".nii", ".nii.gz"):
        expected = _nifti_file_bytes(path, suffix)
        if expected is not None:
            held = _uncompressed_size(path, expected) if suffix == ".nii.gz" else path.stat().st_size
            if held is None or held < expected:
                holds = "its compressed data ends early" if held is None else f"the file holds {held}"
                raise ImageLoadError(f"{path}: the file is truncated: its header declares {expected} bytes of header and voxels, {holds}")


def _nifti_file_bytes(path: Path, suffix: str) -> int | None:
    """Header plus voxel bytes a NIfTI-1/2 file declares (None: not a NIfTI header this reads)."""
    import gzip
    import struct

    opener = gzip.open if suffix == ".nii.gz" else open
    try:
        with opener(path, "rb") as handle:
            header = handle.read(540)
    except (OSError, EOFError) as error:
        raise ImageLoadError(f"{path}: cannot read the NIfTI header ({error})") from error
    for order in "<>":
        if len(header) >= 348 and struct.unpack(order + "i", header[:4])[0] == 348:
            dims = struct.unpack(order + "8h", header[40:56])
            bitpix = struct.unpack(order + "h", header[72:74])[0]
            offset = int(struct.unpack(order + "f", header[108:112])[0])
            break
        if len(header) >= 540 and struct.unpack(order + "i", header[:4])[0] == 540:
            bitpix = struct.unpack(order + "h", header[14:16])[0]
            dims = struct.unpack(order + "8q", header[16:80])
            offset = struct.unpack(order + "q", header[168:176])[0]
            break
    else:
        return None
    if not 1 <= dims[0] <= 7 or bitpix <= 0:
        return None
    voxels = int(np.prod([max(int(d), 1) for d in dims[1:dims[0] + 1]], dtype=np.float64))
    return max(offset, 348) + voxels * bitpix // 8


def _uncompressed_size(path: Path, expected: int) -> int | None:
    """Bytes a gzip file decompresses to: its trailer's count when that agrees with ``expected``,
    else counted by decompressing; None when the compressed stream is cut off or corrupt."""
    import gzip
    import zlib

    with path.open("rb") as handle:
        handle.seek(-4, 2)
        if int.from_bytes(handle.read(4), "little") == expected % 2**32:
            return expected
    held = 0
    try:
        with gzip.open(path, "rb") as handle:
            while chunk := handle.read(1 << 22):
                held += len(chunk)
    except (OSError, EOFError, zlib.error):
        return None
    return held


def _is_dicom_file(path: Path) -> bool:
    with path.open("rb") as handle:
        handle.seek(128)
        return handle.read(4) == b"DICM"


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
