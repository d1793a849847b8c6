"""One thread owns the model; requests wait in a bounded queue in front of it.

A GPU runs one forward pass at a time anyway, and a single owner thread keeps the backend
free of concurrency: the web server's threads only enqueue work and wait for its future.
When the queue is full, :meth:`ModelWorker.submit` raises :class:`QueueFull` at once with
an estimate of when to retry (the server answers 503 with ``Retry-After``).
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable

log = logging.getLogger("mimo.server")


class QueueFull(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the model queue is full; retry in {retry_after} s")
        self.retry_after = retry_after


class WorkerStopped(Exception):
    """The server is shutting down."""


class ModelWorker:
    def __init__(self, capacity: int = 32, name: str = "mimo-model-worker") -> None:
        if capacity < 1:
            raise ValueError("queue capacity must be at least 1")
        self.capacity = capacity
        self._queue: queue.Queue = queue.Queue(maxsize=capacity)
        self._lock = threading.Lock()
        self._running = 0
        self._durations: deque[float] = deque(maxlen=32)
        self._stopped = False
        self.completed = 0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        if self._stopped:
            raise WorkerStopped("the server is shutting down")
        future: Future = Future()
        try:
            self._queue.put_nowait((future, fn, args, kwargs))
        except queue.Full:
            raise QueueFull(self.retry_after()) from None
        return future

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: the queue ahead times the recent job length."""
        with self._lock:
            mean = sum(self._durations) / len(self._durations) if self._durations else 1.0
        return int(min(max(math.ceil(mean * (self._queue.qsize() + 1) / 2), 1), 60))

    def state(self) -> dict:
        with self._lock:
            running = self._running
        return {"queued": self._queue.qsize(), "running": running, "capacity": self.capacity}

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopped

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, fn, args, kwargs = item
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while it waited
            with self._lock:
                self._running = 1
            start = time.perf_counter()
            try:
                result = fn(*args, **kwargs)
            except BaseException as error:  # noqa: BLE001 - handed to the waiting request
                future.set_exception(error)
            else:
                future.set_result(result)
            finally:
                with self._lock:
                    self._running = 0
                    self._durations.append(time.perf_counter() - start)
                    self.completed += 1

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel what waits, let the running job finish, end the thread."""
        self._stopped = True
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[0].cancel()
        try:
            self._queue.put_nowait(None)
        except queue.Full:  # pragma: no cover - drained just above
            pass
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        while True:  # anything that slipped in while stopping
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[0].cancel()
