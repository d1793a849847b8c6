"""The 2D image a slice view shows, and the way back from a 2D mask to the voxel grid.

A slice is described by :class:`SliceGeometry`: the 4x4 matrix that maps slice pixels
``(column x, row y, 0, 1)`` to volume voxel indices ``(i, j, k, 1)``, and the slice size.
Pixel coordinates follow image conventions: x to the right, y downwards, pixel centres on
integers.

Axis-aligned slices (axial, coronal, sagittal) are taken along the volume axis closest to
the anatomical direction and laid out as Slicer displays them (radiological convention:
patient left on the image's right in axial and coronal views, anterior on the left in
sagittal views, superior at the top). Their matrix is a signed permutation, so slicing and
pasting are pure indexing: exact to the voxel, whatever the spacing or axis flips.
Oblique slices (any slice-to-RAS matrix, as Slicer's slice nodes have) are resampled with
trilinear interpolation, and masks go back to the voxels whose centres lie within half a
voxel of the plane.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from .errors import GeometryError

#: Unit RAS directions of (image column, image row) as Slicer shows each view. Slicer's
#: SliceToRAS has y pointing up on screen; image rows point down, hence the sign flips.
DISPLAY_DIRECTIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "axial": ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0)),
    "coronal": ((-1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
    "sagittal": ((0.0, -1.0, 0.0), (0.0, 0.0, -1.0)),
}
AXES = tuple(DISPLAY_DIRECTIONS)


@dataclass(frozen=True)
class SliceGeometry:
    """Where a 2D slice image lies in a volume."""

    pixel_to_ijk: np.ndarray
    ijk_to_ras: np.ndarray
    shape: tuple[int, int]  # (rows, columns)
    axis: str | None = None  # "axial", "coronal", "sagittal" for axis-aligned slices, else None
    index: int | None = None  # voxel index along the stepped axis, for axis-aligned slices

    @property
    def pixel_to_ras(self) -> np.ndarray:
        return self.ijk_to_ras @ self.pixel_to_ijk

    @property
    def spacing_mm(self) -> tuple[float, float]:
        """Physical pixel size ``(row step, column step)`` in mm."""
        matrix = self.pixel_to_ras
        return float(np.linalg.norm(matrix[:3, 1])), float(np.linalg.norm(matrix[:3, 0]))

    @property
    def normal(self) -> np.ndarray:
        """Unit normal of the slice plane in RAS."""
        matrix = self.pixel_to_ras
        normal = np.cross(matrix[:3, 0], matrix[:3, 1])
        return normal / np.linalg.norm(normal)

    @property
    def is_voxel_aligned(self) -> bool:
        """True when every pixel is exactly one voxel (signed permutation, integer offset)."""
        linear = self.pixel_to_ijk[:3, :2]
        integral = np.allclose(linear, np.round(linear), atol=1e-6) and np.allclose(
            self.pixel_to_ijk[:3, 3], np.round(self.pixel_to_ijk[:3, 3]), atol=1e-6
        )
        return bool(integral and np.all(np.abs(linear).sum(axis=0).round() == 1) and np.abs(linear).sum(axis=1).max() <= 1)

    def half_thickness_mm(self) -> float:
        """Half the extent of one voxel along the slice normal: the plane's tolerance."""
        return 0.5 * float(np.abs(self.normal @ self.ijk_to_ras[:3, :3]).sum())

    def pixels_to_ras(self, points: np.ndarray) -> np.ndarray:
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        homogeneous = np.column_stack([points, np.zeros(len(points)), np.ones(len(points))])
        return (self.pixel_to_ras @ homogeneous.T).T[:, :3]

    def ras_to_pixels(self, points_ras: np.ndarray, tolerance_mm: float | None = None) -> np.ndarray:
        """RAS points on this slice -> pixel ``(x, y)``. Points off the plane are an error."""
        points_ras = np.asarray(points_ras, dtype=np.float64).reshape(-1, 3)
        if not np.all(np.isfinite(points_ras)):
            raise GeometryError("RAS coordinates must be finite numbers")
        local = np.linalg.solve(_pixel_to_local_ras(self), np.column_stack([points_ras, np.ones(len(points_ras))]).T).T
        tolerance = self.half_thickness_mm() + 1e-6 if tolerance_mm is None else tolerance_mm
        off = np.abs(local[:, 2])
        if np.any(off > tolerance):
            worst = int(np.argmax(off))
            raise GeometryError(
                f"point {np.round(points_ras[worst], 2).tolist()} (RAS) is {off[worst]:.2f} mm from the slice plane "
                f"(tolerance {tolerance:.2f} mm): it was drawn on another slice"
            )
        return local[:, :2]


def _unit_columns(ijk_to_ras: np.ndarray) -> np.ndarray:
    linear = np.asarray(ijk_to_ras, dtype=np.float64)[:3, :3]
    return linear / np.linalg.norm(linear, axis=0, keepdims=True)


def slice_axis_index(ijk_to_ras: np.ndarray, axis: str) -> int:
    """The IJK axis (0=i, 1=j, 2=k) that an axis-aligned view of ``axis`` steps through."""
    return _axis_layout(ijk_to_ras, axis)[2]


def _axis_layout(ijk_to_ras: np.ndarray, axis: str) -> tuple[tuple[int, int], tuple[int, int], int]:
    """((column axis, sign), (row axis, sign), normal axis) that best matches Slicer's display."""
    if axis not in DISPLAY_DIRECTIONS:
        raise GeometryError(f"unknown axis {axis!r}; use one of {', '.join(AXES)}")
    directions = _unit_columns(ijk_to_ras)
    column_dir, row_dir = (np.array(v) for v in DISPLAY_DIRECTIONS[axis])
    best = None
    for column_axis, row_axis, normal_axis in itertools.permutations(range(3)):
        score = abs(directions[:, column_axis] @ column_dir) + abs(directions[:, row_axis] @ row_dir)
        if best is None or score > best[0] + 1e-9:
            best = (score, column_axis, row_axis, normal_axis)
    _, column_axis, row_axis, normal_axis = best
    column_sign = 1 if directions[:, column_axis] @ column_dir >= 0 else -1
    row_sign = 1 if directions[:, row_axis] @ row_dir >= 0 else -1
    return (column_axis, column_sign), (row_axis, row_sign), normal_axis


def axis_slice(volume_shape: tuple[int, int, int], ijk_to_ras: np.ndarray, axis: str, index: int) -> SliceGeometry:
    """Geometry of the axis-aligned slice ``index`` (a voxel index along the stepped axis).

    ``volume_shape`` is ``(K, J, I)``, numpy order.
    """
    ijk_to_ras = np.asarray(ijk_to_ras, dtype=np.float64)
    column, row, normal_axis = _axis_layout(ijk_to_ras, axis)
    return voxel_slice(volume_shape, ijk_to_ras, column, row, normal_axis, index, axis)


def voxel_slice(
    volume_shape: tuple[int, int, int],
    ijk_to_ras: np.ndarray,
    column: tuple[int, int],
    row: tuple[int, int],
    normal_axis: int,
    index: int,
    axis: str | None = None,
) -> SliceGeometry:
    """The exact voxel slice ``index`` along ``normal_axis``, with image columns and rows
    stepping along ``column = (ijk axis, sign)`` and ``row = (ijk axis, sign)``."""
    (column_axis, column_sign), (row_axis, row_sign) = column, row
    counts_ijk = tuple(reversed(volume_shape))
    if not isinstance(index, (int, np.integer)) or not 0 <= index < counts_ijk[normal_axis]:
        raise GeometryError(
            f"{axis or 'voxel'} slice {index} is outside the volume: valid slices are 0..{counts_ijk[normal_axis] - 1}"
        )
    pixel_to_ijk = np.zeros((4, 4))
    pixel_to_ijk[column_axis, 0] = column_sign
    pixel_to_ijk[row_axis, 1] = row_sign
    pixel_to_ijk[normal_axis, 2] = 1.0
    pixel_to_ijk[column_axis, 3] = 0 if column_sign > 0 else counts_ijk[column_axis] - 1
    pixel_to_ijk[row_axis, 3] = 0 if row_sign > 0 else counts_ijk[row_axis] - 1
    pixel_to_ijk[normal_axis, 3] = index
    pixel_to_ijk[3, 3] = 1.0
    return SliceGeometry(pixel_to_ijk, ijk_to_ras, (counts_ijk[row_axis], counts_ijk[column_axis]), axis, int(index))


def oblique_slice(ijk_to_ras: np.ndarray, slice_to_ras: np.ndarray, shape: tuple[int, int]) -> SliceGeometry:
    """Geometry of any planar slice: ``slice_to_ras`` maps pixel ``(x, y, 0, 1)`` to RAS.

    Slicer's ``XYToRAS`` has y pointing up; convert it with :func:`slicer_xy_to_pixel_to_ras`.
    """
    slice_to_ras = np.asarray(slice_to_ras, dtype=np.float64)
    if slice_to_ras.shape != (4, 4) or not np.all(np.isfinite(slice_to_ras)):
        raise GeometryError("slice-to-RAS must be a finite 4x4 matrix")
    rows, columns = (int(v) for v in shape)
    if rows < 1 or columns < 1:
        raise GeometryError(f"slice size must be positive, got {shape}")
    in_plane = slice_to_ras[:3, :2]
    normal = np.cross(in_plane[:, 0], in_plane[:, 1])
    if np.linalg.norm(normal) < 1e-9:
        raise GeometryError("slice-to-RAS axes are parallel or zero: not a plane")
    matrix = slice_to_ras.copy()
    matrix[:3, 2] = normal / np.linalg.norm(normal)
    matrix[3] = (0, 0, 0, 1)
    pixel_to_ijk = np.linalg.inv(np.asarray(ijk_to_ras, dtype=np.float64)) @ matrix
    return SliceGeometry(pixel_to_ijk, np.asarray(ijk_to_ras, dtype=np.float64), (rows, columns))


def slicer_xy_to_pixel_to_ras(xy_to_ras: np.ndarray, rows: int) -> np.ndarray:
    """Slicer's XYToRAS (origin bottom-left, y up) -> pixel-to-RAS (origin top-left, y down)."""
    flip = np.array([[1, 0, 0, 0], [0, -1, 0, rows - 1], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=np.float64)
    return np.asarray(xy_to_ras, dtype=np.float64) @ flip


def _pixel_grid_ijk(geometry: SliceGeometry) -> np.ndarray:
    rows, columns = geometry.shape
    y, x = np.mgrid[0:rows, 0:columns]
    matrix = geometry.pixel_to_ijk
    return np.stack([matrix[a, 0] * x + matrix[a, 1] * y + matrix[a, 3] for a in range(3)])  # (3, rows, cols)


def extract_slice(array: np.ndarray, geometry: SliceGeometry, fill_value: float | None = None) -> np.ndarray:
    """The slice's pixels ``(rows, cols)`` or ``(rows, cols, channels)`` from ``array[k, j, i(, c)]``.

    Pixels outside the volume (oblique slices only) get ``fill_value``, by default the
    volume minimum (air on CT, background on MR).
    """
    ijk = _pixel_grid_ijk(geometry)
    if geometry.is_voxel_aligned:
        i, j, k = (np.rint(c).astype(np.intp) for c in ijk)
        return array[k, j, i]
    from scipy.ndimage import map_coordinates

    fill = float(np.min(array)) if fill_value is None else float(fill_value)
    coordinates = np.stack([ijk[2], ijk[1], ijk[0]])  # numpy order k, j, i
    if array.ndim == 4:
        channels = [
            map_coordinates(array[..., c].astype(np.float32), coordinates, order=1, mode="constant", cval=fill)
            for c in range(array.shape[3])
        ]
        return np.stack(channels, axis=-1)
    return map_coordinates(array.astype(np.float32), coordinates, order=1, mode="constant", cval=fill)


def paste_mask(mask: np.ndarray, geometry: SliceGeometry, volume_shape: tuple[int, int, int]) -> np.ndarray:
    """A 2D slice mask -> boolean voxel mask ``(K, J, I)`` on the volume grid."""
    mask = np.asarray(mask).astype(bool)
    if mask.shape != tuple(geometry.shape):
        raise GeometryError(f"mask shape {mask.shape} does not match the slice size {tuple(geometry.shape)}")
    volume_mask = np.zeros(volume_shape, dtype=bool)
    if not mask.any():
        return volume_mask
    if geometry.is_voxel_aligned:
        i, j, k = (np.rint(c).astype(np.intp) for c in _pixel_grid_ijk(geometry))
        volume_mask[k[mask], j[mask], i[mask]] = True
        return volume_mask
    # Oblique: visit the voxels near the mask and keep those whose centre is within half a
    # voxel of the plane and projects onto a mask pixel.
    rows, columns = np.nonzero(mask)
    corners = np.array([[x, y] for x in (columns.min() - 1, columns.max() + 1) for y in (rows.min() - 1, rows.max() + 1)])
    corners_ijk = (geometry.pixel_to_ijk @ np.column_stack([corners, np.zeros(4), np.ones(4)]).T)[:3]
    margin = 2
    counts_ijk = np.array(list(reversed(volume_shape)))
    low = np.clip(np.floor(corners_ijk.min(axis=1)).astype(int) - margin, 0, counts_ijk - 1)
    high = np.clip(np.ceil(corners_ijk.max(axis=1)).astype(int) + margin, 0, counts_ijk - 1)
    i, j, k = np.meshgrid(*(np.arange(low[a], high[a] + 1) for a in range(3)), indexing="ij")
    voxels = np.column_stack([i.ravel(), j.ravel(), k.ravel()]).astype(np.float64)
    ras = (geometry.ijk_to_ras @ np.column_stack([voxels, np.ones(len(voxels))]).T).T[:, :3]
    local = np.linalg.solve(_pixel_to_local_ras(geometry), np.column_stack([ras, np.ones(len(ras))]).T).T
    x, y = np.rint(local[:, 0]).astype(np.intp), np.rint(local[:, 1]).astype(np.intp)
    keep = (np.abs(local[:, 2]) <= geometry.half_thickness_mm() + 1e-6) & (x >= 0) & (y >= 0)
    keep &= (x < geometry.shape[1]) & (y < geometry.shape[0])
    keep[keep] = mask[y[keep], x[keep]]
    hit = voxels[keep].astype(np.intp)
    volume_mask[hit[:, 2], hit[:, 1], hit[:, 0]] = True
    return volume_mask


def _pixel_to_local_ras(geometry: SliceGeometry) -> np.ndarray:
    """Pixel-to-RAS whose third coordinate is the signed distance from the plane in mm."""
    matrix = geometry.pixel_to_ras.copy()
    matrix[:3, 2] = geometry.normal
    return matrix
