"""Run the engine part of a turn on a worker thread; deliver its events to the main thread.

MRML nodes and widgets may only be touched on the main (GUI) thread. A
:class:`BackgroundTask` runs a function that touches neither (the engine: slice image,
backend, masks) on a Python thread, and queues what it reports. The main thread drains the
queue with :meth:`BackgroundTask.poll` (the module calls it from a QTimer, as
SlicerMONAIAuto3DSeg polls its inference process), so the GUI stays responsive and all scene
changes happen on the main thread. No Qt is imported here.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mimo.errors import Cancelled

logger = logging.getLogger(__name__)

#: Event kinds delivered by :meth:`BackgroundTask.poll`.
PROGRESS, DONE, ERROR, CANCELLED = "progress", "done", "error", "cancelled"


@dataclass
class TaskEvent:
    kind: str  # PROGRESS, DONE, ERROR or CANCELLED
    stage: str = ""
    fraction: float = 0.0
    result: Any = None
    error: BaseException | None = None
    traceback: str = ""


class BackgroundTask:
    """One function ``work(progress, cancel)`` on a daemon thread, reporting through a queue.

    ``progress(stage, fraction)`` may be called from the worker; ``cancel`` is a
    ``threading.Event`` the work must check (the engine's backends do). The task ends with
    exactly one DONE, ERROR or CANCELLED event. A task whose cancel event was set ends with
    CANCELLED even if the work finished anyway, so that a stopped turn never changes the scene.
    """

    def __init__(self, work: Callable[[Callable[[str, float], None], threading.Event], Any], name: str = "MIMO turn") -> None:
        self._work = work
        self.name = name
        self.cancelEvent = threading.Event()
        self._queue: queue.Queue[TaskEvent] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._finished = threading.Event()
        self.startTime: float | None = None
        self.elapsed: float | None = None
        self.finalEvent: TaskEvent | None = None

    # -- worker side -------------------------------------------------------------------

    def _progress(self, stage: str, fraction: float) -> None:
        self._queue.put(TaskEvent(PROGRESS, stage=str(stage), fraction=float(fraction)))

    def _run(self) -> None:
        try:
            result = self._work(self._progress, self.cancelEvent)
        except Cancelled as error:
            event = TaskEvent(CANCELLED, error=error)
        except BaseException as error:  # noqa: BLE001  (reported to the main thread, never lost)
            event = TaskEvent(ERROR, error=error, traceback=traceback.format_exc())
        else:
            event = TaskEvent(CANCELLED) if self.cancelEvent.is_set() else TaskEvent(DONE, result=result)
        self.elapsed = time.perf_counter() - (self.startTime or time.perf_counter())
        self._queue.put(event)
        self._finished.set()

    # -- main-thread side --------------------------------------------------------------

    def start(self) -> BackgroundTask:
        if self._thread is not None:
            raise RuntimeError("a BackgroundTask runs once")
        self.startTime = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def cancel(self) -> None:
        """Ask the work to stop (the backend sees the event at its next check)."""
        self.cancelEvent.set()

    @property
    def running(self) -> bool:
        return self._thread is not None and self.finalEvent is None

    @property
    def workerFinished(self) -> bool:
        return self._finished.is_set()

    def poll(self, lend: float = 0.0) -> list[TaskEvent]:
        """The events queued since the last poll (main thread). The last one of a finished task
        is its DONE / ERROR / CANCELLED event; after it, :attr:`running` is False.

        ``lend``: first wait up to this many seconds for the worker with the GIL released. Real
        Slicer holds the GIL whenever it runs C++, so a worker thread's Python (the engine
        client's parsing, its socket reads) advances only while the main thread runs Python
        or waits like this; lent each poll, it runs within one timer period instead of one GIL
        hand-over per period."""
        if lend > 0 and self._thread is not None:
            self._finished.wait(lend)
        events = []
        while True:
            try:
                event = self._queue.get_nowait()
            except queue.Empty:
                break
            if event.kind != PROGRESS:
                if self.cancelEvent.is_set() and event.kind == DONE:
                    event = TaskEvent(CANCELLED)
                self.finalEvent = event
            events.append(event)
        return events

    def wait(self, timeout: float | None = None) -> list[TaskEvent]:
        """Block until the worker ends (batch mode, self-tests) and return the remaining events."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.poll()


def runToCompletion(task: BackgroundTask, onEvent: Callable[[TaskEvent], None] | None = None, timeout: float | None = None) -> TaskEvent:
    """Start ``task`` (if needed), wait for it and return its final event (for scripts and tests)."""
    if task._thread is None:
        task.start()
    deadline = None if timeout is None else time.monotonic() + timeout
    while task.finalEvent is None:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        if remaining == 0.0:
            raise TimeoutError(f"{task.name} did not finish within {timeout} s")
        task._finished.wait(0.05 if remaining is None else min(0.05, remaining))
        for event in task.poll():
            if onEvent is not None:
                onEvent(event)
    return task.finalEvent
