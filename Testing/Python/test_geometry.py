"""Slice geometry: exact axis-aligned slicing, oblique resampling, the way back to voxels."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from mimo.errors import GeometryError
from mimo.geometry import AXES, axis_slice, extract_slice, oblique_slice, paste_mask, slicer_xy_to_pixel_to_ras
from mimo.image import LPS_TO_RAS


def rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    angle = np.deg2rad(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def ijk_to_ras(direction_lps: np.ndarray, spacing, origin_lps) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = np.asarray(direction_lps) * np.asarray(spacing)[None, :]
    matrix[:3, 3] = origin_lps
    return LPS_TO_RAS @ matrix


GEOMETRIES = {
    "lps-identity": (np.eye(3), (0.8, 0.8, 5.0)),
    "flipped-i-and-k": (np.diag([-1.0, 1.0, -1.0]), (0.7, 1.1, 3.0)),
    "permuted-sagittal-acquisition": (np.array([[0.0, 0, 1], [1, 0, 0], [0, 1, 0]]), (1.0, 1.0, 2.5)),
    "rotated-12-degrees": (rotation(np.array([1.0, 0.3, 0.2]), 12.0), (0.9, 0.9, 4.0)),
}


@pytest.fixture(params=sorted(GEOMETRIES))
def volume(request):
    direction, spacing = GEOMETRIES[request.param]
    rng = np.random.default_rng(0)
    array = rng.normal(size=(7, 11, 13)).astype(np.float32)  # (K, J, I)
    return array, ijk_to_ras(direction, spacing, (10.0, -20.0, 30.0))


@pytest.mark.parametrize("axis", AXES)
def test_axis_slice_round_trip_is_exact(volume, axis):
    array, matrix = volume
    counts = tuple(reversed(array.shape))
    geometry = axis_slice(array.shape, matrix, axis, 0)
    stepped = int(np.argmax(np.abs(geometry.pixel_to_ijk[:3, 2])))
    for index in range(counts[stepped]):
        geometry = axis_slice(array.shape, matrix, axis, index)
        assert geometry.is_voxel_aligned
        pixels = extract_slice(array, geometry)
        assert pixels.shape == geometry.shape
        # Every pixel is one voxel, and the voxel at pixel (x, y) is where pixel_to_ijk says.
        for x, y in [(0, 0), (geometry.shape[1] - 1, geometry.shape[0] - 1), (2, 1)]:
            i, j, k = np.rint(geometry.pixel_to_ijk @ [x, y, 0, 1])[:3].astype(int)
            assert pixels[y, x] == array[k, j, i]
        mask = pixels > 0.3
        back = paste_mask(mask, geometry, array.shape)
        assert back.sum() == mask.sum()
        np.testing.assert_array_equal(extract_slice(back, geometry), mask)


def test_axial_slice_of_a_standard_ct_is_the_stored_slice():
    """An LPS-identity CT (the usual DICOM layout) shows array[k] as is, as Slicer shows it."""
    array = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    matrix = ijk_to_ras(np.eye(3), (0.7, 0.7, 2.0), (0, 0, 0))
    geometry = axis_slice(array.shape, matrix, "axial", 2)
    np.testing.assert_array_equal(extract_slice(array, geometry), array[2])
    column_dir, row_dir = (geometry.pixel_to_ras[:3, c] / np.linalg.norm(geometry.pixel_to_ras[:3, c]) for c in (0, 1))
    np.testing.assert_allclose(column_dir, [-1, 0, 0])  # image right = patient left
    np.testing.assert_allclose(row_dir, [0, -1, 0])  # image down = posterior
    assert geometry.spacing_mm == pytest.approx((0.7, 0.7))


def test_coronal_and_sagittal_follow_slicer_display_with_anisotropic_spacing():
    array = np.zeros((4, 5, 6), dtype=np.float32)
    matrix = ijk_to_ras(np.eye(3), (0.7, 0.8, 5.0), (0, 0, 0))
    coronal = axis_slice(array.shape, matrix, "coronal", 1)
    sagittal = axis_slice(array.shape, matrix, "sagittal", 3)
    assert coronal.shape == (4, 6) and sagittal.shape == (4, 5)
    assert coronal.spacing_mm == pytest.approx((5.0, 0.7))
    assert sagittal.spacing_mm == pytest.approx((5.0, 0.8))
    # Superior at the top: row direction points inferior in both.
    assert coronal.pixel_to_ras[2, 1] < 0 and sagittal.pixel_to_ras[2, 1] < 0
    # Sagittal: image right = posterior, as Slicer's sagittal view.
    assert sagittal.pixel_to_ras[1, 0] < 0


def test_rgb_volume_slices_keep_channels():
    array = np.random.default_rng(1).integers(0, 255, size=(1, 9, 12, 3), dtype=np.uint8)
    geometry = axis_slice(array.shape[:3], LPS_TO_RAS, "axial", 0)
    np.testing.assert_array_equal(extract_slice(array, geometry), array[0])


def test_ras_pixel_round_trip_and_off_plane_error(volume):
    array, matrix = volume
    geometry = axis_slice(array.shape, matrix, "axial", 3)
    pixels = np.array([[0.0, 0.0], [3.25, 7.5], [12.0, 6.0]])
    ras = geometry.pixels_to_ras(pixels)
    np.testing.assert_allclose(geometry.ras_to_pixels(ras), pixels, atol=1e-9)
    off = ras + geometry.normal * (geometry.half_thickness_mm() + 1.0)
    with pytest.raises(GeometryError, match="from the slice plane"):
        geometry.ras_to_pixels(off)


def test_out_of_range_slice_and_unknown_axis_are_clear_errors():
    with pytest.raises(GeometryError, match="valid slices are 0..6"):
        axis_slice((7, 11, 13), np.eye(4), "axial", 7)
    with pytest.raises(GeometryError, match="unknown axis"):
        axis_slice((7, 11, 13), np.eye(4), "transverse", 0)


def _sitk_image(array, matrix):
    image = sitk.GetImageFromArray(array)
    lps = np.linalg.inv(LPS_TO_RAS) @ matrix
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps[:3, :3] / spacing).ravel().tolist())
    image.SetOrigin(lps[:3, 3].tolist())
    return image


def test_oblique_slice_equals_simpleitk_resample():
    rng = np.random.default_rng(2)
    array = rng.normal(size=(20, 24, 28)).astype(np.float32)
    matrix = ijk_to_ras(np.eye(3), (1.0, 1.2, 2.0), (5.0, 3.0, -7.0))
    centre = (matrix @ [14, 12, 10, 1])[:3]
    rotate = rotation(np.array([1.0, 0.5, 0.0]), 25.0)
    rows, cols, step = 15, 17, 0.9
    pixel_to_ras = np.eye(4)
    pixel_to_ras[:3, 0] = rotate @ [-step, 0, 0]
    pixel_to_ras[:3, 1] = rotate @ [0, -step, 0]
    pixel_to_ras[:3, 2] = rotate @ [0, 0, 1]
    pixel_to_ras[:3, 3] = centre - pixel_to_ras[:3, 0] * cols / 2 - pixel_to_ras[:3, 1] * rows / 2
    geometry = oblique_slice(matrix, pixel_to_ras, (rows, cols))
    assert not geometry.is_voxel_aligned
    ours = extract_slice(array, geometry, fill_value=0.0)

    reference = sitk.Image(cols, rows, 1, sitk.sitkFloat32)
    plane_lps = np.linalg.inv(LPS_TO_RAS) @ geometry.pixel_to_ras
    axes = plane_lps[:3, :3] / np.linalg.norm(plane_lps[:3, :3], axis=0)
    reference.SetDirection(axes.ravel().tolist())
    reference.SetSpacing([step, step, 1.0])
    reference.SetOrigin(plane_lps[:3, 3].tolist())
    theirs = sitk.GetArrayFromImage(sitk.Resample(_sitk_image(array, matrix), reference, sitk.Transform(), sitk.sitkLinear, 0.0))[0]
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_oblique_mask_goes_back_to_voxels_on_the_plane():
    array = np.zeros((30, 30, 30), dtype=np.float32)
    matrix = ijk_to_ras(np.eye(3), (1.0, 1.0, 1.5), (0, 0, 0))
    rotate = rotation(np.array([0.0, 1.0, 0.3]), 20.0)
    pixel_to_ras = np.eye(4)
    pixel_to_ras[:3, 0], pixel_to_ras[:3, 1] = rotate @ [-1, 0, 0], rotate @ [0, -1, 0]
    pixel_to_ras[:3, 3] = (matrix @ [15, 15, 15, 1])[:3] - pixel_to_ras[:3, 0] * 10 - pixel_to_ras[:3, 1] * 10
    geometry = oblique_slice(matrix, pixel_to_ras, (20, 20))
    mask = np.zeros((20, 20), dtype=bool)
    mask[5:15, 4:16] = True
    voxels = paste_mask(mask, geometry, array.shape)
    assert voxels.sum() >= mask.sum()
    # Every painted voxel centre lies within half a voxel of the plane and projects into the mask.
    k, j, i = np.nonzero(voxels)
    ras = (matrix @ np.column_stack([i, j, k, np.ones(len(i))]).T).T[:, :3]
    distance = (ras - geometry.pixel_to_ras[:3, 3]) @ geometry.normal
    assert np.abs(distance).max() <= geometry.half_thickness_mm() + 1e-6
    # Sampling the painted voxels back on the plane recovers the mask almost everywhere.
    again = extract_slice(voxels.astype(np.float32), geometry, fill_value=0.0) > 0.25
    assert (again & mask).sum() / mask.sum() > 0.95
    assert (again & ~mask).sum() <= 0.1 * mask.sum()


def test_slicer_xy_to_ras_conversion_flips_rows():
    xy_to_ras = np.eye(4)
    xy_to_ras[:3, 3] = (100.0, 50.0, 0.0)
    pixel_to_ras = slicer_xy_to_pixel_to_ras(xy_to_ras, rows=10)
    np.testing.assert_allclose(pixel_to_ras @ [0, 0, 0, 1], xy_to_ras @ [0, 9, 0, 1])
    np.testing.assert_allclose(pixel_to_ras @ [3, 9, 0, 1], xy_to_ras @ [3, 0, 0, 1])
