"""A compositional grammar of user requests, for training the request reader (:mod:`mimo.modeling.request_reader`).

A request is put together from independent parts: an optional clinical or social lead-in, a
core that carries the intent (segment, yes/no presence, identify a marked region, ask the
modality, anything else), one or several target names in several article and list forms, an
optional tail, and then surface noise (lower case, no punctuation, typing errors in the words
around the target, doubled spaces). Every generated text records its intent and the character
spans of the target names, which is what the reader learns to find.

Evaluation never uses this grammar: it uses phrasings written separately
(:mod:`mimo.evaluation.heldout_phrasings`), and a test keeps the two apart.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

INTENTS = ("segment", "presence", "identify", "modality", "other")
"""segment: the user wants masks of named structures (a "where is" or "is there ... if so outline"
counts); presence: a yes/no question only; identify: what is the marked region; modality: which
imaging technique; other: everything else (findings, a structure described rather than named, descriptions), passed
on as typed."""


@dataclass(frozen=True)
class Request:
    text: str
    intent: str
    spans: tuple[tuple[int, int], ...]  # character spans of the target names in ``text``


LEADS = (
    "", "", "", "", "Hi.", "Hello,", "Hey,", "Quick question:", "Question:", "Thanks in advance.", "Good morning.",
    "On this slice,", "In this image,", "Looking at this {modality} image,", "For teaching:", "For the tumour board,",
    "Follow-up study.", "{age}-year-old {sex} with {complaint}.", "Patient with {complaint}.", "History of {complaint}.",
    "{age} y/o {sex}, {complaint}, {modality} today.", "Referral for {complaint}.", "Second opinion please.",
    "Clinical question:", "Annotation task:", "I'm teaching residents.", "Sorry to bother you,",
)
COMPLAINTS = ("abdominal pain", "weight loss", "a cough", "fever", "rectal bleeding", "a palpable lump", "headache",
              "shortness of breath", "trauma", "back pain", "anaemia", "haematuria", "chest pain", "a known tumour")
SEGMENT_VERBS = ("segment", "outline", "delineate", "contour", "mask", "highlight", "mark", "trace", "circle",
                 "annotate", "label", "show", "find", "locate", "point out", "isolate", "select", "colour in", "paint",
                 "draw around", "draw the border of", "shade", "indicate")
PARTICIPLES = ("segmented", "outlined", "contoured", "highlighted", "marked", "masked", "delineated", "traced", "labelled")
SEGMENT_CORES = (
    "{verb} the {T}", "{verb} {T}", "please {verb} the {T}", "can you {verb} the {T}", "could you {verb} the {T} for me",
    "would you {verb} the {T}", "will you {verb} the {T}", "I want you to {verb} the {T}", "I'd like the {T} {part}",
    "I would like to see the {T} {part}", "I need the {T} {part}", "I need a mask of the {T}", "give me the {T} mask",
    "{T} segmentation", "{T} mask please", "{T}", "mask for the {T}", "where is the {T}", "where are the {T}",
    "show me where the {T} is", "show me where the {T} are", "can you show me the {T}", "help me {verb} the {T}",
    "is there {a}{T}? if so {verb} it", "do you see the {T}? please {verb} it", "is there any {T}? {verb} it if you see it",
    "find the {T} and {verb} it", "locate and {verb} the {T}", "could you find the {T}", "can you see the {T}? {verb} it",
    "I am looking for the {T}", "where do you see the {T}", "which part is the {T}", "can the {T} be {part}",
    "let me see the {T}", "make a segmentation of the {T}", "draw a contour around the {T}", "put a mask on the {T}",
    "get me the {T}", "need {T} {part}", "{verb} all {T}", "{verb} any {T} you can see",
)
PRESENCE_CORES = (
    "is there {a}{T} in this image", "is there {a}{T}", "do you see {a}{T}", "do you see any {T}", "does this image show {a}{T}",
    "any {T} here", "is {a}{T} visible", "can you see {a}{T}", "is the {T} present", "is the {T} visible",
    "does the patient have {a}{T} on this image", "is {a}{T} present or not", "yes or no: is there {a}{T}",
    "are there any {T}", "do we have {a}{T} in this {img}", "is {a}{T} seen", "does this {img} contain {a}{T}",
)
IDENTIFY_CORES = (
    "what is this", "what's this", "what is in the box", "what did I mark", "what structure is this", "name this structure",
    "identify the marked region", "what am I pointing at", "tell me what this is", "which organ is this",
    "what is the highlighted area", "can you identify this", "what could this be", "label this region",
    "what is the thing I circled", "name what I marked and outline it", "what is inside the box",
    "what does this region show", "what is under my scribble", "which structure did I click on", "what's in here",
    "identify this and segment it", "what is this structure called", "what anatomy is this", "what's that",
    "do you know what this is", "what is this lesion", "what is marked here", "classify the marked region",
)
MODALITY_CORES = (
    "what modality is this", "which imaging technique was used", "what kind of image is this", "is this a CT or an MRI",
    "what type of scan is this", "how was this image acquired", "what imaging is this", "what kind of scan is this",
    "which modality", "name the imaging modality", "what sort of picture is this", "is this ultrasound",
    "what machine took this image", "tell me the modality", "what type of imaging do we have here",
)
OTHER_CORES = (
    "is the lesion benign or malignant", "what is the diagnosis", "describe this image", "what does the {T} do",
    "what is the function of the {T}", "how big is the {T}", "what lies next to the {T}", "why does the {T} matter clinically",
    "which organ stores bile? outline it", "which structure filters the blood", "is this normal", "what do you think",
    "what are the findings", "give me a report", "what is abnormal here", "how does the {T} look on {modality}",
    "what is the differential diagnosis", "could this be cancer", "what should I do next", "summarise this study",
    "what is the prognosis", "explain the anatomy", "is the {T} enlarged", "what causes {a}{T}",
    "thank you", "ok", "great, thanks", "tell me about the {T}", "what is {a}{T}",
)
KINDS = ("lesion", "organ", "structure", "finding", "tissue", "part", "region", "abnormality", "organs", "structures", "cells",
         "vessel", "bone", "gland", "mass", "thing")
CLUES = (
    "produces bile", "filters the blood", "is the focal abnormality here", "would be checked for malignancy", "projects into the lumen",
    "grows from the inner lining", "carries blood away from the heart", "is usually removed during an endoscopy", "shows the opacities",
    "brings oxygen into the blood", "stores urine", "pumps blood around the body", "protects the brain", "is a lump within the gland",
    "was caused by the infection", "lies next to the {T}", "is part of the {T}", "surrounds the {T}", "is attached to the {T}",
    "drains into the {T}", "supplies the {T}", "looks dark on this scan", "is enlarged", "controls movement", "makes hormones",
    "is measured to date a pregnancy", "is affected by the tumour", "belongs to the digestive system", "holds the genetic material",
)
REASONING_CORES = (
    "show me the {kind} that {clue}", "can you show me the {kind} that {clue}", "find the {kind} that {clue}",
    "which {kind} {clue}? outline it", "which {kind} here {clue}? please segment it", "in this image, which {kind} {clue}? outline it",
    "segment the {kind} that {clue}", "outline the structure that {clue}", "mark what {clue}", "point out the part that {clue}",
    "to which system does the {T} belong? show it", "tell me about the {T} and mark it", "what is the function of the {T}? outline it",
    "where is the {kind} that {clue}", "highlight whatever {clue}", "can you find the {kind} which {clue}", "the {kind} that {clue}: segment it",
    "what does the {T} do? show it", "why does the {T} matter? mark it", "which {kind} in this image {clue}",
)
FOLLOW_UP_CORES = (
    "outline it again", "segment that again", "show it once more", "again please", "do it again", "redo that",
    "mark it again", "can you show that again", "highlight them again", "same again", "outline the same one",
)
# A yes/no question and a request to outline in a clause of its own ("is there a polyp? if so,
# outline it"): a segment request, put together from the presence cores and these parts.
OUTLINE_CONDITIONS = ("if so,", "if yes,", "if there is,", "if it is,", "if present,", "if you see it,", "if you can,",
                      "if found,", "and if so", "then", "and", "if that's the case,", "in that case", "")
OUTLINE_OBJECTS = ("it", "them", "that", "that region", "the region", "that area", "the area", "it for me", "the structure",
                   "its outline", "its border", "its boundary", "what you see", "the whole thing", "that part")
OUTLINE_JOINS = ("? ", ", ", "; ", " and ", ". ")
TAILS = ("", "", "", "", "please", "for me", "thanks", "in this image", "on this slice", "in this {img}",
         "in this {modality} image", "so I can refine it", "for my students", "if possible", "thank you", "asap")
MODALITIES = ("CT", "MRI", "MR", "ultrasound", "X-ray", "endoscopy", "colonoscopy", "fundus", "microscopy",
              "histology", "dermoscopy", "PET", "mammography", "OCT")
LIST_FORMS = ("{a} and {b}", "{a}, {b}", "{a} as well as {b}", "both {a} and {b}", "{a} plus {b}", "{a} & {b}")
_KEYBOARD_NEIGHBOURS = "qwertyuiopasdfghjklzxcvbnm"


def _typo(word: str, rng: random.Random) -> str:
    if len(word) < 4 or not word.isalpha():
        return word
    i = rng.randrange(1, len(word) - 1)
    kind = rng.randrange(4)
    if kind == 0:
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]  # swap
    if kind == 1:
        return word[:i] + word[i + 1:]  # drop
    if kind == 2:
        return word[:i] + word[i] + word[i:]  # double
    return word[:i] + rng.choice(_KEYBOARD_NEIGHBOURS) + word[i + 1:]  # wrong key


class RequestGrammar:
    """Draws requests with their intent and target spans; ``names`` are the target names to use."""

    def __init__(self, names: list[str], seed: int = 0) -> None:
        if not names:
            raise ValueError("the request grammar needs target names")
        self.names = sorted(set(names))
        self.rng = random.Random(seed)

    def _fill_context(self, template: str) -> str:
        rng = self.rng
        return template.format(modality=rng.choice(MODALITIES), age=rng.randint(18, 90), sex=rng.choice(("man", "woman", "male", "female")),
                               complaint=rng.choice(COMPLAINTS), img=rng.choice(("image", "slice", "scan", "picture")))

    def _targets(self, allow_several: bool) -> list[str]:
        count = 1
        if allow_several and self.rng.random() < 0.15:
            count = min(self.rng.choice((2, 2, 3)), len(self.names))
        names = self.rng.sample(self.names, count)
        return [name.lower() if self.rng.random() < 0.7 else name for name in names]

    def _core(self, intent: str) -> str:
        rng = self.rng
        cores = {"segment": SEGMENT_CORES, "presence": PRESENCE_CORES, "identify": IDENTIFY_CORES,
                 "modality": MODALITY_CORES, "other": OTHER_CORES}[intent]
        if intent == "segment" and rng.random() < 0.06:
            return rng.choice(FOLLOW_UP_CORES)
        if intent == "segment" and rng.random() < 0.12:
            question = rng.choice(PRESENCE_CORES)
            outline = " ".join(w for w in (rng.choice(OUTLINE_CONDITIONS), rng.choice(("", "please")), "{verb}",
                                           rng.choice(OUTLINE_OBJECTS)) if w)
            if rng.random() < 0.3:  # the condition after the request: "outline it if you see it"
                return question + rng.choice(OUTLINE_JOINS) + "{verb} " + rng.choice(OUTLINE_OBJECTS) + " " + rng.choice(("if so", "if present", "if there is one", "if you find it"))
            return question + rng.choice(OUTLINE_JOINS) + outline
        if intent == "other" and rng.random() < 0.5:
            # A structure described, not named: the language model reasons it out (passed on as typed).
            return rng.choice(REASONING_CORES).replace("{kind}", rng.choice(KINDS)).replace("{clue}", rng.choice(CLUES))
        return rng.choice(cores)

    def sample(self, intent: str | None = None) -> Request:
        rng = self.rng
        intent = intent or rng.choices(INTENTS, weights=(5, 2, 2, 1, 2))[0]
        core = self._core(intent)
        targets = self._targets(allow_several=intent == "segment") if "{T}" in core or "{a}" in core else []
        lead = self._fill_context(rng.choice(LEADS))
        tail = self._fill_context(rng.choice(TAILS)) if intent != "other" else ""
        end = "?" if intent in ("presence", "identify", "modality") or core.startswith(("where", "can", "could", "would", "will", "is ", "do ")) else rng.choice((".", "", "!", "."))
        # Build the text piece by piece so that target spans are known exactly.
        pieces: list[tuple[str, bool]] = []  # (text, is_target)
        if lead:
            pieces.append((lead + " ", False))
        core = core.replace("{verb}", rng.choice(SEGMENT_VERBS)).replace("{part}", rng.choice(PARTICIPLES))
        core = self._fill_context(core.replace("{T}", "\0T\0").replace("{a}", "\0A\0"))
        first_target = targets[0] if targets else ""
        for chunk in re.split("(\0T\0|\0A\0)", core):
            if chunk == "\0T\0":
                pieces += self._target_pieces(targets)
            elif chunk == "\0A\0":
                pieces.append((("an " if first_target[:1].lower() in "aeiou" else "a ") if rng.random() < 0.8 else "", False))
            elif chunk:
                pieces.append((chunk, False))
        if tail:
            pieces.append((" " + tail, False))
        pieces.append((end, False))
        return self._surface(pieces, intent)

    def _target_pieces(self, targets: list[str]) -> list[tuple[str, bool]]:
        if len(targets) == 1:
            return [(targets[0], True)]
        form = self.rng.choice(LIST_FORMS)
        if len(targets) == 3:
            form = "{a}, {b} and {c}"
        pieces: list[tuple[str, bool]] = []
        for chunk in re.split(r"(\{[abc]\})", form):
            if chunk in ("{a}", "{b}", "{c}"):
                pieces.append((targets["abc".index(chunk[1])], True))
            elif chunk:
                pieces.append((chunk + ("the " if self.rng.random() < 0.3 and chunk.endswith(" ") else ""), False))
        return pieces

    def _surface(self, pieces: list[tuple[str, bool]], intent: str) -> Request:
        rng = self.rng
        lower = rng.random() < 0.3
        no_punctuation = rng.random() < 0.25
        typos = rng.random() < 0.25
        text, spans = "", []
        for chunk, is_target in pieces:
            if not is_target:
                if typos:
                    chunk = re.sub(r"[A-Za-z]+", lambda m: _typo(m.group(0), rng) if rng.random() < 0.25 else m.group(0), chunk)
                if no_punctuation:
                    chunk = re.sub(r"[?.!,:;]", "", chunk)
                if lower:
                    chunk = chunk.lower()
            else:
                if typos and rng.random() < 0.15:
                    chunk = re.sub(r"[A-Za-z]{5,}", lambda m: _typo(m.group(0), rng), chunk, count=1)
                if lower:
                    chunk = chunk.lower()
            if is_target:
                spans.append((len(text), len(text) + len(chunk)))
            text += chunk
        # Collapse doubled spaces without moving the spans: strip only leading spaces.
        lead = len(text) - len(text.lstrip())
        text = text.strip()
        spans = [(a - lead, b - lead) for a, b in spans]
        if not lower and text[:1].islower() and not (spans and spans[0][0] == 0):
            text = text[0].upper() + text[1:]
        return Request(text, intent, tuple(spans))

    def samples(self, count: int) -> list[Request]:
        return [self.sample() for _ in range(count)]
