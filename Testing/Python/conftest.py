"""Shared fixtures: the location of ../shared/data and one LiteMedSAM backend per test session."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "MIMOAssistant"))

SHARED_DATA = Path(os.environ.get("MIMO_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_path(*parts: str) -> Path:
    """A file under ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs the shared data set ({path} is absent; set MIMO_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def open2d_records() -> list[dict]:
    manifest = shared_path("open2d", "manifest.jsonl")
    return [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]


def read_mask(path: Path) -> np.ndarray:
    from PIL import Image

    mask = np.asarray(Image.open(path))
    return (mask[..., 0] if mask.ndim == 3 else mask) > 127


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2.0 * (a & b).sum() / total)


def box_around(mask: np.ndarray, margin: int = 3) -> tuple[float, float, float, float]:
    rows, cols = np.nonzero(mask)
    height, width = mask.shape
    return (
        float(max(cols.min() - margin, 0)),
        float(max(rows.min() - margin, 0)),
        float(min(cols.max() + margin, width - 1)),
        float(min(rows.max() + margin, height - 1)),
    )


@pytest.fixture(scope="session")
def litemedsam():
    from mimo.backend import create_backend

    return create_backend("litemedsam", device="cpu")


@pytest.fixture(scope="session")
def engine():
    """LiteMedSAM in an engine process (the Slicer module's local mode), started once."""
    from mimo.backends.engine import EngineProcessBackend

    backend = EngineProcessBackend("litemedsam", device="cpu")
    yield backend
    backend.close()


@pytest.fixture
def one_torch_thread():
    """One torch thread: on a CPU shared with other jobs two threads are several times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
