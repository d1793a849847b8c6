"""The chat panel's behaviour: reads the widgets, calls :class:`MIMOAssistantLogic`, shows results.

Shared by the Slicer module (PythonQt widgets loaded with ``slicer.util.loadUI``) and the
offscreen tests (PySide6 widgets loaded with QUiLoader): every Qt property is read through
:mod:`MIMOAssistantLib.qtcompat`. Turns and propagation run on a worker thread
(:class:`MIMOAssistantLib.worker.BackgroundTask`); a QTimer polls its queue, so the GUI keeps
processing events while the model works, and MRML changes happen on the main thread only.
"""

from __future__ import annotations

import logging

from mimo.errors import BackendError, MimoError
from slicer.util import VTKObservationMixin

from . import conversation as chat
from . import qtcompat as q
from .backendconfig import CONFIG_KEY, LOCAL, REMOTE, BackendConfig, consentQuestion, missingPackages, normalizeUrl
from .logic import ADD, NEW, REPLACE, MIMOAssistantLogic
from .prompttools import (
    PLACE_HINTS,
    ViewTracker,
    backgroundVolumeOf,
    clearPrompts,
    createPromptNode,
    describePrompt,
    isPrompt,
    jumpToPrompt,
    promptNodes,
    promptsForSlice,
    sliceNodes,
    startPlacing,
    stopPlacing,
    tiePromptToView,
    viewDescription,
)
from .propagation import PropagationSettings
from .sceneio import sliceNodeForMarkups
from .worker import CANCELLED, DONE, ERROR, PROGRESS, BackgroundTask

logger = logging.getLogger(__name__)

DISCLAIMER = "Research and education use only; not for clinical decisions."
POLL_INTERVAL_MS = 50
#: Seconds of each poll spent waiting for the worker with the GIL released (see BackgroundTask.poll).
WORKER_LEND_S = 0.01
OUTPUT_MODES = (NEW, ADD, REPLACE)
LOCAL_MODELS = ("litemedsam", "mimo")


class MIMOAssistantPanel(VTKObservationMixin):
    """Behaviour of the MIMO Assistant panel (the module widget delegates to it).

    ``confirm(title, message) -> bool`` asks the user (modal dialog by default);
    ``installer(requirements: list[str])`` installs missing packages (``slicer.util.pip_install``
    in Slicer)."""

    def __init__(self, uiWidget, ui, scene, logic: MIMOAssistantLogic | None = None, settings=None, confirm=None, installer=None):
        VTKObservationMixin.__init__(self)
        self.uiWidget = uiWidget
        self.ui = ui
        self.scene = scene
        self.settings = settings if settings is not None else q.settings()
        self.logic = logic or MIMOAssistantLogic(settings=self.settings)
        self.logic.consent.settings = self.settings
        self.confirm = confirm or (lambda title, message: q.confirm(self.uiWidget, title, message))
        self.installer = installer
        self.tracker = ViewTracker(scene)
        self.task: BackgroundTask | None = None
        self.taskKind = ""
        self.taskRequest = None
        self.taskTarget: dict = {}
        self.timer = q.makeTimer(POLL_INTERVAL_MS, self.poll)
        # Prompt edits (dragging a point fires many events) refresh the prompt list once, a moment later.
        self.promptTimer = q.makeTimer(150, self.refreshPrompts)
        self.promptTimer.setSingleShot(True)
        self._updatingGui = False

        if hasattr(uiWidget, "setMRMLScene"):
            uiWidget.setMRMLScene(scene)
        self._connect()
        self._restoreBackendSettings()
        self.addObserver(scene, scene.EndImportEvent, self.onSceneLoaded)
        self.addObserver(scene, scene.EndCloseEvent, self.onSceneClosed)
        self.addObserver(scene, scene.NodeRemovedEvent, self.onNodeRemoved)
        if not self.logic.transcript:
            self.logic.restoreConversation(scene)
        self.refreshAll()

    # -- wiring ------------------------------------------------------------------------------

    def _connect(self) -> None:
        ui = self.ui
        q.connect(ui.sendButton, "clicked(bool)", lambda *args: self.onSend())
        q.connect(ui.questionLineEdit, "returnPressed()", self.onSend)
        q.connect(ui.stopButton, "clicked(bool)", lambda *args: self.onStop())
        q.connect(ui.labelAnatomyButton, "clicked(bool)", lambda *args: self.onLabelAnatomy())
        q.connect(ui.copyAnswerButton, "clicked(bool)", lambda *args: self.onCopyAnswer())
        q.connect(ui.undoButton, "clicked(bool)", lambda *args: self.onUndo())
        q.connect(ui.newConversationButton, "clicked(bool)", lambda *args: self.onNewConversation())
        q.connect(ui.conversationBrowser, "anchorClicked(QUrl)", self.onLinkClicked)
        for kind, button in (
            ("box", ui.boxButton),
            ("scribble", ui.scribbleButton),
            ("lasso", ui.lassoButton),
            ("point", ui.pointButton),
            ("negative", ui.negativePointButton),
        ):
            q.connect(button, "clicked(bool)", lambda *args, kind=kind: self.onPromptTool(kind))
        q.connect(ui.clearPromptsButton, "clicked(bool)", lambda *args: self.onClearPrompts())
        q.connect(ui.removePromptButton, "clicked(bool)", lambda *args: self.onRemovePrompt())
        q.connect(ui.promptList, "itemDoubleClicked(QListWidgetItem*)", self.onPromptDoubleClicked)
        q.connect(ui.sliceViewComboBox, "currentIndexChanged(int)", lambda *args: self.refreshTarget())
        q.connect(ui.segmentationSelector, "currentNodeChanged(vtkMRMLNode*)", lambda *args: self.onSegmentationChanged())
        q.connect(ui.outputModeComboBox, "currentIndexChanged(int)", lambda *args: self.updateButtons())
        q.connect(ui.targetSegmentComboBox, "currentIndexChanged(int)", lambda *args: self.updateButtons())
        q.connect(ui.propagateButton, "clicked(bool)", lambda *args: self.onPropagate())
        q.connect(ui.acceptButton, "clicked(bool)", lambda *args: self.onReview(accept=True))
        q.connect(ui.rejectButton, "clicked(bool)", lambda *args: self.onReview(accept=False))
        q.connect(ui.backendModeComboBox, "currentIndexChanged(int)", lambda *args: self.onBackendSettingsChanged())
        q.connect(ui.localModelComboBox, "currentIndexChanged(int)", lambda *args: self.onBackendSettingsChanged())
        q.connect(ui.deviceComboBox, "currentIndexChanged(int)", lambda *args: self.onBackendSettingsChanged())
        q.connect(ui.modelPathLineEdit, "editingFinished()", self.onBackendSettingsChanged)
        q.connect(ui.serverUrlLineEdit, "editingFinished()", self.onBackendSettingsChanged)
        q.connect(ui.browseModelButton, "clicked(bool)", lambda *args: self.onBrowseModel())
        q.connect(ui.revokeConsentButton, "clicked(bool)", lambda *args: self.onRevokeConsent())

    def cleanup(self) -> None:
        """Module reload or application exit: stop the running turn, wait for its worker (it sees
        the cancel at its next check) and release the model, so that nothing of the old module
        keeps running or holding memory."""
        if self.task is not None and self.task.running:
            self.task.cancel()
            self.task.wait(timeout=10.0)
        self.logic.setBackend(None)
        self.timer.stop()
        self.promptTimer.stop()
        self.tracker.detach()
        self.removeObservers()

    # -- scene events --------------------------------------------------------------------------

    def onSceneLoaded(self, caller=None, event=None) -> None:
        self.tracker.attach()
        if self.logic.transcript:
            # A scene imported into the working one (Add Data), not one loaded after a close: the
            # conversation and its undo steps go on; the scene keeps this conversation.
            self.logic.addNotice("Scene data imported: this conversation and its undo steps are kept.")
        else:
            self.logic.restoreConversation(self.scene)
        self.refreshAll()

    def onSceneClosed(self, caller=None, event=None) -> None:
        if self.task is not None and self.task.running:
            self.task.cancel()
        self.logic.resetConversation()
        self.tracker.attach()
        self.setStatus("")
        self.refreshAll()

    def onNodeRemoved(self, caller=None, event=None) -> None:
        self._forgetRemovedPrompts()
        if not self._updatingGui:
            self.refreshPrompts()
            self.refreshSegments()

    def _forgetRemovedPrompts(self) -> None:
        """Drop the observers of prompt nodes no longer in the scene (they would keep the nodes
        alive and call back for nodes nobody sees)."""
        for node, event, method, *_ in list(self.Observations):
            if node is not self.scene and hasattr(node, "IsA") and node.IsA("vtkMRMLMarkupsNode") and node.GetScene() is None:
                self.removeObserver(node, event, method)

    # -- status --------------------------------------------------------------------------------

    def setStatus(self, message: str, error: bool = False) -> None:
        q.setText(self.ui.statusLabel, message)
        q.setStyleSheet(self.ui.statusLabel, "color: #b00000;" if error else "")

    def showError(self, message: str) -> None:
        """One readable message: in the chat and in the status line."""
        self.logic.addNotice(message, error=True)
        self.setStatus(message, error=True)
        self.refreshChat()

    @property
    def busy(self) -> bool:
        return self.task is not None and self.task.running

    def updateButtons(self) -> None:
        ui, busy = self.ui, self.busy
        for button in (ui.sendButton, ui.labelAnatomyButton, ui.propagateButton, ui.newConversationButton):
            q.setEnabled(button, not busy)
        q.setEnabled(ui.stopButton, busy and not self.task.cancelEvent.is_set())
        q.setEnabled(ui.undoButton, bool(self.logic.turns) and not busy)
        q.setEnabled(ui.copyAnswerButton, self._lastAnswerIndex() is not None)
        q.setEnabled(ui.acceptButton, q.count(ui.resultList) > 0 and not busy)
        q.setEnabled(ui.rejectButton, q.count(ui.resultList) > 0 and not busy)
        needsSegment = OUTPUT_MODES[max(0, q.currentIndex(ui.outputModeComboBox))] != NEW
        q.setEnabled(ui.targetSegmentComboBox, q.count(ui.targetSegmentComboBox) > 0)
        q.setEnabled(ui.propagateButton, not busy and q.count(ui.targetSegmentComboBox) > 0)
        q.setVisible(ui.progressBar, busy)
        if needsSegment and q.count(ui.targetSegmentComboBox) == 0:
            q.setToolTip(ui.sendButton, "Choose a segmentation with a segment to add to / replace, or 'Add as new segments'.")
        else:
            q.setToolTip(ui.sendButton, "Send the question about the slice shown in the view you last worked in.")

    def refreshAll(self) -> None:
        self.refreshTarget()
        self.refreshPrompts()
        self.refreshSegments()
        self.refreshChat()
        self.refreshBackendStatus()
        self.updateButtons()

    # -- target view ---------------------------------------------------------------------------

    def preferredView(self) -> str | None:
        index = q.currentIndex(self.ui.sliceViewComboBox)
        return None if index <= 0 else q.currentText(self.ui.sliceViewComboBox)

    def targetSliceNode(self):
        return self.tracker.sliceNode(self.preferredView())

    def refreshTarget(self) -> None:
        sliceNode = self.targetSliceNode()
        q.setText(self.ui.targetLabel, f"Asks about: {viewDescription(self.scene, sliceNode)}" if sliceNode is not None else "Asks about: (show a volume in a slice view)")

    def _target(self):
        sliceNode = self.targetSliceNode()
        volumeNode = backgroundVolumeOf(self.scene, sliceNode)
        if sliceNode is None or volumeNode is None:
            raise MimoError("show a volume in a slice view first (the module works on the view you last worked in)")
        return sliceNode, volumeNode

    # -- chat ----------------------------------------------------------------------------------

    def refreshChat(self) -> None:
        self.logic.saveConversation(self.scene)  # every change, notices and failures included
        body = self.logic.conversationHtml(self.scene)
        if self.busy and self.taskKind == "turn" and self.taskRequest is not None:
            pending = chat.renderHtml([chat.userEntry(self.taskRequest.question, self.taskRequest.view)])
            body += "\n" + pending + '\n<p style="color:#707070;"><i>working…</i></p>'
        if not body:
            body = (
                '<p style="color:#707070;">Ask about the slice in the view you last worked in. Draw a box, scribble, point or lasso with '
                "the prompt tools to show what you mean. Grounded terms in answers are links: click one to show/hide its segment.</p>"
            )
        body += f'<p style="color:#b00000; font-size:small;">{DISCLAIMER}</p>'
        self.ui.conversationBrowser.setHtml(body)
        q.scrollToBottom(self.ui.conversationBrowser)

    def _lastAnswerIndex(self):
        for index in range(len(self.logic.transcript) - 1, -1, -1):
            if self.logic.transcript[index].get("role") == chat.ASSISTANT:
                return index
        return None

    def onCopyAnswer(self, index: int | None = None) -> None:
        index = self._lastAnswerIndex() if index is None else index
        if index is None or not 0 <= index < len(self.logic.transcript):
            return
        q.setClipboardText(f"{self.logic.transcript[index].get('text', '')}\n\n(MIMO Assistant answer. {DISCLAIMER})")
        self.setStatus("Answer copied to the clipboard.")

    def onLinkClicked(self, url) -> None:
        kind, args = chat.parseLink(url.toString())
        if kind == "copy":
            self.onCopyAnswer(args[0])
        elif kind == "segment":
            visible = self.logic.toggleSegment(self.scene, *args)
            if visible is None:
                self.setStatus("That segment is no longer in the scene.", error=True)
            else:
                node = self.scene.GetNodeByID(args[0])
                name = node.GetSegmentation().GetSegment(args[1]).GetName()
                self.setStatus(f"Showing '{name}' (views centred on it)." if visible else f"Hid '{name}'.")
        self.refreshChat()

    def onNewConversation(self) -> None:
        if self.busy:
            return
        self.logic.resetConversation()
        self.logic.saveConversation(self.scene)
        self.setStatus("New conversation (the segments stay in the scene).")
        self.refreshAll()

    def onUndo(self) -> None:
        if self.busy:
            return
        self._updatingGui = True
        try:
            undone = self.logic.undoLastTurn(self.scene)
        finally:
            self._updatingGui = False
        self.setStatus("Last answer undone." if undone else "Nothing to undo.")
        self.refreshAll()

    # -- prompts -------------------------------------------------------------------------------

    def onPromptTool(self, kind: str) -> None:
        node = createPromptNode(self.scene, kind, q.value(self.ui.brushWidthSpinBox) if kind == "scribble" else None)
        self.observePrompt(node)
        startPlacing(self.scene, node)
        self.setStatus(PLACE_HINTS[kind] + " The prompt stays until you remove it or press Clear.")
        self.refreshPrompts()
        return node

    def observePrompt(self, node) -> None:
        import slicer
        import vtk

        markups = slicer.vtkMRMLMarkupsNode
        if not self.hasObserver(node, markups.PointPositionDefinedEvent, self.onPromptPointDefined):
            self.addObserver(node, markups.PointPositionDefinedEvent, self.onPromptPointDefined)
        for event in (markups.PointRemovedEvent, markups.PointEndInteractionEvent, vtk.vtkCommand.ModifiedEvent):
            if not self.hasObserver(node, event, self.schedulePromptRefresh):
                self.addObserver(node, event, self.schedulePromptRefresh)

    def schedulePromptRefresh(self, caller=None, event=None) -> None:
        self.promptTimer.start()

    def onPromptPointDefined(self, node, event=None) -> None:
        """Tie a prompt to the view and slice it is drawn on, at its first placed point."""
        if node.GetAttribute("MIMO.SliceNodeID") is None and node.GetNumberOfDefinedControlPoints() > 0:
            candidates = []
            lastView = self.scene.GetNodeByID(self.tracker.lastSliceNodeID or "")
            if lastView is not None:
                candidates.append(lastView)
            candidates += [n for n in sliceNodes(self.scene) if n is not lastView and backgroundVolumeOf(self.scene, n) is not None]
            for sliceNode in candidates:
                volumeNode = backgroundVolumeOf(self.scene, sliceNode)
                if volumeNode is None:
                    continue
                try:
                    found = sliceNodeForMarkups([sliceNode], [node], volumeNode)
                except MimoError:
                    found = None
                if found is not None:
                    tiePromptToView(node, found)
                    break
        self.schedulePromptRefresh()

    def refreshPrompts(self) -> None:
        ui = self.ui
        ui.promptList.clear()
        nodes = promptNodes(self.scene)
        for node in nodes:
            self.observePrompt(node)
            ui.promptList.addItem(q.newListItem(describePrompt(self.scene, node), node.GetID()))
        info = "No prompts: draw one with the tools above."
        if nodes:
            info = f"{len(nodes)} prompt(s) in the scene"
            sliceNode = self.targetSliceNode()
            volumeNode = backgroundVolumeOf(self.scene, sliceNode)
            if volumeNode is not None:
                try:
                    used, _, _ = promptsForSlice(self.scene, sliceNode, volumeNode)
                    info += f", {len(used)} on the slice shown in {sliceNode.GetLayoutName() or sliceNode.GetName()} (used when you send)"
                except MimoError:
                    pass
        q.setText(ui.promptsInfoLabel, info)
        q.setEnabled(ui.removePromptButton, bool(nodes))
        q.setEnabled(ui.clearPromptsButton, bool(nodes))

    def _selectedPrompt(self):
        item = self.ui.promptList.currentItem()
        if item is None:
            return None
        node = self.scene.GetNodeByID(str(q.itemData(item)))
        return node if isPrompt(node) else None

    def onPromptDoubleClicked(self, item=None) -> None:
        node = self._selectedPrompt()
        if node is not None and jumpToPrompt(self.scene, node):
            self.setStatus(f"Showing the slice '{node.GetName()}' was drawn on.")

    def onRemovePrompt(self) -> None:
        node = self._selectedPrompt()
        if node is None:
            self.setStatus("Select a prompt in the list first.", error=True)
            return
        stopPlacing(self.scene, node)
        self.scene.RemoveNode(node)
        self.refreshPrompts()

    def onClearPrompts(self) -> None:
        count = clearPrompts(self.scene)
        self.setStatus(f"Removed {count} prompt(s).")
        self.refreshPrompts()

    # -- output: segmentation, segments, review --------------------------------------------------

    def segmentationNode(self):
        return self.ui.segmentationSelector.currentNode()

    def onSegmentationChanged(self) -> None:
        if not self._updatingGui:
            self.refreshSegments()
            self.updateButtons()

    def refreshSegments(self) -> None:
        ui = self.ui
        combo = ui.targetSegmentComboBox
        previous = q.comboData(combo, q.currentIndex(combo)) if q.count(combo) else None
        combo.clear()
        node = self.segmentationNode()
        if node is not None:
            segmentation = node.GetSegmentation()
            for index in range(segmentation.GetNumberOfSegments()):
                segment = segmentation.GetNthSegment(index)
                color = "#{:02x}{:02x}{:02x}".format(*(int(round(255 * c)) for c in segment.GetColor()))
                combo.addItem(q.colorIcon(color), segment.GetName(), segmentation.GetNthSegmentID(index))
            if previous is not None:
                found = combo.findData(previous)
                if found >= 0:
                    q.setCurrentIndex(combo, found)
        ui.resultList.clear()
        for nodeID, segmentId in self.logic.pendingSegments:
            segNode = self.scene.GetNodeByID(nodeID)
            segment = segNode.GetSegmentation().GetSegment(segmentId) if segNode is not None else None
            if segment is None:
                continue
            color = "#{:02x}{:02x}{:02x}".format(*(int(round(255 * c)) for c in segment.GetColor()))
            ui.resultList.addItem(q.newListItem(f"{segment.GetName()}  ({segNode.GetName()})", f"{nodeID}/{segmentId}", q.colorIcon(color)))
        if q.count(ui.resultList) and q.currentRow(ui.resultList) < 0:
            ui.resultList.setCurrentRow(0)

    def selectSegment(self, segmentId: str) -> None:
        index = self.ui.targetSegmentComboBox.findData(segmentId)
        if index >= 0:
            q.setCurrentIndex(self.ui.targetSegmentComboBox, index)

    def onReview(self, accept: bool) -> None:
        item = self.ui.resultList.currentItem()
        if item is None:
            self.setStatus("Select a returned segment first.", error=True)
            return
        nodeID, _, segmentId = str(q.itemData(item)).partition("/")
        self._updatingGui = True
        try:
            done = self.logic.acceptSegment(self.scene, nodeID, segmentId) if accept else self.logic.rejectSegment(self.scene, nodeID, segmentId)
        finally:
            self._updatingGui = False
        if done:
            self.setStatus("Segment accepted." if accept else "Segment rejected and removed.")
        self.refreshSegments()
        self.refreshChat()
        self.updateButtons()

    # -- backend settings ------------------------------------------------------------------------

    def backendConfig(self) -> BackendConfig:
        ui = self.ui
        return BackendConfig(
            mode=REMOTE if q.currentIndex(ui.backendModeComboBox) == 1 else LOCAL,
            model=LOCAL_MODELS[max(0, q.currentIndex(ui.localModelComboBox))],
            modelPath=q.text(ui.modelPathLineEdit).strip(),
            device=q.currentText(ui.deviceComboBox) or "auto",
            url=q.text(ui.serverUrlLineEdit).strip(),
            token=q.text(ui.tokenLineEdit).strip(),
        )

    def _restoreBackendSettings(self) -> None:
        config = BackendConfig.fromJSON(self.settings.value(CONFIG_KEY, ""))
        ui = self.ui
        self._updatingGui = True
        try:
            q.setCurrentIndex(ui.backendModeComboBox, 1 if config.mode == REMOTE else 0)
            q.setCurrentIndex(ui.localModelComboBox, LOCAL_MODELS.index(config.model) if config.model in LOCAL_MODELS else 0)
            q.setText(ui.modelPathLineEdit, config.modelPath)
            index = ui.deviceComboBox.findText(config.device)
            q.setCurrentIndex(ui.deviceComboBox, max(index, 0))
            q.setText(ui.serverUrlLineEdit, config.url)
        finally:
            self._updatingGui = False
        self._showBackendFields()

    def _showBackendFields(self) -> None:
        ui = self.ui
        remote = q.currentIndex(ui.backendModeComboBox) == 1
        for widget in (ui.localModelLabel, ui.localModelComboBox, ui.modelPathLabel, ui.modelPathLineEdit, ui.browseModelButton, ui.deviceLabel, ui.deviceComboBox):
            q.setVisible(widget, not remote)
        for widget in (ui.serverUrlLabel, ui.serverUrlLineEdit, ui.tokenLabel, ui.tokenLineEdit, ui.revokeConsentButton):
            q.setVisible(widget, remote)

    def onBackendSettingsChanged(self) -> None:
        if self._updatingGui:
            return
        self._showBackendFields()
        config = self.backendConfig()
        self.settings.setValue(CONFIG_KEY, config.toJSON())
        self.refreshBackendStatus()

    def onBrowseModel(self) -> None:
        path = q.chooseDirectory(self.uiWidget, "MIMO checkpoint folder", q.text(self.ui.modelPathLineEdit))
        if path:
            q.setText(self.ui.modelPathLineEdit, path)
            self.onBackendSettingsChanged()

    def onRevokeConsent(self) -> None:
        try:
            url = normalizeUrl(q.text(self.ui.serverUrlLineEdit))
        except MimoError as error:
            self.setStatus(str(error), error=True)
            return
        self.logic.consent.revoke(url)
        self.setStatus(f"Consent withdrawn: you will be asked again before anything is sent to {url}.")

    def refreshBackendStatus(self) -> None:
        text = f"Backend: {self.logic.backendDescription()}"
        if self.logic.lastLatency is not None:
            text += f" · last turn {self.logic.lastLatency:.1f} s"
        q.setText(self.ui.backendStatusLabel, text)

    def _prepareBackend(self) -> bool:
        """Apply the GUI's backend choice; ask for consent (remote) and for missing packages."""
        config = self.backendConfig()
        try:
            config.validate()
        except MimoError as error:
            self.showError(str(error))
            return False
        if self.busy:
            return False
        self.logic.configureBackend(config)
        if config.mode == REMOTE and not self.logic.consent.hasConsent(config.url):
            if not self.confirm("Send images to a server?", consentQuestion(config.url)):
                self.showError(f"Nothing was sent: no consent to send slices to {normalizeUrl(config.url)}.")
                return False
            self.logic.consent.grant(config.url)
        if not self.logic.backendLoaded():
            missing = missingPackages(config)
            if missing:
                if self.installer is None:
                    self.showError(f"Missing Python packages: {' '.join(missing)} (install them with pip).")
                    return False
                if not self.confirm(
                    "Install Python packages?",
                    f"MIMO Assistant needs these Python packages: {', '.join(missing)}.\nInstall them now? (This can take several minutes.)",
                ):
                    self.showError(f"Not installed: {', '.join(missing)}. The model cannot run without them.")
                    return False
                try:
                    self.installer(missing)
                except Exception as error:  # noqa: BLE001  (pip failures come in many types)
                    self.showError(f"Installing {', '.join(missing)} failed: {error}")
                    return False
        if not self.logic.backendLoaded():
            # Built here, on the GUI thread (cheap: no torch, no network): a remote backend's consent
            # is read from the Qt settings, which the worker thread must not touch; a local engine
            # process is launched now, so that its model loads while the turn is being prepared.
            try:
                backend = self.logic.backend
                start = getattr(backend, "start", None)
                if start is not None:
                    start()
            except MimoError as error:
                self.showError(str(error))
                return False
        return True

    # -- turns -------------------------------------------------------------------------------------

    def onSend(self) -> None:
        if self.busy:
            return
        question = q.text(self.ui.questionLineEdit).strip()
        if not question:
            self.setStatus("Type a question first, e.g. 'Segment the liver'.", error=True)
            return
        wholeVolume = q.isChecked(self.ui.wholeVolumeCheckBox)
        self._startTurn(lambda sliceNode, volumeNode: self.logic.prepareTurn(volumeNode, sliceNode, question, wholeVolume=wholeVolume))

    def onLabelAnatomy(self) -> None:
        if self.busy:
            return
        self._startTurn(lambda sliceNode, volumeNode: self.logic.prepareLabelAnatomy(volumeNode, sliceNode))

    def _outputTarget(self) -> dict:
        mode = OUTPUT_MODES[max(0, q.currentIndex(self.ui.outputModeComboBox))]
        combo = self.ui.targetSegmentComboBox
        segmentId = q.comboData(combo, q.currentIndex(combo)) if q.count(combo) else None
        node = self.segmentationNode()
        if mode != NEW and (node is None or not segmentId):
            raise MimoError("choose a segmentation and the segment to add to or replace (or 'Add as new segments')")
        return {"segmentationNode": node, "targetSegmentId": str(segmentId) if segmentId else None, "mode": mode}

    def _startTurn(self, prepare) -> None:
        try:
            sliceNode, volumeNode = self._target()
            target = self._outputTarget()
            if not self._prepareBackend():
                return
            request = prepare(sliceNode, volumeNode)
        except MimoError as error:
            self.showError(str(error))
            return
        except Exception as error:  # a bug: one message, details in the log
            logger.exception("MIMO Assistant could not start the turn")
            self.showError(f"Could not start: {error}")
            return
        self.taskTarget = target
        self._run(BackgroundTask(lambda progress, cancel: self.logic.computeTurn(request, progress, cancel), "MIMO turn"), "turn", request)
        if request.skippedPrompts:
            self.setStatus(f"Working… ({len(request.skippedPrompts)} prompt(s) on other slices/views not used)")
        q.setText(self.ui.questionLineEdit, "")

    def onPropagate(self) -> None:
        if self.busy:
            return
        try:
            sliceNode, volumeNode = self._target()
            node = self.segmentationNode()
            combo = self.ui.targetSegmentComboBox
            segmentId = q.comboData(combo, q.currentIndex(combo)) if q.count(combo) else None
            if node is None or not segmentId:
                raise MimoError("choose the segmentation and the segment to propagate")
            if not self._prepareBackend():
                return
            settings = PropagationSettings(
                marginPixels=float(q.value(self.ui.marginSpinBox)),
                minAreaFraction=float(q.value(self.ui.minFractionSpinBox)),
                window=self.logic.window,
            )
            request = self.logic.preparePropagation(volumeNode, sliceNode, node, str(segmentId), settings)
        except MimoError as error:
            self.showError(str(error))
            return
        self._run(BackgroundTask(lambda progress, cancel: self.logic.computePropagation(request, progress, cancel), "MIMO propagation"), "propagation", request)

    def _run(self, task: BackgroundTask, kind: str, request) -> None:
        self.task, self.taskKind, self.taskRequest = task, kind, request
        q.setValue(self.ui.progressBar, 0)
        self.setStatus("Working…" if self.logic.backendInfo() is not None else "Starting the engine and loading the model…")
        task.start()
        self.timer.start()
        self.updateButtons()
        self.refreshChat()

    def onStop(self) -> None:
        if self.busy:
            self.task.cancel()
            self.setStatus("Stopping…")
            self.updateButtons()

    def poll(self) -> None:
        """Main thread (QTimer): deliver the worker's progress and result."""
        task = self.task
        if task is None:
            self.timer.stop()
            return
        for event in task.poll(WORKER_LEND_S):
            if event.kind == PROGRESS:
                q.setValue(self.ui.progressBar, round(100 * event.fraction))
                if not task.cancelEvent.is_set():
                    self.setStatus(f"{event.stage}…")
            elif event.kind == DONE:
                self._finish(event.result, task)
            elif event.kind == CANCELLED:
                self._end()
                what = "Propagation" if self.taskKind == "propagation" else "Turn"
                message = f"{what} cancelled: nothing was changed in the scene."
                if self.taskKind == "turn":
                    self.logic.recordFailure(self.taskRequest, message, error=False)
                else:
                    self.logic.addNotice(message)
                self.setStatus(message)
            elif event.kind == ERROR:
                self._end()
                error = event.error
                if not isinstance(error, MimoError):
                    logger.error("MIMO Assistant failed:\n%s", event.traceback)
                message = str(error) if isinstance(error, MimoError) else f"Unexpected error ({type(error).__name__}: {error}); see the log."
                if isinstance(error, BackendError) and self.taskKind == "turn" and "segmentation-only" in message:
                    message += " (Or choose the MIMO model under Model.)"
                skipped = getattr(self.taskRequest, "skippedPrompts", None)
                if skipped and self.taskKind == "turn":
                    message += f" Not used, because drawn elsewhere: {'; '.join(skipped)}."
                if self.taskKind == "turn":
                    self.logic.recordFailure(self.taskRequest, f"I could not answer: {message}")
                else:
                    self.logic.addNotice(f"Propagation failed: {message}", error=True)
                self.setStatus(message, error=True)
        if task.finalEvent is not None:
            self.timer.stop()
            self.task = None
            self.refreshAll()

    def _end(self) -> None:
        q.setVisible(self.ui.progressBar, False)

    def _finish(self, result, task) -> None:
        self._end()
        self._updatingGui = True
        try:
            if self.taskKind == "turn":
                target = self.taskTarget
                answer, segmentIds, segmentationNode = self.logic.applyTurn(
                    self.taskRequest, result, target.get("segmentationNode"), target.get("targetSegmentId"), target.get("mode", NEW), self.scene
                )
                if segmentationNode is None:
                    self.setStatus(f"Answered in {result.latency:.1f} s; the answer has no segment.")
                else:
                    self.ui.segmentationSelector.setCurrentNode(segmentationNode)
                    count = len(segmentIds) if target.get("mode", NEW) == NEW else len(answer.masks)
                    verb = "added to" if target.get("mode", NEW) == NEW else "written into"
                    self.setStatus(f"{count} segment(s) {verb} '{segmentationNode.GetName()}' ({result.latency:.1f} s). Review under Output.")
            else:
                self.logic.applyPropagation(self.taskRequest, result, self.scene)
                self.logic.lastLatency = task.elapsed
                self.setStatus(
                    f"Propagated '{self.taskRequest.segmentName}' over {result.sliceCount} slices in {task.elapsed:.1f} s. "
                    "Undo last answer reverts it."
                )
        except MimoError as error:
            if self.taskKind == "turn":
                self.logic.recordFailure(self.taskRequest, f"I could not add the result: {error}")
            else:
                self.logic.addNotice(f"Propagation not applied: {error}", error=True)
            self.setStatus(str(error), error=True)
        except Exception as error:  # noqa: BLE001
            logger.exception("MIMO Assistant could not apply the result")
            self.logic.addNotice(f"Could not add the result: {error}", error=True)
            self.setStatus(f"Could not add the result: {error}", error=True)
        finally:
            self._updatingGui = False

    def waitForTask(self, timeout: float = 120.0) -> None:
        """Process events until the running task ends (self-tests and scripts)."""
        import time

        deadline = time.monotonic() + timeout
        while self.busy and time.monotonic() < deadline:
            q.processEvents()
            time.sleep(0.01)
        self.poll()

