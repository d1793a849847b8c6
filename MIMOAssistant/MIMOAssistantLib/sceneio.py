"""MRML scene <-> MIMO engine: volumes, slice views, markups prompts and segments.

Everything here works on real MRML nodes (inside the Slicer application or with the
``slicer-core`` package in plain Python) and imports no Qt. Coordinates are always taken in
the world (RAS) frame: a volume's parent transform is folded into its IJK-to-RAS matrix,
markups are read with ``GetNthControlPointPositionWorld``, slice views report world RAS.

Conventions (also in the module's help text):

* Fiducial points are positive prompts (include this region) unless the node has the
  attribute ``MIMO.Negative`` = ``"1"`` or the control point's label starts with ``"-"``.
* Open curves are scribbles; their brush width in mm is the node attribute
  ``MIMO.BrushWidthMm`` (default 3 mm). Closed curves are lassos. Spline curves use the
  curve as drawn on screen (interpolated points); linear curves use their control points.
* An ROI becomes the bounding box of its cross-section with the slice plane, clipped to
  the image.
* A slice view whose plane is parallel to a voxel plane of the volume gives that voxel
  slice exactly (the nearest one when the view lies between two); any other view gives an
  oblique slice with the view's own pixel grid (what is on screen), resampled trilinearly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from mimo.assistant import default_geometry, prompt_from_ras
from mimo.errors import GeometryError, ImageLoadError, MimoError, PromptError
from mimo.geometry import (
    AXES,
    DISPLAY_DIRECTIONS,
    SliceGeometry,
    axis_slice,
    oblique_slice,
    slice_axis_index,
    slicer_xy_to_pixel_to_ras,
    voxel_slice,
)
from mimo.image import ImageVolume, guess_modality
from mimo.prompts import BoxPrompt, Prompt

#: Node attributes this module reads or writes.
NEGATIVE_ATTRIBUTE = "MIMO.Negative"
BRUSH_WIDTH_ATTRIBUTE = "MIMO.BrushWidthMm"
MODALITY_ATTRIBUTE = "MIMO.Modality"
DICOM_MODALITY_ATTRIBUTE = "DICOM.Modality"
DEFAULT_BRUSH_WIDTH_MM = 3.0

#: DICOM Modality (0008,0060) -> engine modality.
DICOM_MODALITIES = {
    "CT": "CT",
    "MR": "MR",
    "US": "US",
    "CR": "XR",
    "DX": "XR",
    "MG": "XR",
    "RG": "XR",
    "XA": "XR",
    "RF": "XR",
    "IO": "XR",
    "PX": "XR",
    "PT": "PT",
    "OT": "OT",
}


class SlicerSceneError(MimoError):
    """A node in the scene cannot be used as asked (wrong type, empty, unsupported transform)."""


# ---------------------------------------------------------------------------------------
# Small VTK helpers


def _arrayFromVTKMatrix(matrix) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def _vtkMatrixFromArray(array):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r][c]))
    return matrix


def _nodeName(node) -> str:
    try:
        return f"'{node.GetName()}'"
    except AttributeError:
        return repr(node)


def parentTransformToWorld(node) -> np.ndarray:
    """The 4x4 matrix from ``node``'s local coordinates to world RAS (identity when untransformed).

    A non-linear (warping) parent transform cannot be folded into a matrix: a clear error
    asks the user to harden or remove it.
    """
    transformNode = node.GetParentTransformNode() if hasattr(node, "GetParentTransformNode") else None
    if transformNode is None:
        return np.eye(4)
    if not transformNode.IsTransformToWorldLinear():
        raise SlicerSceneError(
            f"{_nodeName(node)} is under the non-linear transform '{transformNode.GetName()}'. "
            "MIMO needs a linear geometry: harden the transform on the volume (Data module, right-click, "
            "'Harden transform') or remove it, then ask again."
        )
    import vtk

    matrix = vtk.vtkMatrix4x4()
    transformNode.GetMatrixTransformToWorld(matrix)
    return _arrayFromVTKMatrix(matrix)


# ---------------------------------------------------------------------------------------
# Volumes


def _modalityOfNode(volumeNode) -> str | None:
    """Modality recorded in the scene: ``MIMO.Modality``, ``DICOM.Modality``, or the subject hierarchy."""
    explicit = volumeNode.GetAttribute(MODALITY_ATTRIBUTE)
    if explicit:
        return explicit.strip().upper()
    values = [volumeNode.GetAttribute(DICOM_MODALITY_ATTRIBUTE)]
    try:  # DICOM import records the modality on the series item of the subject hierarchy
        import slicer

        scene = volumeNode.GetScene()
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene) if scene is not None else None
        if shNode is not None:
            itemId = shNode.GetItemByDataNode(volumeNode)
            if itemId:
                values.append(shNode.GetItemAttribute(itemId, DICOM_MODALITY_ATTRIBUTE))
    except (AttributeError, TypeError):  # no subject hierarchy in this scene: nothing recorded there
        pass
    for value in values:
        if value and value.strip().upper() in DICOM_MODALITIES:
            return DICOM_MODALITIES[value.strip().upper()]
    return None


def volumeFromNode(volumeNode, modality: str | None = None) -> ImageVolume:
    """A scalar or RGB volume node -> :class:`mimo.image.ImageVolume` in world RAS.

    The array is ``[k, j, i]`` (``[k, j, i, 3]`` for colour), a view of the node's voxels (not
    a copy): use it before the node changes. The IJK-to-RAS matrix includes the node's
    linear parent transform. ``modality`` overrides what the node records; otherwise the
    node attribute ``MIMO.Modality``, then ``DICOM.Modality`` (node or subject hierarchy),
    then a guess from the intensities (CT from Hounsfield units, RGB from colour).
    """
    if volumeNode is None:
        raise SlicerSceneError("no volume selected: choose the image to ask about")
    if not volumeNode.IsA("vtkMRMLVolumeNode"):
        raise SlicerSceneError(f"{_nodeName(volumeNode)} is a {volumeNode.GetClassName()}, not a volume")
    if volumeNode.IsA("vtkMRMLDiffusionTensorVolumeNode") or volumeNode.IsA("vtkMRMLDiffusionWeightedVolumeNode"):
        raise SlicerSceneError(f"{_nodeName(volumeNode)} is a diffusion volume; choose a scalar or colour image")
    imageData = volumeNode.GetImageData()
    if imageData is None or imageData.GetPointData() is None or imageData.GetPointData().GetScalars() is None:
        raise SlicerSceneError(f"volume {_nodeName(volumeNode)} has no voxels (empty image data)")
    from vtk.util import numpy_support

    dims = imageData.GetDimensions()
    components = imageData.GetNumberOfScalarComponents()
    if components not in (1, 3, 4):
        raise SlicerSceneError(
            f"volume {_nodeName(volumeNode)} has {components} components per voxel; MIMO reads scalar or RGB(A) images"
        )
    shape = tuple(reversed(dims)) + ((components,) if components > 1 else ())
    array = numpy_support.vtk_to_numpy(imageData.GetPointData().GetScalars()).reshape(shape)

    import vtk

    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    ijkToRAS = _arrayFromVTKMatrix(matrix)
    extent = imageData.GetExtent()
    if extent[0] or extent[2] or extent[4]:  # voxel (0,0,0) of the array is at the extent's start
        shift = np.eye(4)
        shift[:3, 3] = (extent[0], extent[2], extent[4])
        ijkToRAS = ijkToRAS @ shift
    ijkToRAS = parentTransformToWorld(volumeNode) @ ijkToRAS

    isRGB = components > 1
    if modality is None:
        modality = _modalityOfNode(volumeNode)
    if isRGB:
        if modality not in (None, "RGB", "OT", "US", "XR"):
            raise SlicerSceneError(f"colour volume {_nodeName(volumeNode)} cannot have modality {modality}")
        modality = "RGB"
    elif modality is None or modality == "RGB":
        modality = guess_modality(array, False)
    try:
        return ImageVolume(array=array, ijk_to_ras=ijkToRAS, modality=modality)
    except ImageLoadError as error:
        raise SlicerSceneError(f"volume {_nodeName(volumeNode)}: {error}") from error


def _asVolume(volume) -> ImageVolume:
    return volume if isinstance(volume, ImageVolume) else volumeFromNode(volume)


# ---------------------------------------------------------------------------------------
# Slice views


def sliceGeometryForAxis(volume, axis: str = "axial", index: int | None = None) -> SliceGeometry:
    """The axial, coronal or sagittal voxel slice ``index`` (middle slice when None) of a volume node."""
    volume = _asVolume(volume)
    if index is None:
        return default_geometry(volume, axis)
    return axis_slice(volume.shape, volume.ijk_to_ras, axis, int(index))


def _alignedGeometry(volume: ImageVolume, pixelToIJK: np.ndarray, normalAxis: int, index: int) -> SliceGeometry:
    """Exact voxel slice along ``normalAxis`` laid out like the view (for volumes whose axes
    do not map one-to-one onto the axial/coronal/sagittal layouts)."""
    inPlane = [a for a in range(3) if a != normalAxis]
    columnAxis = max(inPlane, key=lambda a: abs(pixelToIJK[a, 0]))
    rowAxis = inPlane[0] if columnAxis == inPlane[1] else inPlane[1]
    columnSign = 1 if pixelToIJK[columnAxis, 0] >= 0 else -1
    rowSign = 1 if pixelToIJK[rowAxis, 1] >= 0 else -1
    return voxel_slice(volume.shape, volume.ijk_to_ras, (columnAxis, columnSign), (rowAxis, rowSign), normalAxis, index)


def _volumeCornersRAS(volume: ImageVolume) -> np.ndarray:
    counts = tuple(reversed(volume.shape))
    corners = np.array([[i, j, k, 1.0] for i in (-0.5, counts[0] - 0.5) for j in (-0.5, counts[1] - 0.5) for k in (-0.5, counts[2] - 0.5)])
    return (volume.ijk_to_ras @ corners.T).T[:, :3]


def sliceGeometryFromSliceNode(sliceNode, volume, alignmentTolerance: float = 1e-4) -> SliceGeometry:
    """The 2D image that ``sliceNode``'s view shows of ``volume`` (a volume node or ImageVolume).

    A plane parallel to a voxel plane of the volume (within ``alignmentTolerance``, relative)
    gives the exact voxel slice: :func:`mimo.geometry.axis_slice` with the layout of the
    closest standard view, or the nearest slice when the plane lies between two. Any other
    plane gives an oblique slice on the view's pixel grid (``GetXYToRAS`` and
    ``GetDimensions``; the first slice of a lightbox view).
    """
    if sliceNode is None:
        raise SlicerSceneError("no slice view given: choose the view (Red, Yellow, Green) you drew on")
    volume = _asVolume(volume)
    columns, rows = (int(v) for v in sliceNode.GetDimensions()[:2])
    if columns < 1 or rows < 1:
        raise SlicerSceneError(f"slice view {_nodeName(sliceNode)} has no size ({columns} x {rows} pixels); show it in the layout")
    pixelToRAS = slicer_xy_to_pixel_to_ras(_arrayFromVTKMatrix(sliceNode.GetXYToRAS()), rows)
    pixelToIJK = np.linalg.solve(volume.ijk_to_ras, pixelToRAS)
    counts = tuple(reversed(volume.shape))

    for normalAxis in range(3):
        inPlane = pixelToIJK[:3, :2]
        scale = np.linalg.norm(inPlane, axis=0)
        if np.all(np.abs(inPlane[normalAxis]) <= alignmentTolerance * scale):
            position = float(pixelToIJK[normalAxis, 3])
            index = int(np.floor(position + 0.5))
            if not -0.5 <= position <= counts[normalAxis] - 0.5:
                raise GeometryError(
                    f"slice view {_nodeName(sliceNode)} lies outside the volume (voxel plane {position:.1f} of "
                    f"0..{counts[normalAxis] - 1}): scroll the view onto the image"
                )
            index = min(max(index, 0), counts[normalAxis] - 1)
            columnDir = pixelToRAS[:3, 0] / np.linalg.norm(pixelToRAS[:3, 0])
            rowDir = pixelToRAS[:3, 1] / np.linalg.norm(pixelToRAS[:3, 1])
            candidates = [name for name in AXES if slice_axis_index(volume.ijk_to_ras, name) == normalAxis]
            if candidates:
                name = max(
                    candidates,
                    key=lambda n: abs(columnDir @ np.array(DISPLAY_DIRECTIONS[n][0])) + abs(rowDir @ np.array(DISPLAY_DIRECTIONS[n][1])),
                )
                return axis_slice(volume.shape, volume.ijk_to_ras, name, index)
            return _alignedGeometry(volume, pixelToIJK, normalAxis, index)

    geometry = oblique_slice(volume.ijk_to_ras, pixelToRAS, (rows, columns))
    # The plane must cut the volume, and the view must show some of it.
    normal, origin = geometry.normal, pixelToRAS[:3, 3]
    distances = (_volumeCornersRAS(volume) - origin) @ normal
    if distances.min() > 0 or distances.max() < 0:
        raise GeometryError(f"slice view {_nodeName(sliceNode)} does not cross the volume: move the view onto the image")
    step = max(1, min(rows, columns) // 64)
    y, x = np.mgrid[0:rows:step, 0:columns:step]
    ijk = geometry.pixel_to_ijk[:3, :2] @ np.stack([x.ravel(), y.ravel()]) + geometry.pixel_to_ijk[:3, 3:4]
    inside = np.all((ijk >= -0.5) & (ijk <= np.array(counts)[:, None] - 0.5), axis=0)
    if not inside.any():
        raise GeometryError(f"slice view {_nodeName(sliceNode)} shows no part of the volume: pan or zoom out to see the image")
    return geometry


def sliceNodeForMarkups(sliceNodes: Iterable, markupsNodes: Iterable, volume) -> object | None:
    """The first slice node whose plane holds every control point of ``markupsNodes`` (the view the
    user drew in), or None. Helps a caller that does not know which view was used."""
    volume = _asVolume(volume)
    points = [p for node in _asList(markupsNodes) for p in _controlPointsWorld(node)]
    if not points:
        return None
    points = np.asarray(points)
    for sliceNode in _asList(sliceNodes):
        try:
            geometry = sliceGeometryFromSliceNode(sliceNode, volume)
            geometry.ras_to_pixels(points)
        except MimoError:
            continue
        return sliceNode
    return None


# ---------------------------------------------------------------------------------------
# Markups -> prompts


def _asList(nodes) -> list:
    if nodes is None:
        return []
    if hasattr(nodes, "GetClassName"):
        return [nodes]
    return [node for node in nodes if node is not None]


def _definedIndices(node) -> list[int]:
    import slicer

    defined = slicer.vtkMRMLMarkupsNode.PositionDefined
    return [i for i in range(node.GetNumberOfControlPoints()) if node.GetNthControlPointPositionStatus(i) == defined]


def _controlPointsWorld(node) -> np.ndarray:
    points = np.zeros((0, 3))
    indices = _definedIndices(node)
    if indices:
        points = np.zeros((len(indices), 3))
        for row, index in enumerate(indices):
            node.GetNthControlPointPositionWorld(index, points[row])
    return points


def _curvePointsWorld(node) -> np.ndarray:
    """What a curve looks like on screen: control points for linear curves, the interpolated
    curve for splines."""
    controlPoints = _controlPointsWorld(node)
    import slicer

    if len(controlPoints) < 2 or node.GetCurveType() == slicer.vtkCurveGenerator.CURVE_TYPE_LINEAR_SPLINE:
        return controlPoints
    curve = node.GetCurvePointsWorld()
    if curve is None or curve.GetNumberOfPoints() < 2:
        return controlPoints
    from vtk.util import numpy_support

    return numpy_support.vtk_to_numpy(curve.GetData()).astype(np.float64).reshape(-1, 3)


def _roiCornersWorld(roiNode) -> np.ndarray:
    center = np.zeros(3)
    roiNode.GetCenterWorld(center)
    size = np.zeros(3)
    roiNode.GetSizeWorld(size)
    axes = []
    for getter in (roiNode.GetXAxisWorld, roiNode.GetYAxisWorld, roiNode.GetZAxisWorld):
        axis = np.zeros(3)
        getter(axis)
        axes.append(axis / (np.linalg.norm(axis) or 1.0))
    signs = np.array([[sx, sy, sz] for sx in (-0.5, 0.5) for sy in (-0.5, 0.5) for sz in (-0.5, 0.5)])
    return center + (signs * size) @ np.array(axes)


_BOX_EDGES = [(a, b) for a in range(8) for b in range(a + 1, 8) if (a ^ b).bit_count() == 1]


def _roiSectionWorld(roiNode, geometry: SliceGeometry) -> np.ndarray:
    """Points of the ROI box's cross-section with the slice plane (corners within the slice's
    half thickness count as on it, so a flat ROI drawn in the view works)."""
    corners = _roiCornersWorld(roiNode)
    normal, origin = geometry.normal, geometry.pixel_to_ras[:3, 3]
    distances = (corners - origin) @ normal
    tolerance = geometry.half_thickness_mm()
    section = [corner - distance * normal for corner, distance in zip(corners, distances) if abs(distance) <= tolerance]
    for a, b in _BOX_EDGES:
        if distances[a] * distances[b] < 0:
            t = distances[a] / (distances[a] - distances[b])
            section.append(corners[a] + t * (corners[b] - corners[a]))
    if not section:
        nearest = float(np.min(np.abs(distances)))
        raise PromptError(
            f"ROI {_nodeName(roiNode)} does not cross this slice (nearest corner {nearest:.1f} mm away): "
            "it was drawn on another slice"
        )
    return np.asarray(section)


def _clipBox(box: BoxPrompt, shape: tuple[int, int], name: str) -> BoxPrompt:
    rows, columns = shape
    x0, x1 = max(box.x0, -0.5), min(box.x1, columns - 0.5)
    y0, y1 = max(box.y0, -0.5), min(box.y1, rows - 0.5)
    if x1 <= x0 or y1 <= y0:
        raise PromptError(f"ROI {name} lies outside the image on this slice")
    return BoxPrompt(float(x0), float(y0), float(x1), float(y1))


def _brushWidthMm(node) -> float:
    text = node.GetAttribute(BRUSH_WIDTH_ATTRIBUTE)
    if not text:
        return DEFAULT_BRUSH_WIDTH_MM
    try:
        width = float(text)
    except ValueError:
        width = float("nan")
    if not np.isfinite(width) or width <= 0:
        raise PromptError(f"curve {_nodeName(node)}: attribute {BRUSH_WIDTH_ATTRIBUTE}={text!r} is not a positive width in mm")
    return width


def promptsFromMarkups(nodes, geometry: SliceGeometry) -> list[Prompt]:
    """Markups nodes -> engine prompts in the pixel coordinates of ``geometry``.

    ROI -> box, fiducials -> one point each (see module docstring for negatives), open
    curve -> scribble, closed curve -> lasso. Control points still being placed (preview)
    are ignored; a node without any placed point gives no prompt. A prompt off the slice
    plane raises :class:`mimo.errors.GeometryError` ("drawn on another slice").
    """
    prompts: list[Prompt] = []
    for node in _asList(nodes):
        name = _nodeName(node)
        if node.IsA("vtkMRMLMarkupsROINode"):
            if not _definedIndices(node):
                continue
            box = prompt_from_ras("box", _roiSectionWorld(node, geometry), geometry)
            prompts.append(_clipBox(box, geometry.shape, name))
        elif node.IsA("vtkMRMLMarkupsClosedCurveNode"):
            points = _curvePointsWorld(node)
            if len(points):
                prompts.append(prompt_from_ras("lasso", points, geometry))
        elif node.IsA("vtkMRMLMarkupsCurveNode"):
            points = _curvePointsWorld(node)
            if len(points):
                prompts.append(prompt_from_ras("scribble", points, geometry, width_mm=_brushWidthMm(node)))
        elif node.IsA("vtkMRMLMarkupsFiducialNode"):
            nodeNegative = node.GetAttribute(NEGATIVE_ATTRIBUTE) == "1"
            for index in _definedIndices(node):
                point = np.zeros(3)
                node.GetNthControlPointPositionWorld(index, point)
                negative = nodeNegative or (node.GetNthControlPointLabel(index) or "").startswith("-")
                prompts.append(prompt_from_ras("point", point[None, :], geometry, positive=not negative))
        else:
            raise PromptError(
                f"{name} is a {node.GetClassName()}; MIMO takes ROI (box), point list, open curve (scribble) "
                "and closed curve (lasso) markups"
            )
    return prompts


# ---------------------------------------------------------------------------------------
# Segments -> segmentation node


def uniqueSegmentName(segmentation, name: str) -> str:
    """``name``, or ``name (2)``, ``name (3)``... when the segmentation already has it."""
    existing = {segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())}
    if name not in existing:
        return name
    number = 2
    while f"{name} ({number})" in existing:
        number += 1
    return f"{name} ({number})"


def _writeSegmentMask(mask: np.ndarray, segmentationNode, segmentId: str, volumeNode) -> None:
    """``slicer.util.updateSegmentBinaryLabelmapFromArray``, but with the temporary labelmap
    under the volume's parent transform, so that the mask lands on the volume's voxels in
    the world whatever transforms the volume and the segmentation have."""
    import slicer
    import vtk

    scene = segmentationNode.GetScene()
    labelmapNode = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__mimo_temp__")
    try:
        matrix = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(matrix)
        labelmapNode.SetIJKToRASMatrix(matrix)
        labelmapNode.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
        slicer.util.updateVolumeFromArray(labelmapNode, np.ascontiguousarray(mask, dtype=np.uint8))
        segmentIds = vtk.vtkStringArray()
        segmentIds.InsertNextValue(segmentId)
        if not slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelmapNode, segmentationNode, segmentIds):
            raise SlicerSceneError(f"could not write segment {segmentId!r} into {_nodeName(segmentationNode)}")
    finally:
        scene.RemoveNode(labelmapNode)


def addSegmentsToSegmentationNode(segmentationNode, volumeNode, segments: Sequence) -> list[str]:
    """Add each :class:`mimo.segments.Segment` as a new segment; returns the new segment IDs.

    Existing segments are never overwritten: a name already present becomes ``name (2)``.
    Each segment gets the name, the terminology colour and the Slicer terminology tag of
    its entry. A segmentation without segments takes the volume's geometry (and parent
    transform) as its reference; a mask must be on ``volumeNode``'s voxel grid.
    """
    import slicer

    if segmentationNode is None or not segmentationNode.IsA("vtkMRMLSegmentationNode"):
        raise SlicerSceneError("no segmentation node to add the result to")
    if volumeNode is None or isinstance(volumeNode, ImageVolume) or volumeNode.GetImageData() is None:
        raise SlicerSceneError("addSegmentsToSegmentationNode needs the volume node the masks were computed on")
    dims = tuple(reversed(volumeNode.GetImageData().GetDimensions()))
    for segment in segments:
        if tuple(segment.mask.shape) != dims:
            raise SlicerSceneError(f"segment {segment.name!r} has shape {segment.mask.shape}, the volume {dims}")
    segmentation = segmentationNode.GetSegmentation()
    if segmentation.GetNumberOfSegments() == 0:
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        if segmentationNode.GetTransformNodeID() is None and volumeNode.GetTransformNodeID() is not None:
            segmentationNode.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
    if segmentationNode.GetDisplayNode() is None:
        segmentationNode.CreateDefaultDisplayNodes()

    tagName = slicer.vtkSegment.GetTerminologyEntryTagName()
    added: list[str] = []
    try:
        for segment in segments:
            name = uniqueSegmentName(segmentation, segment.name)
            color = [float(c) / 255.0 for c in segment.entry.color]
            segmentId = segmentation.AddEmptySegment("", name, color)
            if not segmentId:
                raise SlicerSceneError(f"could not add segment {name!r} (segmentation converter rules missing?)")
            added.append(segmentId)
            _writeSegmentMask(segment.mask, segmentationNode, segmentId, volumeNode)
            vtkSegment = segmentation.GetSegment(segmentId)
            vtkSegment.SetName(name)
            vtkSegment.SetColor(*color)
            vtkSegment.SetTag(tagName, segment.entry.to_slicer_string())
    except Exception:
        removeSegments(segmentationNode, added)
        raise
    return added


def registerTerminology(terminologyLogic, directory, terminology=None) -> str:
    """Make Slicer's terminology logic know the engine's codes (so the Segment Editor shows
    and edits the terminology of MIMO segments). Writes ``*.term.json`` into ``directory``
    (a user cache folder) once; returns the terminology context name."""
    from pathlib import Path

    from mimo.terminology import SEGMENTATION_CONTEXT, Terminology

    terminology = terminology or Terminology.default()
    context = getattr(terminology, "context", SEGMENTATION_CONTEXT)
    if terminologyLogic.IsTerminologyContextLoaded(context):
        return context
    path = Path(directory) / "SegmentationCategoryTypeModifier-MIMOAssistant.term.json"
    terminology.write_term_json(path)
    loaded = terminologyLogic.LoadTerminologyFromFile(str(path))
    if not loaded:
        raise SlicerSceneError(f"Slicer could not load the MIMO terminology from {path}")
    return loaded


def removeSegments(segmentationNode, segmentIds: Iterable[str]) -> None:
    """Remove the given segments (e.g. to undo :func:`addSegmentsToSegmentationNode`); unknown IDs are ignored."""
    segmentation = segmentationNode.GetSegmentation()
    for segmentId in list(segmentIds):
        if segmentation.GetSegment(segmentId) is not None:
            segmentation.RemoveSegment(segmentId)
