"""``mimo-assistant eval``: run a model (and baselines) over evaluation samples and score them.

Samples come from a data-builder folder (any split) or an open2d-format manifest (samples built
on the fly, :func:`mimo.training.samples.manifest_examples`: "Segment the X." per mask, the same
with a box around the mask, "What is this?" with that box, a negative, closed questions from
the findings). Labelled volumes are evaluated through the slices the data builder cuts from
them (``mimo-assistant data build --volumes ...``).

Scores per sample (see :mod:`.metrics`): Dice and IoU per reference mask for every sample with
masks; naming for prompt_perception; exact match for closed VQA; false mask for negatives.
They are averaged per perspective, overall and per dataset, modality and target.

The **baseline comparison** runs on every distinct (image, reference mask) of the evaluated
samples, with the same box (the mask's bounding box + 3 pixels) for everyone:

* ``mimo_box``: the model, "Segment the {target}." with the box;
* ``mimo_text``: the model, the same question without any prompt;
* ``litemedsam_box``: LiteMedSAM (the engine's segmentation backend) with the box;
* ``mimo_text_other_term``: query specificity, where the image has a reference mask of another
  target too (lungs and infection on a chest X-ray; organs of a CT slice): the model asked for
  that other target, scored against *this* mask. A model that listens to the question scores
  low here; one that segments whatever is salient scores as high as ``mimo_text``;
* ``reference_other_term``: that other target's reference mask scored against this mask: what a
  perfect model scores in ``mimo_text_other_term`` (the two structures may overlap: infection
  inside the lungs), so that the model's number can be read against it.

Identical turns are answered once (a manifest's box_seg samples are the mimo_box turns).

Beside the means, ``differences`` gives MIMO's box Dice minus LiteMedSAM's on the same masks
with a confidence interval that resamples image groups (:mod:`.differences`): whether a gap is
larger than the noise of the masks and videos it was measured on.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..prompts import prompt_to_dict
from ..training.samples import REFERENCE_BOX_MARGIN_PX, Example, box_around, read_mask
from . import metrics
from .differences import paired_difference

SEGMENTATION_SYSTEMS = ("mimo_box", "mimo_text", "litemedsam_box", "mimo_text_other_term", "reference_other_term")
PAIRED_DIFFERENCES = (("mimo_box", "litemedsam_box"),)
"""(system, baseline) pairs whose per-mask Dice difference the report gives with an interval."""


@dataclass
class Comparison:
    """One reference mask and the turns every system answers about it."""

    target: str
    mask_file: str
    text: Example
    box: Example
    other_term: Example | None = None
    """The text turn for another target with a reference mask in the same image, if any."""
    other_mask_file: str | None = None
    """That other target's reference mask."""


@dataclass
class EvalResult:
    items: list[dict] = field(default_factory=list)
    comparisons: list[dict] = field(default_factory=list)
    timings: dict = field(default_factory=dict)


def comparisons_for(examples: Sequence[Example], box_margin: float = REFERENCE_BOX_MARGIN_PX) -> list[Comparison]:
    """Every distinct (image, reference mask) of ``examples``, as a text and a box turn."""
    seen: set[tuple[str, str]] = set()
    result = []
    references_by_image: dict[str, dict[str, str]] = defaultdict(dict)
    for example in examples:
        if example.perspective != "negative" and len(example.targets) == len(example.mask_files):
            for target, mask_file in zip(example.targets, example.mask_files):
                references_by_image[example.image].setdefault(target, mask_file)
    for example in examples:
        if example.perspective == "negative" or not example.mask_files or len(example.targets) != len(example.mask_files):
            continue
        for target, mask_file in zip(example.targets, example.mask_files):
            if (example.image, mask_file) in seen:
                continue
            mask = read_mask(mask_file)
            if not mask.any():
                continue
            seen.add((example.image, mask_file))
            common = {"image": example.image, "dataset": example.dataset, "modality": example.modality, "perspective": "baseline",
                      "answer": f"<p>{target}</p><SEG>", "mask_files": [mask_file], "targets": [target],
                      "spacing_mm": example.spacing_mm, "calibrated": example.calibrated, "split": example.split, "group": example.group}
            question = f"Segment the {target}."
            index = len(result)
            others = sorted(set(references_by_image[example.image]) - {target})
            other_term = other_mask_file = None
            if others:
                other_mask_file = references_by_image[example.image][others[0]]
                other_term = Example(id=f"compare/{index}/other", question=f"Segment the {others[0]}.", prompts=[],
                                     **{**common, "answer": f"<p>{others[0]}</p><SEG>", "targets": [others[0]]})
            result.append(Comparison(
                target, mask_file,
                Example(id=f"compare/{index}/text", question=question, prompts=[], **common),
                Example(id=f"compare/{index}/box", question=question, prompts=[box_around(mask, box_margin)], **common),
                other_term,
                other_mask_file,
            ))
    return result


def closed_candidates(examples: Sequence[Example]) -> dict[str, set[str]]:
    """Closed answers seen per question type: what a closed answer is chosen among."""
    candidates: dict[str, set[str]] = defaultdict(set)
    for example in examples:
        if example.answer_type == "closed" and example.closed_answer is not None:
            candidates[_question_key(example)].add(example.closed_answer)
    return candidates


def _question_key(example: Example) -> str:
    return example.question_type or example.kind or example.perspective


def score(example: Example, prediction, candidates: dict[str, set[str]], terminology=None) -> dict:
    """One sample's record: what was asked, what came back, and its metrics."""
    record = {
        "id": example.id,
        "dataset": example.dataset,
        "modality": example.modality,
        "perspective": example.perspective,
        "question": example.question,
        "prompts": [prompt_to_dict(p) for p in example.prompts],
        "targets": list(example.targets),
        "absent": list(example.absent),
        "reference": example.answer,
        "answer": prediction.text,
        "terms": list(prediction.terms),
        "masks": len(prediction.masks),
        "seconds": round(prediction.seconds, 4),
    }
    if example.mask_files and example.perspective != "negative":
        references = example.load_masks()
        matched = metrics.match_masks(prediction.masks, references)
        record["dice"] = [metrics.dice(p, r) for p, r in zip(matched, references)]
        record["iou"] = [metrics.iou(p, r) for p, r in zip(matched, references)]
    if example.perspective == "prompt_perception" and example.targets:
        record["naming_correct"] = all(metrics.naming_correct(prediction.text, prediction.terms, t, terminology) for t in example.targets)
    if example.perspective == "vqa" and example.answer_type == "closed" and example.closed_answer is not None:
        record["exact_match"] = metrics.exact_match(prediction.text, example.closed_answer, example.answer,
                                                    candidates.get(_question_key(example), ()))
        record["closed_answer"] = example.closed_answer
    if example.perspective == "negative":
        record["false_mask"] = metrics.false_mask(prediction.masks)
    return record


class _Memo:
    """Answers of one predictor, so that an identical turn is asked once."""

    def __init__(self, predictor) -> None:
        self.predictor = predictor
        self.answers: dict[tuple, object] = {}
        self.seconds: list[float] = []

    def __call__(self, example: Example):
        key = (example.image, example.question, tuple(prompt_to_dict(p).__repr__() for p in example.prompts),
               tuple((m.role, m.text) for m in example.history))
        if key not in self.answers:
            prediction = self.predictor.predict(example)
            self.seconds.append(prediction.seconds)
            self.answers[key] = prediction
        return self.answers[key]

    def forget_image(self) -> None:
        self.answers.clear()


def run_evaluation(
    examples: Sequence[Example],
    model,
    litemedsam=None,
    text_baseline: bool = True,
    box_margin: float = REFERENCE_BOX_MARGIN_PX,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> EvalResult:
    """Ask ``model`` (and the baselines) everything, image by image; returns the scored records."""
    from ..terminology import Terminology

    started = time.perf_counter()
    terminology = Terminology.default()
    candidates = closed_candidates(examples)
    comparisons = comparisons_for(examples, box_margin)
    by_image: dict[str, tuple[list[Example], list[Comparison]]] = defaultdict(lambda: ([], []))
    for example in examples:
        by_image[example.image][0].append(example)
    for comparison in comparisons:
        by_image[comparison.box.image][1].append(comparison)
    ask_model = _Memo(model)
    ask_litemedsam = _Memo(litemedsam) if litemedsam is not None else None
    result = EvalResult()
    images = sorted(by_image)
    iterator = images
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(images, desc="evaluating", unit="image", dynamic_ncols=True)
    for image in iterator:
        own, compared = by_image[image]
        for example in own:
            result.items.append(score(example, ask_model(example), candidates, terminology))
        for comparison in compared:
            reference = read_mask(comparison.mask_file)
            row = {"dataset": comparison.box.dataset, "modality": comparison.box.modality, "target": comparison.target,
                   "image": image, "group": comparison.box.group or image, "mask": comparison.mask_file, "box": prompt_to_dict(comparison.box.prompts[0])}
            systems = [("mimo_box", ask_model, comparison.box)]
            if text_baseline:
                systems.append(("mimo_text", ask_model, comparison.text))
                if comparison.other_term is not None:
                    systems.append(("mimo_text_other_term", ask_model, comparison.other_term))
            if ask_litemedsam is not None:
                systems.append(("litemedsam_box", ask_litemedsam, comparison.box))
            for name, ask, example in systems:
                prediction = ask(example)
                predicted = metrics.match_masks(prediction.masks, [reference])[0]
                row[name] = {"dice": metrics.dice(predicted, reference), "iou": metrics.iou(predicted, reference),
                             "answer": prediction.text}
            if text_baseline and comparison.other_mask_file is not None:
                other_reference = read_mask(comparison.other_mask_file)
                row["reference_other_term"] = {"dice": metrics.dice(other_reference, reference),
                                               "iou": metrics.iou(other_reference, reference), "answer": None}
            result.comparisons.append(row)
        ask_model.forget_image()
        if ask_litemedsam is not None:
            ask_litemedsam.forget_image()
    model_turns = [r["seconds"] for r in result.items]
    result.timings = {
        "total_s": round(time.perf_counter() - started, 2),
        "images": len(images),
        "model_encode_s_per_image": _mean(getattr(model, "encode_seconds", [])),
        "model_s_per_turn": _mean(model_turns),
        "litemedsam_encode_s_per_image": _mean(getattr(litemedsam, "encode_seconds", [])) if litemedsam is not None else None,
        "litemedsam_s_per_turn": _mean(ask_litemedsam.seconds) if ask_litemedsam is not None else None,
    }
    if log is not None:
        log(f"evaluated {len(result.items)} samples and {len(result.comparisons)} reference masks on {len(images)} images "
            f"in {result.timings['total_s']} s")
    return result


def _mean(values) -> float | None:
    values = list(values)
    return round(float(np.mean(values)), 4) if values else None


# ----- aggregation ---------------------------------------------------------------------------


def summarize(records: Sequence[dict]) -> dict:
    """Mean metrics of sample records (only the metrics some record has)."""
    summary: dict = {"n": len(records)}
    dice = [d for r in records for d in r.get("dice", [])]
    iou = [v for r in records for v in r.get("iou", [])]
    if dice:
        summary.update(dice=metrics.mean(dice), miou=metrics.mean(iou), masks=len(dice))
    for key, name in (("naming_correct", "naming_accuracy"), ("exact_match", "exact_match"), ("false_mask", "false_mask_rate")):
        values = [float(r[key]) for r in records if key in r]
        if values:
            summary[name] = metrics.mean(values)
            summary[f"{name}_n"] = len(values)
    open_answers = sum(1 for r in records if r["perspective"] == "vqa" and "exact_match" not in r)
    if open_answers:
        summary["open_answers_unscored"] = open_answers
    return summary


def _target_views(record: dict) -> list[tuple[str, dict]]:
    """(target, a record holding only that target's metrics) for the per-target breakdown."""
    views = []
    if "dice" in record:
        for k, target in enumerate(record["targets"][: len(record["dice"])]):
            views.append((target, {**record, "dice": [record["dice"][k]], "iou": [record["iou"][k]]}))
        return views
    names = record["absent"] or record["targets"] or ["(image)"]
    return [(names[0], record)]


def aggregate(items: Sequence[dict]) -> dict:
    def by_perspective(records):
        return {p: summarize([r for r in records if r["perspective"] == p]) for p in sorted({r["perspective"] for r in records})}

    grouped: dict[str, dict[str, list]] = {"dataset": defaultdict(list), "modality": defaultdict(list), "target": defaultdict(list)}
    for record in items:
        grouped["dataset"][record["dataset"]].append(record)
        grouped["modality"][record["modality"]].append(record)
        for target, view in _target_views(record):
            grouped["target"][target].append(view)
    return {
        "overall": by_perspective(items),
        "by_dataset": {k: by_perspective(v) for k, v in sorted(grouped["dataset"].items())},
        "by_modality": {k: by_perspective(v) for k, v in sorted(grouped["modality"].items())},
        "by_target": {k: by_perspective(v) for k, v in sorted(grouped["target"].items())},
    }


def aggregate_comparisons(rows: Sequence[dict], box_margin: float = REFERENCE_BOX_MARGIN_PX) -> dict:
    """Dice and mIoU per system over ``rows`` (scored comparisons), overall and per target,
    dataset and modality; ``box_margin`` (pixels) is the one the comparisons' boxes were built with."""
    systems = [s for s in SEGMENTATION_SYSTEMS if any(s in r for r in rows)]

    def table(selected: Sequence[dict]) -> dict:
        return {s: {"n": sum(1 for r in selected if s in r),
                    "dice": metrics.mean([r[s]["dice"] for r in selected if s in r]),
                    "miou": metrics.mean([r[s]["iou"] for r in selected if s in r])} for s in systems}

    def difference(selected: Sequence[dict], first: str, second: str) -> dict | None:
        paired = [r for r in selected if first in r and second in r]
        if not paired:
            return None
        # rows of reports written before groups were recorded count each image as its own group
        return paired_difference([r[first]["dice"] for r in paired], [r[second]["dice"] for r in paired],
                                 [r.get("group") or r["image"] for r in paired])

    partitions: dict[str, dict[str, list[dict]]] = {key: defaultdict(list) for key in ("target", "dataset", "modality")}
    for row in rows:
        for key, partition in partitions.items():
            partition[row[key]].append(row)
    groups = {f"by_{key}": {v: table(partition[v]) for v in sorted(partition)} for key, partition in partitions.items()}
    differences = {}
    for first, second in PAIRED_DIFFERENCES:
        if first in systems and second in systems:
            differences[f"{first} - {second}"] = {
                "overall": difference(rows, first, second),
                **{f"by_{key}": {v: d for v in sorted(partitions[key]) if (d := difference(partitions[key][v], first, second)) is not None}
                   for key in ("target", "dataset")},
            }
    return {"systems": systems, "box_margin_px": box_margin, "overall": table(rows), **groups, "differences": differences}
