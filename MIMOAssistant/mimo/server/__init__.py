"""The MIMO server: one model on a GPU box, answering Slicer and command-line clients over HTTP.

* :mod:`mimo.server.wire` — the compact encodings that server and client share (numpy and
  the standard library only, so the client side needs neither FastAPI nor torch);
* :mod:`mimo.server.worker` — the single model thread and its bounded queue;
* :mod:`mimo.server.app` — the FastAPI application (``/v1``) and :func:`~mimo.server.app.serve`;
* :mod:`mimo.server.local` — start a server on loopback in a thread or a subprocess
  (benchmarks and tests);
* :mod:`mimo.server.bench` — local versus remote latency, bytes and throughput.

The client is :class:`mimo.backends.remote.RemoteBackend`.
"""
