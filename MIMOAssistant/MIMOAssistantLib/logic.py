"""One conversation turn in the Slicer scene: volume + slice view + markups -> coded segments.

:class:`MIMOAssistantLogic` is a plain Python object (no Qt, no ScriptedLoadableModuleLogic)
so that it runs in the Slicer application, in Slicer's batch mode and with ``slicer-core``
in plain Python. It reports through callbacks and never touches widgets.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mimo.assistant import AskResult, ask_volume, default_geometry
from mimo.backend import Answer, Backend, Message, check_cancel, create_backend
from mimo.geometry import SliceGeometry

from .sceneio import (
    SlicerSceneError,
    addSegmentsToSegmentationNode,
    promptsFromMarkups,
    removeSegments,
    sliceGeometryFromSliceNode,
    volumeFromNode,
)

ProgressCallback = Callable[[str, float], None]


@dataclass
class TurnRecord:
    """What one turn did to the scene, so that it can be undone."""

    question: str
    answer: Answer
    segmentationNodeID: str
    segmentIds: list[str]
    createdSegmentationNode: bool


class MIMOAssistantLogic:
    """Holds a backend (created on first use) and the conversation; runs turns on MRML nodes."""

    def __init__(self, backendName: str = "litemedsam", backendOptions: dict[str, Any] | None = None, terminology=None):
        self.backendName = backendName
        self.backendOptions = dict(backendOptions or {})
        self.terminology = terminology
        #: CT window preset name or (level, width); None for the engine's default.
        self.window: str | tuple[float, float] | None = None
        self.history: list[Message] = []
        self.turns: list[TurnRecord] = []
        #: The last turn's full result (slice image, geometry, volume masks); only the last is kept.
        self.lastResult: AskResult | None = None
        self._backend: Backend | None = None
        self._conversationVolumeID: str | None = None

    # -- backend ------------------------------------------------------------------------

    @property
    def backend(self) -> Backend:
        """The backend, created on first use (this is when torch and the weights load)."""
        if self._backend is None:
            self._backend = create_backend(self.backendName, **self.backendOptions)
        return self._backend

    def setBackend(self, backend: Backend | None) -> None:
        """Use an existing backend (or None to create one from ``backendName`` on next use)."""
        if self._backend is not None and self._backend is not backend:
            self._backend.close()
        self._backend = backend

    def backendLoaded(self) -> bool:
        return self._backend is not None

    # -- conversation -------------------------------------------------------------------

    def resetConversation(self) -> None:
        self.history = []
        self.turns = []
        self.lastResult = None
        self._conversationVolumeID = None

    def ask(
        self,
        volumeNode,
        sliceNodeOrGeometry,
        question: str,
        markupsNodes=(),
        segmentationNode=None,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ):
        """Ask ``question`` about the slice the view (or geometry) shows, with markups as prompts.

        ``sliceNodeOrGeometry`` is a ``vtkMRMLSliceNode``, a :class:`mimo.geometry.SliceGeometry`
        or None (middle axial slice). The answer's masks become new segments in
        ``segmentationNode``; a new segmentation node is created when it is None.
        Returns ``(answer, segmentIds, segmentationNode)``; ``answer.text`` is the reply.
        Errors caused by the input are :class:`mimo.errors.MimoError` with a message for the user.
        """
        report = progress or (lambda stage, fraction: None)
        question = (question or "").strip()
        if not question:
            raise SlicerSceneError("type a question first, e.g. 'Segment the liver'")
        report("Reading the volume", 0.0)
        volume = volumeFromNode(volumeNode)
        if isinstance(sliceNodeOrGeometry, SliceGeometry):
            geometry = sliceNodeOrGeometry
        elif sliceNodeOrGeometry is None:
            geometry = default_geometry(volume)
        else:
            geometry = sliceGeometryFromSliceNode(sliceNodeOrGeometry, volume)
        prompts = promptsFromMarkups(markupsNodes, geometry)
        check_cancel(cancel)

        if volumeNode.GetID() != self._conversationVolumeID:
            self.resetConversation()
            self._conversationVolumeID = volumeNode.GetID()
        if not self.backendLoaded():
            report("Loading the model", 0.02)
        backend = self.backend
        check_cancel(cancel)

        def backendProgress(stage: str, fraction: float) -> None:
            report(stage, 0.05 + 0.85 * max(0.0, min(1.0, fraction)))

        report("Encoding the slice", 0.05)
        result = ask_volume(
            backend,
            volume,
            question,
            prompts,
            geometry,
            history=list(self.history),
            window=self.window,
            terminology=self.terminology,
            progress=backendProgress,
            cancel=cancel,
        )
        check_cancel(cancel)

        report("Adding segments", 0.92)
        created = segmentationNode is None
        if created:
            scene = volumeNode.GetScene()
            segmentationNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(f"{volumeNode.GetName()} MIMO"))
            segmentationNode.CreateDefaultDisplayNodes()
        try:
            segmentIds = addSegmentsToSegmentationNode(segmentationNode, volumeNode, result.segments)
        except Exception:
            if created:
                volumeNode.GetScene().RemoveNode(segmentationNode)
            raise
        self.history += [Message("user", question), Message("assistant", result.answer.text)]
        self.turns.append(TurnRecord(question, result.answer, segmentationNode.GetID(), segmentIds, created))
        self.lastResult = result
        report("Done", 1.0)
        return result.answer, segmentIds, segmentationNode

    def undoLastTurn(self, scene) -> bool:
        """Remove the segments (and the segmentation node it created) of the last turn."""
        if not self.turns:
            return False
        turn = self.turns.pop()
        self.history = self.history[:-2]
        node = scene.GetNodeByID(turn.segmentationNodeID)
        if node is not None:
            removeSegments(node, turn.segmentIds)
            if turn.createdSegmentationNode and node.GetSegmentation().GetNumberOfSegments() == 0:
                scene.RemoveNode(node)
        return True
