"""One user turn -> the model calls that answer it -> one Answer, with a confidence.

MIMO-Tiny's language model learnt its questions from generated templates; people type
otherwise ("can you outline the polyp in this image?", "pls seg the lung fields"). So a turn is
read first by the request reader (:mod:`.request_reader`, a pretrained sentence encoder with
trained heads), and the language model is then asked in the form it knows, one named structure
at a time, still writing ``<p>term</p><SEG>`` itself:

* **segment** a named structure the model knows (by any name the reader resolves): the model
  answers "Segment the {name}." If it grounds another term, the answer is written again with the
  asked-for term forced in front (``<p>{name}</p><SEG>``): the user's term wins, never a silent
  substitute. If it says the structure is absent, that answer stands (naming the user's term).
  A structure the model was never trained on is outlined under the user's own name only where a
  visual prompt shows it, and said to be unknown otherwise;
* **presence** (yes/no): "Is there a {name} in this image?", and a "yes" comes with the
  structure outlined as for segment;
* **identify** a marked region (also a request to outline or find what a visual prompt marks
  without naming it): "What is this?", and the name is kept only when the image, the
  region (against training regions of that name) and the name's own probability pass the
  thresholds of the familiarity index (:mod:`.familiarity`); otherwise the answer says it cannot
  identify the structure and the region is returned as an uncoded "region k";
* **modality**: "What imaging modality is this?", withheld on an image unlike the training data;
* a structure **described** rather than named, whose tagged words name nothing the model knows
  ("which lesion here is a discrete lump within the thyroid gland?"): the question as typed, for
  the model to reason out, withheld on an image unlike the training data;
* anything else, or a checkpoint without a reader: the question as typed.

A follow-up without a name ("outline it again", "and the other one?") takes the structures of
the last user turn that named one (the other side for "other" when that structure has a side).
Calls in the trained form carry no earlier turns (they say all the model needs); a question
passed on as typed ("is it benign?") carries the conversation.

Every answer carries ``extra["confidence"]`` (the model's probability of what it wrote: the
grounded names' and ``<SEG>`` tokens, or the answer's tokens when nothing is grounded),
``extra["abstained"]`` and, with a reader, ``extra["request"]``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..backend import Answer, GroundedSpan, Message
from ..prompts import Prompt, prompt_mask
from .familiarity import FamiliarityIndex, image_descriptor, mask_on_grid, region_descriptor
from .processing import DecodedText, ImageGeometry, MimoProcessor
from .request_reader import ReadRequest, RequestReader, Resolution, normalise

SEGMENT_QUESTION = "Segment the {name}."
PRESENCE_QUESTION = "Is there {a}{name} in this image?"
IDENTIFY_QUESTION = "What is this?"
MODALITY_QUESTION = "What imaging modality is this?"
FORCED_ANSWER = "The <p>{name}</p><SEG>"
CANNOT_IDENTIFY = "I can't identify this structure with confidence: {why}. I outlined the region you marked as {region}."
UNKNOWN_MODALITY = "I can't tell which imaging modality this is: the image is unlike those I was trained on."
UNKNOWN_WITHOUT_PROMPT = ("I have not learnt to find the {typed} on my own. Draw a box, a scribble or points on it and ask "
                          "again, and I will outline what you mark.")
NOT_FOUND_CONFIDENTLY = ("I could not find the {name} with confidence in this image. If it is there, draw a box or a "
                         "scribble on it and ask again.")
READ_AS = 'I read "{typed}" as the {name}.'
DESCRIBED_ON_UNFAMILIAR = ("I can't identify the structure you describe with confidence: the image is unlike those I was trained on. "
                           "Draw a box, a scribble or points on it and ask again.")
# A request that describes its structure rather than naming it: a relative clause or a role.
_DESCRIBES = re.compile(r"\b(that|which|whose|who|caused by|responsible for|used to|measured|within|lies|lying)\b", re.IGNORECASE)
UNKNOWN_PRESENCE = "I can't tell: I was not trained to recognise the {typed}."
_SIDES = {"left": "right", "right": "left"}
_FOLLOW_UP_OTHER = re.compile(r"\bother\b", re.IGNORECASE)
_AFFIRMATIVE = re.compile(r"\s*yes\b", re.IGNORECASE)


@dataclass
class _Piece:
    """One model call's answer, before the pieces of a turn are joined."""

    text: str
    spans: list[GroundedSpan]
    masks: list[np.ndarray]
    confidence: float
    abstained: bool = False
    notes: dict = field(default_factory=dict)


def _article(name: str) -> str:
    last = (name.split() or [""])[-1].lower()
    if last.endswith("s") and not last.endswith(("ss", "us", "is")):
        return ""
    return "an " if name[:1].lower() in "aeiou" else "a "


def same_concept(first: str, second: str) -> bool:
    from ..terminology import Terminology

    return Terminology.default().same_concept(first, second)


class GroundedAnswerer:
    def __init__(self, model, processor: MimoProcessor, reader: RequestReader | None = None,
                 familiarity: FamiliarityIndex | None = None) -> None:
        self.model = model
        self.processor = processor
        self.reader = reader
        self.familiarity = familiarity

    @classmethod
    def from_checkpoint(cls, directory, model, processor: MimoProcessor) -> GroundedAnswerer:
        """The answerer of a checkpoint: with its request reader and familiarity index where it has them."""
        reader = RequestReader.from_pretrained(directory) if RequestReader.is_saved_in(directory) else None
        familiarity = FamiliarityIndex.from_pretrained(directory) if FamiliarityIndex.is_saved_in(directory) else None
        return cls(model, processor, reader, familiarity)

    # ----- one model call -----------------------------------------------------------------

    def _call(self, features, geometry: ImageGeometry, question: str, prompts: Sequence[Prompt], history: Sequence[Message],
              max_new_tokens: int, on_token, cancel, forced: str | None = None) -> tuple[DecodedText, list[np.ndarray], list[int], list[float]]:
        inputs = self.processor(geometry, question, prompts, history)
        forced_ids = self.processor.tokenizer(forced, add_special_tokens=False)["input_ids"] if forced else ()
        generation = self.model.generate(**inputs, image_features=features, max_new_tokens=max_new_tokens, on_token=on_token,
                                         cancel=cancel, forced_token_ids=forced_ids)
        self.last_stop_reason = generation.stop_reason
        self.timings["generate_s"] = self.timings.get("generate_s", 0.0) + generation.timings["generate_s"]
        self.timings["decode_masks_s"] = self.timings.get("decode_masks_s", 0.0) + generation.timings["decode_masks_s"]
        decoded = self.processor.decode(generation.token_ids)
        masks = self.processor.postprocess_masks(generation.mask_logits, geometry)
        return decoded, masks, generation.token_ids, generation.token_probabilities or []

    def _grounded_confidence(self, token_ids: list[int], probabilities: list[float]) -> float:
        """Probability of the grounded names and their <SEG> tokens; of the first token (the
        answer's direction: "Yes", "No", "There is no ...") when nothing is grounded."""
        ids = self.processor.token_ids
        inside, chosen = False, []
        for token, probability in zip(token_ids, probabilities):
            if token == ids["phrase_start"]:
                inside = True
            elif token == ids["phrase_end"]:
                inside = False
            elif inside or token == ids["seg"]:
                chosen.append(probability)
        if not chosen:
            return float(probabilities[0]) if probabilities else 0.0
        return float(math.exp(sum(math.log(max(p, 1e-12)) for p in chosen)))

    # ----- a turn -------------------------------------------------------------------------

    def answer(self, features, geometry: ImageGeometry, question: str, prompts: Sequence[Prompt] = (),
               history: Sequence[Message] = (), *, max_new_tokens: int = 64, on_token: Callable[[int], None] | None = None,
               cancel: threading.Event | None = None) -> Answer:
        self.timings: dict[str, float] = {}
        self.last_stop_reason = "eos"
        call = dict(features=features, geometry=geometry, max_new_tokens=max_new_tokens, on_token=on_token, cancel=cancel)
        read = self.reader.read(question) if self.reader is not None else None
        pieces: list[_Piece]
        targets = read.targets if read is not None else []
        if read is not None and read.intent in ("segment", "presence") and not targets and history:
            targets = self._follow_up_targets(question, history)
        # The model is asked in its trained form, which says all it needs ("Segment the lungs."):
        # earlier turns are left out of those calls, since the model then drifts to "not visible"
        # (measured: follow-ups gave no mask in a third of cases with the history in context).
        if read is None:
            pieces = [self._as_typed(question, prompts, history, call)]
        elif read.intent == "segment" and not prompts and targets and all(t.concept is None for t in targets) and _DESCRIBES.search(question):
            # "Which lesion here is a discrete lump within the thyroid gland?": a structure
            # described, not named (the tagger took words of the description): reasoned out by the
            # model as typed, as it was trained to.
            pieces = [self._described(question, history, call)]
        elif read.intent == "segment" and targets:
            pieces = [_said_how_read(self._segment(target, prompts, call), target) for target in targets]
        elif read.intent == "presence" and targets:
            pieces = [_said_how_read(self._presence(target, prompts, call), target) for target in targets]
        elif read.intent == "identify" and prompts or read.intent in ("segment", "presence") and prompts and not targets:
            # "Outline what I marked" names nothing: the marked region is to be identified (and outlined).
            pieces = [self._identify(prompts, call)]
        elif read.intent == "modality":
            pieces = [self._modality(prompts, call)]
        else:
            pieces = [self._as_typed(question, prompts, history, call)]
        answer = _join(pieces)
        answer.timings.update(self.timings)
        answer.extra["confidence"] = round(min(p.confidence for p in pieces), 4)
        answer.extra["abstained"] = any(p.abstained for p in pieces)
        answer.extra["stop_reason"] = self.last_stop_reason
        for piece in pieces:
            answer.extra.update(piece.notes)
        if read is not None:
            answer.extra["request"] = {"intent": read.intent, "intent_probability": round(read.intent_probability, 4),
                                       "targets": [{"typed": t.typed, "concept": t.concept, "how": t.how} for t in targets]}
        return answer

    def _follow_up_targets(self, question: str, history: Sequence[Message]) -> list[Resolution]:
        for message in reversed(history):
            if message.role != "user":
                continue
            earlier = self.reader.read(message.text)
            if earlier.targets:
                if _FOLLOW_UP_OTHER.search(question):
                    return [self._other_side(t) for t in earlier.targets]
                return list(earlier.targets)
        return []

    def _other_side(self, target: Resolution) -> Resolution:
        words = (target.concept or target.typed).split()
        flipped = [_SIDES.get(w.lower(), w) for w in words]
        if flipped == words:
            return target
        return self.reader.vocabulary.resolve(" ".join(flipped))

    def _as_typed(self, question, prompts, history, call) -> _Piece:
        decoded, masks, ids, probabilities = self._call(question=question, prompts=prompts, history=history, **call)
        return _Piece(decoded.text, decoded.spans, masks, self._grounded_confidence(ids, probabilities))

    def _described(self, question: str, history, call) -> _Piece:
        familiar = self._image_familiarity(call)
        if familiar is not None and familiar[0] < self.familiarity.thresholds.image:
            return _Piece(DESCRIBED_ON_UNFAMILIAR, [], [], 0.0, abstained=True,
                          notes={"familiarity": {"image": round(familiar[0], 4), "nearest_dataset": familiar[1]}})
        return self._as_typed(question, (), history, call)

    def _segment(self, target: Resolution, prompts, call) -> _Piece:
        if target.concept is None:
            if not prompts:
                return _Piece(UNKNOWN_WITHOUT_PROMPT.format(typed=target.typed), [], [], 0.0, abstained=True)
            # Outline what the user marked under the user's own name: the model does not know the name.
            decoded, masks, ids, probabilities = self._call(question=SEGMENT_QUESTION.format(name=target.typed), prompts=prompts,
                                                            history=(), forced=FORCED_ANSWER.format(name=target.typed), **call)
            return _Piece(decoded.text, decoded.spans, masks, self._grounded_confidence(ids, probabilities),
                          notes={"unknown_terms": [target.typed]})
        name = target.concept
        question = SEGMENT_QUESTION.format(name=name)
        decoded, masks, ids, probabilities = self._call(question=question, prompts=prompts, history=(), **call)
        notes: dict = {}
        if not (decoded.spans and all(same_concept(s.term, name) for s in decoded.spans)):
            if not decoded.spans and decoded.seg_count == 0 and not prompts:
                # The model says it is not there: keep that answer, in the user's words when it named something else.
                text = decoded.text if normalise(name) in normalise(decoded.text) else f"I cannot find the {name} in this image."
                return _Piece(text, [], [], self._grounded_confidence(ids, probabilities), notes={"not_found": [name]})
            decoded, masks, ids, probabilities = self._call(question=question, prompts=prompts, history=(),
                                                            forced=FORCED_ANSWER.format(name=name), **call)
            notes["term_enforced"] = True
        confidence = self._grounded_confidence(ids, probabilities)
        familiar = self._image_familiarity(call)
        if familiar is not None:
            notes["familiarity"] = {"image": round(familiar[0], 4), "nearest_dataset": familiar[1]}
        if not prompts and confidence < self._grounding_threshold(familiar):
            return _Piece(NOT_FOUND_CONFIDENTLY.format(name=name), [], [], confidence, abstained=True,
                          notes={**notes, "not_found": [name], "withheld_masks": len(masks)})
        return _Piece(decoded.text, decoded.spans, masks, confidence, notes=notes)

    def _presence(self, target: Resolution, prompts, call) -> _Piece:
        if target.concept is None:
            return _Piece(UNKNOWN_PRESENCE.format(typed=target.typed), [], [], 0.0, abstained=True)
        question = PRESENCE_QUESTION.format(a=_article(target.concept), name=target.concept)
        answer = self._as_typed(question, prompts, (), call)
        if answer.masks or not _AFFIRMATIVE.match(answer.text):
            return answer
        # "Yes" comes with the structure outlined: the answer's term is grounded, and a request
        # read as a yes/no question ("need polyp seg") still gets its mask.
        shown = self._segment(target, prompts, call)
        if not shown.masks:
            return answer
        lead = answer.text + " "
        spans = [GroundedSpan(s.term, s.start + len(lead), s.end + len(lead), s.mask_index) for s in shown.spans]
        return _Piece(lead + shown.text, spans, shown.masks, min(answer.confidence, shown.confidence), shown.abstained,
                      {**answer.notes, **shown.notes})

    def _grounding_threshold(self, familiar: tuple[float, str] | None) -> float:
        """Masks from the question alone are withheld below this confidence, on images unlike the
        training data only: on familiar ones the model's confidence did not tell its misses
        (on the test split withholding there cost text-only lungs 0.97 -> 0.64 Dice and removed
        one false mask in 100)."""
        if familiar is None or familiar[0] >= self.familiarity.thresholds.image:
            return 0.0
        return self.familiarity.thresholds.grounding

    def _image_familiarity(self, call) -> tuple[float, str] | None:
        if self.familiarity is None:
            return None
        grounding = call["features"].grounding
        return self.familiarity.image_familiarity(image_descriptor(grounding, call["geometry"].on_grid(grounding.shape[-1])))

    def _identify(self, prompts, call) -> _Piece:
        decoded, masks, ids, probabilities = self._call(question=IDENTIFY_QUESTION, prompts=prompts, history=(), **call)
        confidence = self._grounded_confidence(ids, probabilities)
        piece = _Piece(decoded.text, decoded.spans, masks, confidence)
        if self.familiarity is None or not decoded.spans:
            return piece
        why = self._identification_doubt(decoded.spans[0].term, prompts, call, confidence, piece.notes)
        if why is None:
            return piece
        region = "region 1"
        text = CANNOT_IDENTIFY.format(why=why, region=region)
        start = text.index(region)
        masks = masks[:1]
        return _Piece(text, [GroundedSpan(region, start, start + len(region), 0)] if masks else [], masks, confidence,
                      abstained=True, notes={**piece.notes, "withheld_name": decoded.spans[0].term})

    def _identification_doubt(self, name: str, prompts, call, confidence: float, notes: dict) -> str | None:
        """Why a name should be withheld, or None when image, region and name all pass."""
        index, thresholds = self.familiarity, self.familiarity.thresholds
        grounding, geometry = call["features"].grounding, call["geometry"]
        descriptor = image_descriptor(grounding, geometry.on_grid(grounding.shape[-1]))
        image, dataset = index.image_familiarity(descriptor)
        image_named, _ = index.image_familiarity(descriptor, name)
        region_mask = torch.from_numpy(prompt_mask(prompts[0], geometry.original_size)).float()
        canvas = mask_on_grid(region_mask, geometry, grounding.shape[-1])
        region = index.region_familiarity(region_descriptor(grounding, canvas), name)
        notes["familiarity"] = {"image": round(image, 4), "image_named": round(image_named, 4), "region": None if region is None else round(region, 4),
                                "nearest_dataset": dataset, "name_probability": round(confidence, 4)}
        if image < thresholds.image:
            return "the image is unlike those I was trained on"
        if image_named < thresholds.image_named:
            return f"the image is unlike those I was trained on that show the {name}"
        if region is None or region < thresholds.region:
            return f"the region does not look like the {name} regions I was trained on"
        if confidence < thresholds.naming:
            return "I am not sure of its name"
        return None

    def _modality(self, prompts, call) -> _Piece:
        familiar = self._image_familiarity(call)
        notes = {} if familiar is None else {"familiarity": {"image": round(familiar[0], 4), "nearest_dataset": familiar[1]}}
        if familiar is not None and familiar[0] < self.familiarity.thresholds.image:
            return _Piece(UNKNOWN_MODALITY, [], [], 0.0, abstained=True, notes=notes)
        piece = self._as_typed(MODALITY_QUESTION, prompts, (), call)
        piece.notes.update(notes)
        return piece


def _said_how_read(piece: _Piece, target: Resolution) -> _Piece:
    """A name taken to mean a known one by meaning, spelling or as a kind of it is said so in front of the answer."""
    if target.how not in ("similar", "spelling", "broader"):
        return piece
    lead = READ_AS.format(typed=target.typed, name=target.concept) + " "
    spans = [GroundedSpan(s.term, s.start + len(lead), s.end + len(lead), s.mask_index) for s in piece.spans]
    return dataclasses.replace(piece, text=lead + piece.text, spans=spans, notes={**piece.notes, "read_as": {target.typed: target.concept}})


def _join(pieces: list[_Piece]) -> Answer:
    text, spans, masks = "", [], []
    for piece in pieces:
        if text:
            text += " "
        offset = len(text)
        spans += [GroundedSpan(s.term, s.start + offset, s.end + offset, s.mask_index + len(masks)) for s in piece.spans]
        # A <SEG> without a phrase keeps its mask (named "segment n" downstream).
        masks += piece.masks
        text += piece.text
    return Answer(text, spans, masks)
