"""The metrics of ``mimo-assistant eval``: each a pure function, each in [0, 1].

* **Dice** and **IoU** of a predicted and a reference mask (both empty: 1.0).
* **Naming**: the answer names the target when one of its grounded terms (``<p>term</p>``;
  without any, the known terms found in its text) resolves, through :mod:`mimo.terminology`,
  to the same coded entry as the target ("polyps" names "polyp"; "nodule" and "thyroid nodule"
  share their SNOMED CT code). Terms the terminology does not know must match after
  normalisation.
* **Closed-answer exact match**: the answer's text, normalised (case, punctuation, articles),
  equals the reference answer or the closed answer; or it states the closed answer: a yes/no
  question is read from the answer's first word, any other closed question from the only
  candidate answer the text names (candidates are the closed answers of that question type in
  the evaluated data, with a few synonyms: "MR" for MRI, "radiograph" for X-ray, ...).
* **False mask**: a mask with at least one pixel in an answer that should have none.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np

_ARTICLES = re.compile(r"\b(a|an|the)\b")
SYNONYMS = {
    "mri": ("mri", "mr", "magnetic resonance"),
    "ct": ("ct", "computed tomography"),
    "x-ray": ("x-ray", "radiograph", "radiography"),
    "fundus photography": ("fundus",),
    "electron microscopy": ("electron microscopy", "electron micrograph"),
    "microscopy": ("microscopy", "microscope", "micrograph"),
    "histopathology": ("histopathology", "histology", "h&e", "microscopy of an h&e", "microscopy of h&e"),
    "endoscopy": ("endoscopy", "endoscopic", "colonoscopy"),
    "non-covid pneumonia": ("non-covid pneumonia", "not caused by covid-19", "other than covid-19"),
}


def dice(predicted: np.ndarray, reference: np.ndarray) -> float:
    predicted, reference = np.asarray(predicted, bool), np.asarray(reference, bool)
    total = int(predicted.sum()) + int(reference.sum())
    return 1.0 if total == 0 else float(2 * (predicted & reference).sum() / total)


def iou(predicted: np.ndarray, reference: np.ndarray) -> float:
    predicted, reference = np.asarray(predicted, bool), np.asarray(reference, bool)
    union = int((predicted | reference).sum())
    return 1.0 if union == 0 else float((predicted & reference).sum() / union)


def union_mask(masks: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    result = np.zeros(shape, dtype=bool)
    for mask in masks:
        if mask.shape == tuple(shape):
            result |= mask.astype(bool)
    return result


def match_masks(predicted: Sequence[np.ndarray], references: Sequence[np.ndarray]) -> list[np.ndarray]:
    """One prediction per reference: the k-th generated mask for the k-th reference (missing:
    empty); a single reference is compared with the union of everything generated (a model may
    outline one structure in two parts)."""
    if not references:
        return []
    shape = references[0].shape
    if len(references) == 1:
        return [union_mask(predicted, shape)]
    return [predicted[k].astype(bool) if k < len(predicted) and predicted[k].shape == shape else np.zeros(shape, bool)
            for k in range(len(references))]


def false_mask(masks: Iterable[np.ndarray]) -> bool:
    return any(bool(np.asarray(mask).any()) for mask in masks)


# ----- naming --------------------------------------------------------------------------------


def same_structure(term: str, target: str, terminology=None) -> bool:
    from ..terminology import Terminology

    return (terminology or Terminology.default()).same_concept(term, target)


def named_terms(text: str, grounded: Sequence[str], terminology=None) -> list[str]:
    """The terms an answer names: its grounded phrases, else the known terms in its text."""
    if grounded:
        return list(grounded)
    from ..terminology import Terminology

    terminology = terminology or Terminology.default()
    return [text[start:end] for start, end, _ in terminology.find_terms(text)]


def naming_correct(text: str, grounded: Sequence[str], target: str, terminology=None) -> bool:
    return any(same_structure(term, target, terminology) for term in named_terms(text, grounded, terminology))


# ----- closed answers ------------------------------------------------------------------------


def normalize_answer(text: str) -> str:
    text = (text or "").lower()
    text = re.sub(r"[^\w&]+", " ", text)
    text = _ARTICLES.sub(" ", text)
    return re.sub(r"\s+", " ", text).strip()


def _contains(text: str, phrase: str) -> bool:
    phrase = normalize_answer(phrase)
    return bool(phrase) and re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text) is not None


def stated_answer(text: str, candidates: Iterable[str]) -> str | None:
    """The closed answer ``text`` states, among ``candidates``; None when none or several."""
    normalized = normalize_answer(text)
    candidates = sorted({normalize_answer(c): c for c in candidates}.items())
    if {key for key, _ in candidates} <= {"yes", "no"}:
        first = normalized.split(" ", 1)[0] if normalized else ""
        return first if first in ("yes", "no") else None
    found = []
    for key, candidate in candidates:
        phrases = SYNONYMS.get(candidate.lower(), ()) + (candidate,)
        hits = [normalize_answer(p) for p in phrases if _contains(normalized, p)]
        if hits:
            found.append((key, max(hits, key=len)))
    # A hit inside another candidate's longer hit does not count: "covid 19" in "not caused by
    # covid 19", "micrograph" in "electron micrograph".
    kept = [(key, hit) for key, hit in found if not any(other != key and hit in longer and len(longer) > len(hit) for other, longer in found)]
    return kept[0][0] if len(kept) == 1 else None


def exact_match(text: str, closed_answer: str, reference_text: str | None = None, candidates: Iterable[str] = ()) -> bool:
    normalized, closed = normalize_answer(text), normalize_answer(closed_answer)
    if normalized == closed or (reference_text is not None and normalized == normalize_answer(reference_text)):
        return True
    pool = set(candidates) | {closed_answer}
    if {normalize_answer(c) for c in pool} <= {"yes", "no"}:
        pool = {"yes", "no"}
    return stated_answer(text, pool) == closed


def mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None
