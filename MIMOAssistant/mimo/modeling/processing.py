"""MimoProcessor: from the engine's objects to model inputs, and from model outputs to an Answer.

Inputs: a :class:`~mimo.backend.SliceImage` becomes the grounding canvas (and the vision
tower's, when the model has one) with the same letterbox geometry LiteMedSAM uses: the longest
*physical* side is resized to the canvas and the rest padded at the bottom and right, so an
anisotropic slice keeps its true proportions. A turn (question, visual prompts, history)
becomes token ids with ``<image>`` placeholders for the aligner's queries and one ``<region>``
placeholder per visual prompt; each prompt is rasterised (:func:`mimo.prompts.prompt_mask`) for
the visual-prompt encoder and turned into a box or point for the mask decoder.

Outputs: generated ids are cut at the end of sequence, ``<p>``, ``</p>`` and ``<SEG>`` are
removed, and each ``<SEG>`` yields one mask tied (as a :class:`~mimo.backend.GroundedSpan`) to
the phrase between the ``<p>``...``</p>`` before it, with character offsets into the cleaned text.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..backend import Answer, GroundedSpan, Message, SliceImage
from ..errors import BackendError, PromptError
from ..prompts import (
    BoxPrompt,
    LassoPrompt,
    PointPrompt,
    Prompt,
    ScribblePrompt,
    prompt_bbox,
    prompt_mask,
)
from .configuration import (
    IMAGE_TOKEN,
    MIMO_TOKENS,
    PHRASE_END_TOKEN,
    PHRASE_START_TOKEN,
    REGION_TOKEN,
    SEG_TOKEN,
    MimoConfig,
)
from .losses import IGNORE_INDEX
from .tokenization import mimo_token_ids
from .visual_prompt import REGION_TYPES

PROCESSOR_FILE = "processor_config.json"
PROCESSOR_FORMAT_VERSION = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MARKERS = re.compile("(" + "|".join(re.escape(t) for t in (PHRASE_START_TOKEN, PHRASE_END_TOKEN, SEG_TOKEN)) + ")")


@dataclass
class ProcessorSettings:
    grounding_size: int
    grounding_normalization: str
    """``minmax`` (LiteMedSAM) or ``imagenet`` (SAM)."""
    mask_size: int
    """The mask decoder's grid (and the grid visual prompts are rasterised on)."""
    num_image_tokens: int
    vision_size: int | None = None
    vision_mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    vision_std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    scribble_box_expansion: float = 1.6
    use_chat_template: bool = False
    """Render turns with the tokenizer's chat template (pretrained chat LMs) instead of the plain one."""
    user_prefix: str = "User: "
    assistant_prefix: str = "Assistant: "
    max_length: int = 512
    refine_size: int | None = None
    """Canvas of the mask refiner's pixels and of the output masks (None: no refiner)."""

    @property
    def output_mask_size(self) -> int:
        return self.refine_size or self.mask_size

    @classmethod
    def from_config(cls, config: MimoConfig, use_chat_template: bool = False) -> ProcessorSettings:
        understanding = config.understanding
        vision = understanding.kind == "vision_model"
        return cls(
            grounding_size=config.grounding.image_size,
            grounding_normalization=config.grounding.normalization,
            mask_size=config.grounding.mask_size,
            num_image_tokens=config.aligner.num_queries,
            vision_size=understanding.image_size if vision else None,
            vision_mean=tuple(understanding.mean) if vision else (0.0, 0.0, 0.0),
            vision_std=tuple(understanding.std) if vision else (1.0, 1.0, 1.0),
            scribble_box_expansion=config.segmentation.scribble_box_expansion,
            use_chat_template=use_chat_template,
            refine_size=config.refiner.size if config.refiner.enabled else None,
        )


@dataclass(frozen=True)
class ImageGeometry:
    """Where the slice lies on the square grounding canvas."""

    original_size: tuple[int, int]  # (rows, cols) of the slice
    resized_size: tuple[int, int]  # (rows, cols) it occupies on the canvas
    canvas_size: int

    @property
    def scale(self) -> tuple[float, float]:
        """(x, y) factors from slice pixels to canvas pixels."""
        return self.resized_size[1] / self.original_size[1], self.resized_size[0] / self.original_size[0]

    def on_grid(self, grid: int) -> tuple[int, int]:
        """The resized extent on a ``grid x grid`` map of the canvas."""
        return (
            max(1, round(self.resized_size[0] * grid / self.canvas_size)),
            max(1, round(self.resized_size[1] * grid / self.canvas_size)),
        )


@dataclass
class ImageInputs:
    grounding_pixel_values: torch.Tensor  # (1, 3, S, S)
    vision_pixel_values: torch.Tensor | None  # (1, 3, V, V)
    geometry: ImageGeometry
    refine_pixel_values: torch.Tensor | None = None  # (1, 3, R, R), the mask refiner's canvas


@dataclass
class DecodedText:
    text: str
    spans: list[GroundedSpan]
    seg_count: int


def letterbox_size(shape: tuple[int, int], spacing_mm: tuple[float, float], size: int) -> tuple[int, int]:
    """(rows, cols) of the slice on a ``size`` canvas, longest physical side = ``size``."""
    height_mm, width_mm = shape[0] * spacing_mm[0], shape[1] * spacing_mm[1]
    longest = max(height_mm, width_mm)
    return max(1, round(size * height_mm / longest)), max(1, round(size * width_mm / longest))


def _pixel_tensor(image: SliceImage) -> torch.Tensor:
    """(1, 3, h, w) float tensor of a slice's RGB display pixels."""
    return torch.from_numpy(np.array(image.pixels, copy=True)).permute(2, 0, 1)[None].float()


def _place(image: torch.Tensor, resized: tuple[int, int], size: int, mode: str) -> torch.Tensor:
    """Resize (1, C, h, w) to ``resized`` and pad it onto a (1, C, size, size) canvas of zeros."""
    if mode == "bilinear":
        image = F.interpolate(image, size=resized, mode="bilinear", align_corners=False, antialias=True)
    else:
        image = F.interpolate(image, size=resized, mode=mode)
    canvas = image.new_zeros((image.shape[0], image.shape[1], size, size))
    canvas[:, :, : resized[0], : resized[1]] = image
    return canvas


def _strip_tokens(text: str, tokens: Sequence[str]) -> str:
    for token in tokens:
        if token:
            text = text.replace(token, "")
    return text


def parse_grounded_text(raw: str) -> DecodedText:
    """Remove ``<p>``, ``</p>`` and ``<SEG>``; the n-th ``<SEG>`` grounds the phrase before it as mask n.

    A ``<SEG>`` without a phrase still yields a mask (the caller names it "segment n"), so the
    number of masks always equals the number of ``<SEG>`` tokens.
    """
    pieces: list[str] = []
    length = 0
    phrase_start: int | None = None
    phrase: tuple[int, int] | None = None
    found: list[tuple[int, int, int]] = []
    seg_count = 0
    for part in _MARKERS.split(raw):
        if part == PHRASE_START_TOKEN:
            phrase_start = length
        elif part == PHRASE_END_TOKEN:
            if phrase_start is not None:
                phrase = (phrase_start, length)
            phrase_start = None
        elif part == SEG_TOKEN:
            if phrase is not None:
                found.append((phrase[0], phrase[1], seg_count))
            phrase = None
            seg_count += 1
        else:
            pieces.append(part)
            length += len(part)
    text = "".join(pieces)
    lead = len(text) - len(text.lstrip())
    text = text.strip()
    spans = []
    for start, end, index in found:
        term = text[max(start - lead, 0) : max(end - lead, 0)]
        stripped = term.strip()
        if stripped:
            start = max(start - lead, 0) + (len(term) - len(term.lstrip()))
            spans.append(GroundedSpan(stripped, start, start + len(stripped), index))
    return DecodedText(text, spans, seg_count)


class MimoProcessor:
    def __init__(self, tokenizer, settings: ProcessorSettings) -> None:
        self.tokenizer = tokenizer
        self.settings = settings
        self.token_ids = mimo_token_ids(tokenizer)
        if settings.use_chat_template and not getattr(tokenizer, "chat_template", None):
            raise BackendError("use_chat_template is set but the tokenizer has no chat template")

    @classmethod
    def from_config(cls, config: MimoConfig, tokenizer) -> MimoProcessor:
        return cls(tokenizer, ProcessorSettings.from_config(config, use_chat_template=bool(getattr(tokenizer, "chat_template", None))))

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(directory)
        data = {"format": "mimo-processor", "format_version": PROCESSOR_FORMAT_VERSION, **dataclasses.asdict(self.settings)}
        (directory / PROCESSOR_FILE).write_text(json.dumps(data, indent=1))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> MimoProcessor:
        from transformers import AutoTokenizer

        directory = Path(directory)
        path = directory / PROCESSOR_FILE
        if not path.is_file():
            raise BackendError(f"{directory} is not a MIMO checkpoint: {PROCESSOR_FILE} is missing")
        if not any((directory / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
            raise BackendError(f"{directory} is not a MIMO checkpoint: the tokenizer files (tokenizer.json) are missing")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise BackendError(f"{path} is not valid JSON: {error}") from error
        if data.pop("format", None) != "mimo-processor" or data.pop("format_version", None) != PROCESSOR_FORMAT_VERSION:
            raise BackendError(f"{path} is not a MIMO processor configuration of version {PROCESSOR_FORMAT_VERSION}")
        known = {f.name for f in dataclasses.fields(ProcessorSettings)}
        if set(data) - known:
            raise BackendError(f"{path} has unknown settings {sorted(set(data) - known)}")
        for key in ("vision_mean", "vision_std"):
            if key in data:
                data[key] = tuple(data[key])
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        return cls(tokenizer, ProcessorSettings(**data))

    # ----- images -------------------------------------------------------------------------

    def preprocess_image(self, image: SliceImage) -> ImageInputs:
        settings = self.settings
        pixels = _pixel_tensor(image)
        resized = letterbox_size(image.shape, image.spacing_mm, settings.grounding_size)
        grounding = self._grounding_canvas(pixels, resized, settings.grounding_size)
        vision = None
        if settings.vision_size:
            mean = torch.tensor(settings.vision_mean).reshape(1, 3, 1, 1)
            std = torch.tensor(settings.vision_std).reshape(1, 3, 1, 1)
            vision_resized = letterbox_size(image.shape, image.spacing_mm, settings.vision_size)
            vision = _place((pixels / 255.0 - mean) / std, vision_resized, settings.vision_size, "bilinear")
        geometry = ImageGeometry(image.shape, resized, settings.grounding_size)
        return ImageInputs(grounding, vision, geometry, self._refine_canvas(pixels, geometry))

    def refine_pixels(self, image: SliceImage, geometry: ImageGeometry) -> torch.Tensor | None:
        """The mask refiner's (1, 3, R, R) canvas of ``image``: the grounding canvas's layout at R px
        (None for a model without a refiner)."""
        return self._refine_canvas(_pixel_tensor(image), geometry) if self.settings.refine_size else None

    def _refine_canvas(self, pixels: torch.Tensor, geometry: ImageGeometry) -> torch.Tensor | None:
        size = self.settings.refine_size
        return self._grounding_canvas(pixels, geometry.on_grid(size), size) if size else None

    def _grounding_canvas(self, pixels: torch.Tensor, resized: tuple[int, int], size: int) -> torch.Tensor:
        """(1, 3, h, w) pixels resized to ``resized``, normalised as the grounding model expects,
        on a (1, 3, size, size) canvas padded with zeros at the bottom and right."""
        small = F.interpolate(pixels, size=resized, mode="bilinear", align_corners=False, antialias=True)
        if self.settings.grounding_normalization == "minmax":
            low, high = small.min(), small.max()
            small = (small - low) / torch.clamp(high - low, min=1e-8)
        else:
            mean = torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1)
            std = torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1)
            small = (small / 255.0 - mean) / std
        canvas = small.new_zeros((1, 3, size, size))
        canvas[:, :, : resized[0], : resized[1]] = small
        return canvas

    # ----- text and prompts ---------------------------------------------------------------

    def _user_text(self, text: str, keep_regions: bool) -> str:
        """User text cannot smuggle in placeholders or control tokens."""
        tokenizer = self.tokenizer
        banned = [t for t in MIMO_TOKENS if not (keep_regions and t == REGION_TOKEN)]
        banned += [tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token]
        return _strip_tokens(text, banned)

    def _question_with_regions(self, question: str, prompts: Sequence[Prompt]) -> str:
        question = self._user_text(question, keep_regions=True).strip()
        referenced = question.count(REGION_TOKEN)
        if referenced == 0:
            labels = [_prompt_label(prompt) for prompt in prompts]
            return "".join(f"[{label} {REGION_TOKEN}] " for label in labels) + question
        if referenced != len(prompts):
            raise PromptError(f"the question refers to {referenced} {REGION_TOKEN} but {len(prompts)} visual prompts were given")
        return question

    def _render(self, question: str, history: Sequence[Message]) -> tuple[str, tuple[int, int]]:
        """The prompt text up to where the answer starts, and the question's character span in it."""
        image = IMAGE_TOKEN * self.settings.num_image_tokens
        history = [Message(m.role, self._user_text(m.text, keep_regions=False)) for m in history]
        if self.settings.use_chat_template:
            messages = [{"role": m.role, "content": m.text} for m in history] + [{"role": "user", "content": question}]
            messages[0] = {"role": messages[0]["role"], "content": image + "\n" + messages[0]["content"]}
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            start = text.rfind(question)
            return text, (start, start + len(question))
        settings = self.settings
        parts = [self.tokenizer.bos_token or "", image, "\n"]
        for message in history:
            if message.role == "user":
                parts.append(f"{settings.user_prefix}{message.text}\n")
            else:
                parts.append(f"{settings.assistant_prefix}{message.text}{self.tokenizer.eos_token}\n")
        parts.append(settings.user_prefix)
        start = sum(len(p) for p in parts)
        parts.append(f"{question}\n{settings.assistant_prefix}")
        return "".join(parts), (start, start + len(question))

    def _tokenize_prompt(self, question: str, history: Sequence[Message]) -> tuple[list[int], list[bool]]:
        text, (start, end) = self._render(question, history)
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(encoded["input_ids"])
        in_question = [a < end and b > start and i != self.token_ids["region"] for i, (a, b) in zip(ids, encoded["offset_mapping"])]
        return ids, in_question

    def _region_tensors(self, prompts: Sequence[Prompt], geometry: ImageGeometry) -> dict[str, torch.Tensor]:
        size = self.settings.mask_size
        extent = geometry.on_grid(size)
        scale_x, scale_y = geometry.scale
        canvas = geometry.canvas_size
        masks, types, boxes, decoder_boxes = [], [], [], []
        for prompt in prompts:
            raster = torch.from_numpy(prompt_mask(prompt, geometry.original_size)).float()[None, None]
            masks.append(_place(raster, extent, size, "area")[0, 0])
            x0, y0, x1, y1 = prompt_bbox(prompt, geometry.original_size)
            boxes.append([(x0 + 0.5) * scale_x / canvas, (y0 + 0.5) * scale_y / canvas, (x1 + 0.5) * scale_x / canvas, (y1 + 0.5) * scale_y / canvas])
            if isinstance(prompt, ScribblePrompt):
                x0, y0, x1, y1 = self._grown_box((x0, y0, x1, y1), geometry.original_size)
            decoder_boxes.append([x0 * scale_x, y0 * scale_y, x1 * scale_x, y1 * scale_y])
            kind = "negative_point" if isinstance(prompt, PointPrompt) and not prompt.positive else prompt.kind
            types.append(REGION_TYPES[kind])
        count = len(prompts)
        return {
            "region_masks": torch.stack(masks)[None] if count else torch.zeros((1, 0, size, size)),
            "region_types": torch.tensor([types], dtype=torch.long).reshape(1, count),
            "region_boxes": torch.tensor([boxes], dtype=torch.float32).reshape(1, count, 4),
            "decoder_boxes": torch.tensor([decoder_boxes], dtype=torch.float32).reshape(1, count, 4),
        }

    def _grown_box(self, box, shape) -> tuple[float, float, float, float]:
        """A scribble lies inside its target: SAM gets its bounding box grown around the centre."""
        x0, y0, x1, y1 = box
        factor = self.settings.scribble_box_expansion
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        half_x, half_y = max((x1 - x0) / 2 * factor, 4.0), max((y1 - y0) / 2 * factor, 4.0)
        rows, cols = shape
        return max(cx - half_x, 0.0), max(cy - half_y, 0.0), min(cx + half_x, cols - 1.0), min(cy + half_y, rows - 1.0)

    def target_tensor(self, masks: Sequence[np.ndarray], geometry: ImageGeometry) -> torch.Tensor:
        """Reference masks at the slice's resolution -> (K, m, m) on the model's output canvas."""
        size = self.settings.output_mask_size
        extent = geometry.on_grid(size)
        placed = []
        for mask in masks:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != tuple(geometry.original_size):
                raise BackendError(f"target mask shape {mask.shape} does not match the image {geometry.original_size}")
            resized = _place(torch.from_numpy(mask).float()[None, None], extent, size, "bilinear")[0, 0]
            placed.append((resized > 0.5).float())
        return torch.stack(placed) if placed else torch.zeros((0, size, size))

    def __call__(
        self,
        geometry: ImageGeometry,
        question: str,
        prompts: Sequence[Prompt] = (),
        history: Sequence[Message] = (),
        answer: str | None = None,
        target_masks: Sequence[np.ndarray] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Model inputs for one turn (batch of one), without the pixels (see :meth:`preprocess_image`).

        With ``answer`` (text with ``<p>term</p><SEG>`` markers) the inputs are for training:
        ``labels`` teach the answer and its end of sequence, never the prompt, and
        ``target_masks`` (one per ``<SEG>``, at the slice's resolution) teach the masks.
        """
        question = self._question_with_regions(question, prompts)
        ids, in_question = self._tokenize_prompt(question, history)
        labels = [IGNORE_INDEX] * len(ids)
        inputs: dict[str, torch.Tensor] = {}
        if answer is not None:
            answer_ids = self.tokenizer(answer + self.tokenizer.eos_token, add_special_tokens=False)["input_ids"]
            seg_count = answer_ids.count(self.token_ids["seg"])
            if target_masks is not None and len(target_masks) != seg_count:
                raise BackendError(f"the answer has {seg_count} {SEG_TOKEN} tokens but {len(target_masks)} target masks were given")
            ids, in_question, labels = ids + answer_ids, in_question + [False] * len(answer_ids), labels + answer_ids
            inputs["labels"] = torch.tensor([labels])
            if target_masks is not None:
                inputs["target_masks"] = self.target_tensor(target_masks, geometry)
        if len(ids) > self.settings.max_length:
            if history:
                return self(geometry, question, prompts, history[2:], answer, target_masks)
            raise BackendError(f"the turn is {len(ids)} tokens long; this model reads at most {self.settings.max_length}")
        image_count = ids.count(self.token_ids["image"])
        if image_count != self.settings.num_image_tokens:
            raise BackendError(f"the tokenizer split the image placeholder: {image_count} {IMAGE_TOKEN} tokens instead of {self.settings.num_image_tokens}")
        inputs.update(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
            question_mask=torch.tensor([in_question]),
            **self._region_tensors(prompts, geometry),
        )
        return inputs

    def collate(self, samples: Sequence[dict]) -> dict:
        """Pad single-turn inputs into one training batch (right padding)."""
        length = max(s["input_ids"].shape[1] for s in samples)
        regions = max(s["region_types"].shape[1] for s in samples)
        pad = self.token_ids["pad"]

        def pad_to(tensor, size, value, dim=1):
            missing = size - tensor.shape[dim]
            if missing == 0:
                return tensor
            shape = list(tensor.shape)
            shape[dim] = missing
            return torch.cat([tensor, tensor.new_full(shape, value)], dim=dim)

        batch = {
            "input_ids": torch.cat([pad_to(s["input_ids"], length, pad) for s in samples]),
            "attention_mask": torch.cat([pad_to(s["attention_mask"], length, 0) for s in samples]),
            "question_mask": torch.cat([pad_to(s["question_mask"], length, False) for s in samples]),
            "region_masks": torch.cat([pad_to(s["region_masks"], regions, 0.0) for s in samples]),
            "region_types": torch.cat([pad_to(s["region_types"], regions, -1) for s in samples]),
            "region_boxes": torch.cat([pad_to(s["region_boxes"], regions, 0.0) for s in samples]),
            "decoder_boxes": torch.cat([pad_to(s["decoder_boxes"], regions, 0.0) for s in samples]),
        }
        if all("labels" in s for s in samples):
            batch["labels"] = torch.cat([pad_to(s["labels"], length, IGNORE_INDEX) for s in samples])
        if all("target_masks" in s for s in samples):
            batch["target_masks"] = torch.cat([s["target_masks"] for s in samples])
        for key in ("grounding_pixel_values", "vision_pixel_values"):
            if all(s.get(key) is not None for s in samples):
                batch[key] = torch.cat([s[key] for s in samples])
        if all(s.get("image_features") is not None for s in samples):
            batch["image_features"] = type(samples[0]["image_features"]).cat([s["image_features"] for s in samples])
        return batch

    # ----- outputs ------------------------------------------------------------------------

    def decode(self, token_ids: Sequence[int]) -> DecodedText:
        ids = list(token_ids)
        if self.token_ids["eos"] in ids:
            ids = ids[: ids.index(self.token_ids["eos"])]
        hidden = {self.token_ids["image"], self.token_ids["region"], self.token_ids["pad"]}
        raw = self.tokenizer.decode([i for i in ids if i not in hidden], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        raw = _strip_tokens(raw, [self.tokenizer.bos_token, self.tokenizer.eos_token, self.tokenizer.pad_token])
        return parse_grounded_text(raw)

    def postprocess_masks(self, mask_logits: torch.Tensor, geometry: ImageGeometry) -> list[np.ndarray]:
        """(K, m, m) decoder logits -> K boolean masks at the slice's resolution."""
        if mask_logits.shape[0] == 0:
            return []
        rows, cols = geometry.on_grid(mask_logits.shape[-1])
        logits = mask_logits[:, None, :rows, :cols].float()
        logits = F.interpolate(logits, size=geometry.original_size, mode="bilinear", align_corners=False)
        return [mask for mask in (logits[:, 0] > 0).cpu().numpy()]

    def to_answer(self, token_ids: Sequence[int], mask_logits: torch.Tensor, geometry: ImageGeometry, timings: dict | None = None) -> Answer:
        decoded = self.decode(token_ids)
        masks = self.postprocess_masks(mask_logits, geometry)
        if len(masks) != decoded.seg_count:
            raise BackendError(f"{decoded.seg_count} {SEG_TOKEN} tokens were generated but {len(masks)} masks decoded")
        return Answer(decoded.text, decoded.spans, masks, dict(timings or {}))

    def text_streamer(self, callback: Callable[[str], None]) -> Callable[[int], None]:
        """A token callback for generation that calls ``callback`` with each new piece of clean text.

        Text is emitted only once it is stable: a trailing half-decoded character waits for its
        next bytes, and a ``<p>`` phrase is emitted as plain text.
        """
        tokens: list[int] = []
        emitted = [""]

        def on_token(token_id: int) -> None:
            tokens.append(token_id)
            text = self.decode(tokens).text.rstrip("\ufffd")
            if text.startswith(emitted[0]) and len(text) > len(emitted[0]):
                callback(text[len(emitted[0]) :])
                emitted[0] = text

        return on_token


def _prompt_label(prompt: Prompt) -> str:
    if isinstance(prompt, PointPrompt):
        return "point" if prompt.positive else "negative point"
    if isinstance(prompt, (BoxPrompt, ScribblePrompt, LassoPrompt)):
        return prompt.kind
    raise PromptError(f"unknown prompt {prompt!r}")
