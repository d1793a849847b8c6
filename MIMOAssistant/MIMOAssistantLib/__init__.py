"""Slicer-facing logic of the MIMO Assistant module (no Qt): scene <-> engine and the turn."""

from .logic import MIMOAssistantLogic, TurnRecord
from .sceneio import (
    BRUSH_WIDTH_ATTRIBUTE,
    DEFAULT_BRUSH_WIDTH_MM,
    MODALITY_ATTRIBUTE,
    NEGATIVE_ATTRIBUTE,
    SlicerSceneError,
    addSegmentsToSegmentationNode,
    parentTransformToWorld,
    promptsFromMarkups,
    registerTerminology,
    removeSegments,
    sliceGeometryForAxis,
    sliceGeometryFromSliceNode,
    sliceNodeForMarkups,
    uniqueSegmentName,
    volumeFromNode,
)

__all__ = [
    "BRUSH_WIDTH_ATTRIBUTE",
    "DEFAULT_BRUSH_WIDTH_MM",
    "MODALITY_ATTRIBUTE",
    "NEGATIVE_ATTRIBUTE",
    "MIMOAssistantLogic",
    "SlicerSceneError",
    "TurnRecord",
    "addSegmentsToSegmentationNode",
    "parentTransformToWorld",
    "promptsFromMarkups",
    "registerTerminology",
    "removeSegments",
    "sliceGeometryForAxis",
    "sliceGeometryFromSliceNode",
    "sliceNodeForMarkups",
    "uniqueSegmentName",
    "volumeFromNode",
]
