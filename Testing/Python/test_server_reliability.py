"""The server under load, crashes and session churn: real ``mimo-assistant serve`` processes.

Each test starts the server as a subprocess on a loopback port (so it can be killed with
SIGKILL and restarted on the same port) with the real LiteMedSAM model on the CPU.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from conftest import dice

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from mimo.backend import SliceImage, Turn  # noqa: E402
from mimo.backends.remote import RemoteBackend, ServerUnreachable  # noqa: E402
from mimo.prompts import BoxPrompt, LassoPrompt  # noqa: E402
from mimo.server.local import ServerProcess  # noqa: E402

MODEL_ARGS = ("--backend", "litemedsam", "--device", "cpu")
CLIENTS = 16
ASKS_PER_CLIENT = 3


def disk_case(index: int, size: int = 160) -> tuple[SliceImage, np.ndarray, tuple[float, float, float, float]]:
    """Client ``index``'s own image: a bright disk at its own place on a 4 x 4 grid, in noise.

    Disks are at least 12 pixels apart and boxes reach at most 7 pixels past their disk, so a
    mask that touches another client's disk can only come from cross-talk.
    """
    row, col = divmod(index, 4)
    centre = (22 + 36 * row, 22 + 36 * col)
    radius = 8 + (index % 3) * 2
    yy, xx = np.mgrid[:size, :size]
    disk = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < radius**2
    rng = np.random.default_rng(index)
    pixels = rng.integers(20, 60, (size, size), dtype=np.uint8)
    pixels[disk] = rng.integers(180, 230, int(disk.sum()), dtype=np.uint8)
    box = (centre[1] - radius - 4.0, centre[0] - radius - 4.0, centre[1] + radius + 4.0, centre[0] + radius + 4.0)
    return SliceImage(np.repeat(pixels[..., None], 3, axis=2), (0.8, 0.8), "CT"), disk, box


def health(url: str) -> dict:
    return requests.get(f"{url}/v1/health", timeout=5).json()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    # One process for the whole module (the model loads once per start): a short session TTL
    # for the memory test; sessions with a queued or running turn never expire, so the load
    # test is unaffected.
    args = (*MODEL_ARGS, "--queue-size", "64", "--session-ttl", "2")
    process = ServerProcess(args=args, log_path=tmp_path_factory.mktemp("server") / "server.log").start()
    yield process
    process.stop()


def test_sixteen_concurrent_clients_get_their_own_correct_masks(served):
    cases = [disk_case(i) for i in range(CLIENTS)]
    barrier = threading.Barrier(CLIENTS)

    def client(index: int) -> list[np.ndarray]:
        image, _, (x0, y0, x1, y1) = cases[index]
        backend = RemoteBackend(served.url, consent=True)
        try:
            barrier.wait(timeout=30)
            session = backend.open_session(image)
            turns = [
                Turn("Segment it.", [BoxPrompt(x0, y0, x1, y1)]),
                Turn("Again, wider.", [BoxPrompt(x0 - 3, y0 - 3, x1 + 3, y1 + 3)]),
                Turn("And with a lasso.", [LassoPrompt(((x0, y0), (x1, y0), (x1, y1), (x0, y1)))]),
            ][:ASKS_PER_CLIENT]
            masks = [backend.ask(session, turn).masks[0] for turn in turns]
            backend.close_session(session)
            return masks
        finally:
            backend.close()

    start = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(client, range(CLIENTS)))  # re-raises any client's error
    elapsed = time.perf_counter() - start
    scores = np.array([[dice(mask, cases[i][1]) for mask in masks] for i, masks in enumerate(results)])
    print(f"\nload: {CLIENTS} clients x {ASKS_PER_CLIENT} asks in {elapsed:.1f} s; Dice min {scores.min():.3f} mean {scores.mean():.3f}")
    assert scores.min() >= 0.85, scores
    for i, masks in enumerate(results):  # no cross-talk: nothing of another client's disk
        others = np.logical_or.reduce([cases[j][1] for j in range(CLIENTS) if j != i])
        assert all(not (mask & others).any() for mask in masks), i
    state = health(served.url)
    assert state["sessions"] == 0 and state["queue"]["queued"] == 0 and state["requests"]["server_errors"] == 0
    assert state["requests"]["served"] >= CLIENTS * (ASKS_PER_CLIENT + 2)


def test_a_killed_server_is_a_clear_error_writes_nothing_and_clients_recover_after_restart(served, tmp_path, capsys):
    from PIL import Image

    from mimo.cli import main

    image, disk, box = disk_case(5)
    backend = RemoteBackend(served.url, consent=True, retries=1)
    session = backend.open_session(image)
    turn = Turn("Segment it.", [BoxPrompt(*box)])
    before = backend.ask(session, turn)

    png = tmp_path / "slice.png"
    Image.fromarray(image.pixels).save(png)
    out = tmp_path / "mask.png"
    command = ["ask", str(png), "Segment it.", "--box", *(str(v) for v in box), "--server", served.url, "--out", str(out)]
    outcome = {}
    cli = threading.Thread(target=lambda: outcome.setdefault("code", main(command)))
    cli.start()
    deadline = time.monotonic() + 60
    while health(served.url)["queue"]["running"] == 0:  # the CLI's slice is being encoded
        assert time.monotonic() < deadline and cli.is_alive(), "the CLI's upload never reached the model"
        time.sleep(0.01)
    served.kill()
    cli.join(30)
    assert outcome["code"] == 2
    error = capsys.readouterr().err
    assert "MIMO server" in error and served.url in error, error
    assert not out.exists()
    with pytest.raises(ServerUnreachable):
        backend.ask(session, turn)

    served.start()  # same port, empty memory
    after = backend.ask(session, turn)
    assert backend.stats["reuploads"] == 1 and np.array_equal(after.masks[0], before.masks[0])
    assert dice(after.masks[0], disk) >= 0.85
    assert main(command) == 0 and out.exists()
    backend.close()


def test_expired_sessions_give_their_memory_back(served):
    psutil = pytest.importorskip("psutil")
    process = psutil.Process(served.pid)
    backend = RemoteBackend(served.url, consent=True)
    rng = np.random.default_rng(0)

    def open_and_ask() -> None:  # 2048 x 2048: 12 MiB of pixels and a 4 MiB embedding per session
        grey = rng.integers(0, 255, (2048, 2048, 1), dtype=np.uint8)
        session = backend.open_session(SliceImage(np.repeat(grey, 3, axis=2), (0.2, 0.2), "XR"))
        backend.ask(session, Turn("", [BoxPrompt(500, 500, 1500, 1500)]))

    def settle(timeout: float = 30.0) -> float:
        deadline = time.monotonic() + timeout
        while health(served.url)["sessions"] and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.8)  # a reaper pass after the last expiry (gc, malloc_trim)
        return process.memory_info().rss / 2**20

    for _ in range(2):  # warm-up: first-use allocations (allocator arenas, caches) are not a leak
        open_and_ask()
    baseline = settle()
    peak_rss, peak_sessions = baseline, 0
    for _ in range(4):
        open_and_ask()
        peak_rss = max(peak_rss, process.memory_info().rss / 2**20)
        peak_sessions = max(peak_sessions, health(served.url)["sessions"])
    final = settle()
    print(f"\nmemory: baseline {baseline:.0f} MiB, peak {peak_rss:.0f} MiB with up to {peak_sessions} sessions, after expiry {final:.0f} MiB")
    assert health(served.url)["sessions"] == 0 and peak_sessions >= 1
    assert peak_rss > baseline + 20  # the sessions did cost memory...
    assert final < baseline + 40  # ...and gave it back (4 leaked sessions would be over 60 MiB)
    backend.close()
