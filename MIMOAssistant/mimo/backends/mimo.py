"""The MIMO backend: the project's own medical VLM, answering in text with grounded masks.

A session keeps what the image encoders computed (the grounding embedding and the
understanding features), so every further question on the same slice costs only the aligner,
the language model and the mask decoder. The model runs in bfloat16 on a CUDA GPU when there is
one, else in float32 on the CPU.

Any visual prompt may come with a question: the k-th prompt is referred to as the k-th
``<region>`` of the question (added in front of it when the question does not say where) and
is also given to the mask decoder for the k-th mask the model writes.

A checkpoint's model card may say where its text-only grounding cannot be trusted
(``text_only_grounding_caution``); an answer that draws masks there from the question alone
carries that caution in ``Answer.extra["caution"]``, so every front end can show it beside the
masks rather than only in the documentation.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import __version__
from ..backend import (
    ALL_PROMPT_TYPES,
    Answer,
    Backend,
    BackendInfo,
    Capabilities,
    ProgressCallback,
    SliceImage,
    Turn,
    check_cancel,
)
from ..errors import BackendError, Cancelled
from ..image import MODALITIES

CAUTION_KEY = "text_only_grounding_caution"


@dataclass
class _EncodedSlice:
    geometry: object  # mimo.modeling.ImageGeometry
    features: object  # mimo.modeling.ImageFeatures
    encode_seconds: float
    answered: bool = False


@dataclass(frozen=True)
class TextGroundingCaution:
    """A model card's warning: on these modalities the masks drawn from a question alone (no
    visual prompt) are unreliable. Card form: ``{"modalities": ["CT", "MR"], "message": "..."}``."""

    modalities: frozenset[str]
    message: str

    @classmethod
    def from_model_card(cls, card: dict) -> TextGroundingCaution | None:
        rule = (card or {}).get(CAUTION_KEY)
        if rule is None:
            return None
        modalities = rule.get("modalities") if isinstance(rule, dict) else None
        message = rule.get("message") if isinstance(rule, dict) else None
        if not isinstance(modalities, list) or not modalities or not isinstance(message, str) or not message.strip():
            raise BackendError(f"model card {CAUTION_KEY!r} must be {{'modalities': [...], 'message': '...'}}, got {rule!r}")
        unknown = sorted(set(modalities) - set(MODALITIES))
        if unknown:
            raise BackendError(f"model card {CAUTION_KEY!r} names unknown modalities {unknown}; expected some of {', '.join(MODALITIES)}")
        return cls(frozenset(modalities), message.strip())

    def applies(self, image: SliceImage, turn: Turn, answer: Answer) -> bool:
        # A volume of unrecorded modality ("OT" with a physical pixel size) is MR-like, as in
        # mimo.image.guess_modality; 2D pictures of unknown size are not.
        modality = "MR" if image.modality == "OT" and image.calibrated else image.modality
        return bool(answer.masks) and not turn.prompts and modality in self.modalities


class MimoBackend(Backend):
    def __init__(
        self,
        model_path: str | Path,
        device: str = "auto",
        max_sessions: int = 8,
        max_new_tokens: int = 128,
        **weight_paths: str,
    ) -> None:
        """Load the checkpoint at ``model_path`` once.

        ``weight_paths`` (``text_model_path``, ``vision_model_path``, ``sam_model_path``) say
        where the referenced parts of a large model now live, if not where it was trained.
        """
        super().__init__(max_sessions=max_sessions)
        if model_path is None:
            raise BackendError("the mimo backend needs a model: the path of a MIMO checkpoint directory")
        from ..modeling import load_mimo
        from ..modeling.answering import GroundedAnswerer
        from ..models.litemedsam import resolve_device

        self.device = resolve_device(device)
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.model_path = Path(model_path)
        self.model, self.processor = load_mimo(self.model_path, device=self.device, dtype=dtype, **weight_paths)
        self.answerer = GroundedAnswerer.from_checkpoint(self.model_path, self.model, self.processor)
        self.max_new_tokens = max_new_tokens
        self.caution = TextGroundingCaution.from_model_card(self.model.config.model_card)

    def info(self) -> BackendInfo:
        return BackendInfo(
            name="mimo",
            version=__version__,
            model=f"{self.model_path.name} ({self.model.config.preset})",
            device=str(self.device),
            capabilities=Capabilities(text_answers=True, prompt_types=ALL_PROMPT_TYPES, requires_prompt=False),
        )

    def _encode(self, image: SliceImage) -> _EncodedSlice:
        start = time.perf_counter()
        inputs = self.processor.preprocess_image(image)
        with torch.inference_mode():
            features = self.model.encode_images(inputs.grounding_pixel_values, inputs.vision_pixel_values, inputs.refine_pixel_values)
        return _EncodedSlice(inputs.geometry, features, time.perf_counter() - start)

    def _answer(self, image: SliceImage, state: _EncodedSlice, turn: Turn, progress: ProgressCallback, cancel: threading.Event | None) -> Answer:
        produced = [0]

        def on_token(_token_id: int) -> None:
            produced[0] += 1
            progress("generate", min(produced[0] / self.max_new_tokens, 1.0))

        progress("generate", 0.0)
        answer = self.answerer.answer(state.features, state.geometry, turn.question, turn.prompts, turn.history,
                                      max_new_tokens=self.max_new_tokens, on_token=on_token, cancel=cancel)
        if answer.extra["stop_reason"] == "cancelled":
            raise Cancelled("the turn was cancelled")
        check_cancel(cancel)
        progress("decode_masks", 1.0)
        answer.timings["encode_s"] = 0.0 if state.answered else state.encode_seconds
        answer.extra.update(new_tokens=produced[0], image_embedding_cached=state.answered)
        if self.caution is not None and self.caution.applies(image, turn, answer):
            answer.extra["caution"] = self.caution.message
        state.answered = True
        return answer
