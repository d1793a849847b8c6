"""The HTTP API of ``mimo-assistant serve``: contract, limits, auth, queue, streaming, fuzzing.

Every server here is a real uvicorn on a free loopback port, in a thread of this process.
The model-backed one shares the session's LiteMedSAM; the others run a fast fake backend
so that queue, cancellation and expiry can be timed exactly.
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from mimo.backend import ALL_PROMPT_TYPES, Answer, Backend, BackendInfo, Capabilities, GroundedSpan, SliceImage, Turn, check_cancel  # noqa: E402
from mimo.errors import MimoError, PromptError  # noqa: E402
from mimo.prompts import BoxPrompt, prompt_from_dict, prompt_mask, validate_prompts  # noqa: E402
from mimo.server.app import ServerConfig, check_bind, create_app  # noqa: E402
from mimo.server.local import ThreadedServer  # noqa: E402
from mimo.server.wire import decode_mask, encode_image  # noqa: E402


class FakeBackend(Backend):
    """Fast and deterministic: the mask is what the prompts cover; ``delay`` seconds in steps."""

    def __init__(self, delay: float = 0.0, steps: int = 10) -> None:
        super().__init__(max_sessions=8)
        self.delay, self.steps = delay, steps
        self.cancelled = 0

    def info(self) -> BackendInfo:
        return BackendInfo("fake", "0", "none", "cpu", Capabilities(False, ALL_PROMPT_TYPES, True))

    def _encode(self, image: SliceImage):
        return float(image.pixels.mean())

    def _answer(self, image, state, turn, progress, cancel) -> Answer:
        for step in range(self.steps):
            if cancel is not None and cancel.is_set():
                self.cancelled += 1
            check_cancel(cancel)
            time.sleep(self.delay / self.steps)
            progress("work", (step + 1) / self.steps)
        mask = np.zeros(image.shape, dtype=bool)
        for prompt in turn.prompts:
            mask |= prompt_mask(prompt, image.shape)
        return Answer("Segmented a region.", [GroundedSpan("region", 12, 18, 0)], [mask], {})


def start(backend, **config) -> ThreadedServer:
    return ThreadedServer(create_app(backend, ServerConfig(**config))).start()


def disk_image(rows=96, cols=128, centre=(48, 60), radius=22) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:rows, :cols]
    disk = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < radius**2
    pixels = np.full((rows, cols, 3), 30, np.uint8)
    pixels[disk] = 200
    return pixels, disk


def open_session(url: str, pixels: np.ndarray, headers=None) -> str:
    response = requests.post(f"{url}/v1/sessions", json={"image": encode_image(pixels), "spacing_mm": [0.5, 0.5], "modality": "US"}, headers=headers, timeout=60)
    assert response.status_code == 201, response.text
    return response.json()["session_id"]


@pytest.fixture(scope="module")
def model_server(litemedsam):
    server = start(litemedsam, session_ttl_s=600, max_image_pixels=1024 * 1024, max_body_bytes=4 * 2**20)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def model_session(model_server):
    pixels, disk = disk_image()
    return open_session(model_server.url, pixels), pixels, disk


@pytest.fixture(scope="module")
def fake_server():
    server = start(FakeBackend(), session_ttl_s=600, max_image_pixels=512 * 512, max_body_bytes=2**20)
    yield server
    server.stop()


# --- contract ------------------------------------------------------------------------------


def test_health_info_and_openapi(model_server):
    health = requests.get(f"{model_server.url}/v1/health", timeout=5)
    assert health.status_code == 200 and health.headers["X-MIMO-API-Version"] == "1.0"
    body = health.json()
    assert body["ready"] and set(body["queue"]) == {"queued", "running", "capacity"} and body["queue"]["capacity"] == 32
    info = requests.get(f"{model_server.url}/v1/info", timeout=5).json()
    assert info["api_version"] == "1.0" and info["backend"]["name"] == "litemedsam"
    assert info["backend"]["capabilities"]["prompt_types"] == ["box", "lasso", "point", "scribble"]
    limits = info["limits"]
    assert limits["max_image_pixels"] == 1024 * 1024 and limits["max_body_bytes"] == 4 * 2**20
    assert {"max_prompts", "session_ttl_s", "max_sessions", "queue_capacity"} <= set(limits)
    schema = requests.get(f"{model_server.url}/v1/openapi.json", timeout=5).json()
    assert {"/v1/health", "/v1/info", "/v1/sessions", "/v1/sessions/{session_id}", "/v1/sessions/{session_id}/ask", "/v1/sessions/{session_id}/ask/stream", "/v1/turns/{turn_id}/cancel"} <= set(schema["paths"])
    assert requests.get(f"{model_server.url}/docs", timeout=5).status_code == 404  # no page that loads scripts from a CDN


def test_ask_answers_with_bounding_box_packed_masks_equal_to_the_local_backend(model_server, model_session, litemedsam):
    session, pixels, disk = model_session
    box = [35.0, 23.0, 85.0, 73.0]
    response = requests.post(f"{model_server.url}/v1/sessions/{session}/ask", json={"question": "Segment it.", "prompts": [{"type": "box", "box": box}]}, timeout=60)
    assert response.status_code == 200, response.text
    answer = response.json()
    wire_mask = answer["masks"][0]
    mask = decode_mask(wire_mask)
    rows, cols = np.nonzero(mask)
    assert wire_mask["bbox"] == [rows.min(), cols.min(), rows.max() - rows.min() + 1, cols.max() - cols.min() + 1]
    assert len(wire_mask["data"]) < mask.size / 8 / 4  # far less than even one bit per pixel of the slice
    local = litemedsam.open_session(SliceImage(pixels, (0.5, 0.5), "US"))
    try:
        expected = litemedsam.ask(local, Turn("Segment it.", [BoxPrompt(*box)]))
    finally:
        litemedsam.close_session(local)
    assert np.array_equal(mask, expected.masks[0]) and answer["text"] == expected.text
    assert [s["term"] for s in answer["spans"]] == [s.term for s in expected.spans]
    assert 2 * (mask & disk).sum() / (mask.sum() + disk.sum()) > 0.9


# --- client mistakes: 4xx with the reason, never 5xx ----------------------------------------


def _engine_message(prompt: dict, shape) -> str:
    with pytest.raises(PromptError) as error:
        validate_prompts([prompt_from_dict(prompt)], shape)
    return str(error.value)


BAD_PROMPTS = [
    {"type": "box", "box": [10, 10, 10.5, 60]},  # degenerate
    {"type": "box", "box": [-30, 10, 40, 60]},  # out of bounds
    {"type": "point", "point": [128.0, 10]},  # just outside (cols = 128)
    {"type": "lasso", "points": [[10, 10], [20, 20]]},  # degenerate
    {"type": "lasso", "points": [[10, 10], [20, 20], [30, 30]]},  # no area
    {"type": "scribble", "points": [[10, 10], [100, 80]] * 512, "width": 10000},  # a brush wider than the image
]


@pytest.mark.parametrize("prompt", BAD_PROMPTS, ids=lambda p: p["type"] + json.dumps(p)[-12:])
def test_bad_prompts_get_422_with_the_engines_message(fake_server, prompt):
    session = open_session(fake_server.url, disk_image()[0])
    response = requests.post(f"{fake_server.url}/v1/sessions/{session}/ask", json={"prompts": [prompt]}, timeout=10)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["type"] == "PromptError" and error["message"] == _engine_message(prompt, (96, 128))


def _post(url: str, path: str, body, headers=None):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(url + path, data=data, headers={"Content-Type": "application/json", **(headers or {})}, timeout=10)


def test_client_mistakes_are_4xx_with_reasons(fake_server):
    url = fake_server.url
    pixels = disk_image()[0]
    image = encode_image(pixels)
    session = open_session(url, pixels)
    ask = f"/v1/sessions/{session}/ask"
    box = {"type": "box", "box": [10, 10, 40, 40]}
    cases = [
        ("unknown field", "/v1/sessions", {"image": image, "patient_name": "x"}, 422),
        ("unknown field in image", "/v1/sessions", {"image": {**image, "tags": {}}}, 422),
        ("unknown field in prompt", ask, {"prompts": [{**box, "label": 1}]}, 422),
        ("NaN coordinate", ask, '{"prompts": [{"type": "box", "box": [NaN, 1, 20, 20]}]}', 422),
        ("infinite coordinate", ask, '{"prompts": [{"type": "box", "box": [1e999, 1, 20, 20]}]}', 422),
        ("Infinity spacing", "/v1/sessions", '{"image": ' + json.dumps(image) + ', "spacing_mm": [Infinity, 1]}', 422),
        ("box with 3 numbers", ask, {"prompts": [{"type": "box", "box": [1, 2, 3]}]}, 422),
        ("unknown prompt type", ask, {"prompts": [{"type": "polygon", "points": [[1, 2]]}]}, 422),
        ("too many prompts", ask, {"prompts": [box] * 65}, 422),
        ("bad history role", ask, {"prompts": [box], "history": [{"role": "system", "text": "x"}]}, 422),
        ("question too long", ask, {"question": "x" * 8001, "prompts": [box]}, 422),
        ("bad turn id", ask, {"prompts": [box], "turn_id": "../../etc"}, 422),
        ("not JSON", ask, b"\xff\xfe{", 400),
        ("truncated JSON", ask, b"{\"prompts\": [", 422),
        ("JSON list", ask, [1, 2], 422),
        ("float image", "/v1/sessions", {"image": {**image, "dtype": "float32"}}, 422),
        ("bad base64", "/v1/sessions", {"image": {**image, "data": "!!!not base64"}}, 422),
        ("short data", "/v1/sessions", {"image": {**image, "shape": [96, 129, 1]}}, 422),
        ("2 channels", "/v1/sessions", {"image": {**image, "shape": [96, 128, 2]}}, 422),
        ("negative spacing", "/v1/sessions", {"image": image, "spacing_mm": [-1, 1]}, 422),
        ("odd modality", "/v1/sessions", {"image": image, "modality": "CT; rm -rf"}, 422),
        ("long modality", "/v1/sessions", {"image": image, "modality": "M" * 65}, 422),
        ("too many pixels", "/v1/sessions", {"image": {**image, "shape": [1024, 1024, 1]}}, 413),
        ("unknown session", "/v1/sessions/0123456789abcdef/ask", {"prompts": [box]}, 404),
        ("no prompt for a segmenter", ask, {"question": "What is this?"}, 422),
    ]
    bomb = zlib.compress(bytes(50 * 2**20))  # 50 MB of zeros in ~50 kB
    cases.append(("zip bomb", "/v1/sessions", {"image": {**image, "filter": "none", "data": __import__("base64").b64encode(bomb).decode()}}, 422))
    results = {}
    for name, path, body, expected in cases:
        response = _post(url, path, body)
        results[name] = response.status_code
        assert response.status_code == expected, (name, response.status_code, response.text[:300])
        if expected != 200:
            error = response.json()["error"]
            assert error["message"] and error["status"] == expected, name
            assert "patient_name" not in error["message"] or name == "unknown field"
    assert requests.get(f"{url}/v1/health", timeout=5).json()["requests"]["server_errors"] == 0


def test_bodies_over_the_limit_get_413_even_when_chunked(fake_server):
    url = fake_server.url
    big = json.dumps({"image": {"dtype": "uint8", "shape": [2, 2, 1], "data": "A" * (2**20 + 10)}}).encode()
    response = requests.post(f"{url}/v1/sessions", data=big, headers={"Content-Type": "application/json"}, timeout=10)
    assert response.status_code == 413 and response.json()["error"]["type"] == "PayloadTooLarge"

    def chunks():
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    response = requests.post(f"{url}/v1/sessions", data=chunks(), headers={"Content-Type": "application/json"}, timeout=10)
    assert response.status_code == 413


def test_validation_errors_do_not_echo_the_upload(fake_server):
    image = encode_image(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    response = _post(fake_server.url, "/v1/sessions", {"image": {**image, "dtype": "int16"}})
    assert response.status_code == 422 and image["data"][:64] not in response.text


# --- privacy and auth ----------------------------------------------------------------------


def test_refuses_to_listen_beyond_loopback_without_a_token(capsys, tmp_path):
    from mimo.cli import main

    with pytest.raises(MimoError, match="needs a bearer token"):
        check_bind("0.0.0.0", None)
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    check_bind("0.0.0.0", "a-long-enough-token-0123")
    assert main(["serve", "--host", "0.0.0.0", "--port", "1"]) == 2
    assert "refusing to listen on 0.0.0.0" in capsys.readouterr().err
    weak = tmp_path / "token"
    weak.write_text("short\n")
    assert main(["serve", "--host", "0.0.0.0", "--token-file", str(weak)]) == 2
    assert "at least 16 characters" in capsys.readouterr().err


def test_with_a_token_every_endpoint_but_health_needs_it():
    token = "s3cret-token-for-tests-0123456789"
    server = start(FakeBackend(), token=token)
    try:
        url = server.url
        assert requests.get(f"{url}/v1/health", timeout=5).status_code == 200
        for method, path in [("GET", "/v1/info"), ("GET", "/v1/openapi.json"), ("POST", "/v1/sessions"), ("DELETE", "/v1/sessions/x"), ("POST", "/v1/turns/x/cancel")]:
            missing = requests.request(method, url + path, timeout=5)
            assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer", path
            wrong = requests.request(method, url + path, headers={"Authorization": "Bearer nope"}, timeout=5)
            assert wrong.status_code == 403, path
        good = {"Authorization": f"Bearer {token}"}
        assert requests.get(f"{url}/v1/info", headers=good, timeout=5).json()["auth_required"] is True
        session = open_session(url, disk_image()[0], headers=good)
        response = requests.post(f"{url}/v1/sessions/{session}/ask", json={"prompts": [{"type": "box", "box": [1, 1, 30, 30]}]}, headers=good, timeout=10)
        assert response.status_code == 200
    finally:
        server.stop()


def test_without_a_token_only_loopback_host_names_are_answered(fake_server):
    # A web page reaching 127.0.0.1 through DNS rebinding sends its own host name.
    for host in ("evil.example", "evil.example:80", "10.0.0.5"):
        assert requests.get(f"{fake_server.url}/v1/info", headers={"Host": host}, timeout=5).status_code == 403
    for host in ("localhost", f"127.0.0.1:{fake_server.port}", "[::1]:80"):
        assert requests.get(f"{fake_server.url}/v1/info", headers={"Host": host}, timeout=5).status_code == 200


def test_logs_carry_ids_sizes_and_timings_but_no_question_or_pixels(fake_server, caplog):
    canary = "Patient Canary-Name 1961-02-03"
    with caplog.at_level(logging.DEBUG):
        session = open_session(fake_server.url, disk_image()[0])
        response = _post(fake_server.url, f"/v1/sessions/{session}/ask", {"question": canary, "prompts": [{"type": "box", "box": [1, 1, 30, 30]}], "history": [{"role": "user", "text": canary}]})
        assert response.status_code == 200
        time.sleep(0.1)
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert session in text and "encode_ms" in text and "turn done" in text
    assert "Canary" not in text and "1961" not in text


# --- queue, streaming, cancellation, expiry ------------------------------------------------


def test_full_queue_answers_503_with_retry_after_and_health_shows_it():
    server = start(FakeBackend(delay=0.6), queue_capacity=1)
    try:
        url = server.url
        session = open_session(url, disk_image()[0])
        body = {"prompts": [{"type": "box", "box": [1, 1, 30, 30]}]}
        states = []

        def watch():
            for _ in range(20):
                states.append(requests.get(f"{url}/v1/health", timeout=5).json()["queue"])
                time.sleep(0.03)

        with ThreadPoolExecutor(5) as pool:
            watcher = pool.submit(watch)
            responses = list(pool.map(lambda _: _post(url, f"/v1/sessions/{session}/ask", body), range(4)))
            watcher.result()
        codes = Counter(r.status_code for r in responses)
        # One runs and the rest are turned away; a second may wait in the queue, unless it
        # arrived before the worker took the first one off it (a race the test cannot order).
        assert codes[200] >= 1 and codes[503] >= 1 and codes[200] + codes[503] == 4, codes
        busy = next(r for r in responses if r.status_code == 503)
        assert int(busy.headers["Retry-After"]) >= 1 and busy.json()["error"]["type"] == "QueueFull"
        assert any(s["running"] == 1 for s in states)
        if codes[200] == 2:  # the second one waited in the queue for 0.6 s: health showed it
            assert any(s["queued"] == 1 for s in states), states
        assert all(s["capacity"] == 1 for s in states)
    finally:
        server.stop()


def _events(response):
    event = None
    for line in response.iter_lines(decode_unicode=True):
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            yield event, json.loads(line[5:])


def test_streaming_sends_progress_then_the_answer_and_a_turn_can_be_cancelled():
    server = start(FakeBackend(delay=1.0, steps=20))
    try:
        url = server.url
        session = open_session(url, disk_image()[0])
        body = {"prompts": [{"type": "box", "box": [1, 1, 30, 30]}]}
        with requests.post(f"{url}/v1/sessions/{session}/ask/stream", json=body, stream=True, timeout=10) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            events = list(_events(response))
        kinds = [kind for kind, _ in events]
        assert kinds[0] == "turn" and kinds[-1] == "answer" and kinds.count("progress") == 20
        fractions = [data["fraction"] for kind, data in events if kind == "progress"]
        assert fractions == sorted(fractions) and fractions[-1] == 1.0
        assert decode_mask(events[-1][1]["masks"][0]).sum() == 30 * 30

        # Cancel a streaming turn by its id.
        with requests.post(f"{url}/v1/sessions/{session}/ask/stream", json=body, stream=True, timeout=10) as response:
            stream = _events(response)
            kind, turn = next(stream)
            assert kind == "turn"
            cancelled = requests.post(f"{url}/v1/turns/{turn['turn_id']}/cancel", timeout=5)
            assert cancelled.status_code == 202 and cancelled.json() == {"turn_id": turn["turn_id"], "cancelled": True}
            rest = list(stream)
        assert rest[-1][0] == "error" and rest[-1][1]["type"] == "Cancelled"
        assert sum(kind == "progress" for kind, _ in rest) < 20

        # Cancel a plain ask by the turn id the client chose (DELETE works too).
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(_post, url, f"/v1/sessions/{session}/ask", {**body, "turn_id": "my-turn-0001"})
            for _ in range(100):
                if requests.delete(f"{url}/v1/turns/my-turn-0001", timeout=5).status_code == 202:
                    break
                time.sleep(0.02)
            response = pending.result()
        assert response.status_code == 409 and response.json()["error"]["type"] == "Cancelled"
        assert requests.post(f"{url}/v1/turns/my-turn-0001/cancel", timeout=5).status_code == 404  # over
    finally:
        server.stop()


def test_a_client_that_leaves_cancels_its_turn_and_busy_servers_are_retried():
    from mimo.backends.remote import RemoteBackend

    backend = FakeBackend(delay=1.5, steps=30)
    server = start(backend, queue_capacity=1)
    try:
        url = server.url
        session = open_session(url, disk_image()[0])
        body = {"prompts": [{"type": "box", "box": [1, 1, 30, 30]}]}
        with pytest.raises(requests.exceptions.ReadTimeout):
            requests.post(f"{url}/v1/sessions/{session}/ask", json=body, timeout=0.3)
        deadline = time.monotonic() + 5
        while backend.cancelled == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert backend.cancelled == 1  # the model stopped instead of finishing for nobody

        # Four clients on a queue of one: 503s are retried after Retry-After, nobody fails.
        backend.delay = 0.4
        clients = [RemoteBackend(url, consent=True) for _ in range(4)]
        image = SliceImage(disk_image()[0])
        sessions = [client.open_session(image) for client in clients]
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda pair: pair[0].ask(pair[1], Turn("", [BoxPrompt(1, 1, 30, 30)])), zip(clients, sessions)))
        assert all(answer.masks[0].sum() == 30 * 30 for answer in answers)
        assert sum(client.stats["retries"] for client in clients) >= 1
    finally:
        server.stop()


def test_idle_sessions_expire_after_the_ttl_and_delete_closes():
    backend = FakeBackend()
    server = start(backend, session_ttl_s=0.4)
    try:
        url = server.url
        first, second = open_session(url, disk_image()[0]), open_session(url, disk_image()[0])
        assert requests.get(f"{url}/v1/health", timeout=5).json()["sessions"] == 2 and backend.session_count == 2
        assert requests.delete(f"{url}/v1/sessions/{first}", timeout=5).status_code == 204
        assert requests.delete(f"{url}/v1/sessions/{first}", timeout=5).status_code == 404
        state = requests.get(f"{url}/v1/sessions/{second}", timeout=5).json()
        assert state["shape"] == [96, 128] and state["ttl_s"] == 0.4
        deadline = time.monotonic() + 5
        while requests.get(f"{url}/v1/health", timeout=5).json()["sessions"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert requests.get(f"{url}/v1/health", timeout=5).json()["sessions"] == 0 and backend.session_count == 0
        assert requests.post(f"{url}/v1/sessions/{second}/ask", json={"prompts": [{"type": "box", "box": [1, 1, 9, 9]}]}, timeout=5).status_code == 404
    finally:
        server.stop()


# --- fuzzing from the OpenAPI schema -------------------------------------------------------


def test_fuzzing_the_api_from_its_schema_never_yields_a_5xx(model_server):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    url = model_server.url
    rows, cols = 48, 64
    session = open_session(url, np.random.default_rng(3).integers(0, 255, (rows, cols, 3), dtype=np.uint8))
    schema = schemathesis.openapi.from_url(f"{url}/v1/openapi.json")
    ask = schema["/v1/sessions/{session_id}/ask"]["POST"]
    stream = schema["/v1/sessions/{session_id}/ask/stream"]["POST"]
    on_session = {"session_id": session}
    Mode = schemathesis.GenerationMode
    from_schema = st.one_of(
        schema.as_strategy(Mode.POSITIVE),
        schema.as_strategy(Mode.NEGATIVE),
        ask.as_strategy(Mode.POSITIVE, path_parameters=on_session),
        ask.as_strategy(Mode.NEGATIVE, path_parameters=on_session),
        stream.as_strategy(Mode.POSITIVE, path_parameters=on_session),
    )
    # Prompts near and inside the image, so that many turns reach the model.
    x = st.one_of(st.floats(0, cols - 1), st.floats(0, cols - 1), st.floats(-3, cols + 2))
    y = st.one_of(st.floats(0, rows - 1), st.floats(0, rows - 1), st.floats(-3, rows + 2))
    point = st.tuples(x, y).map(list)
    prompt = st.one_of(
        st.builds(lambda a, b: {"type": "box", "box": a + b}, point, point),
        st.builds(lambda p, positive: {"type": "point", "point": p, "positive": positive}, point, st.booleans()),
        st.builds(lambda ps, w: {"type": "scribble", "points": ps, "width": w}, st.lists(point, min_size=1, max_size=6), st.floats(0.1, 20)),
        st.builds(lambda ps: {"type": "lasso", "points": ps}, st.lists(point, min_size=1, max_size=8)),
    )
    near_image = st.builds(lambda ps, q: {"question": q, "prompts": ps}, st.lists(prompt, min_size=1, max_size=2), st.text(max_size=40))
    statuses: Counter = Counter()
    http = requests.Session()

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), phases=[Phase.generate], database=None, derandomize=True)
    @given(case=from_schema)
    def fuzz_schema(case):
        response = case.call(base_url=url, session=http, timeout=60)
        statuses[(case.operation.label, response.status_code)] += 1
        assert response.status_code < 500, (case.operation.label, response.status_code, response.text[:300])

    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), phases=[Phase.generate], database=None, derandomize=True)
    @given(body=near_image)
    def fuzz_prompts(body):
        response = http.post(f"{url}/v1/sessions/{session}/ask", json=body, timeout=60)
        statuses[("near-image ask", response.status_code)] += 1
        assert response.status_code in (200, 422), (body, response.status_code, response.text[:300])
        if response.status_code == 200:
            for mask in response.json()["masks"]:
                assert decode_mask(mask).shape == (rows, cols)

    start = time.perf_counter()
    fuzz_schema()
    fuzz_prompts()
    elapsed = time.perf_counter() - start
    total = sum(statuses.values())
    print(f"\nfuzz: {total} requests in {elapsed:.1f} s; statuses {dict(Counter(code for _, code in statuses.elements()))}")
    assert total >= 150 and elapsed < 90
    assert statuses[("near-image ask", 200)] >= 5  # the model really answered some
    assert requests.get(f"{url}/v1/health", timeout=5).json()["requests"]["server_errors"] == 0


def test_a_backend_crash_is_a_clean_500_and_the_connection_stays_usable():
    class Crashing(FakeBackend):
        def _answer(self, image, state, turn, progress, cancel):
            raise RuntimeError("boom: a bug, with no client detail")

    server = start(Crashing())
    try:
        http = requests.Session()
        session = open_session(server.url, disk_image()[0])
        body = {"prompts": [{"type": "box", "box": [1, 1, 30, 30]}]}
        response = http.post(f"{server.url}/v1/sessions/{session}/ask", json=body, timeout=10)
        assert response.status_code == 500
        assert response.json()["error"] == {"type": "InternalError", "message": "the server failed to answer; see its log", "status": 500}
        assert http.get(f"{server.url}/v1/health", timeout=5).json()["requests"]["server_errors"] == 1
    finally:
        server.stop()


def test_litemedsam_two_points_regression(litemedsam):
    """Found by the fuzzer: a second point used to crash LiteMedSAM's prompt grouping (a 500)."""
    from mimo.prompts import PointPrompt

    session = litemedsam.open_session(SliceImage(np.full((48, 64, 3), 50, np.uint8)))
    try:
        answer = litemedsam.ask(session, Turn("", [PointPrompt(5, 5), PointPrompt(10, 10)]))
    finally:
        litemedsam.close_session(session)
    assert answer.extra["regions"] == 1  # both points describe one target
    assert len(answer.masks) <= 1


def test_bench_remote_reports_latency_bytes_and_throughput(litemedsam, capsys):
    from mimo.server.bench import bench_remote

    pixels, _ = disk_image()
    volume = np.stack([pixels[..., 0]] * 40)  # the slice's volume, 40 slices deep
    report = bench_remote(SliceImage(pixels, (0.5, 0.5), "CT"), (35, 23, 85, 73), backend=litemedsam, repeats=2, clients=(1,), asks_per_client=2, volume=volume)
    remote = report["remote"]
    assert report["local"]["ask_median_s"] > 0 and remote["ask_median_s"] > 0
    assert remote["upload_bytes"] < report["whole_volume"]["deflated_bytes"] < report["whole_volume"]["raw_bytes"]
    assert remote["ask_request_bytes"] < 800 and remote["ask_response_bytes"] < 2000  # headers included
    assert report["throughput"][0]["clients"] == 1 and report["throughput"][0]["asks"] == 2 and report["throughput"][0]["asks_per_s"] > 0
    printed = capsys.readouterr().out
    assert "latency per ask" in printed and "asks/s" in printed and "whole volume" in printed
