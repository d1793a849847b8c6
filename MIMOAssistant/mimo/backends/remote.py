"""The remote backend: the engine's Backend interface, answered by a MIMO server.

    backend = RemoteBackend("http://gpu-box:8765", token=..., consent=True)
    session = backend.open_session(slice_image)     # uploads the pixels once
    answer = backend.ask(session, Turn("Segment the liver.", [BoxPrompt(...)]))

Privacy: nothing, not even a health check, is sent until the caller has agreed
(``consent=True`` or :meth:`RemoteBackend.grant_consent`); until then every call raises
:class:`ConsentRequired`. What is sent is a :class:`~mimo.backend.SliceImage` (display pixels,
pixel size, modality, whether the size is calibrated) and the turn (question, prompts,
history): that object carries no patient name, identifiers, dates or DICOM tags by design.

Robustness: one ``requests.Session`` keeps connections open; GET and DELETE are retried on
connection errors; any request is retried when the server says its queue is full (503,
honouring ``Retry-After``) or when the connection could not be opened (nothing was sent);
an ask is never re-sent after it may have reached the server. When the server has lost a
session (expired, evicted, restarted) the image kept here is uploaded again and the ask
retried once, so callers never see it.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from .. import __version__
from ..backend import Answer, Backend, BackendInfo, Capabilities, ProgressCallback, SliceImage, Turn, check_cancel
from ..errors import BackendError, Cancelled, GeometryError, MimoError, PromptError
from ..prompts import prompt_to_dict
from ..server.wire import API_VERSION, WireError, answer_from_wire, api_major, encode_image

log = logging.getLogger("mimo.remote")


class RemoteError(BackendError):
    """The server could not be used (base of the errors below)."""


class ConsentRequired(RemoteError):
    """Nothing may be sent before the user has agreed to send images to the server."""


class ServerUnreachable(RemoteError):
    """No connection, a timeout, or the connection broke during a request."""


class AuthenticationFailed(RemoteError):
    """401/403: no token, a wrong token, or a host the server does not serve."""


class ApiVersionMismatch(RemoteError):
    """The server speaks another major version of the API (or is not a MIMO server)."""


class ServerBusy(RemoteError):
    """The server's queue stayed full for longer than the client waits."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _SessionLost(Exception):
    pass


_ENGINE_ERRORS = {"PromptError": PromptError, "GeometryError": GeometryError, "Cancelled": Cancelled, "BackendError": BackendError}


def read_token(path) -> str:
    """The bearer token from a file (one line)."""
    from pathlib import Path

    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as error:
        raise RemoteError(f"cannot read the token file {path}: {error.strerror or error}") from None
    if not token:
        raise RemoteError(f"the token file {path} is empty")
    return token


def _is_loopback(host: str) -> bool:
    host = (host or "").strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _not_sent(error: BaseException) -> bool:
    """True when a requests error happened before the request could reach the server."""
    import requests
    from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

    if isinstance(error, requests.exceptions.ConnectTimeout):
        return True
    seen, todo = set(), [error]
    while todo:
        current = todo.pop()
        if id(current) in seen or current is None:
            continue
        seen.add(id(current))
        if isinstance(current, (NewConnectionError, ConnectTimeoutError, ConnectionRefusedError)):
            return True
        todo.extend(a for a in getattr(current, "args", ()) if isinstance(a, BaseException))
        todo.extend([getattr(current, "reason", None), current.__cause__, current.__context__])
    return False


@dataclass
class _RemoteSession:
    image: SliceImage
    server_id: str | None
    last_used: float


class RemoteBackend(Backend):
    """A :class:`~mimo.backend.Backend` whose sessions and turns run on a MIMO server."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        timeout: float | tuple[float, float] = (5.0, 300.0),
        consent: bool = False,
        retries: int = 3,
        max_busy_wait_s: float = 120.0,
        max_sessions: int = 32,
    ) -> None:
        super().__init__(max_sessions=max_sessions)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RemoteError(f"server URL must look like http://host:port, got {url!r}")
        if parts.username or parts.password:
            raise RemoteError("put the token in a token file, not in the server URL")
        self.url = url.rstrip("/")
        self._token = token
        self.timeout = timeout if isinstance(timeout, tuple) else (min(float(timeout), 10.0), float(timeout))
        self.retries = max(0, int(retries))
        self.max_busy_wait_s = max_busy_wait_s
        self._consent = bool(consent)
        self._http = None
        self._info: dict | None = None
        self._info_lock = threading.Lock()
        self.last_encode_seconds = 0.0
        self.stats = {"requests": 0, "bytes_sent": 0, "bytes_received": 0, "retries": 0, "reuploads": 0}
        self._stats_lock = threading.Lock()
        if parts.scheme == "http" and not _is_loopback(parts.hostname):
            warnings.warn(
                f"{self.url} is not encrypted: images and the token would cross the network in clear text; "
                "serve with TLS (--ssl-certfile/--ssl-keyfile) or through an SSH tunnel",
                stacklevel=2,
            )

    # --- consent and transport ---------------------------------------------------------

    @property
    def consent(self) -> bool:
        return self._consent

    def grant_consent(self) -> None:
        """The user agreed that slice pixels and prompts may be sent to ``self.url``."""
        self._consent = True

    def revoke_consent(self) -> None:
        self._consent = False

    def _session(self):
        if self._http is None:
            import requests

            self._http = requests.Session()
            self._http.headers["User-Agent"] = f"mimo-assistant/{__version__}"
            if self._token:
                self._http.headers["Authorization"] = f"Bearer {self._token}"
        return self._http

    def _count(self, response, received: int | None = None) -> None:
        """Bytes of HTTP messages (request line, headers, body) each way, for the benchmarks."""
        request = response.request
        sent = len(request.body or b"") + len(request.method) + len(request.url) + 12 + sum(len(k) + len(v) + 4 for k, v in request.headers.items())
        received = len(response.content) if received is None else received
        received += 17 + sum(len(k) + len(v) + 4 for k, v in response.headers.items())
        with self._stats_lock:
            self.stats["requests"] += 1
            self.stats["bytes_sent"] += sent
            self.stats["bytes_received"] += received

    def _request(
        self,
        method: str,
        path: str,
        body: dict | None = None,
        idempotent: bool | None = None,
        stream: bool = False,
        what: str = "",
        retries: int | None = None,
        retry_busy: bool = True,
    ):
        """One API call with the retry policy; returns the response (status < 400 or a mapped error)."""
        import requests

        if not self._consent:
            raise ConsentRequired(
                f"sending images to {self.url} needs the user's consent: pass consent=True or call grant_consent() "
                "(on the command line, giving --server is that consent)"
            )
        idempotent = method in ("GET", "DELETE") if idempotent is None else idempotent
        data = json.dumps(body, allow_nan=False, separators=(",", ":")).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        what = what or f"{method} {path}"
        deadline = time.monotonic() + self.max_busy_wait_s
        retries = self.retries if retries is None else retries
        attempt = 0
        while True:
            try:
                response = self._session().request(method, self.url + path, data=data, headers=headers, timeout=self.timeout, stream=stream)
            except requests.exceptions.RequestException as error:
                retry = attempt < retries and (idempotent or _not_sent(error))
                if retry:
                    attempt += 1
                    with self._stats_lock:
                        self.stats["retries"] += 1
                    time.sleep(min(0.1 * 2**attempt, 1.0))
                    continue
                if isinstance(error, requests.exceptions.Timeout) and not _not_sent(error):
                    raise ServerUnreachable(f"the server at {self.url} did not answer {what} within {self.timeout[1]:.0f} s") from None
                if _not_sent(error):
                    raise ServerUnreachable(f"cannot reach the MIMO server at {self.url} ({type(error).__name__}); is it running?") from None
                raise ServerUnreachable(f"lost the connection to the MIMO server at {self.url} during {what}; the server may have stopped") from None
            if not stream:
                self._count(response)
            if response.status_code == 503 and retry_busy:
                retry_after = _retry_after(response)
                message = _message(response)
                if time.monotonic() + retry_after < deadline:
                    response.close()
                    with self._stats_lock:
                        self.stats["retries"] += 1
                    time.sleep(retry_after)
                    continue
                response.close()
                raise ServerBusy(f"the server at {self.url} stayed busy: {message}", retry_after)
            if response.status_code in (401, 403):
                message = _message(response)
                response.close()
                raise AuthenticationFailed(f"the server at {self.url} refused the request ({response.status_code}): {message}")
            return response

    def _raise_for(self, response, what: str) -> None:
        """Map an error response to the engine's exceptions (same types and messages as a local run)."""
        if response.status_code < 400:
            return
        kind, message = _error(response)
        if response.status_code == 404 and kind == "SessionNotFound":
            raise _SessionLost(message)
        if kind in _ENGINE_ERRORS:
            raise _ENGINE_ERRORS[kind](message)
        if response.status_code == 404 and kind == "NotFound":
            raise ApiVersionMismatch(f"{self.url} has no {what} endpoint: is it a MIMO server of API {api_major(API_VERSION)}.x?")
        if response.status_code == 413:
            raise RemoteError(f"the server refused {what} as too large: {message}")
        raise RemoteError(f"the server could not do {what} ({response.status_code}): {message}")

    # --- the Backend interface ---------------------------------------------------------

    def server_info(self) -> dict:
        """``GET /v1/info`` (cached), after checking the API version."""
        with self._info_lock:
            if self._info is None:
                response = self._request("GET", "/v1/info", what="info")
                if response.status_code == 404:
                    raise ApiVersionMismatch(f"{self.url} does not serve /v1/info: not a MIMO server of API {api_major(API_VERSION)}.x")
                self._raise_for(response, "info")
                try:
                    info = response.json()
                    version = str(info["api_version"])
                except (ValueError, KeyError, TypeError):
                    raise ApiVersionMismatch(f"{self.url} did not answer /v1/info like a MIMO server") from None
                if api_major(version) != api_major(API_VERSION):
                    raise ApiVersionMismatch(
                        f"the server at {self.url} speaks API {version}, this client speaks {API_VERSION}: "
                        "update the older side so that the major versions match"
                    )
                self._info = info
            return self._info

    def info(self) -> BackendInfo:
        backend = self.server_info()["backend"]
        capabilities = backend["capabilities"]
        return BackendInfo(
            name=backend["name"],
            version=backend["version"],
            model=backend["model"],
            device=f"{backend['device']} (remote {urlsplit(self.url).netloc})",
            capabilities=Capabilities(bool(capabilities["text_answers"]), frozenset(capabilities["prompt_types"]), bool(capabilities["requires_prompt"])),
        )

    def health(self) -> dict:
        response = self._request("GET", "/v1/health", what="health", retry_busy=False)  # 503 here means "not ready"
        if response.status_code not in (200, 503):
            self._raise_for(response, "health")
        return response.json()

    def _encode(self, image: SliceImage) -> Any:  # pragma: no cover - the server encodes
        raise NotImplementedError

    def _answer(self, image, state, turn, progress, cancel) -> Answer:  # pragma: no cover - the server answers
        raise NotImplementedError

    def _upload(self, image: SliceImage) -> str:
        limits = self.server_info()["limits"]
        rows, cols = image.shape
        if rows * cols > limits.get("max_image_pixels", float("inf")):
            raise RemoteError(f"the slice of {rows} x {cols} pixels is larger than the server accepts ({int(limits['max_image_pixels'])} pixels)")
        body = {
            "image": encode_image(image.pixels),
            "spacing_mm": [float(v) for v in image.spacing_mm],
            "modality": image.modality,
            "calibrated": bool(image.calibrated),
        }
        start = time.perf_counter()
        # Re-sending an upload is harmless (a duplicate expires unused), so it may be retried.
        response = self._request("POST", "/v1/sessions", body, idempotent=True, what="the image upload")
        self._raise_for(response, "the image upload")
        self.last_encode_seconds = time.perf_counter() - start
        try:
            return str(response.json()["session_id"])
        except (ValueError, KeyError, TypeError):
            raise RemoteError("the server answered the upload without a session id") from None

    def open_session(self, image: SliceImage) -> str:
        if not isinstance(image, SliceImage):
            raise BackendError("open_session takes a SliceImage")
        server_id = self._upload(image)
        local_id = uuid.uuid4().hex
        evicted = []
        with self._lock:
            self._sessions[local_id] = _RemoteSession(image, server_id, time.monotonic())
            while len(self._sessions) > self.max_sessions:
                evicted.append(self._sessions.popitem(last=False)[1])
        for record in evicted:
            self._delete_quietly(record.server_id)
        return local_id

    def has_session(self, session_id: str) -> bool:
        with self._lock:
            return session_id in self._sessions

    def close_session(self, session_id: str) -> None:
        """Forget a session here and on the server; never raises (it runs in ``finally`` blocks)."""
        with self._lock:
            record = self._sessions.pop(session_id, None)
        if record is not None:
            self._delete_quietly(record.server_id)

    def close(self) -> None:
        with self._lock:
            records = list(self._sessions.values())
            self._sessions.clear()
        for record in records:
            self._delete_quietly(record.server_id)
        if self._http is not None:
            self._http.close()
            self._http = None

    def _delete_quietly(self, server_id: str | None) -> None:
        if server_id is None or not self._consent:
            return
        try:  # no retries: a dead server must not delay cleanup, and the session expires anyway
            self._request("DELETE", f"/v1/sessions/{server_id}", what="closing a session", retries=0).close()
        except MimoError as error:
            log.info("could not close server session %s: %s", server_id, error)

    def cancel_turn(self, turn_id: str) -> bool:
        """Ask the server to cancel a queued or running turn; False when it is not running."""
        response = self._request("POST", f"/v1/turns/{turn_id}/cancel", idempotent=True, what="cancel")
        return response.status_code == 202

    def ask(self, session_id: str, turn: Turn, progress: ProgressCallback | None = None, cancel: threading.Event | None = None) -> Answer:
        record = self._touch_session(session_id)
        # The same checks and messages as a local backend, before anything is sent.
        turn = self.checked_turn(turn, record.image.shape)
        prompts = turn.prompts
        check_cancel(cancel)
        turn_id = uuid.uuid4().hex
        body = {
            "question": turn.question,
            "prompts": [prompt_to_dict(p) for p in prompts],
            "history": [{"role": m.role, "text": m.text} for m in turn.history],
            "turn_id": turn_id,
        }
        for attempt in (0, 1):
            if record.server_id is None:
                record.server_id = self._upload(record.image)
            try:
                return self._ask_once(record.server_id, body, turn_id, progress, cancel)
            except _SessionLost:
                if attempt:
                    raise RemoteError("the server lost the session again right after it was re-uploaded") from None
                log.info("server lost session %s; uploading the image again", record.server_id)
                with self._stats_lock:
                    self.stats["reuploads"] += 1
                record.server_id = None
        raise AssertionError("unreachable")  # pragma: no cover

    def _ask_once(self, server_id: str, body: dict, turn_id: str, progress, cancel) -> Answer:
        start = time.perf_counter()

        def call() -> dict:
            if progress is None:
                response = self._request("POST", f"/v1/sessions/{server_id}/ask", body, idempotent=False, what="the question")
                self._raise_for(response, "the question")
                return _json(response)
            return self._ask_stream(server_id, body, progress)

        data = self._with_cancel_watch(turn_id, cancel, call)
        try:
            answer = answer_from_wire(data)
        except WireError as error:
            raise RemoteError(str(error)) from None
        answer.timings["round_trip_s"] = time.perf_counter() - start
        return answer

    def ground_anatomy(self, volume, question: str, atlas: str | None = None, progress: ProgressCallback | None = None,
                       cancel: threading.Event | None = None):
        """The server registers its atlas to ``volume`` (voxels and IJK-to-RAS only are sent)."""
        from ..server.wire import anatomy_from_wire, encode_volume

        check_cancel(cancel)
        array = volume.array if volume.array.dtype.name in ("uint8", "int8", "uint16", "int16", "int32", "float32") else volume.array.astype(np.float32)
        turn_id = uuid.uuid4().hex
        body = {"volume": encode_volume(array), "ijk_to_ras": np.asarray(volume.ijk_to_ras, float).tolist(), "modality": volume.modality,
                "question": question, "atlas": atlas, "turn_id": turn_id}
        data = self._with_cancel_watch(turn_id, cancel, lambda: self._stream("/v1/anatomy/stream", body, progress or (lambda s, f: None), "the 3D question"))
        try:
            return anatomy_from_wire(data, tuple(volume.array.shape[:3]))
        except WireError as error:
            raise RemoteError(str(error)) from None

    def _with_cancel_watch(self, turn_id: str, cancel: threading.Event | None, call):
        """Run ``call()``; while it runs, a set ``cancel`` cancels ``turn_id`` on the server."""
        watcher_done = threading.Event()
        if cancel is not None:

            def watch() -> None:
                while not watcher_done.wait(0.05):
                    if cancel.is_set():
                        try:
                            self.cancel_turn(turn_id)
                        except MimoError:
                            pass
                        return

            threading.Thread(target=watch, name="mimo-cancel-watch", daemon=True).start()
        try:
            return call()
        finally:
            watcher_done.set()

    def _ask_stream(self, server_id: str, body: dict, progress: ProgressCallback) -> dict:
        return self._stream(f"/v1/sessions/{server_id}/ask/stream", body, progress, "the question")

    def _stream(self, path: str, body: dict, progress: ProgressCallback, what: str) -> dict:
        import requests

        response = self._request("POST", path, body, idempotent=False, stream=True, what=what)
        try:
            if response.status_code >= 400:
                response.content  # noqa: B018 - read the error body
                self._raise_for(response, what)
            event, data_lines, received = None, [], 0
            response.encoding = "utf-8"  # SSE is UTF-8 whatever the headers say
            for line in response.iter_lines(decode_unicode=True):
                received += len(line) + 1
                if line is None:
                    continue
                if line == "":
                    if event and data_lines:
                        payload = json.loads("\n".join(data_lines))
                        if event == "progress":
                            progress(str(payload.get("stage", "")), float(payload.get("fraction", 0.0)))
                        elif event == "answer":
                            return payload
                        elif event == "error":
                            kind, message = payload.get("type", "RemoteError"), payload.get("message", "")
                            if kind == "SessionNotFound":
                                raise _SessionLost(message)
                            raise _ENGINE_ERRORS.get(kind, RemoteError)(message)
                    event, data_lines = None, []
                elif line.startswith(":"):
                    continue
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data_lines.append(line[5:].lstrip())
        except requests.exceptions.RequestException:
            raise ServerUnreachable(f"lost the connection to the MIMO server at {self.url} during {what}; the server may have stopped") from None
        except json.JSONDecodeError:
            raise RemoteError("the server sent a malformed event") from None
        finally:
            self._count(response, received)
            response.close()
        raise ServerUnreachable(f"the answer stream from {self.url} ended before the answer; the server may have stopped")


def _retry_after(response) -> float:
    try:
        return min(max(float(response.headers.get("Retry-After", "1")), 0.1), 30.0)
    except ValueError:
        return 1.0


def _json(response) -> dict:
    try:
        return response.json()
    except ValueError:
        raise RemoteError(f"the server sent a response that is not JSON (status {response.status_code})") from None


def _error(response) -> tuple[str, str]:
    try:
        error = response.json()["error"]
        return str(error.get("type", "")), str(error.get("message", ""))
    except (ValueError, KeyError, TypeError, AttributeError):
        return "", (response.text or "")[:200]


def _message(response) -> str:
    return _error(response)[1] or f"status {response.status_code}"
