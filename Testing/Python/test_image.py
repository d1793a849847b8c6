"""Reading images with their geometry, and clear errors for what cannot be read."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import SimpleITK as sitk
from fixtures import write_dicom_series
from PIL import Image
from pydicom.data import get_testdata_file

from mimo.errors import ImageLoadError
from mimo.image import LPS_TO_RAS, ImageVolume, load_image
from mimo.intensity import to_display_rgb


def test_png_grey_and_rgb(tmp_path):
    grey = np.arange(12 * 20, dtype=np.uint8).reshape(12, 20)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    volume = load_image(tmp_path / "grey.png")
    assert volume.shape == (1, 12, 20) and not volume.is_rgb and not volume.calibrated
    np.testing.assert_array_equal(volume.array[0], grey)
    np.testing.assert_array_equal(volume.ijk_to_ras, LPS_TO_RAS)

    rgb = np.random.default_rng(0).integers(0, 255, (10, 14, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    volume = load_image(tmp_path / "rgb.png")
    assert volume.is_rgb and volume.modality == "RGB"
    np.testing.assert_array_equal(volume.array[0], rgb)
    np.testing.assert_array_equal(to_display_rgb(volume.array[0], volume.modality), rgb)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_volume_geometry_is_kept(tmp_path, suffix):
    array = (np.random.default_rng(1).normal(size=(5, 6, 7)) * 300).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.7, 0.9, 3.0))
    image.SetOrigin((12.0, -30.0, 55.0))
    image.SetDirection((-1.0, 0, 0, 0, 0, 1, 0, 1, 0))
    sitk.WriteImage(image, str(tmp_path / f"v{suffix}"))
    volume = load_image(tmp_path / f"v{suffix}")
    np.testing.assert_array_equal(volume.array, array)
    expected_lps = np.eye(4)
    expected_lps[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    expected_lps[:3, 3] = image.GetOrigin()
    np.testing.assert_allclose(volume.ijk_to_ras, LPS_TO_RAS @ expected_lps, atol=1e-5)
    assert volume.spacing == pytest.approx((0.7, 0.9, 3.0), abs=1e-5)


def test_dicom_file_and_series(tmp_path):
    single = load_image(get_testdata_file("CT_small.dcm"))
    assert single.modality == "CT" and single.shape == (1, 128, 128) and single.is_dicom
    paths = write_dicom_series(tmp_path / "series", slices=3)
    series = load_image(tmp_path / "series")
    assert series.shape == (3, 128, 128) and series.modality == "CT"
    assert [p.name for p in series.dicom_files] == [p.name for p in paths]
    assert series.spacing[2] == pytest.approx(5.0)
    np.testing.assert_array_equal(series.array[2] - series.array[0], 20)


def test_colour_ultrasound_dicom_keeps_its_modality():
    volume = load_image(get_testdata_file("US1_UNCR.dcm"))
    assert volume.is_rgb and volume.modality == "US" and volume.shape == (1, 480, 640)


def test_ct_window_and_mr_percentiles():
    hu = np.array([[-1000, -160, 40, 240, 3000]], dtype=np.int16)
    assert to_display_rgb(hu, "CT")[0, :, 0].tolist() == [0, 0, 128, 255, 255]
    assert to_display_rgb(hu, "CT", "lung")[0, 0, 0] < to_display_rgb(hu, "CT", "lung")[0, 1, 0]
    mr = np.linspace(0, 1000, 1000).reshape(10, 100)
    mr[0, 0] = 1e6  # one hot pixel must not crush the contrast
    grey = to_display_rgb(mr, "MR")[..., 0]
    assert grey.max() == 255 and np.median(grey) == pytest.approx(128, abs=3)


def test_missing_file(tmp_path):
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image(tmp_path / "nothing.nii.gz")


def test_corrupt_nifti(tmp_path):
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(gzip.compress(b"this is not a nifti header" * 10))
    with pytest.raises(ImageLoadError, match="corrupt"):
        load_image(path)


def test_4d_volume_is_refused(tmp_path):
    image = sitk.GetImageFromArray(np.zeros((2, 3, 4, 5), dtype=np.float32), isVector=False)
    sitk.WriteImage(image, str(tmp_path / "4d.nii.gz"))
    with pytest.raises(ImageLoadError, match="4D images"):
        load_image(tmp_path / "4d.nii.gz")


def test_unsupported_suffix_and_not_an_image(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ImageLoadError, match="unsupported file type"):
        load_image(tmp_path / "notes.txt")
    (tmp_path / "fake.png").write_text("not a png")
    with pytest.raises(ImageLoadError, match="not a readable image"):
        load_image(tmp_path / "fake.png")


def test_invalid_geometry_is_refused():
    with pytest.raises(ImageLoadError, match="singular"):
        ImageVolume(np.zeros((1, 4, 4)), np.zeros((4, 4)))
