"""``POST /v1/anatomy/stream``: named structures in 3D on an uploaded volume (atlas grounding).

The body carries the volume's voxels and its IJK-to-RAS matrix (geometry only: no patient
data), the modality and the question. Only built-in atlases can be chosen: a client never names
a file on the server. The answer streams like a turn (``turn``, ``progress``, then ``answer`` or
``error``), runs on the model worker, and is cancelled with ``/v1/turns/{id}/cancel``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from typing import Optional

import numpy as np
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ..image import MAX_VOLUME_VOXELS, MODALITIES, ImageVolume
from .wire import WireError, anatomy_to_wire, decode_volume

log = logging.getLogger("mimo.server")


class AnatomyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    volume: dict = Field(description="the voxels: {dtype, shape [k, j, i], encoding 'zlib', data (base64)}")
    ijk_to_ras: list[list[float]] = Field(min_length=4, max_length=4)
    modality: str = Field("MR", max_length=8)
    question: str = Field(min_length=1, max_length=2000)
    atlas: Optional[str] = Field(None, max_length=64, description="a built-in atlas name (GET /v1/anatomy/atlases)")
    turn_id: Optional[str] = Field(None, pattern=r"^[A-Za-z0-9_-]{8,64}$")


def add_anatomy_routes(app: FastAPI, state) -> None:
    from .app import TurnConflict, _sse, error_response

    backend = state.backend

    @app.get("/v1/anatomy/atlases")
    async def atlases():
        from ..anatomy import builtin_atlases

        return {name: {"modality": a.modality, "description": a.description, "structures": a.names(), "licence": a.licence}
                for name, a in builtin_atlases().items()}

    @app.post("/v1/anatomy/stream", responses={200: {"content": {"text/event-stream": {}}, "description": "events: turn, progress, answer | error"}})
    async def ground_stream(body: AnatomyRequest):
        try:
            array = decode_volume(body.volume, MAX_VOLUME_VOXELS)
            if body.modality not in MODALITIES:
                raise WireError(f"unknown modality {body.modality!r}")
            matrix = np.asarray(body.ijk_to_ras, dtype=np.float64)
            if matrix.shape != (4, 4):
                raise WireError("ijk_to_ras must be a 4 x 4 matrix")
            volume = ImageVolume(array, matrix, body.modality)
        except Exception as error:  # noqa: BLE001 - every bad body is one 4xx error
            return error_response(error if isinstance(error, WireError) else WireError(str(error)))
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        turn_id = body.turn_id or uuid.uuid4().hex
        cancel = threading.Event()
        with state.lock:
            if turn_id in state.turns:
                return error_response(TurnConflict(f"turn {turn_id!r} is already running; choose another turn_id"))
            state.turns[turn_id] = cancel

        def progress(stage: str, fraction: float) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, ("progress", {"stage": str(stage), "fraction": float(fraction)}))
            except RuntimeError:
                pass

        def job() -> dict:
            return anatomy_to_wire(backend.ground_anatomy(volume, body.question, body.atlas, progress, cancel), turn_id)

        def finished(_future=None) -> None:
            with state.lock:
                state.turns.pop(turn_id, None)

        start = time.perf_counter()
        try:
            future = state.worker.submit(job)
        except BaseException as error:  # noqa: BLE001 - a full queue is a 503
            finished()
            return error_response(error)
        future.add_done_callback(finished)
        log.info("anatomy turn queued id=%s voxels=%d", turn_id, array.size)
        task = asyncio.ensure_future(asyncio.wrap_future(future))
        task.add_done_callback(lambda _: events.put_nowait(("done", None)))

        async def stream():
            done = False
            try:
                yield _sse("turn", {"turn_id": turn_id})
                while True:
                    try:
                        kind, data = await asyncio.wait_for(events.get(), timeout=1.0)
                    except asyncio.TimeoutError:
                        yield b": keep-alive\n\n"
                        continue
                    if kind == "done":
                        break
                    yield _sse(kind, data)
                try:
                    yield _sse("answer", task.result())
                    outcome = "answered"
                except BaseException as error:  # noqa: BLE001 - reported as an event
                    outcome = type(error).__name__
                    yield _sse("error", json.loads(error_response(error).body)["error"])
                log.info("anatomy turn done id=%s outcome=%s ms=%.0f", turn_id, outcome, (time.perf_counter() - start) * 1e3)
                done = True
            finally:
                if not done:
                    cancel.set()
                    future.cancel()

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Turn-Id": turn_id})
