"""The MIMO Assistant panel, loaded from its .ui file with PySide6 and driven offscreen by clicks
and key presses (pytest-qt), on a real slicer-core scene with the real LiteMedSAM backend.

The Slicer-only widget classes of the .ui file (qMRMLWidget, ctkCollapsibleButton,
qMRMLNodeComboBox) are mapped to plain-Qt stand-ins (MIMOAssistantLib.qtstandins); every
PythonQt/PySide6 difference goes through MIMOAssistantLib.qtcompat. The panel code under test
is the code the Slicer module runs.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytest.importorskip("PySide6", reason="PySide6-Essentials is needed for the offscreen panel tests")
pytest.importorskip("pytestqt", reason="pytest-qt is needed for the offscreen panel tests")

from conftest import dice  # noqa: E402
from MIMOAssistantLib import MIMOAssistantLogic, sliceGeometryFromSliceNode  # noqa: E402
from MIMOAssistantLib import qtcompat as q  # noqa: E402
from MIMOAssistantLib import conversation as chat  # noqa: E402
from MIMOAssistantLib.backendconfig import CONFIG_KEY, CONSENT_KEY, BackendConfig  # noqa: E402
from PySide6.QtCore import QPoint, QSettings, Qt, QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication, QMessageBox  # noqa: E402
from slicer_fixtures import installed_scene, slicer  # noqa: E402

MODULE_DIR = Path(__file__).resolve().parents[2] / "MIMOAssistant"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "MIMOAssistant.ui"
#: Set to a folder (e.g. Resources/Screenshots) to keep the screenshots the tests take.
SCREENSHOTS = os.environ.get("MIMO_SCREENSHOTS_DIR")
TURN_TIMEOUT_MS = 240_000


@pytest.fixture
def scene():
    with installed_scene() as slicer_scene:
        yield slicer_scene


def cylinder_volume(slices: int = 7, first: int = 2, last: int = 4):
    """A CT-like phantom: a bright cylinder (radius 15 px, centre pixel (40, 50)) and a bright
    square column (pixels 65-80 x 10-25) through axial slices first..last. Pixel (x, y) of the
    axial view is voxel (i, j)."""
    k, j, i = np.mgrid[0:slices, 0:96, 0:96]
    disk = ((j - 50) ** 2 + (i - 40) ** 2 <= 15**2) & (k >= first) & (k <= last)
    square = (i >= 65) & (i <= 80) & (j >= 10) & (j <= 25) & (k >= first) & (k <= last)
    array = np.where(disk | square, 150, -900).astype(np.int16)
    array += np.random.default_rng(2).integers(-10, 10, disk.shape).astype(np.int16)
    return slicer.util.addVolumeFromArray(array, np.diag([-0.8, -0.8, 3.0, 1.0]), "phantom"), disk, square


class Harness:
    """The panel on a scene with a phantom shown axially in Red (slice 3) and coronally in Green."""

    def __init__(self, qtbot, scene, backend, tmp_path, slices: int = 7, last: int = 4):
        from MIMOAssistantLib.panel import MIMOAssistantPanel

        self.qtbot, self.scene = qtbot, scene
        self.volume, self.disk, self.square = cylinder_volume(slices, last=last)
        self.red, red_logic = scene.slice_view("Red", self.volume)
        self.red.SetOrientationToAxial()
        red_logic.FitSliceToAll()
        red_logic.SetSliceOffset(3 * 3.0)  # voxel plane k = 3 (IJK-to-RAS: z = 3 k)
        self.green, green_logic = scene.slice_view("Green", self.volume)
        self.green.SetOrientationToCoronal()
        green_logic.FitSliceToAll()
        self.settingsPath = tmp_path / "settings.ini"
        self.settings = QSettings(str(self.settingsPath), QSettings.IniFormat)
        self.settings.setValue(CONFIG_KEY, BackendConfig(model="litemedsam").toJSON())
        self.widget, self.ui = q.loadUI(str(UI_FILE))
        qtbot.addWidget(self.widget)
        self.logic = MIMOAssistantLogic(settings=self.settings)
        # The panel tests drive the real LiteMedSAM (loaded once per test session); with MIMO-Tiny
        # shipped the panel's default is MIMO, so LiteMedSAM is chosen here and in the settings.
        self.logic.configureBackend(BackendConfig(model="litemedsam"))
        self.logic.setBackend(backend)
        self.panel = MIMOAssistantPanel(self.widget, self.ui, scene.scene, self.logic, settings=self.settings)
        self.widget.resize(400, 1000)
        self.widget.show()
        scene.hover(self.red)  # the user moved the mouse over the Red view
        self.panel.refreshTarget()

    def click(self, button):
        self.qtbot.mouseClick(button, Qt.LeftButton)

    def draw_box(self, centre=(40.0, 50.0), half=18.0):
        """Box tool, then two corners "clicked" in Red (the points a placement would add)."""
        self.click(self.ui.boxButton)
        selection = self.scene.scene.GetFirstNodeByClass("vtkMRMLSelectionNode")
        roi = self.scene.scene.GetNodeByID(selection.GetActivePlaceNodeID())
        geometry = sliceGeometryFromSliceNode(self.red, self.volume)
        corners = geometry.pixels_to_ras(np.array([[centre[0] - half, centre[1] - half], [centre[0] + half, centre[1] + half]]))
        self.scene.hover(self.red)
        roi.AddControlPointWorld(corners.mean(axis=0))
        roi.SetSizeWorld(np.abs(corners[1] - corners[0]))
        return roi

    def ask(self, question: str):
        self.ui.questionLineEdit.clear()
        self.qtbot.keyClicks(self.ui.questionLineEdit, question)
        self.qtbot.keyClick(self.ui.questionLineEdit, Qt.Key_Return)

    def wait(self):
        self.qtbot.waitUntil(lambda: not self.panel.busy, timeout=TURN_TIMEOUT_MS)

    def segmentation(self):
        return self.ui.segmentationSelector.currentNode()

    def link_position(self, href_prefix: str = "mimo-segment:"):
        browser = self.ui.conversationBrowser
        viewport = browser.viewport()
        for y in range(0, viewport.height(), 3):
            for x in range(0, viewport.width(), 3):
                if browser.anchorAt(QPoint(x, y)).startswith(href_prefix):
                    return QPoint(x + 1, y + 1)
        return None

    def screenshot(self, name: str, tmp_path) -> Path:
        path = tmp_path / name
        assert self.widget.grab().save(str(path))
        if SCREENSHOTS:
            Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(SCREENSHOTS) / name)
        return path


@pytest.fixture
def harness(qtbot, scene, litemedsam, tmp_path):
    h = Harness(qtbot, scene, litemedsam, tmp_path)
    yield h
    h.panel.cleanup()


def test_panel_loads_from_the_ui_with_the_slicer_widgets_stood_in(harness):
    ui = harness.ui
    assert q.text(ui.disclaimerLabel) == "Research and education use only — not for clinical decisions"
    assert "Red" in q.text(ui.targetLabel) and "phantom" in q.text(ui.targetLabel)
    assert not q.isEnabled(ui.stopButton) and q.isEnabled(ui.sendButton) and not q.isVisible(ui.progressBar)
    assert q.currentText(ui.segmentationSelector) == "Create new segmentation" and ui.segmentationSelector.currentNode() is None
    assert "not for clinical decisions" in ui.conversationBrowser.toPlainText()
    # The remote fields appear only in remote mode.
    assert not q.isVisible(ui.serverUrlLineEdit) and q.isVisible(ui.modelPathLineEdit)
    q.setCurrentIndex(ui.backendModeComboBox, 1)
    assert q.isVisible(ui.serverUrlLineEdit) and not q.isVisible(ui.modelPathLineEdit)


def test_box_enter_sends_off_the_gui_thread_then_links_copy_and_scene_reload(harness, qtbot, tmp_path):
    ui, scene = harness.ui, harness.scene.scene
    roi = harness.draw_box()
    assert roi.GetAttribute("MIMO.Prompt") == "box"
    assert roi.GetAttribute("MIMO.SliceNodeID") == harness.red.GetID()
    assert float(roi.GetAttribute("MIMO.SliceOffset")) == pytest.approx(9.0)
    interaction = scene.GetFirstNodeByClass("vtkMRMLInteractionNode")
    assert interaction.GetCurrentInteractionMode() == interaction.Place
    qtbot.waitUntil(lambda: "1 on the slice shown in Red" in q.text(ui.promptsInfoLabel), timeout=5000)
    assert ui.promptList.count() == 1

    # Enter sends; the turn runs on a worker thread while the GUI keeps processing events.
    ticks = []
    ticker = QTimer()
    ticker.setInterval(10)
    ticker.timeout.connect(lambda: ticks.append(time.perf_counter()))
    ticker.start()
    start = time.perf_counter()
    harness.ask("Segment the kidney")
    assert harness.panel.busy and q.isEnabled(ui.stopButton) and not q.isEnabled(ui.sendButton)
    assert q.text(ui.questionLineEdit) == "" and "working" in ui.conversationBrowser.toPlainText()
    harness.wait()
    elapsed = time.perf_counter() - start
    ticker.stop()
    gaps = np.diff(ticks)
    print(f"turn {elapsed:.2f} s; 10 ms timer fired {len(ticks)} times, longest gap {1000 * gaps.max():.0f} ms")
    assert len(ticks) > 0.3 * elapsed / 0.010 and gaps.max() < 0.5  # the event loop never froze

    segmentation = harness.segmentation()
    assert segmentation is not None, q.text(ui.statusLabel)
    [segment_id] = [segmentation.GetSegmentation().GetNthSegmentID(0)]
    segment = segmentation.GetSegmentation().GetSegment(segment_id)
    assert segment.GetName() == "kidney" and segmentation.GetSegmentation().GetNumberOfSegments() == 1
    mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment_id, harness.volume) > 0
    assert dice(mask[3], harness.disk[3]) > 0.85
    assert scene.GetNodeByID(roi.GetID()) is not None  # the prompt is kept after sending
    assert ui.resultList.count() == 1 and "kidney" in ui.resultList.item(0).text()
    color = "#{:02x}{:02x}{:02x}".format(*(round(255 * c) for c in segment.GetColor()))
    assert f"color:{color}" in ui.conversationBrowser.toHtml().replace(" ", "")
    assert "Backend: litemedsam" in q.text(ui.backendStatusLabel) and "last turn" in q.text(ui.backendStatusLabel)
    harness.screenshot("slicer-panel.png", tmp_path)

    # Click the grounded term: hide; click again: show and centre the views on the segment.
    display = segmentation.GetDisplayNode()
    harness.green.SetSliceOffset(-50.0)
    qtbot.mouseClick(ui.conversationBrowser.viewport(), Qt.LeftButton, pos=harness.link_position())
    assert not display.GetSegmentVisibility(segment_id)
    qtbot.mouseClick(ui.conversationBrowser.viewport(), Qt.LeftButton, pos=harness.link_position())
    assert display.GetSegmentVisibility(segment_id)
    centre = segmentation.GetSegmentCenterRAS(segment_id)
    assert harness.green.GetSliceOffset() == pytest.approx(centre[1], abs=1e-3)  # coronal view moved onto it

    harness.click(ui.copyAnswerButton)
    assert "kidney" in q.clipboardText() and "not for clinical decisions" in q.clipboardText()

    # The conversation is written into the scene; closing and loading the scene brings it back.
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    assert harness.scene.app.SaveSceneToSlicerDataBundleDirectory(str(bundle), None)
    # Importing a scene into the working one (Add Data) keeps this conversation and its undo.
    turns, entries = len(harness.logic.turns), len(harness.logic.transcript)
    scene.SetURL(str(next(bundle.glob("*.mrml"))))
    assert scene.Import()
    assert len(harness.logic.turns) == turns == 1 and len(harness.logic.transcript) == entries + 1
    assert "this conversation and its undo steps are kept" in ui.conversationBrowser.toPlainText()
    scene.Clear(0)
    assert harness.logic.transcript == [] and "kidney" not in ui.conversationBrowser.toPlainText()
    scene.SetURL(str(next(bundle.glob("*.mrml"))))
    assert scene.Import()
    assert "Segment the kidney" in ui.conversationBrowser.toPlainText()
    assert harness.link_position() is not None  # the grounded link works again
    qtbot.mouseClick(ui.conversationBrowser.viewport(), Qt.LeftButton, pos=harness.link_position())
    reloaded = scene.GetNodeByID(segmentation.GetID())
    assert not reloaded.GetDisplayNode().GetSegmentVisibility(segment_id)


def test_stop_cancels_the_running_turn_and_changes_nothing(harness):
    ui, scene = harness.ui, harness.scene.scene
    harness.draw_box()
    nodes = scene.GetNumberOfNodes()
    harness.ask("Segment the kidney")
    assert harness.panel.busy
    harness.click(ui.stopButton)
    assert not q.isEnabled(ui.stopButton) and "Stopping" in q.text(ui.statusLabel)
    harness.wait()
    assert "cancelled" in q.text(ui.statusLabel) and "cancelled" in ui.conversationBrowser.toPlainText()
    # The only new node holds the conversation: the cancelled question is in the scene, saved or not.
    stored = chat.loadFromScene(scene)
    assert [e["text"] for e in stored][-2] == "Segment the kidney" and "cancelled" in stored[-1]["text"]
    assert scene.GetNumberOfNodes() == nodes + 1 and scene.GetFirstNodeByClass("vtkMRMLSegmentationNode") is None
    assert q.isEnabled(ui.sendButton) and not q.isVisible(ui.progressBar)


def test_a_module_reload_mid_turn_stops_the_worker_and_releases_the_model(harness):
    harness.draw_box()
    harness.ask("Segment the kidney")
    task = harness.panel.task
    assert harness.panel.busy and task.running
    harness.panel.cleanup()  # what Slicer calls on reload and exit
    assert task.workerFinished and task.cancelEvent.is_set()
    assert not harness.panel.logic.backendLoaded()


def test_label_visible_anatomy_with_a_segmentation_only_model_says_so(harness):
    ui, scene = harness.ui, harness.scene.scene
    harness.click(ui.labelAnatomyButton)
    assert not harness.panel.busy
    assert "text-capable" in q.text(ui.statusLabel) and "text-capable" in ui.conversationBrowser.toPlainText()
    assert scene.GetFirstNodeByClass("vtkMRMLSegmentationNode") is None


def test_prompt_tools_create_tied_markups_and_clear_removes_them(harness):
    ui, scene = harness.ui, harness.scene.scene
    kinds = {
        ui.scribbleButton: ("vtkMRMLMarkupsCurveNode", "scribble"),
        ui.lassoButton: ("vtkMRMLMarkupsClosedCurveNode", "lasso"),
        ui.pointButton: ("vtkMRMLMarkupsFiducialNode", "point"),
        ui.negativePointButton: ("vtkMRMLMarkupsFiducialNode", "negative"),
    }
    geometry = sliceGeometryFromSliceNode(harness.red, harness.volume)
    for button, (class_name, kind) in kinds.items():
        harness.click(button)
        node = scene.GetNodeByID(scene.GetFirstNodeByClass("vtkMRMLSelectionNode").GetActivePlaceNodeID())
        assert node.IsA(class_name) and node.GetAttribute("MIMO.Prompt") == kind
        for point in geometry.pixels_to_ras(np.array([[30.0, 40.0], [45.0, 52.0], [35.0, 60.0]])):
            node.AddControlPointWorld(point)
        assert node.GetAttribute("MIMO.SliceNodeID") == harness.red.GetID()
    assert scene.GetFirstNodeByClass("vtkMRMLMarkupsCurveNode").GetAttribute("MIMO.BrushWidthMm") == "3"
    assert ui.promptList.count() == 4
    ui.promptList.setCurrentRow(0)

    def observed_prompts():
        return [o[0] for o in harness.panel.Observations if o[0] is not scene and o[0].IsA("vtkMRMLMarkupsNode")]

    assert len(observed_prompts()) == 4 * 4  # four events on each of the four prompts
    harness.click(ui.removePromptButton)
    assert ui.promptList.count() == 3
    # The removed prompt's observers went with it.
    assert len(observed_prompts()) == 3 * 4 and all(node.GetScene() is scene for node in observed_prompts())
    harness.click(ui.pointButton)  # placing (persistent points), then Clear
    interaction = scene.GetFirstNodeByClass("vtkMRMLInteractionNode")
    assert interaction.GetCurrentInteractionMode() == interaction.Place and interaction.GetPlaceModePersistence() == 1
    harness.click(ui.clearPromptsButton)
    assert ui.promptList.count() == 0 and not any(n.GetAttribute("MIMO.Prompt") for n in slicer.util.getNodesByClass("vtkMRMLMarkupsNode"))
    # The next click in a view must not make a stray markups node: place mode and its persistence are off.
    assert interaction.GetCurrentInteractionMode() == interaction.ViewTransform and interaction.GetPlaceModePersistence() == 0


def test_replace_a_chosen_segment_review_and_undo(harness):
    """Answers go to new segments by default; 'Replace the chosen segment' rewrites only that
    one; Undo restores it; Reject removes a returned segment; Propagate fills the cylinder."""
    ui = harness.ui
    harness.draw_box()
    harness.ask("Segment the kidney")
    harness.wait()
    segmentation = harness.segmentation()
    [kidney] = [segmentation.GetSegmentation().GetNthSegmentID(0)]
    before = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, kidney, harness.volume) > 0

    # Propagate the kidney through the cylinder (slices 2-4 of 7), off the GUI thread.
    harness.panel.selectSegment(kidney)
    harness.click(ui.propagateButton)
    assert harness.panel.busy
    harness.wait()
    propagated = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, kidney, harness.volume) > 0
    assert dice(propagated, harness.disk) > 0.85, q.text(ui.statusLabel)
    assert "Propagated" in q.text(ui.statusLabel)
    harness.click(ui.undoButton)
    assert np.array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, kidney, harness.volume) > 0, before)

    # Replace the kidney with the answer about the square (an explicit choice), then undo.
    q.setCurrentIndex(ui.outputModeComboBox, 2)
    harness.panel.selectSegment(kidney)
    harness.click(ui.clearPromptsButton)  # prompts stay until cleared: the first box would be used again
    harness.draw_box(centre=(72.5, 17.5), half=11.0)
    harness.ask("Segment the kidney")
    harness.wait()
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 1, q.text(ui.statusLabel)
    replaced = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, kidney, harness.volume) > 0
    assert dice(replaced[3], harness.square[3]) > 0.8 and not (replaced & harness.disk).any()
    assert segmentation.GetSegmentation().GetSegment(kidney).GetName() == "kidney"
    harness.click(ui.undoButton)
    assert np.array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, kidney, harness.volume) > 0, before)

    # Review: reject the returned kidney segment.
    assert ui.resultList.count() == 1
    ui.resultList.setCurrentRow(0)
    harness.click(ui.rejectButton)
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 0 and ui.resultList.count() == 0
    assert "Rejected" in ui.conversationBrowser.toPlainText()


def test_remote_server_asks_consent_once_per_server_and_errors_leave_the_scene(harness):
    """Remote mode: nothing is sent before the user agrees; the consent is stored per URL in
    the settings; a server that does not answer gives one readable message, no scene change."""
    ui, scene = harness.ui, harness.scene.scene
    q.setCurrentIndex(ui.backendModeComboBox, 1)
    harness.qtbot.keyClicks(ui.serverUrlLineEdit, "http://127.0.0.1:9")  # nothing listens there
    harness.qtbot.keyClick(ui.serverUrlLineEdit, Qt.Key_Return)
    assert "127.0.0.1:9" in harness.settings.value("MIMOAssistant/BackendConfiguration", "")
    nodes = scene.GetNumberOfNodes()
    dialogs = []

    def answer(button):
        def click():
            box = QApplication.activeModalWidget()
            if box is None:
                QTimer.singleShot(20, click)
                return
            dialogs.append(box.text())
            box.button(button).click()

        QTimer.singleShot(20, click)

    answer(QMessageBox.Cancel)
    harness.ask("What is this?")
    assert not harness.panel.busy and "Nothing was sent" in q.text(ui.statusLabel)
    assert "127.0.0.1:9" in dialogs[0] and "patient" in dialogs[0]
    assert not QSettings(str(harness.settingsPath), QSettings.IniFormat).value(CONSENT_KEY, "")

    settings_threads = []
    real_value = harness.panel.logic.consent.settings.value
    harness.panel.logic.consent.settings.value = lambda *a: settings_threads.append(threading.current_thread()) or real_value(*a)
    answer(QMessageBox.Ok)
    harness.ask("What is this?")
    harness.wait()
    # The Qt settings (consent) are read on the GUI thread only, never by the worker.
    assert settings_threads and set(settings_threads) == {threading.main_thread()}
    assert len(dialogs) == 2
    assert "http://127.0.0.1:9" in QSettings(str(harness.settingsPath), QSettings.IniFormat).value(CONSENT_KEY, "")
    status = q.text(ui.statusLabel)
    print(f"remote error shown: {status}")
    assert "127.0.0.1:9" in status or "server" in status.lower(), status
    assert "Traceback" not in ui.conversationBrowser.toPlainText()
    # Only the conversation's node is new: it holds the question and the error, saved or not.
    assert scene.GetNumberOfNodes() == nodes + 1 and scene.GetFirstNodeByClass("vtkMRMLSegmentationNode") is None
    assert "Nothing was sent" in chat.toJSON(chat.loadFromScene(scene))

    unexpected = []

    def close_any_dialog():
        box = QApplication.activeModalWidget()
        if box is not None:
            unexpected.append(box.text())
            box.button(QMessageBox.Cancel).click()

    guard = QTimer()
    guard.setInterval(50)
    guard.timeout.connect(close_any_dialog)
    guard.start()
    harness.ask("Again?")  # consent is remembered: no dialog this time
    harness.wait()
    guard.stop()
    assert unexpected == [] and len(dialogs) == 2


@pytest.mark.parametrize("segment_id", ["Segment_1", "liver #2", "left?kidney/upper pole", "100% tumour"])
def test_segment_links_survive_qt_for_any_segment_id(segment_id):
    """A segment ID from a loaded file may hold URL delimiters; the link clicked in the chat
    (a QUrl, as QTextBrowser hands it over) must name the same segment."""
    from PySide6.QtCore import QUrl

    url = QUrl(chat.segmentLink("vtkMRMLSegmentationNode1", segment_id))
    assert chat.parseLink(url.toString()) == ("segment", ("vtkMRMLSegmentationNode1", segment_id))
