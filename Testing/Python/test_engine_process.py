"""The panel's local mode under a loop that behaves like real Slicer's (issue 24).

Real Slicer's application thread holds Python's GIL whenever it runs C++, its Qt event loop
included, and runs Python only in callbacks such as the panel's 50 ms poll timer. The loop here
does the same: the main thread sleeps in ``usleep`` called through ``ctypes.PyDLL`` (which
keeps the GIL) and calls ``panel.poll()`` between sleeps. PySide6's own event loop releases the
GIL, so the other panel tests cannot see this. The model runs in an engine process
(:class:`mimo.backends.engine.EngineProcessBackend`), as the module runs it.
"""

from __future__ import annotations

import ctypes
import os
import time

import pytest

if os.name != "posix":
    pytest.skip("the GIL-holding loop calls libc's usleep", allow_module_level=True)

from conftest import dice  # noqa: E402
from MIMOAssistantLib import qtcompat as q  # noqa: E402
from MIMOAssistantLib.propagation import PropagationSettings, propagate  # noqa: E402
from mimo.backend import Turn  # noqa: E402
from PySide6.QtCore import Qt  # noqa: E402
from slicer_fixtures import slicer  # noqa: E402
from test_slicer_widget import Harness, scene  # noqa: E402,F401  (the scene fixture)

LIBC = ctypes.PyDLL(None)  # PyDLL: the call keeps the GIL, as Slicer's C++ event loop does


def run_like_slicer(panel, timeout: float = 600.0, hold_gil: bool = True) -> None:
    """Until the panel's task ends: 45 ms of "C++" holding the GIL (or, ``hold_gil`` False,
    releasing it as PySide6 does), then the poll timer slot."""
    deadline = time.monotonic() + timeout
    while panel.busy:
        LIBC.usleep(45_000) if hold_gil else time.sleep(0.045)
        panel.poll()
        assert time.monotonic() < deadline, "the task did not end"


@pytest.fixture
def slicer_like(qtbot, scene, engine, tmp_path):  # noqa: F811
    """The panel on a 22-slice phantom (cylinder on slices 2-19) with the engine process."""
    h = Harness(qtbot, scene, engine, tmp_path, slices=22, last=19)
    yield h
    h.logic._backend = None  # the engine is shared by the test session: detached, not closed
    h.panel.cleanup()


def send(harness, question: str, hold_gil: bool = True) -> float:
    """Type the question, press Enter, run the loop until the answer is in the scene (seconds)."""
    harness.ui.questionLineEdit.clear()
    harness.qtbot.keyClicks(harness.ui.questionLineEdit, question)
    start = time.perf_counter()
    harness.qtbot.keyClick(harness.ui.questionLineEdit, Qt.Key_Return)
    run_like_slicer(harness.panel, hold_gil=hold_gil)
    return time.perf_counter() - start


def engine_turn(engine, request) -> float:
    """The same turn, asked of the engine directly (no panel, no Slicer-like loop)."""
    start = time.perf_counter()
    session = engine.open_session(request.image)
    try:
        engine.ask(session, Turn(request.question, list(request.prompts), []))
    finally:
        engine.close_session(session)
    return time.perf_counter() - start


def test_a_turn_and_a_20_slice_propagation_through_the_panel_cost_the_engine_time(slicer_like, engine):
    h = slicer_like
    h.draw_box()
    engine.load()
    request = h.logic.prepareTurn(h.volume, h.red, "Segment the kidney")
    send(h, "Segment the kidney")  # warm-up: the panel's first turn builds its chat view
    engine_times, plain_times, panel_times = [], [], []
    for _ in range(3):  # interleaved, so that a busy moment of the machine hits all alike
        engine_times.append(engine_turn(engine, request))
        plain_times.append(send(h, "Segment the kidney", hold_gil=False))
        panel_times.append(send(h, "Segment the kidney"))
    engine_time, plain_time, panel_time = min(engine_times), min(plain_times), min(panel_times)  # the least disturbed of each
    print(f"turn: engine {engine_time:.2f} s, panel {plain_time:.2f} s, panel under the Slicer-like loop {panel_time:.2f} s "
          f"({panel_time / engine_time:.2f}x the engine, {panel_time / plain_time:.2f}x the GIL-free panel)")
    assert "segment(s) added" in q.text(h.ui.statusLabel), q.text(h.ui.statusLabel)
    segmentation = h.segmentation()
    kidney = segmentation.GetSegmentation().GetNthSegmentID(0)
    mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, kidney, h.volume) > 0
    assert dice(mask[3], h.disk[3]) > 0.85
    # In-process the GIL-holding loop cost 11.7x (3.2x with the 10 ms lend); out of process it measures
    # 0.94-1.22x on a busy 2-core machine. 2x separates the two without failing on a busy moment. The
    # panel's own scene work (segments written, chat redrawn: about 0.3 s here) is in both panel times.
    assert panel_time <= 2.0 * plain_time

    h.panel.selectSegment(kidney)
    settings = PropagationSettings(marginPixels=float(q.value(h.ui.marginSpinBox)), minAreaFraction=float(q.value(h.ui.minFractionSpinBox)))
    propagation = h.logic.preparePropagation(h.volume, h.red, segmentation, kidney, settings)
    start = time.perf_counter()
    direct = propagate(engine, propagation.volume, propagation.geometry, propagation.startMask, propagation.question, propagation.settings)
    engine_propagation = time.perf_counter() - start
    start = time.perf_counter()
    h.click(h.ui.propagateButton)
    run_like_slicer(h.panel)
    panel_propagation = time.perf_counter() - start
    print(f"propagation over {len(direct.slices)} slices: engine {engine_propagation:.1f} s, panel {panel_propagation:.1f} s ({panel_propagation / engine_propagation:.2f}x)")
    assert "Propagated" in q.text(h.ui.statusLabel), q.text(h.ui.statusLabel)
    assert len(direct.slices) >= 18
    propagated = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, kidney, h.volume) > 0
    assert dice(propagated, h.disk) > 0.85
    assert panel_propagation <= 2.0 * engine_propagation


def test_an_engine_killed_mid_turn_is_one_line_leaves_the_scene_and_restarts(slicer_like, engine):
    h = slicer_like
    h.draw_box()
    engine.load()
    starts = engine.starts
    nodes = h.scene.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    h.ui.questionLineEdit.clear()
    h.qtbot.keyClicks(h.ui.questionLineEdit, "Segment the kidney")
    h.qtbot.keyClick(h.ui.questionLineEdit, Qt.Key_Return)
    deadline = time.monotonic() + 60
    while "Encoding" not in q.text(h.ui.statusLabel):  # the engine is encoding the slice now
        LIBC.usleep(20_000)
        h.panel.poll()
        assert time.monotonic() < deadline and h.panel.busy, q.text(h.ui.statusLabel)
    engine.process.kill()
    run_like_slicer(h.panel)
    status = q.text(h.ui.statusLabel)
    assert "engine process was killed (signal 9)" in status and "nothing was changed" in status and "restarts" in status, status
    assert "\n" not in status
    assert h.scene.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == nodes  # nothing added
    assert "I could not answer" in h.logic.transcript[-1]["text"]

    send(h, "Segment the kidney")  # the next question starts the engine again
    assert engine.starts == starts + 1 and engine.last_exit_status == -9
    segmentation = h.segmentation()
    mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentation.GetSegmentation().GetNthSegmentID(0), h.volume) > 0
    assert dice(mask[3], h.disk[3]) > 0.85, q.text(h.ui.statusLabel)


def test_stop_while_the_engine_starts_cancels_and_the_engine_stays_warm(tmp_path):
    """Stop during the model load ends the wait at once; the engine keeps loading for the next turn."""
    import threading

    from mimo.backends.engine import EngineProcessBackend
    from mimo.errors import Cancelled

    backend = EngineProcessBackend("litemedsam", device="cpu")
    try:
        cancel = threading.Event()
        threading.Timer(0.5, cancel.set).start()
        start = time.perf_counter()
        with pytest.raises(Cancelled):
            backend.load(cancel)
        assert time.perf_counter() - start < 3.0 and backend.process.running
        backend.load()
        assert backend.info().name == "litemedsam" and backend.starts == 1
    finally:
        backend.close()
    assert not backend.process.running and not backend.log_path.parent.exists()  # token deleted


def test_an_engine_that_cannot_start_says_why(tmp_path):
    from mimo.backends.engine import EngineProcessBackend, EngineStopped

    backend = EngineProcessBackend("litemedsam", model=str(tmp_path / "missing.pth"), device="cpu")
    try:
        with pytest.raises(EngineStopped, match="did not start.*missing.pth"):
            backend.load()
    finally:
        backend.close()


def test_the_engine_exits_when_its_supervisor_dies(tmp_path):
    """A Slicer that crashes leaves no engine behind: the engine's stdin pipe closes."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import sys, os
        sys.path.insert(0, sys.argv[1])
        from mimo.backends.engine import EngineProcessBackend
        backend = EngineProcessBackend("litemedsam", device="cpu")
        backend.start()
        print(backend.process.pid, flush=True)
        os._exit(3)  # no cleanup, as in a crash
        """
    )
    from test_slicer_widget import MODULE_DIR

    result = subprocess.run([sys.executable, "-c", script, str(MODULE_DIR)], capture_output=True, text=True, timeout=60)
    pid = int(result.stdout.split()[0])
    deadline = time.monotonic() + 60
    while _alive(pid):
        assert time.monotonic() < deadline, f"the engine {pid} outlived its supervisor"
        time.sleep(0.2)


def _alive(pid: int) -> bool:
    """Running (a zombie that nobody reaps in a container counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def test_local_mode_never_imports_torch_into_slicers_python():
    """The panel's local mode, end to end in a fresh interpreter where 'import torch' fails:
    the logic builds the engine backend from the configuration and answers a box turn."""
    import subprocess
    import sys
    import textwrap

    from test_slicer_widget import MODULE_DIR

    script = textwrap.dedent(
        """
        import sys
        sys.modules["torch"] = None  # any 'import torch' here fails; the engine process has its own
        sys.path.insert(0, sys.argv[1])
        import numpy as np
        from MIMOAssistantLib import BackendConfig, MemorySettings, MIMOAssistantLogic
        from mimo.backend import SliceImage, Turn
        from mimo.prompts import BoxPrompt
        logic = MIMOAssistantLogic(settings=MemorySettings())
        logic.configureBackend(BackendConfig(model="litemedsam", device="cpu"))
        backend = logic._loadedBackend()
        pixels = np.zeros((96, 96, 3), np.uint8)
        pixels[30:70, 20:60] = 200
        session = backend.open_session(SliceImage(pixels, (1.0, 1.0), "CT"))
        answer = backend.ask(session, Turn("", [BoxPrompt(15, 25, 65, 75)]))
        inside = answer.masks[0][30:70, 20:60].mean()
        logic.setBackend(None)
        print(type(backend).__name__, logic.backendDescription(), round(float(inside), 2))
        """
    )
    result = subprocess.run([sys.executable, "-c", script, str(MODULE_DIR)], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    name, *_, inside = result.stdout.split()
    assert name == "EngineProcessBackend" and float(inside) > 0.8, result.stdout
