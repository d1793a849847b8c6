#!/usr/bin/env python3
"""Benchmark (issue 24): a LiteMedSAM box turn run the panel's way (BackgroundTask on a thread,
the main thread polling every 50 ms), with the model in this process (the old local mode) and in
an engine process (the module's local mode), each alone and under a Slicer-like loop: the main
thread holds the GIL in C code (ctypes.PyDLL usleep, as Slicer's Qt event loop does) and runs
Python only in the timer slot.

Run from the repository root: python scripts/slicer_gil_loop_bench.py (prints median seconds of 3)."""
import ctypes
import statistics
import sys
import time

sys.path.insert(0, "MIMOAssistant")
import numpy as np  # noqa: E402
from mimo.backend import SliceImage, Turn, create_backend  # noqa: E402
from mimo.backends.engine import EngineProcessBackend  # noqa: E402
from mimo.prompts import BoxPrompt  # noqa: E402
from MIMOAssistantLib.panel import WORKER_LEND_S  # noqa: E402
from MIMOAssistantLib.worker import BackgroundTask  # noqa: E402

rng = np.random.default_rng(0)
pixels = (rng.random((256, 256)) * 255).astype(np.uint8)
pixels[80:160, 90:170] = 220
image = SliceImage(np.repeat(pixels[..., None], 3, axis=2), (1.0, 1.0), "CT", calibrated=False)
libc = ctypes.PyDLL(None)  # PyDLL: the call keeps the GIL, as Slicer's C++ event loop does


def turn(backend):
    def work(progress, cancel):
        session = backend.open_session(image)
        try:
            return backend.ask(session, Turn("", [BoxPrompt(85, 75, 175, 165)], []), progress, cancel)
        finally:
            backend.close_session(session)

    return work


def panel_time(work, slicer_like: bool) -> float:
    start = time.perf_counter()
    task = BackgroundTask(work).start()
    while task.running:
        if slicer_like:
            libc.usleep(45000)  # C++ event processing between timer slots, GIL held
        else:
            time.sleep(0.045)  # PySide6-like: the GIL is released while waiting
        task.poll(WORKER_LEND_S)  # the 50 ms poll timer slot (Python)
    return time.perf_counter() - start


engine = EngineProcessBackend("litemedsam", device="cpu")
engine.load()
for name, backend in (("model in this process", create_backend("litemedsam", None, "cpu")), ("engine process", engine)):
    work = turn(backend)
    work(None, None)  # warm up
    alone = statistics.median(panel_time(work, False) for _ in range(3))
    loop = statistics.median(panel_time(work, True) for _ in range(3))
    print(f"{name}: alone {alone:.2f} s, Slicer-like loop {loop:.2f} s ({loop / alone:.2f}x)")
engine.close()
