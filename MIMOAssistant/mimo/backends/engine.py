"""The local model in its own process: a supervised loopback ``mimo-assistant serve``.

    backend = EngineProcessBackend("litemedsam", device="cpu")
    session = backend.open_session(slice_image)   # starts the engine on first use
    answer = backend.ask(session, Turn("", [BoxPrompt(...)]))

Why a process: inside 3D Slicer the application thread holds Python's GIL whenever it runs
C++ (its Qt event loop included), so model work on a Python thread of Slicer's process only
advances during Python callbacks: a LiteMedSAM turn measured 2.7 s alone and 31 s that way.
In a child process the model has its own interpreter and GIL; the caller's side of a turn is an
HTTP exchange on loopback (the :class:`RemoteBackend` client), which needs little Python time.

The engine is started once and kept warm (the model loads once). It listens on 127.0.0.1 only,
requires a random token (another local user cannot drive it) and exits when this process ends
(its standard input is a pipe from here). If it dies, the turn in flight fails with
:class:`EngineStopped` (one line, with its exit status) and the next call starts it again; the
client re-uploads the slices of sessions opened before, so callers keep their session ids.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import threading
import time
from pathlib import Path

from ..backend import Answer, BackendInfo, ProgressCallback, SliceImage, Turn, check_cancel
from ..errors import MimoError
from ..server.local import ServerProcess
from .remote import RemoteBackend, RemoteError, ServerUnreachable

#: Seconds the engine may take to import torch and load its weights before it is given up.
STARTUP_TIMEOUT_S = 300.0


class EngineStopped(RemoteError):
    """The engine process exited (crash, out of memory, killed) while or before it was used."""


class EngineProcessBackend(RemoteBackend):
    """A local model (``litemedsam`` or ``mimo``) served by a child process on loopback."""

    def __init__(
        self,
        backend_name: str,
        model: str | None = None,
        device: str = "auto",
        python: str | None = None,
        startup_timeout: float = STARTUP_TIMEOUT_S,
    ) -> None:
        self.backend_name = backend_name
        self.startup_timeout = float(startup_timeout)
        self._workdir = Path(tempfile.mkdtemp(prefix="mimo-engine-"))  # 0700: only this user reads the token
        token = secrets.token_urlsafe(32)
        token_file = self._workdir / "token"
        token_file.write_text(token, encoding="utf-8")
        os.chmod(token_file, 0o600)
        self.log_path = self._workdir / "engine.log"
        # A whole volume travels for 3D answers: on loopback, the body limit is the volume reader's.
        args = ["--backend", backend_name, "--device", device, "--token-file", str(token_file), "--max-body-mb", "8192"]
        if model:
            args += ["--model", str(model)]
        self.process = ServerProcess(args=tuple(args), log_path=self.log_path, python=python, exit_with_parent=True)
        # Loopback to a child of this process: no byte leaves the machine, so no consent is asked.
        super().__init__(self.process.url, token=token, consent=True, timeout=(5.0, 900.0))
        self._start_lock = threading.Lock()
        self._ready = False
        self.starts = 0
        self.last_exit_status: int | None = None

    # -- the engine process ---------------------------------------------------------------

    def start(self) -> None:
        """Launch the engine if it is not running; returns at once (the model loads meanwhile)."""
        with self._start_lock:
            if not self.process.running:
                self._launch()

    def _launch(self) -> None:
        if self.process.process is not None:
            self.last_exit_status = self.process.process.returncode
        self.process.launch()
        self.starts += 1
        self._ready = False
        self._info = None  # a restarted engine answers /v1/info again

    def load(self, cancel: threading.Event | None = None) -> None:
        """Start the engine when needed and wait until its model is loaded (``cancel`` stops the
        wait; the engine keeps loading, warm for the next question)."""
        with self._start_lock:
            if not self.process.running:
                self._launch()
            deadline = time.monotonic() + self.startup_timeout
            while not self._ready:
                check_cancel(cancel)
                try:
                    self.process.wait_ready(min(1.0, max(0.1, deadline - time.monotonic())))
                    self._ready = True
                except MimoError as error:
                    if self.process.running and time.monotonic() < deadline:
                        continue
                    raise EngineStopped(f"the MIMO engine did not start: {error}{self._log_tail()}") from None

    def _log_tail(self, lines: int = 3) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        except OSError:
            return ""
        tail = [line.strip() for line in text[-lines:] if line.strip()]
        return f" (engine log {self.log_path}: {' | '.join(tail)})" if tail else ""

    def _stopped(self, what: str) -> EngineStopped | None:
        """An EngineStopped error when the engine has exited, else None."""
        process = self.process.process
        if process is None or process.poll() is None:
            return None
        self._ready = False
        status = process.returncode
        how = f"was killed (signal {-status})" if status < 0 else f"exited with status {status}"
        return EngineStopped(f"the MIMO engine process {how} during {what}; nothing was changed. The next question restarts it.")

    def _call(self, what: str, function, *args, **kwargs):
        self.load()
        try:
            return function(*args, **kwargs)
        except ServerUnreachable:
            stopped = self._stopped(what)
            if stopped is None:
                raise
            raise stopped from None

    # -- the Backend interface (the RemoteBackend client, on the supervised engine) ----------

    def info(self) -> BackendInfo:
        remote = self._call("the model check", super().info)
        return BackendInfo(remote.name, remote.version, remote.model, f"{remote.device.split(' (')[0]} (engine process)", remote.capabilities)

    def open_session(self, image: SliceImage) -> str:
        return self._call("the image upload", super().open_session, image)

    def ask(self, session_id: str, turn: Turn, progress: ProgressCallback | None = None, cancel: threading.Event | None = None) -> Answer:
        self.load(cancel)
        return self._call("the question", super().ask, session_id, turn, progress, cancel)

    def ground_anatomy(self, volume, question: str, atlas: str | None = None, progress: ProgressCallback | None = None,
                       cancel: threading.Event | None = None):
        self.load(cancel)
        return self._call("the 3D question", super().ground_anatomy, volume, question, atlas, progress, cancel)

    def close(self) -> None:
        """Close the sessions, stop the engine and delete its token."""
        super().close()  # a dead engine refuses the deletes at once
        self.process.stop()
        shutil.rmtree(self._workdir, ignore_errors=True)
