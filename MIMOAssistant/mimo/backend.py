"""The one interface for everything that answers: local models and remote servers alike.

A caller opens a session on a slice image (the backend computes the image embedding once),
then asks turns on it: a question, visual prompts and the conversation so far. An answer
carries the text, the grounded spans that tie terms in the text to masks, the masks at the
slice's resolution, and timings per stage.
"""

from __future__ import annotations

import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import BackendError, Cancelled, MimoError
from .prompts import PROMPT_TYPES, Prompt, validate_prompts

ProgressCallback = Callable[[str, float], None]
"""``progress(stage, fraction)``: fraction in [0, 1] of the whole turn."""


@dataclass(frozen=True)
class Capabilities:
    text_answers: bool
    """True when the backend reads the question and writes free text (a VLM)."""
    prompt_types: frozenset[str]
    requires_prompt: bool
    """True when a turn without a visual prompt cannot be answered (pure segmenters)."""

    def to_dict(self) -> dict:
        return {
            "text_answers": self.text_answers,
            "prompt_types": sorted(self.prompt_types),
            "requires_prompt": self.requires_prompt,
        }


@dataclass(frozen=True)
class BackendInfo:
    name: str
    version: str
    model: str
    device: str
    capabilities: Capabilities

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "model": self.model,
            "device": self.device,
            "capabilities": self.capabilities.to_dict(),
        }


@dataclass
class SliceImage:
    """What a backend sees: display-ready pixels and their physical pixel size, nothing else.

    No patient metadata ever enters this object, so nothing of the kind can reach a server.
    """

    pixels: np.ndarray  # uint8 (rows, cols, 3)
    spacing_mm: tuple[float, float] = (1.0, 1.0)  # (row step, column step)
    modality: str = "OT"
    calibrated: bool = True
    """False when the pixel size is unknown (photographs, PNG screenshots): areas stay in pixels."""

    def __post_init__(self) -> None:
        pixels = np.asarray(self.pixels)
        if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
            raise MimoError(f"slice image must be uint8 (rows, cols, 3), got {pixels.dtype} {pixels.shape}")
        if min(pixels.shape[:2]) < 2:
            raise MimoError(f"slice image is too small: {pixels.shape[:2]}")
        spacing = tuple(float(v) for v in self.spacing_mm)
        if len(spacing) != 2 or not all(np.isfinite(v) and v > 0 for v in spacing):
            raise MimoError(f"pixel spacing must be two positive numbers, got {self.spacing_mm}")
        self.pixels = np.ascontiguousarray(pixels)
        self.spacing_mm = spacing

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])


@dataclass(frozen=True)
class Message:
    role: str  # "user" or "assistant"
    text: str


@dataclass
class Turn:
    question: str
    prompts: list[Prompt] = field(default_factory=list)
    history: list[Message] = field(default_factory=list)


@dataclass(frozen=True)
class GroundedSpan:
    """``answer.text[start:end]`` is ``term``, and ``answer.masks[mask_index]`` is its mask."""

    term: str
    start: int
    end: int
    mask_index: int

    def to_dict(self) -> dict:
        return {"term": self.term, "start": self.start, "end": self.end, "mask_index": self.mask_index}


@dataclass
class Answer:
    text: str
    spans: list[GroundedSpan]
    masks: list[np.ndarray]  # bool (rows, cols), the slice's resolution
    timings: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for span in self.spans:
            if not 0 <= span.mask_index < len(self.masks):
                raise MimoError(f"span {span.term!r} points at mask {span.mask_index}, but there are {len(self.masks)} masks")
            if self.text[span.start : span.end] != span.term:
                raise MimoError(f"span {span.term!r} does not match the answer text at {span.start}:{span.end}")

    def term_of_mask(self, index: int) -> str:
        for span in self.spans:
            if span.mask_index == index:
                return span.term
        return f"segment {index + 1}"


@dataclass
class _Session:
    image: SliceImage
    state: Any
    last_used: float


class Backend(ABC):
    """Base of every backend. Subclasses implement :meth:`info`, :meth:`_encode` and :meth:`_answer`.

    Sessions live in a least-recently-used store of at most ``max_sessions`` entries so that
    memory stays bounded however many slices a user visits.
    """

    def __init__(self, max_sessions: int = 8) -> None:
        if max_sessions < 1:
            raise BackendError("max_sessions must be at least 1")
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._lock = threading.RLock()

    @abstractmethod
    def info(self) -> BackendInfo: ...

    @abstractmethod
    def _encode(self, image: SliceImage) -> Any:
        """Compute what a session keeps (image embeddings)."""

    @abstractmethod
    def _answer(self, image: SliceImage, state: Any, turn: Turn, progress: ProgressCallback, cancel: threading.Event | None) -> Answer:
        """Answer one validated turn on an encoded image."""

    def open_session(self, image: SliceImage) -> str:
        start = time.perf_counter()
        state = self._encode(image)
        session_id = uuid.uuid4().hex
        with self._lock:
            self._sessions[session_id] = _Session(image, state, time.monotonic())
            self._sessions.move_to_end(session_id)
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        self.last_encode_seconds = time.perf_counter() - start
        return session_id

    def has_session(self, session_id: str) -> bool:
        with self._lock:
            return session_id in self._sessions

    def close_session(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    def close(self) -> None:
        with self._lock:
            self._sessions.clear()

    def ground_anatomy(self, volume, question: str, atlas: str | None = None, progress: ProgressCallback | None = None,
                       cancel: threading.Event | None = None):
        """Named structures of ``question`` as 3D segments on ``volume`` (an
        :class:`~mimo.image.ImageVolume`), by registering a built-in atlas (``atlas``: its name;
        None: the default for the volume's modality): a :class:`~mimo.anatomy.AnatomyAnswer`.
        Runs here for local backends; a remote backend sends the volume to its server."""
        from .anatomy import AnatomyGrounder, builtin_atlases, find_atlas

        if atlas is not None and atlas not in builtin_atlases():
            raise BackendError(f"unknown atlas {atlas!r}; built in: {', '.join(builtin_atlases()) or 'none installed'}")
        chosen = find_atlas(atlas, volume.modality)
        with self._lock:
            grounders = self.__dict__.setdefault("_grounders", {})
            grounder = grounders.get(chosen.name) or grounders.setdefault(chosen.name, AnatomyGrounder(chosen))
        return grounder.ground(volume, question, progress, cancel)

    def load(self, cancel: threading.Event | None = None) -> None:
        """Be ready to answer. Backends that load their weights when built have nothing to do;
        one that starts an engine process waits for it here, and ``cancel`` stops the wait."""

    @property
    def session_count(self) -> int:
        with self._lock:
            return len(self._sessions)

    def _touch_session(self, session_id: str):
        """The session, marked most recently used; a clear error when it is unknown or expired."""
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                raise BackendError(f"unknown or expired session {session_id!r}; open a new session on the image")
            session.last_used = time.monotonic()
            self._sessions.move_to_end(session_id)
            return session

    def checked_turn(self, turn: Turn, shape: tuple[int, int]) -> Turn:
        """The turn with its prompts checked against this backend's capabilities and the image
        (the same messages whichever backend answers, before any work or network traffic)."""
        capabilities = self.info().capabilities
        unsupported = sorted({p.kind for p in turn.prompts} - set(capabilities.prompt_types))
        if unsupported:
            raise BackendError(f"{self.info().name} does not take {', '.join(unsupported)} prompts")
        if capabilities.requires_prompt and not turn.prompts:
            raise BackendError(
                f"{self.info().name} is a segmentation-only backend: draw a box, point, scribble or lasso on the image"
            )
        return Turn(turn.question, validate_prompts(list(turn.prompts), shape), list(turn.history))

    def ask(
        self,
        session_id: str,
        turn: Turn,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> Answer:
        session = self._touch_session(session_id)
        turn = self.checked_turn(turn, session.image.shape)
        check_cancel(cancel)
        start = time.perf_counter()
        answer = self._answer(session.image, session.state, turn, progress or (lambda stage, fraction: None), cancel)
        answer.timings.setdefault("total_s", time.perf_counter() - start)
        return answer


def check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("the turn was cancelled")


ALL_PROMPT_TYPES = frozenset(PROMPT_TYPES)


#: The mimo-tiny checkpoint shipped inside the package (when this installation has one).
EMBEDDED_CHECKPOINT = Path(__file__).resolve().parent / "resources" / "mimo-tiny"


def embedded_checkpoint() -> Path | None:
    """The embedded mimo-tiny checkpoint, or None. Found by file: no torch import, so the
    Slicer module can choose its default before the model's packages are installed."""
    return EMBEDDED_CHECKPOINT if (EMBEDDED_CHECKPOINT / "model.safetensors").is_file() else None


def default_backend_name() -> str:
    """``mimo`` when this installation ships the embedded mimo-tiny checkpoint, else ``litemedsam``."""
    return "mimo" if embedded_checkpoint() else "litemedsam"


def create_backend(name: str | None = None, model: str | None = None, device: str = "auto", **options: Any) -> Backend:
    """Build a backend by name (None: :func:`default_backend_name`). Imports lazily so that
    the remote mode needs no torch."""
    name = name or default_backend_name()
    if name == "litemedsam":
        from .backends.litemedsam import LiteMedSAMBackend

        return LiteMedSAMBackend(checkpoint=model, device=device, **options)
    if name == "mimo":
        from .backends.mimo import MimoBackend

        model = model or embedded_checkpoint()
        if not model:
            raise BackendError("the mimo backend needs a checkpoint: pass --model PATH (this installation ships none)")
        return MimoBackend(model, device=device, **options)
    if name == "remote":
        from .backends.remote import RemoteBackend

        if not model:
            raise BackendError("the remote backend needs the server URL as its model, e.g. http://127.0.0.1:8765")
        return RemoteBackend(model, **options)  # token=, consent=, timeout=, retries=; the device is the server's
    raise BackendError(f"unknown backend {name!r}; available: litemedsam, mimo, remote")
