"""Questions and answers for samples built on the fly from a manifest: many phrasings per task.

Training draws a phrasing at random each time a sample is used (a model that has only seen
"Segment the X." fails on "Where is the X?"); evaluation uses the first, canonical one so that
reports are comparable between runs. Answers ground every named structure as
``<p>term</p><SEG>``; negative answers name the absent structure without ``<SEG>``.
"""

from __future__ import annotations

import random
import re

SEG = "<p>{target}</p><SEG>"

TEXT_SEG_QUESTIONS = (
    "Segment the {target}.",
    "Where is the {target}?",
    "Show me the {target} in this {modality} image.",
    "Outline the {target}.",
    "Can you find the {target}?",
    "Please segment the {target}.",
    "Highlight the {target}.",
    "Mark the {target} in this image.",
    "Delineate the {target}.",
    "Find the {target} and outline it.",
    "Could you outline the {target} for me?",
    "Identify the {target} in this image.",
    "segment {target}",
)
TEXT_SEG_ANSWERS = (
    SEG,
    "The " + SEG + " {is} shown.",
    "Here is the " + SEG + ".",
    "This is the " + SEG + ".",
    "I have outlined the " + SEG + ".",
    "The " + SEG + " {is} outlined.",
)
BOX_SEG_QUESTIONS = (
    "Segment the {target}.",
    "Segment the {target} in the box.",
    "Outline the {target} inside this region.",
    "Segment the {target} in <region>.",
    "The {target} is in this box: outline it.",
    "Delineate the {target} within the marked area.",
)
NAMING_QUESTIONS = (
    "What is this?",
    "What is in this region?",
    "What structure is inside the box?",
    "What is in <region>?",
    "Identify the highlighted region.",
    "What does this region show?",
    "Name the structure in the box.",
    "What is shown here?",
    "What can you see in the marked area?",
)
NAMING_ANSWERS = (
    "This is the " + SEG + ".",
    "It is {a}" + SEG + ".",
    "The region contains the " + SEG + ".",
    SEG,
    "This {modality} image shows the " + SEG + " here.",
)
MULTI_SEG_QUESTIONS = (
    "Segment the {targets}.",
    "Where are the {targets}?",
    "Outline the {targets}.",
)
NEGATIVE_QUESTIONS = (
    "Segment the {target}.",
    "Where is the {target}?",
    "Outline the {target}.",
    "Can you find the {target}?",
    "Show me the {target} in this {modality} image.",
)
NEGATIVE_ANSWERS = (
    "There {is} no {target} in this image.",
    "No {target} {is} visible in this image.",
    "I cannot find {a}{target} in this image.",
    "This {modality} image does not show {a}{target}.",
)
PRESENCE_QUESTIONS = (
    "{Is} there {a}{target} in this image?",
    "Does this image show {a}{target}?",
    "Can you see {a}{target} here?",
)

#: Closed questions from image-level findings: (question phrasings, answer for each value).
FINDING_QUESTIONS = {
    "pathology": (
        "Is this breast ultrasound normal, or does it show a benign or a malignant lesion?",
        "Is the finding benign or malignant, or is the breast normal?",
        "Benign, malignant or normal?",
    ),
    "diagnosis": (
        "What is the diagnosis: COVID-19, non-COVID pneumonia or normal?",
        "Does this chest X-ray show COVID-19, another pneumonia, or nothing abnormal?",
        "Diagnosis (COVID-19, non-COVID pneumonia or normal)?",
    ),
}

_MODALITY_NAMES = {
    "x-ray": "X-ray",
    "xr": "X-ray",
    "ct": "CT",
    "mr": "MR",
    "mri": "MRI",
    "us": "ultrasound",
}


def modality_name(modality: str) -> str:
    """A modality as it reads in a sentence: 'histopathology (H&E)' -> 'histopathology'."""
    name = re.sub(r"\s*\(.*?\)\s*", " ", modality or "").strip()
    return _MODALITY_NAMES.get(name.lower(), name) or "medical"


_SINGULAR_ENDINGS = ("ss", "us", "is", "ys")


def grammar(target: str) -> dict[str, str]:
    """``is``/``are`` and ``a``/``an``/nothing for a structure name ("lungs" are, "a polyp" is)."""
    last = (target.split() or [""])[-1].lower()
    plural = last in ("nuclei", "cells", "vessels") or (last.endswith("s") and not last.endswith(_SINGULAR_ENDINGS))
    article = "" if plural else ("an " if target[:1].lower() in "aeiou" else "a ")
    return {"is": "are" if plural else "is", "Is": "Are" if plural else "Is", "a": article}


def join_targets(targets: list[str]) -> str:
    return targets[0] if len(targets) == 1 else ", ".join(targets[:-1]) + " and " + targets[-1]


def _pick(options: tuple[str, ...], rng: random.Random | None) -> str:
    return options[0] if rng is None else rng.choice(options)


def phrase(kind: str, targets: list[str], modality: str, rng: random.Random | None = None, value: str | None = None) -> tuple[str, str]:
    """(question, answer) for a sample kind; ``rng=None`` gives the canonical phrasing.

    Kinds: ``text_seg``, ``box_seg``, ``prompt_perception``, ``negative``, ``presence``
    (``value`` is ``yes`` or ``no``), ``finding:<key>`` (``value`` the finding).
    """
    mod = modality_name(modality)
    target = targets[0] if targets else ""
    words = grammar(target)
    if kind == "text_seg" and len(targets) > 1:
        question = _pick(MULTI_SEG_QUESTIONS, rng).format(targets=join_targets(targets))
        grounded = [SEG.format(target=t) for t in targets]
        answer = grounded[0] if len(grounded) == 1 else ", ".join(grounded[:-1]) + " and " + grounded[-1]
        return question, ("The " + answer + " are shown." if rng is not None and rng.random() < 0.5 else answer)
    if kind == "text_seg":
        return (_pick(TEXT_SEG_QUESTIONS, rng).format(target=target, modality=mod),
                _pick(TEXT_SEG_ANSWERS, rng).format(target=target, **words))
    if kind == "box_seg":
        return _pick(BOX_SEG_QUESTIONS, rng).format(target=target), _pick(TEXT_SEG_ANSWERS, rng).format(target=target, **words)
    if kind == "prompt_perception":
        return _pick(NAMING_QUESTIONS, rng), _pick(NAMING_ANSWERS, rng).format(target=target, modality=mod, **words)
    if kind == "negative":
        return (
            _pick(NEGATIVE_QUESTIONS, rng).format(target=target, modality=mod),
            _pick(NEGATIVE_ANSWERS, rng).format(target=target, modality=mod, **words),
        )
    if kind == "presence":
        question = _pick(PRESENCE_QUESTIONS, rng).format(target=target, **words)
        return question, ("Yes." if value == "yes" else "No.")
    if kind.startswith("finding:"):
        key = kind.split(":", 1)[1]
        return _pick(FINDING_QUESTIONS[key], rng), f"{value[:1].upper()}{value[1:]}."
    raise ValueError(f"unknown sample kind {kind!r}")
