"""The remote backend: same behaviour as the local one, consent first, only pixels leave.

The behaviour tests run twice, on the local LiteMedSAM and on :class:`RemoteBackend` talking
to a real uvicorn server on loopback that serves that same model, and must agree.
"""

from __future__ import annotations

import base64
import json
import random
import socket
import threading
import time
import zlib

import numpy as np
import pytest
import requests
from conftest import box_around, dice, read_mask, shared_path

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from mimo.backend import ALL_PROMPT_TYPES, Answer, Backend, BackendInfo, Capabilities, Message, SliceImage, Turn  # noqa: E402
from mimo.backends.remote import (  # noqa: E402
    ApiVersionMismatch,
    AuthenticationFailed,
    ConsentRequired,
    RemoteBackend,
    ServerUnreachable,
)
from mimo.errors import BackendError, Cancelled, MimoError  # noqa: E402
from mimo.prompts import BoxPrompt, LassoPrompt, PointPrompt, ScribblePrompt  # noqa: E402
from mimo.server.app import ServerConfig, create_app  # noqa: E402
from mimo.server.local import ThreadedServer, free_port  # noqa: E402
from mimo.server.wire import WireError, decode_image, decode_mask, encode_image, encode_mask  # noqa: E402


class Recorder:
    """ASGI wrapper that keeps every request exactly as the server received it."""

    def __init__(self, app) -> None:
        self.app = app
        self.requests: list[dict] = []

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        entry = {"method": scope["method"], "path": scope["path"], "query": scope["query_string"], "headers": list(scope["headers"]), "body": bytearray()}
        self.requests.append(entry)

        async def recording_receive():
            message = await receive()
            if message["type"] == "http.request":
                entry["body"] += message.get("body", b"")
            return message

        await self.app(scope, recording_receive, send)

    def everything(self) -> bytes:
        """All bytes received, plus the decoded pixels of every uploaded image."""
        parts = []
        for entry in self.requests:
            parts += [entry["method"].encode(), entry["path"].encode(), entry["query"]]
            parts += [name + b": " + value for name, value in entry["headers"]]
            parts.append(bytes(entry["body"]))
            if entry["path"] == "/v1/sessions" and entry["body"]:
                parts.append(decode_image(json.loads(entry["body"])["image"]).tobytes())
        return b"\n".join(parts)


class EchoBackend(Backend):
    """Tiny fake for the auxiliary servers: the mask is the first box."""

    def __init__(self) -> None:
        super().__init__(max_sessions=4)

    def info(self) -> BackendInfo:
        return BackendInfo("echo", "0", "none", "cpu", Capabilities(False, ALL_PROMPT_TYPES, True))

    def _encode(self, image):
        return None

    def _answer(self, image, state, turn, progress, cancel) -> Answer:
        mask = np.zeros(image.shape, bool)
        return Answer("ok", [], [mask], {})


@pytest.fixture(scope="module")
def server(litemedsam):
    recorder = Recorder(create_app(litemedsam, ServerConfig(session_ttl_s=600)))
    running = ThreadedServer(recorder).start()
    running.recorder = recorder
    yield running
    running.stop()


@pytest.fixture(scope="module")
def remote(server):
    backend = RemoteBackend(server.url, consent=True)
    yield backend
    backend.close()


@pytest.fixture(params=["local", "remote", "engine"])
def backend(request, litemedsam):
    """The same contract for the model in this process, behind a server, and in an engine process."""
    return litemedsam if request.param == "local" else request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def head(open2d_records):
    """A real fetal-head ultrasound with its reference mask."""
    from PIL import Image

    record = random.Random(7).choice([r for r in open2d_records if r["dataset"] == "hc18"])
    pixels = np.asarray(Image.open(shared_path("open2d", record["image"])).convert("RGB"))
    reference = read_mask(shared_path("open2d", record["masks"][0]["file"]))
    return SliceImage(pixels, (1.0, 1.0), record["modality"], calibrated=False), reference


@pytest.fixture(scope="module")
def head_sessions():
    """One session on the head image per backend, shared by the tests that only ask."""
    opened = {}
    yield opened
    for backend, session in opened.values():
        backend.close_session(session)


def head_session(backend, head, head_sessions) -> str:
    key = type(backend).__name__
    if key not in head_sessions:
        head_sessions[key] = (backend, backend.open_session(head[0]))
    return head_sessions[key][1]


def small_image(seed: int = 0, rows: int = 48, cols: int = 64) -> SliceImage:
    return SliceImage(np.random.default_rng(seed).integers(0, 255, (rows, cols, 3), dtype=np.uint8), (0.7, 0.7), "CT")


# --- the wire format -----------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 2, 3), (7, 13, 3), (512, 512, 3)])
def test_images_round_trip_exactly(shape):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 255, shape, dtype=np.uint8)
    grey = np.repeat(rng.integers(0, 255, shape[:2] + (1,), dtype=np.uint8), 3, axis=2)
    for pixels in (rgb, grey):
        for encoding in ("zlib", "raw"):
            for image_filter in ("sub", "none"):
                payload = encode_image(pixels, encoding, image_filter)
                assert np.array_equal(decode_image(json.loads(json.dumps(payload))), pixels)
    assert encode_image(grey)["shape"][2] == 1  # grey travels as one channel


def test_masks_round_trip_and_only_their_bounding_box_travels():
    rng = np.random.default_rng(2)
    masks = [np.zeros((40, 50), bool), np.ones((40, 50), bool), rng.random((40, 50)) > 0.5, np.zeros((1, 9), bool)]
    one = np.zeros((300, 400), bool)
    one[120, 333] = True
    blob = np.zeros((512, 512), bool)
    blob[200:260, 100:180] = True
    masks += [one, blob]
    for mask in masks:
        payload = encode_mask(mask)
        assert np.array_equal(decode_mask(json.loads(json.dumps(payload))), mask)
    assert encode_mask(one)["bbox"] == [120, 333, 1, 1]
    assert encode_mask(masks[0]) == {"shape": [40, 50], "bbox": [0, 0, 0, 0], "encoding": "packbits+zlib", "data": ""}
    assert len(encode_mask(blob)["data"]) < 100  # 512 x 512 mask: a few dozen bytes


def test_decoders_refuse_payloads_that_lie():
    image = encode_image(np.full((16, 16, 3), 7, np.uint8))
    bomb = base64.b64encode(zlib.compress(bytes(10**7))).decode()
    for bad in [
        {**image, "data": bomb},  # inflates past the declared shape
        {**image, "data": image["data"][:-8]},  # truncated
        {**image, "shape": [16, 17, 1]},
        {**image, "dtype": "float32"},
        {**image, "encoding": "lzma"},
        {**image, "data": "***"},
    ]:
        with pytest.raises(WireError):
            decode_image(bad)
    mask = encode_mask(np.eye(8, dtype=bool))
    for bad in [{**mask, "bbox": [4, 4, 8, 8]}, {**mask, "bbox": [0, 0, -1, 8]}, {**mask, "data": bomb}, {**mask, "shape": [8, True]}]:
        with pytest.raises(WireError):
            decode_mask(bad)


# --- the same behaviour, local and remote ---------------------------------------------------


def test_box_on_a_real_ultrasound_reaches_dice_08(backend, head, head_sessions):
    image, reference = head
    answer = backend.ask(head_session(backend, head, head_sessions), Turn("Segment the fetal head.", [BoxPrompt(*box_around(reference))]))
    assert len(answer.masks) == 1 and answer.masks[0].shape == reference.shape and answer.masks[0].dtype == bool
    assert dice(answer.masks[0], reference) >= 0.8
    assert answer.spans[0].term == "fetal head" and answer.text[answer.spans[0].start : answer.spans[0].end] == "fetal head"


def test_two_asks_on_one_session(backend, head, head_sessions):
    image, reference = head
    session = head_session(backend, head, head_sessions)
    x0, y0, x1, y1 = box_around(reference, margin=6)
    lasso = LassoPrompt(((x0, y0), (x1, y0), (x1, y1), (x0, y1)))
    first = backend.ask(session, Turn("Segment the fetal head.", [lasso]))
    rows, cols = np.nonzero(reference)
    middle = (float(cols.mean()), float(rows.mean()))
    second = backend.ask(
        session,
        Turn("And with a scribble?", [ScribblePrompt((middle, (middle[0] + 20, middle[1] + 5)), 5.0)], [Message("user", "Segment the fetal head."), Message("assistant", first.text)]),
    )
    assert dice(first.masks[0], reference) >= 0.8
    assert second.masks and second.masks[0].shape == reference.shape and second.masks[0].any()


BAD_TURNS = {
    "degenerate box": Turn("", [BoxPrompt(10, 10, 10.4, 50)]),
    "point outside": Turn("", [PointPrompt(5000, 3)]),
    "lasso without area": Turn("", [LassoPrompt(((1, 1), (5, 5), (9, 9)))]),
    "not finite": Turn("", [BoxPrompt(float("nan"), 1, 20, 20)]),
    "no prompt": Turn("What is this?"),
    "only a negative point": Turn("", [PointPrompt(30, 30, positive=False)]),  # the server's model raises this one
}


def _outcome(backend, session, turn) -> tuple[str, str]:
    try:
        backend.ask(session, turn)
    except MimoError as error:
        return type(error).__name__, str(error)
    return "answered", ""


def test_bad_prompts_raise_the_same_errors_with_the_same_messages(litemedsam, remote):
    image = small_image(4)
    local_session, remote_session = litemedsam.open_session(image), remote.open_session(image)
    try:
        for name, turn in BAD_TURNS.items():
            local = _outcome(litemedsam, local_session, turn)
            assert local[0] in ("PromptError", "BackendError"), (name, local)
            assert _outcome(remote, remote_session, turn) == local, name
    finally:
        litemedsam.close_session(local_session)
        remote.close_session(remote_session)


def test_closed_sessions_are_gone(backend):
    count = backend.session_count
    session = backend.open_session(small_image(5))
    assert backend.has_session(session) and backend.session_count == count + 1
    backend.close_session(session)
    backend.close_session(session)  # twice is harmless
    assert not backend.has_session(session) and backend.session_count == count
    with pytest.raises(BackendError, match="unknown or expired session"):
        backend.ask(session, Turn("", [BoxPrompt(1, 1, 20, 20)]))


def test_progress_and_cancel(backend, head, head_sessions):
    session = head_session(backend, head, head_sessions)
    events = []
    backend.ask(session, Turn("", [BoxPrompt(*box_around(head[1]))]), progress=lambda stage, fraction: events.append((stage, fraction)))
    assert events == [("decode", 1.0)]
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        backend.ask(session, Turn("", [BoxPrompt(*box_around(head[1]))]), cancel=cancel)


def test_remote_answers_equal_local_answers_exactly(litemedsam, remote, head, head_sessions):
    image, reference = head
    rows, cols = np.nonzero(reference)
    x0, y0, x1, y1 = box_around(reference)
    turns = [
        Turn("Segment the fetal head.", [BoxPrompt(x0, y0, x1, y1)]),
        Turn("", [LassoPrompt(((x0, y0), (x1, y0), (x1, y1), (x0, y1)))]),
        Turn("", [PointPrompt(float(cols.mean()), float(rows.mean()))]),
    ]
    for turn in turns:
        local = litemedsam.ask(head_session(litemedsam, head, head_sessions), turn)
        answer = remote.ask(head_session(remote, head, head_sessions), turn)
        assert answer.text == local.text and answer.spans == local.spans and answer.extra == local.extra
        assert len(answer.masks) == len(local.masks) and all(np.array_equal(a, b) for a, b in zip(answer.masks, local.masks))
        assert {"decode_s", "total_s", "round_trip_s"} <= set(answer.timings)
    assert remote.info().name == litemedsam.info().name and remote.info().capabilities == litemedsam.info().capabilities


# --- the remote client's own contract ------------------------------------------------------


def test_a_session_the_server_lost_is_uploaded_again_transparently(remote, server):
    image = small_image(6)
    session = remote.open_session(image)
    turn = Turn("", [BoxPrompt(5, 5, 40, 40)])
    before = remote.ask(session, turn)
    lost = remote._sessions[session].server_id
    assert requests.delete(f"{server.url}/v1/sessions/{lost}", timeout=5).status_code == 204  # e.g. expired
    reuploads = remote.stats["reuploads"]
    after = remote.ask(session, turn)
    assert remote.stats["reuploads"] == reuploads + 1 and remote._sessions[session].server_id != lost
    assert np.array_equal(after.masks[0], before.masks[0])
    remote.close_session(session)


def test_nothing_is_sent_before_consent(server):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.3)
    port = listener.getsockname()[1]
    try:
        quiet = RemoteBackend(f"http://127.0.0.1:{port}")
        for call in (quiet.info, quiet.health, lambda: quiet.open_session(small_image()), quiet.server_info):
            with pytest.raises(ConsentRequired, match="consent"):
                call()
        quiet.close_session("anything")
        quiet.close()
        with pytest.raises(socket.timeout):
            listener.accept()  # not even a TCP connection was attempted
    finally:
        listener.close()
    seen = len(server.recorder.requests)
    polite = RemoteBackend(server.url)
    with pytest.raises(ConsentRequired):
        polite.open_session(small_image())
    assert len(server.recorder.requests) == seen
    polite.grant_consent()
    assert polite.health()["ready"] and len(server.recorder.requests) == seen + 1


def test_unreachable_wrong_token_and_wrong_version_are_clear_errors(tmp_path):
    from fastapi import FastAPI

    start = time.perf_counter()
    with pytest.raises(ServerUnreachable, match="cannot reach"):
        RemoteBackend(f"http://127.0.0.1:{free_port()}", consent=True, retries=1).info()
    assert time.perf_counter() - start < 5

    token = "a-token-for-the-remote-tests-42"
    with ThreadedServer(create_app(EchoBackend(), ServerConfig(token=token))) as guarded:
        for given, status in ((None, "401"), ("wrong-token-wrong-token", "403")):
            with pytest.raises(AuthenticationFailed, match=status):
                RemoteBackend(guarded.url, token=given, consent=True).open_session(small_image())
        assert RemoteBackend(guarded.url, token=token, consent=True).info().name == "echo"

    future = FastAPI()

    @future.get("/v1/info")
    def info():
        return {"api_version": "2.0"}

    with ThreadedServer(future) as newer:
        with pytest.raises(ApiVersionMismatch, match="speaks API 2.0"):
            RemoteBackend(newer.url, consent=True).open_session(small_image())
    with ThreadedServer(FastAPI()) as other:
        with pytest.raises(ApiVersionMismatch, match="not a MIMO server"):
            RemoteBackend(other.url, consent=True).info()
    with pytest.raises(BackendError, match="token file"):
        RemoteBackend("http://user:secret@127.0.0.1:1")


# --- privacy end to end, through the command line ------------------------------------------


def _identifying_values(paths) -> set[bytes]:
    import pydicom

    values = set()
    for path in paths:
        dataset = pydicom.dcmread(path)
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID", "StudyDate", "AccessionNumber", "InstitutionName", "StudyID"):
            value = str(dataset.get(keyword, "") or "").strip()
            if len(value) >= 4:
                values.add(value.encode())
    return values


def test_cli_with_server_sends_only_pixels_and_writes_what_a_local_run_writes(server, litemedsam, tmp_path, monkeypatch, capsys):
    import SimpleITK as sitk
    from fixtures import write_dicom_series

    from mimo.cli import main

    paths = write_dicom_series(tmp_path / "dicom", patient_name="Canary^Private^Xq7")
    secrets = _identifying_values(paths)
    assert b"Canary^Private^Xq7" in secrets and any(b"." in s and len(s) > 20 for s in secrets)  # name and UIDs
    server.recorder.requests.clear()
    args = ["ask", str(tmp_path / "dicom"), "Segment the region in the box.", "--box", "30", "30", "95", "95", "--json"]
    assert main([*args, "--server", server.url, "--out", str(tmp_path / "remote.nii.gz")]) == 0, capsys.readouterr().err
    remote_report = json.loads(capsys.readouterr().out)

    received = server.recorder.everything()
    assert [(r["method"], r["path"].split("/")[-1]) for r in server.recorder.requests][0] == ("GET", "info")
    assert any(r["path"] == "/v1/sessions" for r in server.recorder.requests)
    for secret in secrets | {b"Canary", b"Private", b"Xq7"}:
        assert secret not in received, secret
    assert str(tmp_path).encode() not in received and b"slice000" not in received  # not even file names

    import mimo.backend

    monkeypatch.setattr(mimo.backend, "create_backend", lambda *a, **k: litemedsam)
    assert main([*args, "--out", str(tmp_path / "local.nii.gz")]) == 0
    local_report = json.loads(capsys.readouterr().out)
    remote_labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "remote.nii.gz")))
    local_labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "local.nii.gz")))
    assert remote_labels.any() and np.array_equal(remote_labels, local_labels)
    assert remote_report["answer"] == local_report["answer"] and remote_report["segments"] == local_report["segments"]
    assert "remote 127.0.0.1" in remote_report["backend"]["device"]


def test_cli_server_errors_exit_2_and_write_nothing(tmp_path, capsys):
    from fixtures import write_dicom_series

    from mimo.cli import main

    write_dicom_series(tmp_path / "dicom")
    out = tmp_path / "never.nii.gz"
    base = ["ask", str(tmp_path / "dicom"), "Segment.", "--box", "30", "30", "95", "95", "--out", str(out)]
    assert main([*base, "--server", f"http://127.0.0.1:{free_port()}"]) == 2
    assert "cannot reach the MIMO server" in capsys.readouterr().err and not out.exists()
    assert main([*base, "--server", "http://127.0.0.1:1", "--model", "x.pth"]) == 2
    assert "with --server the server's model answers" in capsys.readouterr().err and not out.exists()
    assert main([*base, "--server", "http://127.0.0.1:1", "--token-file", str(tmp_path / "missing")]) == 2
    assert "cannot read the token file" in capsys.readouterr().err and not out.exists()
