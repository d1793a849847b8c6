"""The training configuration: one JSON or YAML file that says everything a run needs.

Every section is a dataclass with defaults; unknown keys are errors that name the key and the
section, so a typo never silently falls back to a default. Relative paths in the file are read
relative to the file's folder; ``~`` and ``$VARIABLES`` are expanded.

Example (JSON; YAML is the same structure; see configs/mimo-tiny-cpu.json and configs/mimo-7b-gpu.yaml)::

    {
      "data": "${MIMO_SHARED_DATA}/open2d/manifest.jsonl",
      "model": {"preset": "mimo-tiny"},
      "output_dir": "~/mimo-runs/mimo-tiny-cpu",
      "steps": 600, "batch_size": 4, "text_warmup_steps": 150,
      "optimizer": {"lr": 0.001, "part_lr": {"mask_decoder": 0.0001}},
      "schedule": {"name": "cosine", "warmup_steps": 20},
      "sampling": {"max_images_per_dataset": 30},
      "augment": {"hflip": 0.25, "box_jitter": 0.1},
      "eval_every": 100, "save_every": 100, "seed": 0
    }

``$MIMO_SHARED_DATA`` defaults to ``../shared/data`` from the working directory (run from the
project root). Every key, its default and its meaning are the dataclass fields below.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import MimoError

DEFAULT_CACHE_DIR = "~/.cache/mimo/features"
PERSPECTIVES = ("text_seg", "box_seg", "prompt_perception", "reasoning_seg", "prompt_reasoning", "vqa", "negative")
#: Modalities whose images may be mirrored left-right (nothing in them has a canonical side).
FLIP_MODALITIES = ("endoscopy", "ultrasound", "microscopy", "histopathology", "fundus", "dermoscopy", "electron microscopy")
#: Modalities whose images may also be mirrored top-bottom (no up or down either).
VFLIP_MODALITIES = ("endoscopy", "microscopy", "histopathology", "electron microscopy", "dermoscopy")


def _is_number(value) -> bool:
    """An int or float, not a bool (JSON's true is not a weight)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class ConfigError(MimoError):
    """The training configuration is malformed."""


@dataclass
class ModelSection:
    preset: str | None = "mimo-tiny"
    """``mimo-tiny`` or ``mimo-7b`` (then give the three local paths); ignored with ``init_checkpoint``."""
    init_checkpoint: str | None = None
    """A MIMO checkpoint directory to start from (fine-tuning) instead of a new preset model."""
    widen_refiner_to: list[int] | None = None
    """With ``init_checkpoint``: widen its mask refiner to these three channel sizes (multiples of
    8) before training; the masks it draws stay the same until the new channels learn."""
    add_box_prior: bool = False
    """With ``init_checkpoint``: give it a box prior (``mimo.modeling.box_prior``) whose gate
    starts closed, if it has none."""
    box_decoder_weight: float | None = None
    """With ``init_checkpoint``: set its ``segmentation.box_decoder_weight`` (``mimo.modeling.box_decoder``)
    before training, e.g. 1.0 to train box answers through the fine-tuned decoder alone and choose
    the blend afterwards on held-out data; None keeps the checkpoint's."""
    text_model_path: str | None = None
    vision_model_path: str | None = None
    sam_model_path: str | None = None
    dtype: str = "bfloat16"
    """mimo-7b only: precision of the whole model."""
    seed: int = 0
    """Seed of the new weights (independent of the training seed)."""


@dataclass
class OptimizerSection:
    lr: float = 3e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    max_grad_norm: float | None = 1.0
    part_lr: dict[str, float] = field(default_factory=dict)
    """Learning rates of single parts, e.g. {"mask_decoder": 1e-4}: a pretrained decoder learns
    slower than the new aligner. Parts: see PARTS."""


#: Parts of a MIMO model by parameter-name prefix (for ``optimizer.part_lr``).
PARTS = {
    "language_model": "language_model.",
    "aligner": "aligner.",
    "visual_prompt_encoder": "visual_prompt_encoder.",
    "seg_projection": "seg_projection.",
    "mask_refiner": "mask_refiner.",
    "box_prior": "box_prior.gate.",
    "mask_decoder": "grounding.mask_decoder.",
    "prompt_encoder": "grounding.prompt_encoder.",
    "image_encoder": "grounding.image_encoder.",
    "understanding": "understanding.",
}


@dataclass
class ScheduleSection:
    name: str = "cosine"
    """Any transformers scheduler name: constant, constant_with_warmup, linear, cosine, ..."""
    warmup_steps: int = 0


@dataclass
class LossSection:
    lm_weight: float | None = None
    bce_weight: float | None = None
    dice_weight: float | None = None
    """None keeps the model configuration's weight (written into the checkpoint either way)."""
    box_teacher_weight: float | None = None
    """Keep masks answering a box or lasso near the pretrained decoder's answer to the box alone,
    where that answer has at least ``box_teacher_min_dice`` with the reference
    (``mimo.modeling.box_teacher``); 0 turns it off."""
    box_teacher_min_dice: float | None = None


@dataclass
class TrainPartsSection:
    """Which parts learn. Parts not named keep what the model configuration says."""

    language_model: str | None = None
    """``full`` or ``frozen`` (a LoRA model's adapters train when not frozen)."""
    aligner: bool = True
    visual_prompt_encoder: bool = True
    seg_projection: bool = True
    mask_refiner: bool = True
    """The high-resolution mask refiner (models that have one)."""
    box_prior: bool = True
    """The box prior's gate (models that have one; its pretrained decoder never trains)."""
    mask_decoder: bool | None = None
    prompt_encoder: bool | None = None
    image_encoder: bool | None = None
    """Training the image encoder disables the feature cache (every step encodes its images)."""


@dataclass
class FeaturesSection:
    cache: bool = True
    cache_dir: str | None = None
    """Default: $MIMO_FEATURE_CACHE or ~/.cache/mimo/features (never inside the data or the repo)."""
    dtype: str = "float16"
    """``float16`` (half the disk) or ``float32``."""


@dataclass
class SamplingSection:
    perspective_weights: dict[str, float] = field(
        default_factory=lambda: {
            "text_seg": 1.0,
            "box_seg": 1.0,
            "prompt_perception": 1.0,
            "reasoning_seg": 1.0,
            "prompt_reasoning": 1.0,
            "vqa": 0.5,
            "negative": 0.5,
        }
    )
    """Relative share of each perspective in a batch (perspectives absent from the data are skipped)."""
    datasets: list[str] | None = None
    """Only these datasets (default: all)."""
    max_images_per_dataset: int | None = None
    """Cap on distinct images per dataset (encoding each image is the CPU bottleneck)."""
    dataset_max_images: dict[str, int] = field(default_factory=dict)
    """Caps for named datasets in place of max_images_per_dataset, e.g. {"busi": 300}: more
    images of the targets a model generalises worst on, without encoding more of every dataset."""
    prefer_cached_images: bool = True
    """Under max_images_per_dataset, take images already in the feature cache first."""
    max_samples_per_dataset: int | None = None
    max_samples_per_perspective: int | None = None
    dataset_balance: float = 1.0
    """Within a perspective, a dataset is drawn with weight (its samples) ** dataset_balance:
    1 draws samples uniformly (large datasets dominate), 0 draws every dataset equally often."""
    dataset_weights: dict[str, float] = field(default_factory=dict)
    """Multiplies a dataset's draw weight, e.g. {"drive": 3.0} (datasets not named: 1)."""
    val_samples: int = 32
    """Validation samples scored every ``eval_every`` steps (teacher-forced losses and mask Dice)."""
    train_split: str = "train"
    val_split: str = "val"


@dataclass
class AugmentSection:
    box_jitter: float = 0.1
    """Each box side moves by up to this fraction of the box size."""
    hflip: float = 0.0
    """Probability of a left-right mirror (only modalities in flip_modalities, never targets with a side)."""
    vflip: float = 0.0
    flip_modalities: list[str] = field(default_factory=lambda: list(FLIP_MODALITIES))
    vflip_modalities: list[str] = field(default_factory=lambda: list(VFLIP_MODALITIES))
    rephrase: bool = True
    """Draw a new phrasing each time for samples built from a manifest."""


@dataclass
class DebugSection:
    """Test hooks; leave them unset."""

    inject_nan_at_step: int | None = None
    stop_after_steps: int | None = None
    """Stop (as if interrupted) once this many steps are done, after saving a checkpoint."""


@dataclass
class TrainConfig:
    data: str = ""
    """A data-builder folder (samples.jsonl + datasheet.json) or an open2d-format manifest.jsonl."""
    output_dir: str = ""
    model: ModelSection = field(default_factory=ModelSection)
    steps: int | None = None
    """Optimizer steps in all (the text-only warm-up steps included)."""
    epochs: float | None = None
    """Alternative to ``steps``: passes over the training samples."""
    batch_size: int = 4
    """Samples per process and micro-step."""
    gradient_accumulation_steps: int = 1
    text_warmup_steps: int = 0
    """First steps train the text only (no mask decoding: cheap), as the overfit test does."""
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    loss: LossSection = field(default_factory=LossSection)
    train: TrainPartsSection = field(default_factory=TrainPartsSection)
    features: FeaturesSection = field(default_factory=FeaturesSection)
    sampling: SamplingSection = field(default_factory=SamplingSection)
    augment: AugmentSection = field(default_factory=AugmentSection)
    eval_every: int | None = None
    save_every: int | None = None
    keep_checkpoints: int = 2
    log_every: int = 1
    seed: int = 0
    mixed_precision: str = "no"
    """``no``, ``bf16`` or ``fp16`` (accelerate; the launcher's config may set it too)."""
    cpu: bool = False
    """Force the CPU even when a GPU is present."""
    cpu_threads: int | None = None
    """torch.set_num_threads for this process (None: torch's default; 1 is fastest on a busy shared CPU)."""
    num_workers: int = 0
    """DataLoader worker processes building batches (0: in the training process)."""
    resume: str | bool = "auto"
    """``auto`` (latest checkpoint in output_dir, if any), ``false``, or a checkpoint folder."""
    max_new_tokens: int = 32
    debug: DebugSection = field(default_factory=DebugSection)
    source: str | None = None
    """The file the configuration was read from (set by :func:`load_config`)."""

    # ----- checks ---------------------------------------------------------------------------

    def validate(self) -> None:
        if not self.data:
            raise ConfigError("the configuration needs 'data': a data-builder folder or an open2d manifest.jsonl")
        if not self.output_dir:
            raise ConfigError("the configuration needs 'output_dir'")
        if (self.steps is None) == (self.epochs is None):
            raise ConfigError("give exactly one of 'steps' and 'epochs'")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"'steps' must be at least 1, got {self.steps}")
        if self.epochs is not None and self.epochs <= 0:
            raise ConfigError(f"'epochs' must be positive, got {self.epochs}")
        for name in ("batch_size", "gradient_accumulation_steps", "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"'{name}' must be at least 1, got {getattr(self, name)}")
        for name in ("eval_every", "save_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"'{name}' must be at least 1 (or null), got {value}")
        if self.text_warmup_steps < 0:
            raise ConfigError("'text_warmup_steps' cannot be negative")
        model = self.model
        if model.widen_refiner_to is not None and (model.init_checkpoint is None or len(model.widen_refiner_to) != 3):
            raise ConfigError("model.widen_refiner_to needs model.init_checkpoint and three channel sizes, "
                              f"got {model.widen_refiner_to!r}")
        if model.add_box_prior and model.init_checkpoint is None:
            raise ConfigError("model.add_box_prior needs model.init_checkpoint (the model the box prior is added to)")
        if model.box_decoder_weight is not None:
            if model.init_checkpoint is None:
                raise ConfigError("model.box_decoder_weight needs model.init_checkpoint (a new model has nothing fine-tuned to blend)")
            if not _is_number(model.box_decoder_weight) or not 0.0 <= model.box_decoder_weight <= 1.0:
                raise ConfigError(f"model.box_decoder_weight {model.box_decoder_weight!r} must be a number from 0 to 1")
        from ..modeling.configuration import LossConfig  # here: importing mimo.modeling loads torch

        given = {key: value for key, value in dataclasses.asdict(self.loss).items() if value is not None}
        try:  # the model configuration's own check, before any model is loaded
            LossConfig(**given).validate()
        except MimoError as error:
            raise ConfigError(f"{error} (or null)") from None
        if model.init_checkpoint is None:
            if model.preset not in ("mimo-tiny", "mimo-7b"):
                raise ConfigError(f"model.preset {model.preset!r} is not one of mimo-tiny, mimo-7b (or give model.init_checkpoint)")
            if model.preset == "mimo-7b":
                missing = [k for k in ("text_model_path", "vision_model_path", "sam_model_path") if not getattr(model, k)]
                if missing:
                    raise ConfigError(f"model.preset mimo-7b needs the local directories {', '.join('model.' + k for k in missing)}")
        if self.train.language_model not in (None, "full", "frozen"):
            raise ConfigError(f"train.language_model {self.train.language_model!r} is not one of full, frozen")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ConfigError(f"mixed_precision {self.mixed_precision!r} is not one of no, bf16, fp16")
        unknown_parts = sorted(set(self.optimizer.part_lr) - set(PARTS))
        if unknown_parts:
            raise ConfigError(f"optimizer.part_lr has unknown parts {unknown_parts}; known: {', '.join(PARTS)}")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ConfigError("cpu_threads must be at least 1 (or null)")
        if self.features.dtype not in ("float16", "float32"):
            raise ConfigError(f"features.dtype {self.features.dtype!r} is not one of float16, float32")
        unknown = sorted(set(self.sampling.perspective_weights) - set(PERSPECTIVES))
        if unknown:
            raise ConfigError(f"sampling.perspective_weights has unknown perspectives {unknown}; known: {', '.join(PERSPECTIVES)}")
        if any(w < 0 for w in self.sampling.perspective_weights.values()):
            raise ConfigError("sampling.perspective_weights must not be negative")
        if any(w < 0 for w in self.sampling.dataset_weights.values()):
            raise ConfigError(f"sampling.dataset_weights must not be negative: {self.sampling.dataset_weights}")
        small = {k: v for k, v in self.sampling.dataset_max_images.items() if isinstance(v, bool) or not isinstance(v, int) or v < 1}
        if small:
            raise ConfigError(f"sampling.dataset_max_images must be whole numbers of at least 1: {small}")
        if not 0.0 <= self.sampling.dataset_balance <= 1.0:
            raise ConfigError(f"sampling.dataset_balance {self.sampling.dataset_balance} is not between 0 and 1")
        for name in ("hflip", "vflip"):
            if not 0 <= getattr(self.augment, name) <= 1:
                raise ConfigError(f"augment.{name} is a probability in [0, 1]")
        if not 0 <= self.augment.box_jitter < 1:
            raise ConfigError("augment.box_jitter must be in [0, 1)")
        if self.train.image_encoder and self.features.cache:
            raise ConfigError("train.image_encoder needs features.cache false: a trained encoder's features cannot be cached")

    # ----- paths ----------------------------------------------------------------------------

    @property
    def base_dir(self) -> Path:
        return Path(self.source).resolve().parent if self.source else Path.cwd()

    def path(self, value: str | None) -> Path | None:
        """A path of the file, resolved like the file's author meant it."""
        if value is None:
            return None
        return expand_path(value, self.base_dir)

    @property
    def data_path(self) -> Path:
        return self.path(self.data)

    @property
    def output_path(self) -> Path:
        return self.path(self.output_dir)

    @property
    def cache_path(self) -> Path:
        if self.features.cache_dir:
            return self.path(self.features.cache_dir)
        return Path(os.path.expanduser(os.environ.get("MIMO_FEATURE_CACHE", DEFAULT_CACHE_DIR)))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _variable_defaults() -> dict[str, str]:
    """Variables a configuration may use without setting them: the shared data beside the project."""
    return {"MIMO_SHARED_DATA": str(Path.cwd().parent / "shared" / "data")}


def expand_path(value: str | Path, base: Path) -> Path:
    """``~`` and ``$VARIABLES`` expanded (``$MIMO_SHARED_DATA`` defaults to ../shared/data from
    the working directory); relative paths start at ``base``."""
    text = str(value)
    for name, default in _variable_defaults().items():
        if name not in os.environ:
            text = text.replace("${" + name + "}", default).replace("$" + name, default)
    text = os.path.expandvars(os.path.expanduser(text))
    unset = re.findall(r"\$\{?(\w+)", text)
    if unset:
        raise ConfigError(f"the path {value!r} uses the unset environment variable {unset[0]}")
    path = Path(text)
    return path if path.is_absolute() else base / path


_SECTIONS = {
    "model": ModelSection,
    "optimizer": OptimizerSection,
    "schedule": ScheduleSection,
    "loss": LossSection,
    "train": TrainPartsSection,
    "features": FeaturesSection,
    "sampling": SamplingSection,
    "augment": AugmentSection,
    "debug": DebugSection,
}


def _build(kind, data: Any, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'the configuration'} must be a mapping, got {type(data).__name__}")
    known = {f.name: f for f in dataclasses.fields(kind)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where or 'the configuration'}; known: {', '.join(sorted(known))}")
    values = {}
    for key, value in data.items():
        if kind is TrainConfig and key in _SECTIONS:
            values[key] = _build(_SECTIONS[key], value, key)
        elif isinstance(value, list) and str(known[key].type).startswith("tuple"):
            values[key] = tuple(value)
        else:
            values[key] = value
    return kind(**values)


def config_from_dict(data: dict, source: str | None = None) -> TrainConfig:
    config = _build(TrainConfig, dict(data), "")
    if source is not None:
        config.source = str(source)
    config.validate()
    return config


def read_config_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"training configuration {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as error:
            raise ConfigError(f"{path} is YAML, which needs PyYAML (pip install pyyaml), or write it as JSON") from error
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ConfigError(f"{path} is not valid YAML: {error}") from error
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of settings")
    return data


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    """``set_dotted(d, "optimizer.lr", 1e-3)``: what ``--set optimizer.lr=1e-3`` does."""
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {key} is not a section")
    node[keys[-1]] = value


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a JSON or YAML configuration and apply ``{"dotted.key": value}`` overrides."""
    data = read_config_file(path)
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    return config_from_dict(data, source=str(path))
