"""Tests of mimo.output: segmentation files that Slicer, slicerio, SimpleITK and highdicom read back."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from mimo.errors import OutputError
from mimo.image import ImageVolume, load_image
from mimo.output import (
    nifti_sidecars,
    read_label_png,
    write_overlay_png,
    write_segmentation,
)
from mimo.segments import Segment
from mimo.terminology import Terminology

from conftest import SHARED_DATA  # noqa: E402

CT3SLICE = SHARED_DATA / "volumes" / "dcmqi_ct3slice"

# Anisotropic voxels, axes permuted and flipped: i runs along +S (1.3 mm), j along -A (0.7 mm), k along -R (2.5 mm).
IJK_TO_RAS = np.array(
    [
        [0.0, 0.0, -2.5, 10.25],
        [0.0, -0.7, 0.0, 20.5],
        [1.3, 0.0, 0.0, -30.125],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def entry(term: str):
    return Terminology.default().lookup(term)


@pytest.fixture
def volume():
    rng = np.random.default_rng(0)
    return ImageVolume(rng.integers(-1000, 1000, size=(5, 7, 9)).astype(np.int16), IJK_TO_RAS, "CT")


def box(shape, k, j, i):
    mask = np.zeros(shape, dtype=bool)
    mask[k, j, i] = True
    return mask


def test_terminology_entries_used_here_have_the_codes_under_test():
    assert entry("left kidney").modifier is not None  # type modifier (laterality)
    lesion = entry("left breast lesion")
    assert lesion.region is not None and lesion.region_modifier is not None  # anatomic region + modifier


@pytest.fixture
def segments(volume):
    """Four segments; 'left kidney' overlaps 'liver' in two voxels; label values not 1..n."""
    liver = box(volume.shape, slice(1, 4), slice(1, 5), slice(2, 7))
    kidney = box(volume.shape, slice(3, 5), slice(0, 2), slice(0, 3))
    kidney[3, 1, 2] = kidney[3, 2, 2] = True  # (3, 1, 2) and (3, 2, 2) are inside the liver box
    spleen = box(volume.shape, slice(0, 1), slice(5, 7), slice(6, 9))
    lesion = box(volume.shape, slice(4, 5), slice(5, 7), slice(7, 9))
    return [
        Segment(1, "liver", entry("liver"), liver),
        Segment(2, "left kidney", entry("left kidney"), kidney),
        Segment(5, "spleen", entry("spleen"), spleen),
        Segment(6, "left breast lesion", entry("left breast lesion"), lesion),
    ]


def code_list(code):
    return [code.scheme, code.value, code.meaning]


def no_temp_files(folder: Path) -> bool:
    return not any(p.name.startswith(".mimo-tmp-") for p in folder.iterdir())


# --------------------------------------------------------------------------------------------
# .seg.nrrd


def test_seg_nrrd_round_trip_with_slicerio(tmp_path, volume, segments):
    import slicerio

    path = write_segmentation(tmp_path / "out" / "result.seg.nrrd", volume, segments)
    assert path == tmp_path / "out" / "result.seg.nrrd" and path.is_file()
    assert no_temp_files(path.parent)

    seg = slicerio.read_segmentation(str(path))
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ seg["ijkToLPS"]
    np.testing.assert_allclose(ras, IJK_TO_RAS, atol=1e-9)
    assert seg["masterRepresentation"] == "Binary labelmap"
    assert [s["name"] for s in seg["segments"]] == ["liver", "left kidney", "spleen", "left breast lesion"]
    # Overlap is kept: the kidney is in a second layer (4D labelmap).
    assert seg["voxels"].ndim == 4 and seg["voxels"].shape == (2, 9, 7, 5)
    for written, read in zip(segments, seg["segments"]):
        assert read["labelValue"] == written.label
        assert [round(c * 255) for c in read["color"]] == list(written.entry.color)
        term = read["terminology"]
        assert term["category"] == code_list(written.entry.category)
        assert term["type"] == code_list(written.entry.type)
        if written.entry.modifier is None:
            assert "typeModifier" not in term
        else:
            assert term["typeModifier"] == code_list(written.entry.modifier)
        if written.entry.region is None:
            assert "anatomicRegion" not in term
        else:
            assert term["anatomicRegion"] == code_list(written.entry.region)
            assert term["anatomicRegionModifier"] == code_list(written.entry.region_modifier)
        mask = slicerio.segment_mask(seg, read["id"]).transpose(2, 1, 0)  # [i, j, k] -> [k, j, i]
        np.testing.assert_array_equal(mask, written.mask)

    header = path.read_bytes()[:6000].decode("latin-1")
    assert "kinds: list domain domain domain" in header
    assert "Segment1_Tags:=TerminologyEntry:" + segments[1].entry.to_slicer_string() + "|" in header
    assert "Segmentation_ContainedRepresentationNames:=Binary labelmap|" in header


def test_seg_nrrd_without_overlap_is_3d_and_16bit_labels(tmp_path, volume, segments):
    import slicerio

    kidney = segments[1].mask.copy()
    kidney[3, 1, 2] = kidney[3, 2, 2] = False
    segs = [segments[0], Segment(300, "left kidney", segments[1].entry, kidney)]
    path = write_segmentation(tmp_path / "a.seg.nrrd", volume, segs)
    seg = slicerio.read_segmentation(str(path))
    assert seg["voxels"].ndim == 3 and seg["voxels"].dtype == np.uint16
    assert [s["labelValue"] for s in seg["segments"]] == [1, 300]
    assert [s["layer"] for s in seg["segments"]] == [0, 0]
    np.testing.assert_array_equal(seg["voxels"].transpose(2, 1, 0), segs[0].mask * 1 + kidney * 300)


@pytest.fixture(scope="module")
def slicer_mrml():
    slicer = pytest.importorskip("slicer", reason="slicer-core (Slicer's MRML in Python) is not installed")
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
    factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())
    return slicer


def test_seg_nrrd_read_by_slicer(tmp_path, volume, segments, slicer_mrml):
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    slicer = slicer_mrml
    path = write_segmentation(tmp_path / "result.seg.nrrd", volume, segments)
    scene = slicer.vtkMRMLScene()
    node = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(node)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == len(segments)
    for index, written in enumerate(segments):
        segment = segmentation.GetNthSegment(index)
        assert segment.GetName() == written.name
        assert segment.GetLabelValue() == written.label
        np.testing.assert_allclose(segment.GetColor(), np.array(written.entry.color) / 255.0, atol=1e-6)
        tag = vtk.reference("")
        assert segment.GetTag("TerminologyEntry", tag)
        assert str(tag) == written.entry.to_slicer_string()

        labelmap = segment.GetRepresentation("Binary labelmap")
        matrix = vtk.vtkMatrix4x4()
        labelmap.GetImageToWorldMatrix(matrix)
        ijk_to_ras = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
        np.testing.assert_allclose(ijk_to_ras, volume.ijk_to_ras, atol=1e-4)
        i0, i1, j0, j1, k0, k1 = labelmap.GetExtent()
        assert (i0, j0, k0) == (0, 0, 0) and (k1 + 1, j1 + 1, i1 + 1) == volume.shape
        voxels = vtk_to_numpy(labelmap.GetPointData().GetScalars()).reshape(volume.shape)
        np.testing.assert_array_equal(voxels == written.label, written.mask)


# --------------------------------------------------------------------------------------------
# NIfTI + label tables


def test_nifti_label_map_geometry_and_tables(tmp_path, volume, segments, caplog):
    import SimpleITK as sitk

    with caplog.at_level(logging.WARNING, logger="mimo.output"):
        path = write_segmentation(tmp_path / "labels.nii.gz", volume, segments)
    assert "2 voxels belong to more than one segment" in caplog.text
    assert no_temp_files(tmp_path)

    image = sitk.ReadImage(str(path))
    assert image.GetPixelID() == sitk.sitkUInt8
    loaded = load_image(path)
    np.testing.assert_allclose(loaded.ijk_to_ras, IJK_TO_RAS, atol=1e-4)
    expected = np.zeros(volume.shape, dtype=np.uint8)
    for s in segments:  # later segments win where they overlap
        expected[s.mask] = s.label
    np.testing.assert_array_equal(loaded.array, expected)
    assert loaded.array[3, 1, 2] == 2  # overlap voxel: kidney (listed later) wins

    sidecars = nifti_sidecars(path)
    assert sidecars["json"].name == "labels.label.json"
    table = json.loads(sidecars["json"].read_text())
    assert table["labelmap"] == "labels.nii.gz" and table["overlapping_voxels"] == 2
    for row, s in zip(table["labels"], segments):
        assert row["value"] == s.label and row["name"] == s.name
        assert row["color"] == list(s.entry.color)
        assert row["type"] == {"scheme": s.entry.type.scheme, "value": s.entry.type.value, "meaning": s.entry.type.meaning}
        assert row["category"]["value"] == s.entry.category.value
        assert row["slicer_terminology"] == s.entry.to_slicer_string()
        assert row["region"] == (s.entry.region.to_dict() if s.entry.region else None)
        assert row["voxel_count"] == int(np.count_nonzero(expected == s.label))

    lines = sidecars["ctbl"].read_text().splitlines()
    assert "0 Background 0 0 0 0" in lines
    r, g, b = segments[1].entry.color
    assert f"2 left_kidney {r} {g} {b} 255" in lines


def test_nifti_tables_read_by_slicer(tmp_path, volume, segments, slicer_mrml):
    slicer = slicer_mrml
    path = write_segmentation(tmp_path / "labels.nii", volume, segments)
    sidecars = nifti_sidecars(path)
    scene = slicer.vtkMRMLScene()
    for key in ("ctbl", "csv"):
        table = slicer.vtkMRMLColorTableNode()
        scene.AddNode(table)
        storage = slicer.vtkMRMLColorTableStorageNode()
        scene.AddNode(storage)
        storage.SetFileName(str(sidecars[key]))
        assert storage.ReadData(table) == 1, key
        for s in segments:
            assert table.GetColorName(s.label) == s.name
            rgba = [0.0] * 4
            table.GetColor(s.label, rgba)
            np.testing.assert_allclose(rgba, [*(np.array(s.entry.color) / 255.0), 1.0], atol=1e-6)
        if key == "csv":
            for s in segments:  # Slicer's string here: no context names, one more (empty) field
                fields = table.GetTerminologyAsString(s.label).split("~")
                expected = s.entry.to_slicer_string().split("~")
                assert [fields[i] for i in (1, 2, 3, 5, 6)] == [expected[i] for i in (1, 2, 3, 5, 6)]
            kidney, lesion = segments[1].entry, segments[3].entry
            assert table.GetTerminologyTypeModifier(2).GetCodeValue() == kidney.modifier.value
            assert table.GetTerminologyRegion(6).GetCodeValue() == lesion.region.value
            assert table.GetTerminologyRegionModifier(6).GetCodeValue() == lesion.region_modifier.value


def test_nifti_uint16_when_labels_exceed_255(tmp_path, volume, segments):
    import SimpleITK as sitk

    segs = [segments[0], Segment(1000, "spleen", segments[2].entry, segments[2].mask)]
    path = write_segmentation(tmp_path / "big.nii.gz", volume, segs)
    image = sitk.ReadImage(str(path))
    assert image.GetPixelID() == sitk.sitkUInt16
    array = sitk.GetArrayFromImage(image)
    assert set(np.unique(array)) == {0, 1, 1000}
    np.testing.assert_array_equal(array == 1000, segments[2].mask)


# --------------------------------------------------------------------------------------------
# PNG


@pytest.fixture
def volume_2d():
    return ImageVolume(np.zeros((1, 6, 8), dtype=np.uint8), np.diag([-1.0, -1.0, 1.0, 1.0]), "OT")


def test_png_label_image(tmp_path, volume_2d):
    a = box(volume_2d.shape, 0, slice(0, 2), slice(0, 3))
    b = box(volume_2d.shape, 0, slice(3, 6), slice(5, 8))
    path = write_segmentation(tmp_path / "labels.png", volume_2d, [Segment(1, "liver", entry("liver"), a), Segment(2, "spleen", entry("spleen"), b)])
    labels = read_label_png(path)
    assert labels.dtype == np.uint8 and labels.shape == (6, 8)
    np.testing.assert_array_equal(labels, a[0] * 1 + b[0] * 2)
    from PIL import Image

    with Image.open(path) as image:
        assert image.mode == "L" and image.size == (8, 6)


def test_png_16bit_when_labels_exceed_255(tmp_path, volume_2d):
    a = box(volume_2d.shape, 0, slice(0, 2), slice(0, 3))
    path = write_segmentation(tmp_path / "labels.png", volume_2d, [Segment(256, "liver", entry("liver"), a)])
    labels = read_label_png(path)
    assert labels.dtype == np.uint16
    np.testing.assert_array_equal(labels, a[0] * 256)


def test_png_needs_2d_input(tmp_path, volume, segments):
    with pytest.raises(OutputError, match="2D input.*5 slices"):
        write_segmentation(tmp_path / "labels.png", volume, segments)
    assert not any(tmp_path.iterdir())


def test_overlay_png(tmp_path):
    from PIL import Image

    rgb = np.full((10, 12, 3), 100, dtype=np.uint8)
    mask = np.zeros((10, 12), dtype=bool)
    mask[2:7, 3:9] = True
    path = write_overlay_png(tmp_path / "overlay.png", rgb, [mask], [(255, 0, 0)], outline=True, alpha=0.5)
    with Image.open(path) as image:
        out = np.asarray(image.convert("RGB"))
    assert out.shape == (10, 12, 3)
    np.testing.assert_array_equal(out[0, 0], [100, 100, 100])  # outside: unchanged
    np.testing.assert_array_equal(out[2, 3], [255, 0, 0])  # border: full colour
    np.testing.assert_array_equal(out[4, 5], [178, 50, 50])  # inside: 50 % blend
    write_overlay_png(path, rgb, [], [])  # a preview: replaced by default
    with Image.open(path) as image:
        np.testing.assert_array_equal(np.asarray(image.convert("RGB")), rgb)
    with pytest.raises(OutputError, match="already exists"):
        write_overlay_png(path, rgb, [mask], [(255, 0, 0)], overwrite=False)
    with pytest.raises(OutputError, match="mask 0 has shape"):
        write_overlay_png(tmp_path / "bad.png", rgb, [mask[:5]], [(255, 0, 0)])


# --------------------------------------------------------------------------------------------
# DICOM SEG


def _write_ct_series(folder: Path, z_positions) -> None:
    """A small CT series built from pydicom's CT_small.dcm; file names not in slice order."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    series, study, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    folder.mkdir(parents=True)
    for number, z in enumerate(z_positions):
        ds = base.copy()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_of_reference
        ds.ImagePositionPatient = [-158.1, -179.0, z]
        ds.SliceLocation = z
        ds.InstanceNumber = number + 1
        pixels = ds.pixel_array.copy()
        pixels[:] = 100 * number
        ds.PixelData = pixels.tobytes()
        ds.save_as(folder / f"image{number}.dcm", enforce_file_format=True)


def _read_seg(path: Path, volume: ImageVolume, n_segments: int):
    import highdicom as hd
    import pydicom

    seg = hd.seg.segread(path)
    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in volume.dicom_files]
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=list(range(1, n_segments + 1)), combine_segments=False
    )
    return seg, pixels.astype(bool)


@pytest.mark.parametrize("overlap", [False, True], ids=["label-array", "overlapping"])
def test_dicom_seg_generated_series(tmp_path, overlap):
    import highdicom as hd
    import pydicom

    _write_ct_series(tmp_path / "ct", [10.0, 0.0, 5.0])
    volume = load_image(tmp_path / "ct")
    assert volume.shape == (3, 128, 128)
    liver = box(volume.shape, 0, slice(10, 20), slice(30, 60))
    liver[2, 50:60, 5:9] = True
    kidney = box(volume.shape, 1, slice(0, 40), slice(0, 40))
    if overlap:
        kidney[0, 15, 40] = True
    empty = np.zeros(volume.shape, dtype=bool)
    kidney_entry = entry("left kidney")
    segments = [
        Segment(1, "liver", entry("liver"), liver),
        Segment(4, "left kidney", kidney_entry, kidney),
        Segment(9, "spleen", entry("spleen"), empty),
        Segment(2, "left breast lesion", entry("left breast lesion"), box(volume.shape, 2, slice(100, 110), slice(100, 128))),
    ]
    path = write_segmentation(tmp_path / "out" / "seg.dcm", volume, segments)
    seg, pixels = _read_seg(path, volume, 4)
    assert seg.SegmentationType == "BINARY"
    assert pixels.shape == (3, 128, 128, 4)
    for number, written in enumerate(segments):
        np.testing.assert_array_equal(pixels[..., number], written.mask)
        description = seg.get_segment_description(number + 1)
        assert description.segment_label == written.name
        assert description.segmented_property_type.value == written.entry.type.value
        assert description.segmented_property_type.scheme_designator == written.entry.type.scheme
        assert description.segmented_property_category.value == written.entry.category.value
        assert description.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
        assert description.algorithm_identification[0].AlgorithmName == "MIMOAssistant"
        colour = hd.color.CIELabColor.from_dicom_value(description.RecommendedDisplayCIELabValue).to_rgb(clip=True)
        assert np.abs(np.subtract(colour, written.entry.color)).max() <= 2  # 16-bit CIELab rounding
    item = seg.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0]
    assert item.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == kidney_entry.modifier.value
    assert "AnatomicRegionSequence" not in seg.SegmentSequence[1]
    lesion = entry("left breast lesion")
    region = seg.SegmentSequence[3].AnatomicRegionSequence[0]
    assert (region.CodingSchemeDesignator, region.CodeValue) == (lesion.region.scheme, lesion.region.value)
    assert region.AnatomicRegionModifierSequence[0].CodeValue == lesion.region_modifier.value
    source = pydicom.dcmread(volume.dicom_files[0], stop_before_pixels=True)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID


@pytest.mark.skipif(not (CT3SLICE / "ct-3slice").is_dir(), reason=f"shared data not found at {CT3SLICE} (set MIMO_SHARED_DATA)")
def test_dicom_seg_real_ct_matches_dcmqi_reference(tmp_path):
    import highdicom as hd
    import nrrd
    import pydicom

    volume = load_image(CT3SLICE / "ct-3slice")
    assert volume.shape == (3, 512, 512)
    voxels, header = nrrd.read(str(CT3SLICE / "liver_seg.nrrd"))  # [i, j, k], same grid as the CT
    np.testing.assert_allclose(header["space origin"], (np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.ijk_to_ras)[:3, 3], atol=1e-3)
    liver = voxels.transpose(2, 1, 0) != 0
    path = write_segmentation(tmp_path / "liver.dcm", volume, [Segment(1, "liver", entry("liver"), liver)])
    seg, pixels = _read_seg(path, volume, 1)
    np.testing.assert_array_equal(pixels[..., 0], liver)
    assert seg.get_segment_description(1).segmented_property_type.value == entry("liver").type.value
    # dcmqi's SEG of the same liver, indexed by the same source instances, agrees frame by frame.
    reference = hd.seg.segread(CT3SLICE / "liver.dcm")
    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in volume.dicom_files]
    expected = reference.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=[1], combine_segments=False, ignore_spatial_locations=True
    )
    np.testing.assert_array_equal(pixels[..., 0], expected[..., 0].astype(bool))


def test_dicom_seg_needs_dicom_input(tmp_path, volume, segments):
    with pytest.raises(OutputError, match="DICOM SEG needs a DICOM input"):
        write_segmentation(tmp_path / "seg.dcm", volume, segments)
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------------------------
# Errors and file handling


@pytest.mark.parametrize("name", ["result.nrrd", "result.txt", "result.mha", "result", ".seg.nrrd"])
def test_unsupported_suffix(tmp_path, volume, segments, name):
    with pytest.raises(OutputError, match=r"\.seg\.nrrd, \.nii\.gz, \.nii, \.png, \.dcm"):
        write_segmentation(tmp_path / name, volume, segments)


@pytest.mark.parametrize("name", ["a.seg.nrrd", "a.nii.gz", "a.dcm"])
def test_existing_file_is_not_overwritten(tmp_path, volume, segments, name):
    target = tmp_path / name
    target.write_bytes(b"precious")
    if name == "a.dcm":
        _write_ct_series(tmp_path / "ct", [0.0, 5.0])
        volume = load_image(tmp_path / "ct")
        segments = [Segment(1, "liver", entry("liver"), box(volume.shape, 0, slice(0, 4), slice(0, 4)))]
    with pytest.raises(OutputError, match=f"{name}: file already exists"):
        write_segmentation(target, volume, segments)
    assert target.read_bytes() == b"precious"
    assert no_temp_files(tmp_path)
    write_segmentation(target, volume, segments, overwrite=True)
    assert target.read_bytes() != b"precious"
    assert no_temp_files(tmp_path)


def test_existing_nifti_sidecar_blocks_the_write(tmp_path, volume, segments):
    sidecar = tmp_path / "labels.label.json"
    sidecar.write_text("{}")
    with pytest.raises(OutputError, match="labels.label.json: file already exists"):
        write_segmentation(tmp_path / "labels.nii.gz", volume, segments)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.label.json"]
    assert sidecar.read_text() == "{}"


def test_failed_write_leaves_nothing(tmp_path, volume, segments, monkeypatch):
    import slicerio

    def broken(file, segmentation, **kwargs):
        Path(file).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(slicerio, "write_segmentation", broken)
    target = tmp_path / "a.seg.nrrd"
    with pytest.raises(OutputError, match="disk full"):
        write_segmentation(target, volume, segments)
    assert not any(tmp_path.iterdir())


def test_folder_as_target(tmp_path, volume, segments):
    (tmp_path / "x.seg.nrrd").mkdir()
    with pytest.raises(OutputError, match="is a folder"):
        write_segmentation(tmp_path / "x.seg.nrrd", volume, segments, overwrite=True)


def test_invalid_segments(tmp_path, volume, segments):
    target = tmp_path / "a.seg.nrrd"
    with pytest.raises(OutputError, match="no segments to write"):
        write_segmentation(target, volume, [])
    wrong = Segment(3, "liver", segments[0].entry, np.zeros((5, 7, 8), dtype=bool))
    with pytest.raises(OutputError, match=r"'liver': mask shape \(5, 7, 8\) does not match the image grid \(5, 7, 9\)"):
        write_segmentation(target, volume, [wrong])
    duplicate = Segment(1, "other", segments[1].entry, segments[1].mask)
    with pytest.raises(OutputError, match="same label 1"):
        write_segmentation(target, volume, [segments[0], duplicate])
    for label in (0, -2, 1.5, True, 70000):
        bad = Segment(label, "liver", segments[0].entry, segments[0].mask)
        with pytest.raises(OutputError, match="label must be"):
            write_segmentation(target, volume, [bad])
    assert not any(tmp_path.iterdir())
