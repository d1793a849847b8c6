"""Reading images with their geometry: PNG/JPEG, NIfTI, NRRD, a DICOM file or a DICOM series.

Every image becomes an :class:`ImageVolume`: a numpy array indexed ``[k, j, i]`` (plus a
trailing channel axis for RGB), exactly as Slicer's ``arrayFromVolume`` returns it, and the
4x4 IJK-to-RAS matrix that places voxel centres in patient space. A 2D image is a volume
with one slice.
"""

from __future__ import annotations

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
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as pil:
            pil.load()
            if pil.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LA"):
                pil = pil.convert("RGB")
                array = np.asarray(pil)
                # Grey images stored as RGB stay grey: the model sees the same pixels either way,
                # and the modality guess must not call an ultrasound "RGB".
                if np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 0], array[..., 2]):
                    array = array[..., 0]
            elif pil.mode in ("L", "I", "I;16", "F", "1"):
                array = np.asarray(pil)
            else:
                raise ImageLoadError(f"{path}: unsupported image mode {pil.mode}")
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ImageLoadError(f"{path}: not a readable image file ({error})") from error
    is_rgb = array.ndim == 3
    array = array[None, ...]
    # The same geometry Slicer gives a 2D image it loads through ITK: 1 mm pixels, LPS axes.
    return ImageVolume(
        array=array, ijk_to_ras=LPS_TO_RAS.copy(), modality=modality or ("RGB" if is_rgb else "OT"), source=path, calibrated=False
    )


def _dicom_series(folder: Path, modality: str | None) -> ImageVolume:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    series_ids = reader.GetGDCMSeriesIDs(str(folder))
    if not series_ids:
        raise ImageLoadError(f"{folder}: no DICOM image series found in this folder")
    # Several series in one folder: take the one with the most slices, the usual image series.
    files_per_series = [reader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series_ids]
    files = max(files_per_series, key=len)
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


def load_image(path: str | Path, modality: str | None = None) -> ImageVolume:
    """Read an image with its geometry. ``modality`` overrides what the file says or suggests."""
    import SimpleITK as sitk

    path = Path(path)
    if modality is not None and modality not in MODALITIES:
        raise ImageLoadError(f"unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}")
    if not path.exists():
        raise ImageLoadError(f"{path}: no such file or folder")
    if path.is_dir():
        return _dicom_series(path, modality)
    suffix = _suffix(path)
    if suffix in RASTER_SUFFIXES:
        return _raster(path, modality)
    if suffix in DICOM_SUFFIXES or (suffix not in VOLUME_SUFFIXES and _is_dicom_file(path)):
        file_modality = _dicom_modality(path)
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as error:
            raise ImageLoadError(f"{path}: cannot read the DICOM image ({error})") from error
        return _from_sitk(image, path, modality or file_modality, [path])
    if suffix in VOLUME_SUFFIXES:
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as error:
            raise ImageLoadError(f"{path}: cannot read the image; the file is corrupt or not {suffix} ({_first_line(error)})") from error
        return _from_sitk(image, path, modality, [])
    raise ImageLoadError(
        f"{path}: unsupported file type {suffix!r}; use PNG/JPEG, NIfTI (.nii/.nii.gz), NRRD, or DICOM (file or series folder)"
    )


def _is_dicom_file(path: Path) -> bool:
    with path.open("rb") as handle:
        handle.seek(128)
        return handle.read(4) == b"DICM"


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
