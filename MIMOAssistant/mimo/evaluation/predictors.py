"""What answers during evaluation: a MIMO checkpoint, LiteMedSAM, or the references themselves.

Each predictor turns an :class:`~mimo.training.samples.Example` (image, question, visual
prompts, history) into a :class:`Prediction`: the answer's text, its grounded terms and its
masks at the image's resolution. Images come one after another (the runner groups the work by
image), so each predictor keeps the last image's encoding.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..backend import Turn
from ..training.samples import Example


@dataclass
class Prediction:
    text: str
    terms: list[str]
    masks: list[np.ndarray]
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


class ReferencePredictor:
    """Answers with the reference answer and masks: every metric must come out perfect."""

    name = "reference"

    def predict(self, example: Example) -> Prediction:
        from ..modeling.processing import parse_grounded_text

        parsed = parse_grounded_text(example.answer or "")
        return Prediction(parsed.text, [s.term for s in parsed.spans], example.load_masks())


class MimoPredictor:
    """A MIMO checkpoint answering as :class:`mimo.backends.mimo.MimoBackend` does (greedy).

    Images are encoded once each (in float32 as the backend does), or read from the feature
    cache when ``cache_dir`` is given (float16 features written by training: faster, very
    slightly different).
    """

    name = "mimo"

    def __init__(self, model_path: str | Path, device: str = "auto", max_new_tokens: int = 48, cache_dir: str | Path | None = None,
                 box_decoder_weight: float | None = None) -> None:
        """``box_decoder_weight``: evaluate with this blend of the fine-tuned and pretrained mask
        decoders for masks answering a box or lasso instead of the checkpoint's own
        (:mod:`mimo.modeling.box_decoder`; how a blend weight is chosen on the validation split)."""
        import torch

        from ..modeling import load_mimo
        from ..models.litemedsam import resolve_device
        from ..training.features import FeatureCache

        self.device = resolve_device(device)
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.model_path = Path(model_path)
        self.model, self.processor = load_mimo(self.model_path, device=self.device, dtype=self.dtype)
        if box_decoder_weight is not None:
            self.model.set_box_decoder_weight(box_decoder_weight)
        from ..modeling.answering import GroundedAnswerer

        self.answerer = GroundedAnswerer.from_checkpoint(self.model_path, self.model, self.processor)
        self.max_new_tokens = max_new_tokens
        self.cache = FeatureCache(self.model, self.processor, cache_dir, dtype=torch.float16 if cache_dir else torch.float32,
                                  enabled=cache_dir is not None, memory_items=2)
        self.encode_seconds: list[float] = []
        self._refine_pixels: tuple[str, object] | None = None
        """(image path, refiner canvas) of the last image: the questions about it share it."""

    def describe(self) -> dict:
        from ..modeling.grounding import file_sha256
        from ..training.features import encoder_hash

        weights = self.model_path / "model.safetensors"
        return {
            "path": str(self.model_path.resolve()),
            "preset": self.model.config.preset,
            "weights_sha256": file_sha256(weights) if weights.is_file() else None,
            "encoder_hash": encoder_hash(self.model, self.processor),
            "device": str(self.device),
            "box_decoder_weight": self.model.config.segmentation.box_decoder_weight,
            "model_card": self.model.config.model_card,
        }

    def predict(self, example: Example) -> Prediction:
        import torch

        from ..training.batches import image_ref

        encoded_before, seconds_before = self.cache.encoded, self.cache.encode_seconds
        entry = self.cache.get(image_ref(example))
        if self.cache.encoded > encoded_before:
            self.encode_seconds.append(self.cache.encode_seconds - seconds_before)
        from ..training.features import stack_features

        if self._refine_pixels is None or self._refine_pixels[0] != example.image:  # once per image
            self._refine_pixels = (example.image, self.processor.refine_pixels(example.load_image(), entry.geometry))
        features = stack_features([entry], self.device, self.dtype, self._refine_pixels[1])
        start = time.perf_counter()
        with torch.inference_mode():
            answer = self.answerer.answer(features, entry.geometry, example.question, example.prompts, example.history,
                                          max_new_tokens=self.max_new_tokens)
        extra = {key: answer.extra[key] for key in ("stop_reason", "confidence", "abstained", "request") if key in answer.extra}
        return Prediction(answer.text, [s.term for s in answer.spans], answer.masks, time.perf_counter() - start, extra)


class LiteMedSAMPredictor:
    """LiteMedSAM (the engine's backend) with the example's visual prompts: a segmenter, no text."""

    name = "litemedsam"

    def __init__(self, device: str = "auto", backend=None) -> None:
        """``backend``: an existing :class:`~mimo.backends.litemedsam.LiteMedSAMBackend` to reuse."""
        if backend is None:
            from ..backends.litemedsam import LiteMedSAMBackend

            backend = LiteMedSAMBackend(device=device, max_sessions=1)
        self.backend = backend
        self._image: str | None = None
        self._session: str | None = None
        self.encode_seconds: list[float] = []

    def predict(self, example: Example) -> Prediction:
        if self._image != example.image:
            if self._session is not None:
                self.backend.close_session(self._session)
            self._session = self.backend.open_session(example.load_image())
            self._image = example.image
            self.encode_seconds.append(self.backend.last_encode_seconds)
        start = time.perf_counter()
        answer = self.backend.ask(self._session, Turn(example.question, list(example.prompts)))
        return Prediction(answer.text, [s.term for s in answer.spans], answer.masks, time.perf_counter() - start)
