#!/usr/bin/env python3
"""Benchmark (issue 24): a LiteMedSAM turn run the panel's way (BackgroundTask on a thread, main thread polling),
alone and under a Slicer-like loop: the main thread holds the GIL in C code (ctypes.PyDLL
usleep, as Slicer's Qt event loop does) and runs Python only in a 50 ms timer slot.

Run from the repository root: python scripts/slicer_gil_loop_bench.py (prints both times)."""
import ctypes, sys, time
sys.path.insert(0, "MIMOAssistant")
import numpy as np
from mimo.backend import SliceImage, Turn, create_backend
from mimo.prompts import BoxPrompt
from MIMOAssistantLib.worker import BackgroundTask

backend = create_backend("litemedsam", None, "cpu")
rng = np.random.default_rng(0)
pixels = (rng.random((256, 256)) * 255).astype(np.uint8)
pixels[80:160, 90:170] = 220

def work(progress, cancel):
    session = backend.open_session(SliceImage(np.repeat(pixels[..., None], 3, axis=2), (1.0, 1.0), "CT", calibrated=False))
    try:
        return backend.ask(session, Turn("", [BoxPrompt(85, 75, 175, 165)], []))
    finally:
        backend.close_session(session)

work(None, None)  # warm up
libc = ctypes.PyDLL(None)  # PyDLL: the call keeps the GIL, as Slicer's C++ event loop does
for mode in ("engine alone", "Slicer-like loop"):
    start = time.perf_counter()
    task = BackgroundTask(work).start()
    while task.running:
        if mode == "Slicer-like loop":
            libc.usleep(45000)  # C++ event processing between timer slots, GIL held
        else:
            time.sleep(0.045)    # PySide6-like: the GIL is released while waiting
        task.poll()               # the 50 ms poll timer slot (Python)
    print(f"{mode}: {time.perf_counter() - start:.2f} s")
