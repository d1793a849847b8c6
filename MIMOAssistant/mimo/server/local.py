"""Start a MIMO server on loopback: in a thread of this process, or as a subprocess.

For benchmarks and tests; a real deployment runs ``mimo-assistant serve``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..errors import MimoError


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_healthy(url: str, timeout: float = 60.0, process: subprocess.Popen | None = None) -> dict:
    """Poll ``/v1/health`` until it answers 200; fail early when ``process`` exits."""
    import requests

    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise MimoError(f"the server process exited with status {process.returncode} before it was ready")
        try:
            response = requests.get(f"{url}/v1/health", timeout=2)
            if response.status_code == 200:
                return response.json()
            last = f"status {response.status_code}"
        except requests.RequestException as error:
            last = type(error).__name__
        time.sleep(0.1)
    raise MimoError(f"the server at {url} was not ready within {timeout:.0f} s ({last})")


class ThreadedServer:
    """A uvicorn server for ``app`` on a free loopback port, in a daemon thread."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        import uvicorn

        self.app = app
        self.host = host
        self._config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on", timeout_keep_alive=30)
        self._server = uvicorn.Server(self._config)
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> "ThreadedServer":
        self._thread = threading.Thread(target=self._server.run, name="mimo-test-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise MimoError("the threaded server did not start")
            time.sleep(0.02)
        return self

    @property
    def port(self) -> int:
        return int(self._server.servers[0].sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout: float = 15.0) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> "ThreadedServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class ServerProcess:
    """``mimo-assistant serve`` in a subprocess on a fixed loopback port (so it can restart there).

    ``python`` is the interpreter that runs it (default: this one). With ``exit_with_parent``
    the server reads its standard input, a pipe from this process, and exits when the pipe
    closes: a supervisor that crashes or is killed leaves no engine behind.
    """

    def __init__(
        self,
        port: int | None = None,
        args: tuple[str, ...] = (),
        env: dict | None = None,
        log_path: Path | None = None,
        python: str | None = None,
        exit_with_parent: bool = False,
    ) -> None:
        self.port = port or free_port()
        self.args = tuple(args)
        self.env = env
        self.log_path = log_path
        self.python = python or sys.executable
        self.exit_with_parent = exit_with_parent
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def launch(self) -> "ServerProcess":
        """Start the process and return at once (:meth:`wait_ready` waits for the model)."""
        env = dict(os.environ if self.env is None else self.env)
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
        command = [self.python, "-m", "mimo.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning", *self.args]
        if self.exit_with_parent:
            command.append("--exit-with-parent")
        output = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        stdin = subprocess.PIPE if self.exit_with_parent else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(command, env=env, stdin=stdin, stdout=output, stderr=subprocess.STDOUT)
        except OSError as error:
            raise MimoError(f"cannot start the engine with {self.python}: {error.strerror or error}") from None
        finally:
            if self.log_path:
                output.close()
        return self

    def wait_ready(self, timeout: float = 120.0) -> dict:
        return wait_healthy(self.url, timeout, self.process)

    def start(self, timeout: float = 120.0) -> "ServerProcess":
        self.launch().wait_ready(timeout)
        return self

    def kill(self) -> None:
        """SIGKILL: the server dies mid-whatever, as in a crash or an out-of-memory kill."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is not None and self.process.stdin is not None:
            self.process.stdin.close()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
