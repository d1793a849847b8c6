"""Conversation turns and propagation in the Slicer scene: volume + slice view + markups ->
coded segments, split so that the engine never runs on the GUI thread.

:class:`MIMOAssistantLogic` is a plain Python object (no Qt, no ScriptedLoadableModuleLogic)
so that it runs in the Slicer application, in Slicer's batch mode and with ``slicer-core``
in plain Python. Every turn has three steps:

1. ``prepare...`` (main thread): read the MRML scene into plain data (the slice image, its
   geometry, prompts in pixels, a copy of the voxels for propagation);
2. ``compute...`` (worker thread, see :mod:`MIMOAssistantLib.worker`): load the backend on
   first use and run the engine; touches no MRML node and honours ``cancel``;
3. ``apply...`` (main thread): add or update segments (name, colour, SNOMED CT terminology)
   as one undo step, and record the turn in the conversation.

:meth:`MIMOAssistantLogic.ask` and :meth:`MIMOAssistantLogic.propagateSegment` run the three
steps in a row for scripts and tests.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from mimo.assistant import AskResult, answer_to_segments, default_geometry, slice_image
from mimo.backend import Answer, Backend, BackendInfo, GroundedSpan, Message, SliceImage, Turn, check_cancel
from mimo.errors import BackendError
from mimo.geometry import SliceGeometry, extract_slice
from mimo.image import ImageVolume
from mimo.prompts import Prompt
from mimo.terminology import Terminology

from . import conversation as chat
from .backendconfig import LOCAL, BackendConfig, ConsentStore, createBackend
from .prompttools import centerViewsOn, promptsForSlice, segmentCenterRAS, viewDescription
from .propagation import PropagationResult, PropagationSettings, propagate
from .sceneio import (
    SlicerSceneError,
    _writeSegmentMask,
    addSegmentsToSegmentationNode,
    promptsFromMarkups,
    removeSegments,
    sliceGeometryFromSliceNode,
    volumeFromNode,
)

ProgressCallback = Callable[[str, float], None]

#: What "Label visible anatomy" asks a text-capable backend.
LABEL_ALL_QUESTION = "Segment all visible structures."
LABEL_NEEDS_TEXT = (
    "Labelling the visible anatomy needs a text-capable model (MIMO, local or on a server). "
    "LiteMedSAM only outlines what you point at: it cannot name structures. Choose the MIMO model "
    "under Model, or draw a box/point/scribble/lasso on a structure and ask about it."
)

#: Output modes for a turn's masks.
NEW, ADD, REPLACE = "new", "add", "replace"

#: Segment tag recording the annotator's review of a returned segment.
REVIEW_TAG = "MIMO.Review"


@dataclass
class SegmentBackup:
    """An existing segment as it was before a turn changed it (for undo)."""

    segmentId: str
    name: str
    color: tuple[float, float, float]
    metadata: object  # a vtkSegment holding the name, colour and every tag (terminology included)
    mask: np.ndarray  # bool (K, J, I) on the volume's grid


@dataclass
class TurnRecord:
    """What one turn did to the scene, so that it can be undone."""

    question: str
    answer: Answer | None
    segmentationNodeID: str
    segmentIds: list[str]  # segments this turn created
    createdSegmentationNode: bool
    modified: list[SegmentBackup] = field(default_factory=list)  # existing segments it changed
    volumeNodeID: str = ""
    kind: str = "answer"  # "answer" or "propagation"


@dataclass
class TurnRequest:
    """Everything the worker needs for one turn: plain data, no MRML node."""

    question: str
    image: SliceImage
    geometry: SliceGeometry
    volumeShape: tuple[int, int, int]
    prompts: list[Prompt]
    history: list[Message]
    volumeNodeID: str
    sliceNodeID: str | None = None
    view: str = ""
    promptNodeIDs: list[str] = field(default_factory=list)
    skippedPrompts: list[str] = field(default_factory=list)
    requireTextAnswers: bool = False
    #: A copy of the volume when the turn is answered on the whole volume (3D, atlas grounding).
    volume: ImageVolume | None = None


@dataclass
class TurnOutcome:
    """What the worker returns."""

    result: AskResult
    backend: str
    latency: float


@dataclass
class PropagationRequest:
    volume: ImageVolume  # a copy of the voxels
    geometry: SliceGeometry
    startMask: np.ndarray
    question: str
    settings: PropagationSettings
    volumeNodeID: str
    segmentationNodeID: str
    segmentId: str
    segmentName: str


def _hexColor(rgb) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(round(255 * float(c))) for c in rgb[:3]))


class MIMOAssistantLogic:
    """Holds a backend (created on first use), the conversation and the undo records."""

    def __init__(
        self,
        backendName: str = "litemedsam",
        backendOptions: dict[str, Any] | None = None,
        terminology: Terminology | None = None,
        settings=None,
    ):
        self.backendName = backendName
        self.backendOptions = dict(backendOptions or {})
        self.terminology = terminology
        #: Backend chosen in the GUI (None: ``backendName`` with ``backendOptions``).
        self.config: BackendConfig | None = None
        self.consent = ConsentStore(settings)
        #: CT window preset name or (level, width); None for the engine's default.
        self.window: str | tuple[float, float] | None = None
        self.history: list[Message] = []
        self.transcript: list[dict] = []
        self.turns: list[TurnRecord] = []
        #: Segments of recent answers the annotator has not accepted or rejected yet: (node ID, segment ID).
        self.pendingSegments: list[tuple[str, str]] = []
        #: The last turn's full result (slice image, geometry, volume masks); only the last is kept.
        self.lastResult: AskResult | None = None
        self.lastLatency: float | None = None
        self._backend: Backend | None = None
        self._info: BackendInfo | None = None
        self._backendLock = threading.Lock()

    # -- backend ------------------------------------------------------------------------

    @property
    def backend(self) -> Backend:
        """The backend, created on first use (this is when torch and the weights load)."""
        with self._backendLock:
            if self._backend is None:
                if self.config is not None:
                    self._backend = createBackend(self.config, self.consent)
                else:
                    from mimo.backend import create_backend

                    self._backend = create_backend(self.backendName, **self.backendOptions)
            return self._backend

    def setBackend(self, backend: Backend | None) -> None:
        """Use an existing backend (or None to create one from the configuration on next use)."""
        if self._backend is not None and self._backend is not backend:
            self._backend.close()
        self._backend = backend
        self._info = None

    def backendLoaded(self) -> bool:
        return self._backend is not None

    def configureBackend(self, config: BackendConfig) -> bool:
        """Choose the backend; the current one is closed when the choice changed. Returns True if changed."""
        config.validate()
        if config == self.config:
            return False
        self.setBackend(None)
        self.config = config
        return True

    def backendInfo(self) -> BackendInfo | None:
        """What the backend reported when it last ran (never asked here: a remote backend's
        ``info()`` is a network call, and this runs on the GUI thread)."""
        return self._info if self._backend is not None else None

    def _loadedBackend(self, cancel: threading.Event | None = None) -> Backend:
        """The backend with its info (worker thread: may load weights, wait for the engine
        process or call a server)."""
        backend = self.backend
        backend.load(cancel)
        self._info = backend.info()
        return backend

    def backendDescription(self) -> str:
        info = self.backendInfo()
        if info is not None:
            return f"{info.name} · {info.model} · {info.device}"
        if self.config is not None:
            return f"{self.config.describe()} (not loaded yet)"
        return f"{self.backendName} (not loaded yet)"

    def knownSegmentationOnly(self) -> bool:
        """True when the chosen backend is known to answer without text (before loading it)."""
        info = self.backendInfo()
        if info is not None:
            return not info.capabilities.text_answers
        config = self.config or BackendConfig(model=self.backendName)
        return config.mode == LOCAL and config.model == "litemedsam"

    # -- conversation -------------------------------------------------------------------

    def resetConversation(self) -> None:
        self.history = []
        self.transcript = []
        self.turns = []
        self.pendingSegments = []
        self.lastResult = None

    def saveConversation(self, scene) -> None:
        """Store the transcript in the scene (saved with it in .mrml / .mrb) when it changed.
        Called on every change: Slicer never invokes the scene's StartSaveEvent, so there is no
        "about to save" moment to wait for."""
        chat.saveToScene(scene, self.transcript)

    def restoreConversation(self, scene) -> int:
        """Read the transcript stored in a loaded scene; returns the number of entries."""
        self.resetConversation()
        self.transcript = chat.loadFromScene(scene)
        self.history = chat.historyFromTranscript(self.transcript)
        return len(self.transcript)

    def addNotice(self, text: str, error: bool = False) -> None:
        self.transcript.append(chat.noticeEntry(text, chat.ERROR if error else chat.NOTICE))

    def recordFailure(self, request: TurnRequest, message: str, error: bool = True) -> None:
        """A turn that ended without an answer (cancelled or failed): shown, but the scene is untouched."""
        self.transcript.append(chat.userEntry(request.question, request.view))
        self.addNotice(message, error)

    def segmentState(self, scene, span: dict) -> tuple[bool, str | None]:
        """(exists, colour) of a span's segment in ``scene`` (for rendering links)."""
        node = scene.GetNodeByID(span.get("segmentationNodeID") or "")
        if node is None or not node.IsA("vtkMRMLSegmentationNode"):
            return False, None
        segment = node.GetSegmentation().GetSegment(span.get("segmentId") or "")
        if segment is None:
            return False, None
        return True, _hexColor(segment.GetColor())

    def conversationHtml(self, scene, disclaimer: str = "") -> str:
        return chat.renderHtml(self.transcript, lambda span: self.segmentState(scene, span), disclaimer)

    # -- turns: 1. prepare (main thread) ----------------------------------------------------

    def prepareTurn(
        self,
        volumeNode,
        sliceNodeOrGeometry,
        question: str,
        markupsNodes=None,
        requireTextAnswers: bool = False,
        wholeVolume: bool = False,
    ) -> TurnRequest:
        """Read the scene for one turn. ``markupsNodes`` None: the scene's prompts drawn on the
        slice the view shows (others are listed in ``skippedPrompts``); a list: exactly those.
        ``wholeVolume``: the named structures in 3D on the whole volume (no prompts)."""
        question = (question or "").strip()
        if not question:
            raise SlicerSceneError("type a question first, e.g. 'Segment the liver'")
        volume = volumeFromNode(volumeNode)
        sliceNode = None
        if isinstance(sliceNodeOrGeometry, SliceGeometry):
            geometry = sliceNodeOrGeometry
        elif sliceNodeOrGeometry is None:
            geometry = default_geometry(volume)
        else:
            sliceNode = sliceNodeOrGeometry
            geometry = sliceGeometryFromSliceNode(sliceNode, volume)
        skipped: list[str] = []
        if wholeVolume and volume.is_2d:
            raise SlicerSceneError(f"'{volumeNode.GetName()}' is a single slice: whole-volume (3D) answers need a volume")
        if requireTextAnswers or wholeVolume:
            nodes, prompts = [], []
        elif markupsNodes is None and sliceNode is not None:
            nodes, prompts, skippedPairs = promptsForSlice(volumeNode.GetScene(), sliceNode, volume, geometry)
            skipped = [f"{node.GetName()}: {reason}" for node, reason in skippedPairs]
        else:
            nodes = list(markupsNodes or [])
            prompts = promptsFromMarkups(nodes, geometry)
        image = slice_image(volume, geometry, self.window)
        scene = volumeNode.GetScene()
        return TurnRequest(
            question=question,
            image=image,
            geometry=geometry,
            volumeShape=tuple(volume.shape),
            prompts=prompts,
            history=self._historyFor(volumeNode.GetID()),
            volumeNodeID=volumeNode.GetID(),
            sliceNodeID=sliceNode.GetID() if sliceNode is not None else None,
            view=viewDescription(scene, sliceNode) if sliceNode is not None else f"'{volumeNode.GetName()}'",
            promptNodeIDs=[node.GetID() for node in nodes if node is not None],
            skippedPrompts=skipped,
            requireTextAnswers=requireTextAnswers,
            volume=volume if wholeVolume else None,
        )

    def prepareLabelAnatomy(self, volumeNode, sliceNodeOrGeometry) -> TurnRequest:
        """"Label visible anatomy": every known structure in the view, from a text-capable model."""
        if self.knownSegmentationOnly():
            raise BackendError(LABEL_NEEDS_TEXT)
        return self.prepareTurn(volumeNode, sliceNodeOrGeometry, LABEL_ALL_QUESTION, requireTextAnswers=True)

    def _historyFor(self, volumeNodeID: str) -> list[Message]:
        """The conversation context for a turn: earlier turns on the same volume."""
        messages: list[Message] = []
        question = None
        for entry in self.transcript:
            if entry.get("role") == chat.USER:
                question = entry if entry.get("volumeNodeID", volumeNodeID) == volumeNodeID else None
            elif entry.get("role") == chat.ASSISTANT and question is not None and not entry.get("undone"):
                messages += [Message("user", question.get("text", "")), Message("assistant", entry.get("text", ""))]
                question = None
        return messages

    # -- turns: 2. compute (worker thread; no MRML) -----------------------------------------

    def computeTurn(self, request: TurnRequest, progress: ProgressCallback | None = None, cancel: threading.Event | None = None) -> TurnOutcome:
        report = progress or (lambda stage, fraction: None)
        start = time.perf_counter()
        check_cancel(cancel)
        if self.backendInfo() is None:
            report("Starting the engine and loading the model", 0.02)
        backend = self._loadedBackend(cancel)
        check_cancel(cancel)
        info = self._info
        if request.requireTextAnswers and not info.capabilities.text_answers:
            raise BackendError(LABEL_NEEDS_TEXT)

        def backendProgress(stage: str, fraction: float) -> None:
            report(stage, 0.1 + 0.8 * max(0.0, min(1.0, fraction)))

        if request.volume is not None:
            return self._computeWholeVolume(backend, info, request, report, cancel, start)
        report("Encoding the slice", 0.05)
        session = backend.open_session(request.image)
        try:
            check_cancel(cancel)
            report("Answering", 0.1)
            answer = backend.ask(session, Turn(request.question, list(request.prompts), list(request.history)), backendProgress, cancel)
        finally:
            backend.close_session(session)
        check_cancel(cancel)
        segments = answer_to_segments(answer, request.geometry, request.volumeShape, self.terminology or Terminology.default())
        report("Answer ready", 0.92)
        return TurnOutcome(
            AskResult(answer, request.geometry, request.image, segments),
            f"{info.name} · {info.model} · {info.device}",
            time.perf_counter() - start,
        )

    def _computeWholeVolume(self, backend, info, request: TurnRequest, report, cancel, start: float) -> TurnOutcome:
        """Atlas grounding of the named structures on the whole volume (in the engine)."""
        grounded = backend.ground_anatomy(request.volume, request.question, None, lambda stage, f: report(stage, 0.05 + 0.85 * f), cancel)
        check_cancel(cancel)
        spans, searchFrom = [], 0
        for index, segment in enumerate(grounded.segments):
            at = grounded.text.find(segment.name, searchFrom)
            if at >= 0:
                spans.append(GroundedSpan(segment.name, at, at + len(segment.name), index))
                searchFrom = at + len(segment.name)
        extra = {"atlas": grounded.atlas, "abstained": not grounded.segments}
        from mimo.geometry import extract_slice

        onScreen = [extract_slice(segment.mask.astype(np.uint8), request.geometry) > 0 for segment in grounded.segments]  # the slice shown
        answer = Answer(grounded.text, spans, onScreen, dict(grounded.timings), extra)
        report("Answer ready", 0.92)
        return TurnOutcome(
            AskResult(answer, request.geometry, request.image, list(grounded.segments)),
            f"{info.name} · atlas {grounded.atlas}",
            time.perf_counter() - start,
        )

    # -- turns: 3. apply (main thread) ----------------------------------------------------

    def applyTurn(
        self, request: TurnRequest, outcome: TurnOutcome, segmentationNode=None, targetSegmentId: str | None = None, mode: str = NEW, scene=None
    ):
        """Add the answer's masks to ``segmentationNode`` (a new one, aligned with the volume,
        when None) as one undo step. ``mode`` NEW: one new segment per grounded term (existing
        segments are never overwritten); ADD / REPLACE: the masks are added to / replace the
        segment ``targetSegmentId`` the user chose. Returns ``(answer, segmentIds, segmentationNode)``."""
        result = outcome.result
        if scene is None:
            scene = segmentationNode.GetScene() if segmentationNode is not None else None
        if scene is None:
            import slicer

            scene = slicer.mrmlScene
        volumeNode = scene.GetNodeByID(request.volumeNodeID)
        if volumeNode is None:
            raise SlicerSceneError("the volume this turn was about was removed from the scene; nothing was added")
        if mode not in (NEW, ADD, REPLACE):
            raise SlicerSceneError(f"unknown output mode {mode!r}")
        if mode != NEW:
            if segmentationNode is None or not targetSegmentId or segmentationNode.GetSegmentation().GetSegment(targetSegmentId) is None:
                raise SlicerSceneError("choose the segment to add to or replace (or choose 'new segment')")
            if not result.segments:
                name = segmentationNode.GetSegmentation().GetSegment(targetSegmentId).GetName()
                raise SlicerSceneError(f"the answer has no mask to write into '{name}'; the segment was left as it was")

        self._saveStateForUndo(scene, segmentationNode)
        created = segmentationNode is None and bool(result.segments)  # no mask: no new, empty segmentation
        if created:
            segmentationNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(f"{volumeNode.GetName()} MIMO"))
            if scene.GetUndoFlag():
                segmentationNode.SetUndoEnabled(True)
            segmentationNode.CreateDefaultDisplayNodes()
        modified: list[SegmentBackup] = []
        try:
            if mode == NEW:
                segmentIds = addSegmentsToSegmentationNode(segmentationNode, volumeNode, result.segments) if result.segments else []
                spanSegments = {index: segmentIds[index] for index in range(len(segmentIds))}
            else:
                segmentIds = []
                backup = self._backupSegment(segmentationNode, targetSegmentId, volumeNode)
                modified.append(backup)
                union = np.zeros(request.volumeShape, dtype=bool)
                for segment in result.segments:
                    union |= segment.mask
                _writeSegmentMask(union | backup.mask if mode == ADD else union, segmentationNode, targetSegmentId, volumeNode)
                spanSegments = {index: targetSegmentId for index in range(len(result.segments))}
        except Exception:
            if created:
                scene.RemoveNode(segmentationNode)
            raise

        answer = result.answer
        spans = []
        for span in answer.spans:
            segmentId = spanSegments.get(span.mask_index)
            if segmentId is None or segmentationNode is None:
                continue
            segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
            spans.append(
                {
                    "term": span.term,
                    "start": span.start,
                    "end": span.end,
                    "segmentationNodeID": segmentationNode.GetID(),
                    "segmentationNodeName": segmentationNode.GetName(),
                    "segmentId": segmentId,
                    "color": _hexColor(segment.GetColor()) if segment is not None else "#000000",
                }
            )
        user = chat.userEntry(request.question, request.view)
        user["volumeNodeID"] = request.volumeNodeID
        self.transcript += [user, chat.assistantEntry(answer.text, spans, outcome.backend, outcome.latency, answer.extra.get("caution"),
                                                  answer.extra.get("confidence"), bool(answer.extra.get("abstained")))]
        self.history += [Message("user", request.question), Message("assistant", answer.text)]
        nodeID = segmentationNode.GetID() if segmentationNode is not None else ""
        self.turns.append(TurnRecord(request.question, answer, nodeID, list(segmentIds), created, modified, request.volumeNodeID))
        self.pendingSegments += [(nodeID, segmentId) for segmentId in segmentIds]
        self.lastResult = result
        self.lastLatency = outcome.latency
        self.saveConversation(scene)
        return answer, segmentIds, segmentationNode

    def ask(
        self,
        volumeNode,
        sliceNodeOrGeometry,
        question: str,
        markupsNodes=(),
        segmentationNode=None,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        targetSegmentId: str | None = None,
        mode: str = NEW,
    ):
        """One whole turn on the calling thread (scripts, batch mode, tests).

        ``sliceNodeOrGeometry`` is a ``vtkMRMLSliceNode``, a :class:`mimo.geometry.SliceGeometry`
        or None (middle axial slice). Returns ``(answer, segmentIds, segmentationNode)``; errors
        caused by the input are :class:`mimo.errors.MimoError` with a message for the user.
        """
        report = progress or (lambda stage, fraction: None)
        report("Reading the volume", 0.0)
        request = self.prepareTurn(volumeNode, sliceNodeOrGeometry, question, markupsNodes)
        check_cancel(cancel)
        outcome = self.computeTurn(request, lambda stage, fraction: report(stage, max(0.01, fraction)), cancel)
        report("Adding segments", 0.95)
        result = self.applyTurn(request, outcome, segmentationNode, targetSegmentId, mode, volumeNode.GetScene())
        report("Done", 1.0)
        return result

    # -- undo, review ------------------------------------------------------------------------

    @staticmethod
    def _saveStateForUndo(scene, segmentationNode) -> None:
        """One scene undo step for the whole answer, when the application has undo switched on."""
        if scene is None or not scene.GetUndoFlag():
            return
        if segmentationNode is not None:
            segmentationNode.SetUndoEnabled(True)
        scene.SaveStateForUndo()

    @staticmethod
    def _backupSegment(segmentationNode, segmentId: str, volumeNode) -> SegmentBackup:
        import slicer

        segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode)
        mask = np.zeros(tuple(reversed(volumeNode.GetImageData().GetDimensions())), dtype=bool) if mask is None else mask > 0
        # vtkSegment cannot list its tags from Python (no GetTagNames): a metadata copy keeps them all.
        metadata = slicer.vtkSegment()
        metadata.DeepCopyMetadata(segment)
        return SegmentBackup(segmentId, segment.GetName(), tuple(segment.GetColor()), metadata, mask)

    @staticmethod
    def _restoreSegment(segmentationNode, backup: SegmentBackup, volumeNode) -> None:
        segmentation = segmentationNode.GetSegmentation()
        if segmentation.GetSegment(backup.segmentId) is None:
            segmentation.AddEmptySegment(backup.segmentId, backup.name, list(backup.color))
        _writeSegmentMask(backup.mask, segmentationNode, backup.segmentId, volumeNode)
        segmentation.GetSegment(backup.segmentId).DeepCopyMetadata(backup.metadata)  # name, colour, tags as they were

    def undoLastTurn(self, scene) -> bool:
        """Remove exactly the last turn's new segments, restore the segments it changed, and
        remove the segmentation node it created (when now empty)."""
        if not self.turns:
            return False
        turn = self.turns.pop()
        node = scene.GetNodeByID(turn.segmentationNodeID)
        if node is not None:
            removeSegments(node, turn.segmentIds)
            volumeNode = scene.GetNodeByID(turn.volumeNodeID) if turn.volumeNodeID else None
            for backup in turn.modified:
                if volumeNode is not None:
                    self._restoreSegment(node, backup, volumeNode)
            if turn.createdSegmentationNode and node.GetSegmentation().GetNumberOfSegments() == 0:
                scene.RemoveNode(node)
        self.pendingSegments = [p for p in self.pendingSegments if not (p[0] == turn.segmentationNodeID and p[1] in turn.segmentIds)]
        if turn.kind == "answer":
            for entry in reversed(self.transcript):
                if entry.get("role") == chat.ASSISTANT and not entry.get("undone"):
                    entry["undone"] = True
                    break
            self.history = self.history[:-2]
        what = "answer" if turn.kind == "answer" else "propagation"
        count = len(turn.segmentIds) + len(turn.modified)
        self.addNotice(f"Undone: the last {what} ({count} segment{'s' if count != 1 else ''} removed or restored).")
        if scene.GetNodeByID(turn.segmentationNodeID) is not None or turn.createdSegmentationNode:
            self.saveConversation(scene)
        return True

    def acceptSegment(self, scene, segmentationNodeID: str, segmentId: str) -> bool:
        node = scene.GetNodeByID(segmentationNodeID)
        segment = node.GetSegmentation().GetSegment(segmentId) if node is not None else None
        if segment is None:
            return False
        segment.SetTag(REVIEW_TAG, "accepted")
        self.pendingSegments = [p for p in self.pendingSegments if p != (segmentationNodeID, segmentId)]
        return True

    def rejectSegment(self, scene, segmentationNodeID: str, segmentId: str) -> bool:
        """Remove a returned segment the annotator rejected."""
        node = scene.GetNodeByID(segmentationNodeID)
        if node is None or node.GetSegmentation().GetSegment(segmentId) is None:
            return False
        name = node.GetSegmentation().GetSegment(segmentId).GetName()
        removeSegments(node, [segmentId])
        self.pendingSegments = [p for p in self.pendingSegments if p != (segmentationNodeID, segmentId)]
        for turn in self.turns:
            if turn.segmentationNodeID == segmentationNodeID and segmentId in turn.segmentIds:
                turn.segmentIds.remove(segmentId)
        self.addNotice(f"Rejected segment '{name}' (removed).")
        self.saveConversation(scene)
        return True

    # -- grounded-term links ------------------------------------------------------------------

    def toggleSegment(self, scene, segmentationNodeID: str, segmentId: str) -> bool | None:
        """Show a hidden segment and centre the slice views on it, or hide a shown one.
        Returns the new visibility, or None when the segment no longer exists."""
        node = scene.GetNodeByID(segmentationNodeID or "")
        if node is None or not node.IsA("vtkMRMLSegmentationNode") or node.GetSegmentation().GetSegment(segmentId) is None:
            return None
        if node.GetDisplayNode() is None:
            node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        visible = not (display.GetVisibility() and display.GetSegmentVisibility(segmentId))
        if visible:
            display.SetVisibility(True)
        display.SetSegmentVisibility(segmentId, visible)
        if visible:
            center = segmentCenterRAS(node, segmentId)
            if center is not None:
                centerViewsOn(scene, center)
        return visible

    # -- propagation ---------------------------------------------------------------------------

    def preparePropagation(self, volumeNode, sliceNode, segmentationNode, segmentId: str, settings: PropagationSettings | None = None) -> PropagationRequest:
        """Read the segment's mask on the slice the view shows (main thread)."""
        import slicer

        if segmentationNode is None or not segmentId or segmentationNode.GetSegmentation().GetSegment(segmentId) is None:
            raise SlicerSceneError("choose the segment to propagate")
        volume = volumeFromNode(volumeNode)
        geometry = sliceNode if isinstance(sliceNode, SliceGeometry) else sliceGeometryFromSliceNode(sliceNode, volume)
        mask3d = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode)
        if mask3d is None or not np.any(mask3d):
            raise SlicerSceneError("the segment is empty: segment the structure on one slice first, then propagate")
        startMask = extract_slice(np.asarray(mask3d > 0), geometry) if geometry.is_voxel_aligned else None
        if startMask is None:
            from .propagation import normalAxisOf

            normalAxisOf(geometry)  # raises the oblique-view message
        name = segmentationNode.GetSegmentation().GetSegment(segmentId).GetName()
        return PropagationRequest(
            volume=dataclasses.replace(volume, array=np.array(volume.array, copy=True)),
            geometry=geometry,
            startMask=np.asarray(startMask, dtype=bool),
            question=f"Segment the {name}",
            settings=settings or PropagationSettings(window=self.window),
            volumeNodeID=volumeNode.GetID(),
            segmentationNodeID=segmentationNode.GetID(),
            segmentId=segmentId,
            segmentName=name,
        )

    def computePropagation(self, request: PropagationRequest, progress: ProgressCallback | None = None, cancel: threading.Event | None = None) -> PropagationResult:
        """The engine part of propagation (worker thread; no MRML)."""
        report = progress or (lambda stage, fraction: None)
        if self.backendInfo() is None:
            report("Starting the engine and loading the model", 0.0)
        backend = self._loadedBackend(cancel)
        check_cancel(cancel)
        return propagate(backend, request.volume, request.geometry, request.startMask, request.question, request.settings, report, cancel)

    def applyPropagation(self, request: PropagationRequest, result: PropagationResult, scene=None) -> TurnRecord:
        """Add the propagated slices to the segment (its voxels are kept: union), one undo step."""
        import slicer

        scene = scene or slicer.mrmlScene
        segmentationNode = scene.GetNodeByID(request.segmentationNodeID)
        volumeNode = scene.GetNodeByID(request.volumeNodeID)
        if segmentationNode is None or volumeNode is None or segmentationNode.GetSegmentation().GetSegment(request.segmentId) is None:
            raise SlicerSceneError("the segment or the volume was removed while propagating; nothing was changed")
        self._saveStateForUndo(scene, segmentationNode)
        backup = self._backupSegment(segmentationNode, request.segmentId, volumeNode)
        _writeSegmentMask(backup.mask | result.mask, segmentationNode, request.segmentId, volumeNode)
        record = TurnRecord(
            f"Propagate {request.segmentName}", None, segmentationNode.GetID(), [], False, [backup], request.volumeNodeID, "propagation"
        )
        self.turns.append(record)
        slices = sorted(result.slices)
        self.addNotice(
            f"Propagated '{request.segmentName}' to {len(slices) - 1} more slice(s) "
            f"(slices {slices[0] + 1}-{slices[-1] + 1}); "
            + "; ".join(f"{'up' if d > 0 else 'down'}: {reason}" for d, reason in result.stopReasons.items())
            + "."
        )
        self.saveConversation(scene)
        return record

    def propagateSegment(self, volumeNode, sliceNode, segmentationNode, segmentId, settings=None, progress=None, cancel=None):
        """Propagation on the calling thread (scripts, tests). Returns the :class:`PropagationResult`."""
        request = self.preparePropagation(volumeNode, sliceNode, segmentationNode, segmentId, settings)
        result = self.computePropagation(request, progress, cancel)
        self.applyPropagation(request, result, volumeNode.GetScene())
        return result


__all__ = [
    "ADD",
    "LABEL_ALL_QUESTION",
    "LABEL_NEEDS_TEXT",
    "NEW",
    "REPLACE",
    "MIMOAssistantLogic",
    "PropagationRequest",
    "TurnOutcome",
    "TurnRecord",
    "TurnRequest",
]
