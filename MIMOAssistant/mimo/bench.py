"""``mimo-assistant bench``: figures, not pass/fail.

For each backend on the same image and prompts, in one run: image-encode time, time per
additional prompt on the cached embedding, end-to-end time of a turn (open session + ask),
tokens per second when the backend generates text, and peak memory. LiteMedSAM alone runs
beside the others so the overhead of the language side reads as a ratio.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import asdict, dataclass

from .backend import Backend, SliceImage, Turn
from .prompts import Prompt


@dataclass
class BackendFigures:
    backend: str
    model: str
    device: str
    encode_s: float
    per_prompt_s: float
    turn_s: float
    tokens_per_s: float | None
    peak_memory_mb: float

    def to_dict(self) -> dict:
        return asdict(self)


def peak_memory_mb() -> float:
    """Peak resident memory of this process (and of the GPU when one is used)."""
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux
    try:
        import torch

        if torch.cuda.is_available():
            return rss + torch.cuda.max_memory_allocated() / 2**20
    except ImportError:
        pass
    return rss


def bench_backend(backend: Backend, image: SliceImage, question: str, prompts: list[Prompt], repeats: int = 5) -> BackendFigures:
    """Time one backend; the first ask is a warm-up and not counted."""
    start = time.perf_counter()
    session = backend.open_session(image)
    encode_s = time.perf_counter() - start
    turn = Turn(question, list(prompts))
    first = backend.ask(session, turn)
    turn_s = encode_s + first.timings.get("total_s", 0.0)
    per_prompt, tokens_per_s = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        answer = backend.ask(session, turn)
        per_prompt.append(time.perf_counter() - start)
        tokens, generate_s = answer.extra.get("new_tokens"), answer.timings.get("generate_s")
        if tokens and generate_s:
            tokens_per_s.append(tokens / generate_s)
    backend.close_session(session)
    info = backend.info()
    return BackendFigures(
        backend=info.name,
        model=info.model,
        device=info.device,
        encode_s=encode_s,
        per_prompt_s=statistics.median(per_prompt),
        turn_s=turn_s,
        tokens_per_s=statistics.median(tokens_per_s) if tokens_per_s else None,
        peak_memory_mb=peak_memory_mb(),
    )


def format_table(rows: list[BackendFigures]) -> str:
    baseline = next((r for r in rows if r.backend == "litemedsam"), None)
    lines = [
        f"CPU threads: {os.cpu_count()}",
        "| backend | model | device | encode s | per prompt s | turn s | tokens/s | peak MB | turn vs LiteMedSAM |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ratio = f"{row.turn_s / baseline.turn_s:.2f}x" if baseline and baseline.turn_s > 0 else "-"
        tokens = f"{row.tokens_per_s:.1f}" if row.tokens_per_s else "-"
        lines.append(
            f"| {row.backend} | {row.model} | {row.device} | {row.encode_s:.3f} | {row.per_prompt_s:.3f} | "
            f"{row.turn_s:.3f} | {tokens} | {row.peak_memory_mb:.0f} | {ratio} |"
        )
    return "\n".join(lines)


@dataclass
class AnatomyFigures:
    atlas: str
    volume: str
    voxels: int
    first_answer_s: float  # registration from scratch + carrying the structures over
    further_structure_s: float  # another structure on the same volume (registration in memory)
    cached_volume_s: float  # a new process on the same volume (registration from the disk cache)
    structures: list[str]
    peak_memory_mb: float

    def to_dict(self) -> dict:
        return asdict(self)


def bench_anatomy(atlas, volume, name: str, question: str = "Segment the hippocampus and the thalamus.",
                  further: str = "Segment the putamen.") -> AnatomyFigures:
    """Time 3D answers by atlas registration; the registration cache is a fresh temporary folder,
    so the first answer pays the whole registration."""
    import tempfile

    from .anatomy import AnatomyGrounder

    with tempfile.TemporaryDirectory(prefix="mimo-bench-registration-") as cache:
        grounder = AnatomyGrounder(atlas, cache_dir=cache)
        start = time.perf_counter()
        answer = grounder.ground(volume, question)
        first_s = time.perf_counter() - start
        start = time.perf_counter()
        grounder.ground(volume, further)
        further_s = time.perf_counter() - start
        start = time.perf_counter()
        AnatomyGrounder(atlas, cache_dir=cache).ground(volume, further)
        cached_s = time.perf_counter() - start
    return AnatomyFigures(atlas.name, name, int(volume.array.size), first_s, further_s, cached_s,
                          [s.name for s in answer.segments], peak_memory_mb())


def format_anatomy(row: AnatomyFigures) -> str:
    return "\n".join([
        "| atlas | volume | voxels | first 3D answer s | further structure s | same volume, cached registration s | peak MB |",
        "|---|---|---|---|---|---|---|",
        f"| {row.atlas} | {row.volume} | {row.voxels:,} | {row.first_answer_s:.1f} | {row.further_structure_s:.2f} | "
        f"{row.cached_volume_s:.2f} | {row.peak_memory_mb:.0f} |",
        f"structures in the first answer: {', '.join(row.structures) or 'none'}",
    ])
