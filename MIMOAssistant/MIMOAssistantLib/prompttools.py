"""Prompt markups and slice views at the MRML level (no Qt): create prompts, tie each to the
view and slice it was drawn on, pick the view the user last worked in, and its volume.

* A prompt is a markups node with the attribute ``MIMO.Prompt`` (its kind). When its first
  control point is placed it is tied to the view it was drawn in: ``MIMO.SliceNodeID`` and
  ``MIMO.SliceOffset`` (the slice offset in mm when it was drawn).
* A turn uses the visible prompts tied to the target view whose points lie on the slice the
  view shows now; the others are kept (nothing the user drew is deleted) but not sent.
* The target view is the slice view the user last interacted with: the crosshair node
  reports the view under the mouse (``GetCursorPositionXYZ``) on every move or click.
"""

from __future__ import annotations

import numpy as np
from mimo.errors import GeometryError, PromptError

from .sceneio import BRUSH_WIDTH_ATTRIBUTE, NEGATIVE_ATTRIBUTE, promptsFromMarkups, sliceGeometryFromSliceNode

PROMPT_ATTRIBUTE = "MIMO.Prompt"
SLICE_NODE_ATTRIBUTE = "MIMO.SliceNodeID"
SLICE_OFFSET_ATTRIBUTE = "MIMO.SliceOffset"

#: kind -> (markups class, default name, colour, place persistently)
PROMPT_KINDS = {
    "box": ("vtkMRMLMarkupsROINode", "MIMO box", (0.1, 0.8, 0.2), False),
    "point": ("vtkMRMLMarkupsFiducialNode", "MIMO point", (0.1, 0.8, 0.2), True),
    "negative": ("vtkMRMLMarkupsFiducialNode", "MIMO negative point", (0.9, 0.1, 0.1), True),
    "scribble": ("vtkMRMLMarkupsCurveNode", "MIMO scribble", (0.1, 0.8, 0.2), False),
    "lasso": ("vtkMRMLMarkupsClosedCurveNode", "MIMO lasso", (0.1, 0.8, 0.2), False),
}

PLACE_HINTS = {
    "box": "Click two opposite corners of the box in a slice view.",
    "point": "Click on the structure in a slice view (right-click or Esc to stop).",
    "negative": "Click on what is NOT the structure (right-click or Esc to stop).",
    "scribble": "Click along the structure; right-click to finish the scribble.",
    "lasso": "Click around the structure; right-click to close the lasso.",
}


def _nodes(scene, className: str) -> list:
    collection = scene.GetNodesByClass(className)
    return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]


def isPrompt(node) -> bool:
    return node is not None and bool(node.GetAttribute(PROMPT_ATTRIBUTE))


def promptNodes(scene, visibleOnly: bool = False) -> list:
    nodes = [node for node in _nodes(scene, "vtkMRMLMarkupsNode") if isPrompt(node)]
    if visibleOnly:
        nodes = [n for n in nodes if n.GetDisplayNode() is None or n.GetDisplayNode().GetVisibility()]
    return nodes


def createPromptNode(scene, kind: str, brushWidthMm: float | None = None):
    """A new, empty prompt node of ``kind`` (box, point, negative, scribble, lasso) with its display."""
    if kind not in PROMPT_KINDS:
        raise PromptError(f"unknown prompt tool {kind!r}; use one of {', '.join(PROMPT_KINDS)}")
    className, name, color, _ = PROMPT_KINDS[kind]
    node = scene.AddNewNodeByClass(className, scene.GenerateUniqueName(name))
    node.SetAttribute(PROMPT_ATTRIBUTE, kind)
    if kind == "negative":
        node.SetAttribute(NEGATIVE_ATTRIBUTE, "1")
    if kind == "scribble" and brushWidthMm:
        node.SetAttribute(BRUSH_WIDTH_ATTRIBUTE, f"{float(brushWidthMm):g}")
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if display is not None:
        display.SetSelectedColor(color)
        display.SetColor(color)
    return node


def startPlacing(scene, node) -> None:
    """Put the views in place mode for ``node`` (what the Markups toolbar does)."""
    kind = node.GetAttribute(PROMPT_ATTRIBUTE) or ""
    persistent = PROMPT_KINDS.get(kind, (None, None, None, False))[3]
    selection = scene.GetFirstNodeByClass("vtkMRMLSelectionNode")
    interaction = scene.GetFirstNodeByClass("vtkMRMLInteractionNode")
    if selection is None or interaction is None:
        return  # no application (batch mode): prompts are placed by code
    selection.SetReferenceActivePlaceNodeClassName(node.GetClassName())
    selection.SetActivePlaceNodeID(node.GetID())
    interaction.SetPlaceModePersistence(1 if persistent else 0)
    interaction.SetCurrentInteractionMode(interaction.Place)


def stopPlacing(scene, node=None) -> None:
    """Leave place mode (when placing ``node``, or anything when None) and turn the global
    persistence off again, so the next click in a view does not create a stray markups node."""
    interaction = scene.GetFirstNodeByClass("vtkMRMLInteractionNode")
    selection = scene.GetFirstNodeByClass("vtkMRMLSelectionNode")
    if interaction is None:
        return
    if node is not None and selection is not None and selection.GetActivePlaceNodeID() != node.GetID():
        return
    if interaction.GetCurrentInteractionMode() == interaction.Place:
        interaction.SetCurrentInteractionMode(interaction.ViewTransform)
    interaction.SetPlaceModePersistence(0)
    if selection is not None:
        selection.SetActivePlaceNodeID(None)


def tiePromptToView(node, sliceNode) -> None:
    """Record the view and slice offset the prompt was drawn on (node attributes)."""
    if node is None or sliceNode is None:
        return
    node.SetAttribute(SLICE_NODE_ATTRIBUTE, sliceNode.GetID())
    node.SetAttribute(SLICE_OFFSET_ATTRIBUTE, f"{sliceNode.GetSliceOffset():.6g}")


def promptView(scene, node):
    """(slice node, offset in mm) the prompt is tied to, or (None, None)."""
    sliceNode = scene.GetNodeByID(node.GetAttribute(SLICE_NODE_ATTRIBUTE) or "")
    try:
        offset = float(node.GetAttribute(SLICE_OFFSET_ATTRIBUTE))
    except (TypeError, ValueError):
        offset = None
    return sliceNode, offset


def jumpToPrompt(scene, node) -> bool:
    """Show the slice the prompt was drawn on in its view."""
    sliceNode, offset = promptView(scene, node)
    if sliceNode is None or offset is None:
        return False
    sliceNode.SetSliceOffset(offset)
    return True


def describePrompt(scene, node) -> str:
    kind = node.GetAttribute(PROMPT_ATTRIBUTE) or "prompt"
    sliceNode, offset = promptView(scene, node)
    where = f"{sliceNode.GetLayoutName() or sliceNode.GetName()}, {offset:.1f} mm" if sliceNode is not None and offset is not None else "not placed"
    points = node.GetNumberOfDefinedControlPoints() if hasattr(node, "GetNumberOfDefinedControlPoints") else node.GetNumberOfControlPoints()
    return f"{node.GetName()} ({kind}, {points} point{'s' if points != 1 else ''}; {where})"


def promptsForSlice(scene, sliceNode, volume, geometry=None):
    """Split the visible prompts into those drawn on the slice ``sliceNode`` shows now and the rest.

    Returns ``(nodes, prompts, skipped)``: the prompt nodes used, their engine prompts (in the
    slice's pixels) and a list of ``(node, reason)`` for the prompts not used."""
    geometry = geometry if geometry is not None else sliceGeometryFromSliceNode(sliceNode, volume)
    used, prompts, skipped = [], [], []
    tolerance = geometry.half_thickness_mm() + 1e-3
    for node in promptNodes(scene, visibleOnly=True):
        if node.GetNumberOfDefinedControlPoints() == 0:
            continue
        tiedView, offset = promptView(scene, node)
        if tiedView is not None and sliceNode is not None and tiedView.GetID() != sliceNode.GetID():
            skipped.append((node, f"drawn in the {tiedView.GetLayoutName() or tiedView.GetName()} view"))
            continue
        if offset is not None and sliceNode is not None and abs(offset - sliceNode.GetSliceOffset()) > tolerance:
            skipped.append((node, f"drawn on another slice ({offset:.1f} mm)"))
            continue
        try:
            nodePrompts = promptsFromMarkups([node], geometry)
        except (GeometryError, PromptError) as error:
            skipped.append((node, str(error)))
            continue
        used.append(node)
        prompts.extend(nodePrompts)
    return used, prompts, skipped


def clearPrompts(scene) -> int:
    """Remove every prompt node (the explicit Clear action)."""
    nodes = promptNodes(scene)
    if nodes:
        stopPlacing(scene)
    for node in nodes:
        scene.RemoveNode(node)
    return len(nodes)


# ---------------------------------------------------------------------------------------
# Slice views


def sliceNodes(scene) -> list:
    return _nodes(scene, "vtkMRMLSliceNode")


def sliceNodeByName(scene, name: str):
    for node in sliceNodes(scene):
        if name in (node.GetLayoutName(), node.GetName(), node.GetID()):
            return node
    return None


def compositeNodeOf(scene, sliceNode):
    if sliceNode is None:
        return None
    for node in _nodes(scene, "vtkMRMLSliceCompositeNode"):
        if node.GetLayoutName() == sliceNode.GetLayoutName():
            return node
    return None


def backgroundVolumeOf(scene, sliceNode):
    composite = compositeNodeOf(scene, sliceNode)
    if composite is None:
        return None
    return scene.GetNodeByID(composite.GetBackgroundVolumeID() or "")


def viewDescription(scene, sliceNode) -> str:
    """"Red: 'spleen CT', axial, 12.5 mm" for the status line and the chat."""
    if sliceNode is None:
        return "no slice view"
    volume = backgroundVolumeOf(scene, sliceNode)
    name = sliceNode.GetLayoutName() or sliceNode.GetName()
    orientation = sliceNode.GetOrientationString() if hasattr(sliceNode, "GetOrientationString") else ""
    what = f"'{volume.GetName()}'" if volume is not None else "no volume"
    return f"{name}: {what}, {orientation.lower() or 'oblique'} {sliceNode.GetSliceOffset():.1f} mm"


class ViewTracker:
    """Remembers the slice view the user last interacted with, through the crosshair node
    (which reports the view under the mouse on every move, click and scroll)."""

    def __init__(self, scene) -> None:
        self.scene = scene
        self.lastSliceNodeID: str | None = None
        self._crosshair = None
        self._tag = None
        self.attach()

    def attach(self) -> None:
        crosshair = self.scene.GetFirstNodeByClass("vtkMRMLCrosshairNode") if self.scene is not None else None
        if crosshair is self._crosshair:
            return
        self.detach()
        if crosshair is not None:
            import slicer

            self._crosshair = crosshair
            self._tag = crosshair.AddObserver(slicer.vtkMRMLCrosshairNode.CursorPositionModifiedEvent, self._onCursorMoved)

    def detach(self) -> None:
        if self._crosshair is not None and self._tag is not None:
            self._crosshair.RemoveObserver(self._tag)
        self._crosshair, self._tag = None, None

    def _onCursorMoved(self, crosshair, event) -> None:
        xyz = [0.0, 0.0, 0.0]
        sliceNode = crosshair.GetCursorPositionXYZ(xyz)
        if sliceNode is not None:
            self.lastSliceNodeID = sliceNode.GetID()

    def sliceNode(self, preferred: str | None = None):
        """The chosen view (``preferred`` layout name), else the last one used, else Red, else any."""
        if preferred:
            node = sliceNodeByName(self.scene, preferred)
            if node is not None:
                return node
        node = self.scene.GetNodeByID(self.lastSliceNodeID or "")
        if node is not None:
            return node
        withVolume = [n for n in sliceNodes(self.scene) if backgroundVolumeOf(self.scene, n) is not None]
        for candidate in (sliceNodeByName(self.scene, "Red"), *withVolume, *sliceNodes(self.scene)):
            if candidate is not None and (backgroundVolumeOf(self.scene, candidate) is not None or not withVolume):
                return candidate
        return None


def segmentCenterRAS(segmentationNode, segmentId):
    center = segmentationNode.GetSegmentCenterRAS(segmentId)
    if center is None:
        return None
    center = np.asarray(center, dtype=float)
    return center if np.all(np.isfinite(center)) else None


def centerViewsOn(scene, ras) -> int:
    """Move every slice view to show ``ras`` (RAS point) in its middle; returns the number of views."""
    count = 0
    for node in sliceNodes(scene):
        node.JumpSliceByCentering(float(ras[0]), float(ras[1]), float(ras[2]))
        count += 1
    return count
