"""Local versus remote: latency per interaction, bytes on the wire, throughput under concurrency.

``bench_remote(image, box)`` runs the same turn on a local backend and through a MIMO server
on loopback that serves that same backend (so the difference is the server's own cost:
HTTP, JSON, compression, queueing), then measures how many interactions per second the one
model worker sustains with 1, 4 and 16 concurrent clients, each with its own session.

The loopback server runs in a thread of this process, so client and server share the GIL:
the overhead figures are an upper bound of what a separate server process adds. Pass
``server_url`` to measure a real remote server instead (then ``backend`` is only local).
"""

from __future__ import annotations

import statistics
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..backend import Backend, SliceImage, Turn
from ..prompts import BoxPrompt


def _timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def _throughput(url: str, image: SliceImage, turn: Turn, clients: int, asks: int, token: str | None) -> dict:
    from ..backends.remote import RemoteBackend

    backends = [RemoteBackend(url, token=token, consent=True) for _ in range(clients)]
    barrier = threading.Barrier(clients)
    latencies: list[float] = []
    lock = threading.Lock()

    def client(backend: RemoteBackend) -> tuple[float, float]:
        session = backend.open_session(image)
        barrier.wait()
        start = time.perf_counter()
        for _ in range(asks):
            _, seconds = _timed(backend.ask, session, turn)
            with lock:
                latencies.append(seconds)
        end = time.perf_counter()
        backend.close_session(session)
        return start, end

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        spans = list(pool.map(client, backends))
    opened_s = min(s for s, _ in spans) - start
    wall = max(e for _, e in spans) - min(s for s, _ in spans)
    for backend in backends:
        backend.close()
    return {
        "clients": clients,
        "asks": clients * asks,
        "open_sessions_s": round(opened_s, 3),
        "asks_per_s": round(clients * asks / wall, 2),
        "ask_latency_median_s": round(statistics.median(latencies), 4),
        "ask_latency_max_s": round(max(latencies), 4),
    }


def bench_remote(
    image: SliceImage,
    box: tuple[float, float, float, float],
    question: str = "Segment the region in the box.",
    backend: Backend | None = None,
    repeats: int = 5,
    clients: tuple[int, ...] = (1, 4, 16),
    asks_per_client: int = 3,
    volume: np.ndarray | None = None,
    server_url: str | None = None,
    token: str | None = None,
    print_report: bool = True,
) -> dict:
    """Figures for one slice and one box; see the module docstring. Prints a table, returns a dict.

    ``volume`` (the whole image array the slice came from) adds what uploading it all would
    cost, raw and deflated, beside what the remote backend sends.
    """
    from ..backends.remote import RemoteBackend

    if backend is None and server_url is None:
        from ..backend import create_backend

        backend = create_backend("litemedsam")
    turn = Turn(question, [BoxPrompt(*box)])
    repeats = max(1, int(repeats))
    report: dict = {"image": {"shape": list(image.shape), "raw_bytes": int(image.pixels.nbytes)}}

    server = None
    if server_url is None:
        from .app import ServerConfig, create_app
        from .local import ThreadedServer

        server = ThreadedServer(create_app(backend, ServerConfig(queue_capacity=max(64, 2 * max(clients, default=1))))).start()
        server_url = server.url
    try:
        remote = RemoteBackend(server_url, token=token, consent=True)
        remote.server_info()
        if backend is not None:
            local_session, local_open_s = _timed(backend.open_session, image)
            backend.ask(local_session, turn)  # warm-up
        before = dict(remote.stats)
        session, open_s = _timed(remote.open_session, image)
        upload = remote.stats["bytes_sent"] - before["bytes_sent"]
        remote.ask(session, turn)  # warm-up
        local, times, sent, received = [], [], [], []
        for _ in range(repeats):  # interleaved, so that a busy machine slows both alike
            if backend is not None:
                local.append(_timed(backend.ask, local_session, turn)[1])
            before = dict(remote.stats)
            answer, seconds = _timed(remote.ask, session, turn)
            times.append(seconds)
            sent.append(remote.stats["bytes_sent"] - before["bytes_sent"])
            received.append(remote.stats["bytes_received"] - before["bytes_received"])
        remote.close_session(session)
        remote.close()
        if backend is not None:
            backend.close_session(local_session)
            report["local"] = {"open_session_s": round(local_open_s, 4), "ask_median_s": round(statistics.median(local), 4)}
        mask_bits = sum(int(m.size) for m in answer.masks) / 8
        report["remote"] = {
            "open_session_s": round(open_s, 4),
            "ask_median_s": round(statistics.median(times), 4),
            "upload_bytes": int(upload),
            "ask_request_bytes": int(statistics.median(sent)),
            "ask_response_bytes": int(statistics.median(received)),
            "full_masks_packed_bytes": int(mask_bits),
        }
        if "local" in report:
            report["remote"]["overhead_per_ask_s"] = round(report["remote"]["ask_median_s"] - report["local"]["ask_median_s"], 4)
        if volume is not None:
            volume = np.ascontiguousarray(volume)
            report["whole_volume"] = {"raw_bytes": int(volume.nbytes), "deflated_bytes": len(zlib.compress(volume.tobytes(), 6))}
        report["throughput"] = [_throughput(server_url, image, turn, n, asks_per_client, token) for n in clients]
    finally:
        if server is not None:
            server.stop()
    if print_report:
        print(format_report(report))
    return report


def format_report(report: dict) -> str:
    lines = [f"slice {report['image']['shape'][0]} x {report['image']['shape'][1]} ({report['image']['raw_bytes']} bytes as RGB)"]
    local, remote = report.get("local"), report["remote"]
    if local:
        lines.append(f"latency per ask       local {local['ask_median_s'] * 1e3:8.1f} ms   remote {remote['ask_median_s'] * 1e3:8.1f} ms   (overhead {remote['overhead_per_ask_s'] * 1e3:.1f} ms)")
        lines.append(f"open session (encode) local {local['open_session_s'] * 1e3:8.1f} ms   remote {remote['open_session_s'] * 1e3:8.1f} ms (upload + encode)")
    else:
        lines.append(f"latency per ask       remote {remote['ask_median_s'] * 1e3:.1f} ms; open session {remote['open_session_s'] * 1e3:.1f} ms")
    lines.append(
        f"bytes per interaction: upload once {remote['upload_bytes']}, then per ask {remote['ask_request_bytes']} sent + "
        f"{remote['ask_response_bytes']} received (full-size packed masks would be {remote['full_masks_packed_bytes']})"
    )
    if "whole_volume" in report:
        volume = report["whole_volume"]
        lines.append(f"whole volume instead: {volume['raw_bytes']} bytes raw, {volume['deflated_bytes']} deflated")
    for row in report["throughput"]:
        lines.append(
            f"{row['clients']:3d} clients: {row['asks_per_s']:7.2f} asks/s, median latency {row['ask_latency_median_s'] * 1e3:.1f} ms "
            f"(max {row['ask_latency_max_s'] * 1e3:.1f} ms), sessions opened in {row['open_sessions_s']:.1f} s"
        )
    return "\n".join(lines)
