"""The MIMO server: ``mimo-assistant serve`` runs one backend behind a versioned HTTP API.

Endpoints (JSON unless noted; OpenAPI schema at ``/v1/openapi.json``):

* ``GET  /v1/health`` — 200 when ready, with the queue state; the only endpoint that never
  needs the token;
* ``GET  /v1/info`` — API version, backend, capabilities and the server's limits;
* ``POST /v1/sessions`` — upload a slice image once (see :mod:`mimo.server.wire`); the server
  encodes it and keeps the embedding until the session is idle for ``session_ttl_s``;
* ``GET  /v1/sessions/{id}``, ``DELETE /v1/sessions/{id}``;
* ``POST /v1/sessions/{id}/ask`` — question, prompts (``prompt_to_dict`` format), history ->
  the answer with bit-packed masks;
* ``POST /v1/sessions/{id}/ask/stream`` — the same as server-sent events: ``turn``,
  ``progress`` (stage, fraction; token generation reports as stage ``generate``), then
  ``answer`` or ``error``;
* ``POST /v1/turns/{turn_id}/cancel`` (or ``DELETE /v1/turns/{turn_id}``) — cancel a
  queued or running turn.

Errors are ``{"error": {"type", "message", "status"}}``: 401/403 token, 404 unknown session,
409 cancelled turn, 413 too large, 422 invalid input (with the engine's own message for
prompts), 503 queue full (``Retry-After``). A client's mistake never yields a 5xx.

Privacy: the server receives pixels, pixel size, modality and the turn; it logs only ids,
sizes, counts and timings, never the question, the history or pixel values. It refuses to
listen beyond loopback without a token, and without a token it answers only requests whose
``Host`` is a loopback name (a web page cannot reach it through DNS rebinding).
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import ipaddress
import json
import logging
import os
import sys
import threading
import time
import uuid
from collections import Counter
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..backend import Backend, Message, SliceImage, Turn, check_cancel
from ..errors import BackendError, Cancelled, MimoError
from ..prompts import prompt_from_dict, validate_prompts
from .wire import API_VERSION, IMAGE_ENCODINGS, IMAGE_FILTERS, MASK_ENCODING, PayloadTooLarge, answer_to_wire, check_image_shape, decode_image
from .worker import ModelWorker, QueueFull, WorkerStopped

log = logging.getLogger("mimo.server")

MAX_PROMPTS = 64
MAX_VERTICES = 1024
MAX_HISTORY = 64
MAX_TEXT_CHARS = 8000
MAX_COORDINATE = 1e7
HEALTH_PATH = "/v1/health"


@dataclass
class ServerConfig:
    max_image_pixels: int = 4096 * 4096
    max_body_bytes: int = 96 * 2**20
    session_ttl_s: float = 900.0
    max_sessions: int = 64
    max_session_bytes: int = 2 * 2**30
    """Pixels kept for sessions; the least recently used idle ones go first past it."""
    queue_capacity: int = 32
    token: str | None = None
    loopback_hosts_only: bool | None = None
    """Accept only loopback ``Host`` headers; default: when there is no token."""

    def limits(self) -> dict:
        return {
            "max_image_pixels": self.max_image_pixels,
            "max_body_bytes": self.max_body_bytes,
            "max_prompts": MAX_PROMPTS,
            "max_vertices": MAX_VERTICES,
            "max_history": MAX_HISTORY,
            "max_text_chars": MAX_TEXT_CHARS,
            "session_ttl_s": self.session_ttl_s,
            "max_sessions": self.max_sessions,
            "queue_capacity": self.queue_capacity,
        }


# --- request and response bodies -----------------------------------------------------------

Finite = Annotated[float, Field(allow_inf_nan=False, ge=-MAX_COORDINATE, le=MAX_COORDINATE)]
Pair = Annotated[list[Finite], Field(min_length=2, max_length=2)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImagePayload(_Strict):
    """A uint8 slice image, filtered and deflated (see ``mimo.server.wire``)."""

    dtype: Literal["uint8"]
    shape: Annotated[list[Annotated[int, Field(ge=1, le=1 << 20)]], Field(min_length=3, max_length=3)]
    encoding: Literal["zlib", "raw"] = "zlib"
    filter: Literal["sub", "none"] = "none"
    data: str


class SessionRequest(_Strict):
    image: ImagePayload
    spacing_mm: Annotated[list[Annotated[float, Field(gt=0, le=1e4, allow_inf_nan=False)]], Field(min_length=2, max_length=2)] = [1.0, 1.0]
    modality: str = Field("OT", pattern=r"^[A-Za-z0-9 _&().,/+-]{1,64}$", description="e.g. CT, MR, US, XR, RGB, OT")
    calibrated: bool = True


class BoxIn(_Strict):
    type: Literal["box"]
    box: Annotated[list[Finite], Field(min_length=4, max_length=4)]


class PointIn(_Strict):
    type: Literal["point"]
    point: Pair
    positive: bool = True


class ScribbleIn(_Strict):
    type: Literal["scribble"]
    points: Annotated[list[Pair], Field(min_length=1, max_length=MAX_VERTICES)]
    width: Annotated[float, Field(gt=0, le=1e4, allow_inf_nan=False)] = 3.0


class LassoIn(_Strict):
    type: Literal["lasso"]
    points: Annotated[list[Pair], Field(min_length=1, max_length=MAX_VERTICES)]


PromptIn = Annotated[Union[BoxIn, PointIn, ScribbleIn, LassoIn], Field(discriminator="type")]


class MessageIn(_Strict):
    role: Literal["user", "assistant"]
    text: str = Field(max_length=MAX_TEXT_CHARS)


class AskRequest(_Strict):
    question: str = Field("", max_length=MAX_TEXT_CHARS)
    prompts: list[PromptIn] = Field(default_factory=list, max_length=MAX_PROMPTS)
    history: list[MessageIn] = Field(default_factory=list, max_length=MAX_HISTORY)
    turn_id: Optional[str] = Field(None, pattern=r"^[A-Za-z0-9_-]{8,64}$", description="chosen by the client to cancel the turn later")


class QueueState(BaseModel):
    queued: int
    running: int
    capacity: int


class HealthOut(BaseModel):
    status: str
    ready: bool
    api_version: str
    queue: QueueState
    sessions: int
    requests: dict[str, int]


class InfoOut(BaseModel):
    api_version: str
    server_version: str
    backend: dict[str, Any]
    limits: dict[str, Union[int, float]]
    encodings: dict[str, list[str]]
    auth_required: bool


class SessionOut(BaseModel):
    session_id: str
    shape: list[int]
    ttl_s: float
    encode_s: float


class SessionStateOut(BaseModel):
    session_id: str
    shape: list[int]
    idle_s: float
    ttl_s: float


class MaskOut(BaseModel):
    shape: list[int]
    bbox: list[int]
    encoding: str
    data: str


class SpanOut(BaseModel):
    term: str
    start: int
    end: int
    mask_index: int


class AnswerOut(BaseModel):
    turn_id: str
    text: str
    spans: list[SpanOut]
    masks: list[MaskOut]
    timings: dict[str, float]
    extra: dict[str, Any]


class CancelOut(BaseModel):
    turn_id: str
    cancelled: bool


class ErrorBody(BaseModel):
    type: str
    message: str
    status: int


class ErrorOut(BaseModel):
    error: ErrorBody


# --- errors --------------------------------------------------------------------------------


class SessionNotFound(BackendError):
    pass


class TurnConflict(MimoError):
    pass


class TurnNotFound(MimoError):
    pass


class SessionsFull(QueueFull):
    def __init__(self, limit: int, retry_after: int) -> None:
        super().__init__(retry_after)
        self.args = (f"all {limit} sessions of this server are busy; retry in {retry_after} s",)


def error_status(error: BaseException) -> int:
    if isinstance(error, (SessionNotFound, TurnNotFound)):
        return 404
    if isinstance(error, (Cancelled, TurnConflict)):
        return 409
    if isinstance(error, PayloadTooLarge):
        return 413
    if isinstance(error, MimoError):
        return 422
    if isinstance(error, (QueueFull, WorkerStopped)):
        return 503
    return 500


def error_body(status: int, kind: str, message: str) -> dict:
    return {"error": {"type": kind, "message": message, "status": status}}


def error_response(error: BaseException) -> JSONResponse:
    status = error_status(error)
    headers = {}
    if isinstance(error, QueueFull):
        headers["Retry-After"] = str(error.retry_after)
    if status >= 500 and not isinstance(error, (QueueFull, WorkerStopped)):
        log.error("internal error %s", type(error).__name__, exc_info=error)
        return JSONResponse(error_body(status, "InternalError", "the server failed to answer; see its log"), status, headers)
    return JSONResponse(error_body(status, type(error).__name__, str(error)), status, headers)


def _validation_message(errors: list[dict]) -> str:
    parts = []
    for item in errors[:8]:
        location = ".".join(str(part) for part in item.get("loc", ()))
        parts.append(f"{location}: {item.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 8} more)" if len(errors) > 8 else ""
    return "; ".join(parts) + more


# --- server state --------------------------------------------------------------------------


@dataclass
class SessionRecord:
    session_id: str
    shape: tuple[int, int]
    nbytes: int
    created: float
    last_used: float
    in_use: int = 0


def release_memory() -> None:
    """Give freed session memory back to the system (Python, glibc and the CUDA cache)."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001 - best effort
            pass
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


class ServerState:
    def __init__(self, backend: Backend, config: ServerConfig) -> None:
        self.backend = backend
        self.config = config
        # The server's own session store decides eviction; the backend must not drop first.
        self._backend_max_sessions = backend.max_sessions
        backend.max_sessions = max(backend.max_sessions, config.max_sessions + 1)
        self.worker = ModelWorker(config.queue_capacity)
        self.sessions: dict[str, SessionRecord] = {}
        self.turns: dict[str, threading.Event] = {}
        self.lock = threading.RLock()
        self.stats: Counter = Counter()
        self._stop = threading.Event()
        self._freed = False
        self.info = backend.info()
        self._reaper = threading.Thread(target=self._reap_loop, name="mimo-session-reaper", daemon=True)
        self._reaper.start()

    # sessions

    def get(self, session_id: str) -> SessionRecord:
        with self.lock:
            record = self.sessions.get(session_id)
        if record is None:
            raise SessionNotFound(f"unknown or expired session {session_id!r}; open a new session on the image")
        return record

    def make_room(self, nbytes: int) -> None:
        """Evict least recently used idle sessions until one of ``nbytes`` more fits."""
        evicted = []
        with self.lock:
            total = sum(r.nbytes for r in self.sessions.values())
            for record in sorted(self.sessions.values(), key=lambda r: r.last_used):
                if len(self.sessions) < self.config.max_sessions and total + nbytes <= self.config.max_session_bytes:
                    break
                if record.in_use:
                    continue
                del self.sessions[record.session_id]
                total -= record.nbytes
                evicted.append(record.session_id)
            full = len(self.sessions) >= self.config.max_sessions
        for session_id in evicted:
            self.backend.close_session(session_id)
            log.info("session evicted id=%s (store full)", session_id)
        if evicted:
            self._freed = True
        if full:
            raise SessionsFull(self.config.max_sessions, self.worker.retry_after())

    def add(self, session_id: str, shape: tuple[int, int], nbytes: int) -> None:
        now = time.monotonic()
        with self.lock:
            self.sessions[session_id] = SessionRecord(session_id, shape, nbytes, now, now)

    def drop(self, session_id: str, reason: str) -> bool:
        with self.lock:
            record = self.sessions.pop(session_id, None)
        self.backend.close_session(session_id)
        if record is not None:
            self._freed = True
            log.info("session closed id=%s reason=%s", session_id, reason)
        return record is not None

    def expire(self) -> int:
        now = time.monotonic()
        with self.lock:  # decided and removed at once: a turn cannot start on it in between
            stale = [r.session_id for r in self.sessions.values() if not r.in_use and now - r.last_used > self.config.session_ttl_s]
            for session_id in stale:
                del self.sessions[session_id]
        for session_id in stale:
            self.backend.close_session(session_id)
            log.info("session closed id=%s reason=idle past TTL", session_id)
        if stale:
            self._freed = True
        return len(stale)

    def _reap_loop(self) -> None:
        interval = min(max(self.config.session_ttl_s / 4, 0.05), 5.0)
        while not self._stop.wait(interval):
            try:
                self.expire()
                if self._freed:
                    self._freed = False
                    release_memory()
            except Exception:  # noqa: BLE001 - the reaper must survive
                log.exception("session reaper failed")

    def close(self) -> None:
        self._stop.set()
        self.worker.stop()
        with self.lock:
            ids = list(self.sessions)
            self.sessions.clear()
        for session_id in ids:
            self.backend.close_session(session_id)
        self.backend.max_sessions = self._backend_max_sessions

    def health(self) -> dict:
        ready = self.worker.alive and not self._stop.is_set()
        with self.lock:
            count = len(self.sessions)
        return {
            "status": "ok" if ready else "stopping",
            "ready": ready,
            "api_version": API_VERSION,
            "queue": self.worker.state(),
            "sessions": count,
            "requests": {"served": self.stats["served"], "client_errors": self.stats["4xx"], "server_errors": self.stats["5xx"]},
        }


# --- guards (pure ASGI: they run before any body is read) ----------------------------------


def _host_name(host_header: str) -> str:
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_loopback_host(host: str) -> bool:
    host = host.strip().strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class GuardMiddleware:
    """Host check, bearer token, body size limit and response counting, in that order."""

    def __init__(self, app, state: ServerState) -> None:
        self.app = app
        self.state = state
        config = state.config
        self.token = config.token.encode() if config.token else None
        self.loopback_only = config.loopback_hosts_only if config.loopback_hosts_only is not None else config.token is None
        self.max_body = config.max_body_bytes

    async def _reject(self, send, status: int, kind: str, message: str, headers: dict | None = None) -> None:
        self.state.stats["served"] += 1
        self.state.stats["4xx"] += 1
        body = json.dumps(error_body(status, kind, message)).encode()
        raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        raw_headers += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if self.loopback_only and not is_loopback_host(_host_name(headers.get(b"host", b"").decode("latin-1"))):
            await self._reject(send, 403, "Forbidden", "this server answers loopback host names only (start it with a token to serve others)")
            return
        if self.token is not None and scope.get("path") != HEALTH_PATH:
            given = headers.get(b"authorization")
            if given is None or not given.startswith(b"Bearer "):
                await self._reject(send, 401, "Unauthorized", "this server needs 'Authorization: Bearer <token>'", {"WWW-Authenticate": "Bearer"})
                return
            if not hmac.compare_digest(given[7:].strip(), self.token):
                await self._reject(send, 403, "Forbidden", "the bearer token is not valid for this server")
                return
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await self._reject(send, 400, "BadRequest", "Content-Length is not a number")
                return
            if declared > self.max_body:
                await self._reject(send, 413, "PayloadTooLarge", f"request body of {declared} bytes is over this server's limit of {self.max_body} bytes")
                return
        else:
            # No declared length (chunked): read up to the limit before anyone parses it.
            real_receive = receive
            chunks, size, more = [], 0, True
            while more:
                message = await real_receive()
                if message["type"] != "http.request":
                    return  # the client left
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                more = message.get("more_body", False)
                if size > self.max_body:
                    await self._reject(send, 413, "PayloadTooLarge", f"request body is over this server's limit of {self.max_body} bytes")
                    return
            buffered = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            replayed = False

            async def receive():  # replay the buffered body, then pass the real stream on
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return buffered
                return await real_receive()

        stats = self.state.stats
        started = False

        async def counting_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                stats["served"] += 1
                status = int(message["status"])
                if 400 <= status < 500:
                    stats["4xx"] += 1
                elif status >= 500:
                    stats["5xx"] += 1
                message = {**message, "headers": [*message.get("headers", []), (b"x-mimo-api-version", API_VERSION.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except Exception as error:  # noqa: BLE001 - a bug must not drop the connection
            # Starlette has already answered 500 and re-raises for the server's log; log it
            # once here and end the request cleanly so that the connection stays usable.
            if not started:
                response = error_response(error)
                await counting_send({"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers})
                await send({"type": "http.response.body", "body": response.body})


# --- the application -----------------------------------------------------------------------

ERROR_RESPONSES = {
    401: {"model": ErrorOut, "description": "missing bearer token"},
    403: {"model": ErrorOut, "description": "wrong token or non-loopback host"},
    404: {"model": ErrorOut, "description": "unknown or expired session"},
    413: {"model": ErrorOut, "description": "over a size limit"},
    422: {"model": ErrorOut, "description": "invalid input"},
    503: {"model": ErrorOut, "description": "queue full; see Retry-After"},
}


def _sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def create_app(backend: Backend, config: ServerConfig | None = None) -> FastAPI:
    """The API around ``backend``, behind its guards (host, token, body size).

    The app's worker thread owns the backend while the app runs; on shutdown it closes the
    sessions it opened (the backend itself stays usable for the caller).
    """
    config = config or ServerConfig()
    state = ServerState(backend, config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        state.close()

    app = FastAPI(
        title="MIMO Assistant server",
        version=API_VERSION,
        description=__doc__,
        openapi_url="/v1/openapi.json",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.mimo = state

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError):
        details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in error.errors()]
        body = error_body(422, "ValidationError", _validation_message(details))
        body["error"]["details"] = details[:20]
        return JSONResponse(body, 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException):
        kind = {400: "BadRequest", 404: "NotFound", 405: "MethodNotAllowed"}.get(error.status_code, "HTTPError")
        return JSONResponse(error_body(error.status_code, kind, str(error.detail)), error.status_code, getattr(error, "headers", None))

    for kind in (MimoError, QueueFull, WorkerStopped):

        @app.exception_handler(kind)
        async def _mimo(request: Request, error: Exception):
            return error_response(error)

    @app.exception_handler(Exception)
    async def _crash(request: Request, error: Exception):
        return error_response(error)

    @app.get(HEALTH_PATH, response_model=HealthOut, responses={503: {"model": HealthOut}})
    async def health():
        body = state.health()
        return JSONResponse(body, 200 if body["ready"] else 503)

    @app.get("/v1/info", response_model=InfoOut, responses=ERROR_RESPONSES)
    async def info():
        return {
            "api_version": API_VERSION,
            "server_version": __version__,
            "backend": state.info.to_dict(),
            "limits": config.limits(),
            "encodings": {"image": list(IMAGE_ENCODINGS), "image_filter": list(IMAGE_FILTERS), "mask": [MASK_ENCODING]},
            "auth_required": config.token is not None,
        }

    @app.post("/v1/sessions", status_code=201, response_model=SessionOut, responses=ERROR_RESPONSES)
    async def open_session(body: SessionRequest):
        payload = body.image.model_dump()
        rows, cols, _ = check_image_shape(payload["shape"], config.max_image_pixels)
        start = time.perf_counter()
        pixels = await run_in_threadpool(decode_image, payload, config.max_image_pixels)
        image = SliceImage(pixels, tuple(body.spacing_mm), body.modality, body.calibrated)
        decode_s = time.perf_counter() - start
        state.make_room(pixels.nbytes)
        future = state.worker.submit(_encode, image)
        session_id, encode_s = await asyncio.wrap_future(future)
        state.add(session_id, (rows, cols), pixels.nbytes)
        log.info(
            "session opened id=%s shape=%dx%d upload_bytes=%d decode_ms=%.1f encode_ms=%.1f",
            session_id, rows, cols, len(payload["data"]), decode_s * 1e3, encode_s * 1e3,
        )
        return JSONResponse({"session_id": session_id, "shape": [rows, cols], "ttl_s": config.session_ttl_s, "encode_s": encode_s}, 201)

    def _encode(image: SliceImage) -> tuple[str, float]:
        start = time.perf_counter()
        session_id = backend.open_session(image)
        return session_id, time.perf_counter() - start

    @app.get("/v1/sessions/{session_id}", response_model=SessionStateOut, responses=ERROR_RESPONSES)
    async def session_state(session_id: str):
        record = state.get(session_id)
        return {"session_id": session_id, "shape": list(record.shape), "idle_s": time.monotonic() - record.last_used, "ttl_s": config.session_ttl_s}

    @app.delete("/v1/sessions/{session_id}", status_code=204, responses=ERROR_RESPONSES)
    async def close_session(session_id: str):
        state.get(session_id)
        state.drop(session_id, "closed by client")
        return Response(status_code=204)

    def _start_turn(session_id: str, body: AskRequest, progress) -> tuple[str, threading.Event, Any, SessionRecord]:
        """Validate and enqueue a turn; errors here are answered before anything streams."""
        record = state.get(session_id)
        prompts = validate_prompts([prompt_from_dict(p.model_dump()) for p in body.prompts], record.shape)
        turn = Turn(body.question, prompts, [Message(m.role, m.text) for m in body.history])
        turn_id = body.turn_id or uuid.uuid4().hex
        cancel = threading.Event()
        with state.lock:
            if turn_id in state.turns:
                raise TurnConflict(f"turn {turn_id!r} is already running; choose another turn_id")
            state.turns[turn_id] = cancel
            record.in_use += 1

        def finished(_future=None) -> None:
            with state.lock:
                state.turns.pop(turn_id, None)
                record.in_use -= 1
                record.last_used = time.monotonic()

        def job() -> dict:
            check_cancel(cancel)
            if not backend.has_session(session_id):
                raise SessionNotFound(f"unknown or expired session {session_id!r}; open a new session on the image")
            answer = backend.ask(session_id, turn, progress, cancel)
            return answer_to_wire(answer, turn_id)

        try:
            future = state.worker.submit(job)
        except BaseException:
            finished()
            raise
        future.add_done_callback(finished)
        log.info("turn queued id=%s session=%s prompts=%d history=%d", turn_id, session_id, len(prompts), len(turn.history))
        return turn_id, cancel, future, record

    def _finish_log(turn_id: str, start: float, outcome: str) -> None:
        log.info("turn done id=%s outcome=%s ms=%.1f", turn_id, outcome, (time.perf_counter() - start) * 1e3)

    async def _result(future, turn_id: str, session_id: str, start: float) -> dict:
        try:
            result = await asyncio.wrap_future(future)
        except SessionNotFound:
            state.drop(session_id, "lost by the backend")
            _finish_log(turn_id, start, "session lost")
            raise
        except asyncio.CancelledError:
            raise
        except BaseException as error:
            _finish_log(turn_id, start, type(error).__name__)
            raise
        _finish_log(turn_id, start, "answered")
        return result

    @app.post("/v1/sessions/{session_id}/ask", response_model=AnswerOut, responses={**ERROR_RESPONSES, 409: {"model": ErrorOut, "description": "turn cancelled"}})
    async def ask(session_id: str, body: AskRequest, request: Request):
        start = time.perf_counter()
        turn_id, cancel, future, _ = _start_turn(session_id, body, None)
        task = asyncio.ensure_future(_result(future, turn_id, session_id, start))
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.25)
            if done:
                return JSONResponse(task.result())
            if await request.is_disconnected():
                cancel.set()
                future.cancel()
                log.info("turn abandoned id=%s (client left)", turn_id)
                try:
                    await task
                except BaseException:  # noqa: BLE001 - nobody is listening any more
                    pass
                return error_response(Cancelled("the client left"))

    @app.post(
        "/v1/sessions/{session_id}/ask/stream",
        responses={**ERROR_RESPONSES, 200: {"content": {"text/event-stream": {}}, "description": "events: turn, progress, answer | error"}},
    )
    async def ask_stream(session_id: str, body: AskRequest):
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def progress(stage: str, fraction: float) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, ("progress", {"stage": str(stage), "fraction": float(fraction)}))
            except RuntimeError:  # the loop is gone (shutdown)
                pass

        start = time.perf_counter()
        turn_id, cancel, future, _ = _start_turn(session_id, body, progress)
        task = asyncio.ensure_future(_result(future, turn_id, session_id, start))
        task.add_done_callback(lambda _: events.put_nowait(("done", None)))

        async def stream():
            finished = False
            try:
                yield _sse("turn", {"turn_id": turn_id, "session_id": session_id})
                while True:
                    try:
                        kind, data = await asyncio.wait_for(events.get(), timeout=1.0)
                    except asyncio.TimeoutError:
                        yield b": keep-alive\n\n"  # also notices a client that left
                        continue
                    if kind == "done":
                        break
                    yield _sse(kind, data)
                try:
                    yield _sse("answer", task.result())
                except BaseException as error:  # noqa: BLE001 - reported as an event
                    response = error_response(error)
                    yield _sse("error", json.loads(response.body)["error"])
                finished = True
            finally:
                if not finished:
                    cancel.set()
                    future.cancel()
                    log.info("turn abandoned id=%s (stream closed)", turn_id)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Turn-Id": turn_id})

    def _cancel(turn_id: str) -> dict:
        with state.lock:
            event = state.turns.get(turn_id)
        if event is None:
            raise TurnNotFound(f"no queued or running turn {turn_id!r}")
        event.set()
        log.info("turn cancel requested id=%s", turn_id)
        return {"turn_id": turn_id, "cancelled": True}

    @app.post("/v1/turns/{turn_id}/cancel", status_code=202, response_model=CancelOut, responses=ERROR_RESPONSES)
    async def cancel_turn(turn_id: str):
        return JSONResponse(_cancel(turn_id), 202)

    @app.delete("/v1/turns/{turn_id}", status_code=202, response_model=CancelOut, responses=ERROR_RESPONSES)
    async def delete_turn(turn_id: str):
        return JSONResponse(_cancel(turn_id), 202)

    from .anatomy import add_anatomy_routes

    add_anatomy_routes(app, state)
    return GuardApp(app, state)


class GuardApp:
    """The FastAPI app behind :class:`GuardMiddleware`; ``.app`` and ``.state`` for tests."""

    def __init__(self, app: FastAPI, state: ServerState) -> None:
        self.app = app
        self.state = state
        self._guarded = GuardMiddleware(app, state)

    async def __call__(self, scope, receive, send) -> None:
        await self._guarded(scope, receive, send)

    def openapi(self) -> dict:
        return self.app.openapi()


# --- serve ---------------------------------------------------------------------------------


def read_token_file(path: str | Path) -> str:
    path = Path(path)
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as error:
        raise MimoError(f"cannot read the token file {path}: {error.strerror or error}") from None
    if len(token) < 16 or any(c.isspace() for c in token):
        raise MimoError(
            f"the token in {path} must be one line of at least 16 characters without spaces; "
            "make one with: python -c \"import secrets; print(secrets.token_urlsafe(32))\""
        )
    if sys.platform != "win32" and path.stat().st_mode & 0o077:
        log.warning("token file %s is readable by other users; chmod 600 it", path)
    return token


def check_bind(host: str, token: str | None) -> None:
    if not is_loopback_host(host) and not token:
        raise MimoError(
            f"refusing to listen on {host}: beyond loopback the server needs a bearer token "
            "(--token-file FILE); use --host 127.0.0.1 to serve this machine only"
        )


def serve(
    host: str = "127.0.0.1",
    port: int = 8765,
    backend_name: str = "litemedsam",
    model: str | None = None,
    device: str = "auto",
    token_file: str | None = None,
    config: ServerConfig | None = None,
    log_level: str = "info",
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
    exit_with_parent: bool = False,
) -> None:
    """Load the backend and serve it until interrupted (``mimo-assistant serve``).

    ``exit_with_parent``: standard input is a pipe from a supervisor (the Slicer module); when it
    closes, because the supervisor ended, crashed or was killed, the server exits too."""
    import uvicorn

    from ..backend import create_backend

    token = read_token_file(token_file) if token_file else None
    check_bind(host, token)
    if exit_with_parent:
        threading.Thread(target=_exit_when_stdin_closes, name="mimo-parent-watch", daemon=True).start()
    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = config or ServerConfig()
    config.token = token
    start = time.perf_counter()
    backend = create_backend(backend_name, model, device)
    log.info("backend %s loaded in %.1f s", backend_name, time.perf_counter() - start)
    app = create_app(backend, config)
    log.info("serving %s on %s:%d (token %s, session TTL %.0f s, queue %d)", backend_name, host, port, "required" if token else "off", config.session_ttl_s, config.queue_capacity)
    uvicorn.run(app, host=host, port=port, log_level=log_level, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile, timeout_keep_alive=30)


def _exit_when_stdin_closes() -> None:
    try:  # the raw descriptor: a daemon thread blocked in sys.stdin's buffer aborts the interpreter's exit
        descriptor = sys.stdin.fileno()
        while os.read(descriptor, 65536):
            pass
    except (OSError, ValueError):
        pass
    log.warning("the supervising process ended (standard input closed): stopping the server")
    os._exit(0)  # sessions live in memory only: nothing to flush


__all__ = ["ServerConfig", "create_app", "serve", "read_token_file", "check_bind", "is_loopback_host"]
