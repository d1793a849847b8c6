"""Open-world evaluation: free phrasing, the user's term, and "I can't identify this".

Measured on data the model did not train on, each figure beside the baseline in the same run
(the same checkpoint answering the question as typed, with no request reader and no
familiarity index: how MIMO-Tiny answered before them):

* **phrasing families**: text-only Dice on held-out images for every family of the held-out
  phrasings (:mod:`.heldout_phrasings`, never trained on; one template per image and family);
  the worst family is the figure that counts. Also held-out synonyms of the targets;
* **term substitution**: how often a segment answer grounds a structure other than the one the
  user named;
* **naming**: "What is this?" with a box around each reference mask (the canonical question and
  the held-out naming families): correct names kept, wrong names given, abstentions; on the
  in-domain test split and on **whole datasets never trained on** (``--ood``), where every name
  that is not the reference is wrong;
* **negatives**: masks drawn for a structure that is absent (text only);
* **follow-ups**: a second turn that refers back without naming the structure.

Signals are recorded with thresholds switched off and the answer policy's decisions are applied
afterwards (:func:`apply_thresholds`), so one run gives the shipped operating point and the
trade-off curve over thresholds (chosen on the validation split only, :func:`choose_thresholds`).
"""

from __future__ import annotations

import dataclasses
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..training.samples import REFERENCE_BOX_MARGIN_PX, Example, box_around, read_mask
from . import heldout_phrasings as held
from .metrics import dice, same_structure

CANONICAL_SEGMENT = "Segment the {target}."
CANONICAL_NAMING = "What is this?"
MODALITY_QUESTION = "What imaging modality is this?"


@dataclass
class Asker:
    """A checkpoint's answerers over one feature cache: ``full`` (reader + familiarity with its
    thresholds switched off, so that every signal is recorded) and ``baseline`` (as typed)."""

    model: object
    processor: object
    full: object
    baseline: object
    cache: object
    thresholds: object

    @classmethod
    def load(cls, model_dir: str | Path, cache_dir: str | Path | None = None, device: str = "cpu") -> Asker:
        from ..modeling import load_mimo
        from ..modeling.answering import GroundedAnswerer
        from ..modeling.familiarity import AnswerThresholds
        from ..training.features import FeatureCache

        model, processor = load_mimo(model_dir, device=device)
        full = GroundedAnswerer.from_checkpoint(model_dir, model, processor)
        thresholds = full.familiarity.thresholds if full.familiarity is not None else AnswerThresholds()
        if full.familiarity is not None:
            full.familiarity.thresholds = AnswerThresholds(image=-2.0, image_named=-2.0, region=-2.0, naming=0.0, grounding=0.0)
        cache = FeatureCache(model, processor, cache_dir, dtype=torch.float16, enabled=True, memory_items=4)
        return cls(model, processor, full, GroundedAnswerer(model, processor), cache, thresholds)

    def features(self, example: Example):
        from ..training.batches import image_ref
        from ..training.features import stack_features

        entry = self.cache.get(image_ref(example))
        refine = self.processor.refine_pixels(example.load_image(), entry.geometry)
        return stack_features([entry], self.model.device, self.model.dtype, refine), entry.geometry

    def ask(self, which: str, example: Example, question: str, prompts=(), history=()):
        features, geometry = self.features(example)
        answerer = self.full if which == "full" else self.baseline
        with torch.inference_mode():
            return answerer.answer(features, geometry, question, list(prompts), list(history), max_new_tokens=48)


def _pick(templates: Sequence[str], key: str) -> str:
    return templates[random.Random(key).randrange(len(templates))]


def _reference_masks(examples: Sequence[Example], per_dataset: int | None) -> list[tuple[Example, str, str]]:
    """(example, target, mask file): one per distinct image and mask, from single-target text samples."""
    seen, rows, counts = set(), [], defaultdict(int)
    for example in sorted(examples, key=lambda e: (e.dataset, e.image)):
        if example.perspective != "text_seg" or len(example.targets) != 1 or len(example.mask_files) != 1 or example.prompts:
            continue
        key = (example.image, example.mask_files[0])
        if key in seen or (per_dataset is not None and counts[example.dataset] >= per_dataset):
            continue
        seen.add(key)
        counts[example.dataset] += 1
        rows.append((example, example.targets[0], example.mask_files[0]))
    return rows


def _segment_row(asker: Asker, which: str, example: Example, target: str, mask_file: str, question: str, history=()) -> dict:
    answer = asker.ask(which, example, question, history=history)
    reference = read_mask(mask_file)
    union = np.zeros_like(reference, dtype=bool)
    for mask in answer.masks:
        union |= mask
    substituted = any(not same_structure(s.term, target) for s in answer.spans)
    return {"dice": float(dice(union, reference)) if answer.masks else 0.0, "masks": len(answer.masks),
            "substituted": substituted, "confidence": answer.extra.get("confidence"),
            "image_familiarity": (answer.extra.get("familiarity") or {}).get("image"), "text": answer.text}


def phrasing_rows(asker: Asker, examples: Sequence[Example], per_dataset: int | None, log: Callable[[str], None]) -> list[dict]:
    rows = []
    references = _reference_masks(examples, per_dataset)
    for number, (example, target, mask_file) in enumerate(references):
        questions = [("canonical", CANONICAL_SEGMENT.format(target=target))]
        questions += [(f"segment/{family}", _pick(templates, f"{example.image}/{family}").format(target=target, modality=_modality(example)))
                      for family, templates in held.SEGMENT_FAMILIES.items()]
        for synonym in held.TARGET_SYNONYMS.get(target, ()):
            questions.append(("synonym", CANONICAL_SEGMENT.format(target=synonym)))
        for family, question in questions:
            for which in ("full", "baseline"):
                row = _segment_row(asker, which, example, target, mask_file, question)
                rows.append({"system": which, "family": family, "dataset": example.dataset, "target": target, "question": question, **row})
        first, second = _pick(held.FOLLOW_UPS, example.image)
        from ..backend import Message

        for which in ("full", "baseline"):
            opening = first.format(target=target)
            earlier = asker.ask(which, example, opening)
            history = [Message("user", opening), Message("assistant", earlier.text)]
            row = _segment_row(asker, which, example, target, mask_file, second, history)
            rows.append({"system": which, "family": "follow_up", "dataset": example.dataset, "target": target, "question": second, **row})
        log(f"phrasings: {number + 1}/{len(references)} masks")
    return rows


def canonical_segment_rows(asker: Asker, examples: Sequence[Example], per_dataset: int | None, log: Callable[[str], None]) -> list[dict]:
    """"Segment the {target}." without a prompt, the full system only (for choosing thresholds)."""
    rows = []
    for example, target, mask_file in _reference_masks(examples, per_dataset):
        question = CANONICAL_SEGMENT.format(target=target)
        rows.append({"system": "full", "family": "canonical", "dataset": example.dataset, "target": target, "question": question,
                     **_segment_row(asker, "full", example, target, mask_file, question)})
    log(f"canonical segment turns: {len(rows)}")
    return rows


def _modality(example: Example) -> str:
    from ..training.phrasings import modality_name

    return modality_name(example.modality)


def naming_rows(asker: Asker, examples: Sequence[Example], per_dataset: int | None, source: str, log: Callable[[str], None],
                families: bool = True) -> list[dict]:
    """"What is this?" with a box around every reference mask; the name's signals recorded."""
    rows = []
    references = _reference_masks(examples, per_dataset)
    for number, (example, target, mask_file) in enumerate(references):
        box = box_around(read_mask(mask_file), REFERENCE_BOX_MARGIN_PX)
        questions = [("canonical", CANONICAL_NAMING)]
        if families:
            questions += [(f"identify/{family}", _pick(templates, f"{example.image}/{family}")) for family, templates in held.NAMING_FAMILIES.items()]
        for family, question in questions:
            for which in ("full", "baseline"):
                rows.append({"system": which, "family": family, "source": source, "dataset": example.dataset, "target": target,
                             "question": question, **_naming_result(asker.ask(which, example, question, [box]), target)})
        log(f"naming ({source}): {number + 1}/{len(references)} masks")
    return rows


def _naming_result(answer, target: str) -> dict:
    notes = answer.extra.get("familiarity") or {}
    name = answer.extra.get("withheld_name") or (answer.spans[0].term if answer.spans else None)
    return {"name": name, "correct": bool(name) and same_structure(name, target), "confidence": answer.extra.get("confidence"),
            "image_familiarity": notes.get("image"), "image_named_familiarity": notes.get("image_named"),
            "region_familiarity": notes.get("region"),
            "abstained": bool(answer.extra.get("abstained")), "text": answer.text}


def photograph_rows(asker: Asker, log: Callable[[str], None]) -> tuple[list[dict], list[dict]]:
    """Photographs and pictures with no medical structure (scikit-image's sample images), three
    boxes each: any medical name given is wrong."""
    import skimage.data

    from ..backend import SliceImage
    from ..prompts import BoxPrompt

    names = ("astronaut", "coffee", "chelsea", "rocket", "horse", "motorcycle_left", "coins", "camera", "moon", "hubble_deep_field",
             "brick", "grass", "gravel", "text", "page", "clock", "logo", "colorwheel")
    rows, modality_rows_ = [], []
    for name in names:
        loader = getattr(skimage.data, name, None)
        if loader is None:
            continue
        pixels = np.asarray(loader())
        if pixels.ndim == 2:
            pixels = np.stack([pixels] * 3, axis=-1)
        pixels = pixels[..., :3]
        if pixels.dtype != np.uint8:  # boolean or float pictures: stretched to 0..255
            values = pixels.astype(float)
            pixels = (255 * (values - values.min()) / max(float(np.ptp(values)), 1e-6)).astype(np.uint8)
        image = SliceImage(pixels, (1.0, 1.0), "OT", calibrated=False)
        rows_, cols_ = pixels.shape[:2]
        boxes = [BoxPrompt(cols_ * 0.3, rows_ * 0.3, cols_ * 0.7, rows_ * 0.7), BoxPrompt(cols_ * 0.05, rows_ * 0.1, cols_ * 0.45, rows_ * 0.5),
                 BoxPrompt(cols_ * 0.5, rows_ * 0.5, cols_ * 0.95, rows_ * 0.9)]
        features, geometry = _encode_picture(asker, image)
        for k, box in enumerate(boxes):
            for which in ("full", "baseline"):
                answerer = asker.full if which == "full" else asker.baseline
                with torch.inference_mode():
                    answer = answerer.answer(features, geometry, CANONICAL_NAMING, [box], [], max_new_tokens=48)
                rows.append({"system": which, "family": "canonical", "source": "photographs", "dataset": "scikit-image photographs",
                             "target": None, "question": CANONICAL_NAMING, **_naming_result(answer, "\0none")})
        with torch.inference_mode():
            modality = asker.full.answer(features, geometry, MODALITY_QUESTION, [], [], max_new_tokens=48)
        modality_rows_.append(_modality_result(modality, "photographs"))
        log(f"photographs: {name}")
    return rows, modality_rows_


def _modality_result(answer, source: str) -> dict:
    return {"source": source, "image_familiarity": (answer.extra.get("familiarity") or {}).get("image"), "text": answer.text}


def modality_rows(asker: Asker, examples: Sequence[Example], per_dataset: int | None) -> list[dict]:
    """The modality question once per in-domain image (is an answer withheld there?)."""
    rows, seen, counts = [], set(), defaultdict(int)
    for example in sorted(examples, key=lambda e: (e.dataset, e.image)):
        if example.image in seen or (per_dataset is not None and counts[example.dataset] >= per_dataset):
            continue
        seen.add(example.image)
        counts[example.dataset] += 1
        rows.append(_modality_result(asker.ask("full", example, MODALITY_QUESTION), "in-domain") | {"dataset": example.dataset})
    return rows


def summarise_modality(rows: Sequence[dict], thresholds) -> dict:
    """Share of modality questions answered "unknown" at the checkpoint's image threshold, per source."""
    by_source = defaultdict(list)
    for row in rows:
        by_source[row["source"]].append(row["image_familiarity"] is not None and row["image_familiarity"] < thresholds.image)
    return {source: {"n": len(v), "answered_unknown": round(float(np.mean(v)), 4)} for source, v in sorted(by_source.items())}


def _encode_picture(asker: Asker, image):
    inputs = asker.processor.preprocess_image(image)
    with torch.inference_mode():
        features = asker.model.encode_images(inputs.grounding_pixel_values, inputs.vision_pixel_values, inputs.refine_pixel_values)
    return features, inputs.geometry


def negative_rows(asker: Asker, examples: Sequence[Example], per_dataset: int | None, log: Callable[[str], None]) -> list[dict]:
    rows, counts = [], defaultdict(int)
    for example in sorted(examples, key=lambda e: (e.dataset, e.image)):
        if example.perspective != "negative" or example.prompts or example.history or not example.absent:
            continue
        if per_dataset is not None and counts[example.dataset] >= per_dataset:
            continue
        counts[example.dataset] += 1
        question = CANONICAL_SEGMENT.format(target=example.absent[0])
        for which in ("full", "baseline"):
            answer = asker.ask(which, example, question)
            rows.append({"system": which, "dataset": example.dataset, "target": example.absent[0], "masks": len(answer.masks),
                         "confidence": answer.extra.get("confidence"),
                         "image_familiarity": (answer.extra.get("familiarity") or {}).get("image"), "text": answer.text})
    log(f"negatives: {len(rows) // 2}")
    return rows


# ----- thresholds ---------------------------------------------------------------------------


def naming_kept(row: dict, thresholds) -> bool:
    """Would the shipped policy give this row's name (rather than "cannot identify")?"""
    if row["name"] is None:
        return False
    if row["image_familiarity"] is None:  # no index: every name is given
        return True
    region = row["region_familiarity"]
    return (row["image_familiarity"] >= thresholds.image and row["image_named_familiarity"] >= thresholds.image_named
            and region is not None and region >= thresholds.region and (row["confidence"] or 0.0) >= thresholds.naming)


def grounding_kept(row: dict, thresholds) -> bool:
    """Would the shipped policy keep this text-only mask? (Withheld only on unfamiliar images.)"""
    familiar = row.get("image_familiarity") is None or row["image_familiarity"] >= thresholds.image
    return row["masks"] > 0 and (familiar or (row["confidence"] or 0.0) >= thresholds.grounding)


def choose_thresholds(naming: Sequence[dict], segments: Sequence[dict], keep: float):
    """Thresholds from validation rows only: each signal keeps ``keep`` of the correct names
    (image among those showing the name, region, name probability) and of the validation images
    (image familiarity, for the modality question) and of the text-only masks that hit their target (Dice >= 0.5)."""
    from ..modeling.familiarity import AnswerThresholds, choose_threshold

    correct = [r for r in naming if r["system"] == "full" and r["correct"] and r["image_familiarity"] is not None
               and r["region_familiarity"] is not None]
    hits = [r for r in segments if r["system"] == "full" and r["dice"] >= 0.5 and r["confidence"] is not None]
    if not correct or not hits:
        raise ValueError("choosing thresholds needs correct names and text-only hits on the validation data")
    return AnswerThresholds(
        image=choose_threshold(np.array([r["image_familiarity"] for r in naming if r["system"] == "full" and r["image_familiarity"] is not None]), keep),
        image_named=choose_threshold(np.array([r["image_named_familiarity"] for r in correct]), keep),
        region=choose_threshold(np.array([r["region_familiarity"] for r in correct]), keep),
        naming=choose_threshold(np.array([r["confidence"] for r in correct]), keep),
        grounding=choose_threshold(np.array([r["confidence"] for r in hits]), keep),
        chosen_on={"keep_each": keep, "correct_names": len(correct), "text_only_hits": len(hits)},
    )


def choose_keep(naming: Sequence[dict], segments: Sequence[dict], combined: float,
                steps=(0.95, 0.96, 0.97, 0.98, 0.99, 0.995, 1.0)):
    """The thresholds of the smallest per-signal ``keep`` whose signals together still give at
    least ``combined`` of the correct validation names (each signal alone keeping 95 % would
    withhold more than 5 % together)."""
    correct = [r for r in naming if r["system"] == "full" and r["correct"]]
    for keep in steps:
        thresholds = choose_thresholds(naming, segments, keep)
        kept = float(np.mean([naming_kept(r, thresholds) for r in correct]))
        if kept >= combined or keep == steps[-1]:
            thresholds.chosen_on.update({"correct_names_kept_together": round(kept, 4), "target_together": combined})
            return thresholds
    raise AssertionError("unreachable")


def apply_thresholds(rows: dict, thresholds) -> dict:
    """The shipped policy's outcome from recorded signals: per-row decisions for the full system."""
    out = {k: [dict(r) for r in v] for k, v in rows.items()}
    for row in out.get("naming", []):
        if row["system"] == "full":
            row["kept"] = naming_kept(row, thresholds)
        else:
            row["kept"] = row["name"] is not None
    for key in ("phrasings", "negatives"):
        for row in out.get(key, []):
            if row["system"] == "full" and row["masks"] and not grounding_kept(row, thresholds):
                row["masks"], row["dice"] = 0, 0.0
    return out


def summarise(rows: dict) -> dict:
    """Means per system and family/dataset from decided rows (see :func:`apply_thresholds`)."""
    summary: dict = {}
    phrasing = defaultdict(list)
    for r in rows.get("phrasings", []):
        phrasing[(r["system"], r["family"])].append(r)
    summary["phrasing"] = {
        system: {family: {"n": len(v), "dice": round(float(np.mean([r["dice"] for r in v])), 4),
                          "no_mask": round(float(np.mean([r["masks"] == 0 for r in v])), 4),
                          "substituted": round(float(np.mean([r["substituted"] for r in v])), 4)}
                 for (s, family), v in sorted(phrasing.items()) if s == system}
        for system in ("full", "baseline")}
    for system, families in summary["phrasing"].items():
        held_out = {f: v for f, v in families.items() if f.startswith("segment/")}
        if held_out:
            worst = min(held_out, key=lambda f: held_out[f]["dice"])
            summary["phrasing"][system]["_worst_family"] = {"family": worst, **held_out[worst]}
    naming = defaultdict(list)
    for r in rows.get("naming", []):
        naming[(r["system"], r["source"], r["dataset"])].append(r)
    summary["naming"] = {}
    for (system, source, dataset), v in sorted(naming.items()):
        named = [r for r in v if r["kept"]]
        summary["naming"].setdefault(system, {})[f"{source}/{dataset}"] = {
            "n": len(v), "correct_given": round(float(np.mean([r["kept"] and r["correct"] for r in v])), 4),
            "wrong_given": round(float(np.mean([r["kept"] and not r["correct"] for r in v])), 4),
            "abstained": round(1 - len(named) / len(v), 4)}
    for system in ("full", "baseline"):
        pooled = defaultdict(list)
        for r in rows.get("naming", []):
            if r["system"] == system:
                pooled[r["source"]].append(r)
        for source, v in pooled.items():
            summary["naming"].setdefault(system, {})[f"{source}/all"] = {
                "n": len(v), "correct_given": round(float(np.mean([r["kept"] and r["correct"] for r in v])), 4),
                "wrong_given": round(float(np.mean([r["kept"] and not r["correct"] for r in v])), 4),
                "abstained": round(float(np.mean([not r["kept"] for r in v])), 4)}
    negatives = defaultdict(list)
    for r in rows.get("negatives", []):
        negatives[r["system"]].append(r)
    summary["negatives"] = {s: {"n": len(v), "false_mask_rate": round(float(np.mean([r["masks"] > 0 for r in v])), 4)} for s, v in negatives.items()}
    return summary


def trade_off(rows: dict, naming_val: Sequence[dict], segments_val: Sequence[dict], keeps=(0.8, 0.9, 0.95, 0.98, 1.0)) -> list[dict]:
    """For thresholds chosen on validation at each ``keep``: correct names kept in domain, wrong
    names given on the held-out datasets, text-only Dice and false masks."""
    curve = []
    for keep in keeps:
        thresholds = choose_thresholds(naming_val, segments_val, keep)
        summary = summarise(apply_thresholds(rows, thresholds))
        naming = summary["naming"].get("full", {})
        correct_id = [r for r in rows.get("naming", []) if r["system"] == "full" and r["source"] == "in-domain" and r["correct"]]
        kept = float(np.mean([naming_kept(r, thresholds) for r in correct_id])) if correct_id else None
        ood = [r for r in rows.get("naming", []) if r["system"] == "full" and r["source"] != "in-domain"]
        curve.append({"keep_each": keep, "thresholds": dataclasses.asdict(thresholds) | {"chosen_on": None},
                      "correct_names_kept_in_domain": None if kept is None else round(kept, 4),
                      "wrong_names_held_out_datasets": round(float(np.mean([naming_kept(r, thresholds) and not r["correct"] for r in ood])), 4) if ood else None,
                      "canonical_text_dice": summary["phrasing"].get("full", {}).get("canonical", {}).get("dice"),
                      "worst_family_dice": summary["phrasing"].get("full", {}).get("_worst_family", {}).get("dice"),
                      "false_mask_rate": summary["negatives"].get("full", {}).get("false_mask_rate"),
                      "in_domain": naming.get("in-domain/all")})
    return curve


def render_markdown(report: dict) -> str:
    summary = report["summary"]
    lines = ["# Open-world evaluation", "", f"Command: `{report.get('command')}`", "",
             "Research and education use only. Baseline: the same checkpoint answering the question as typed "
             "(no request reader, no familiarity index), in the same run.", "",
             "## Text-only Dice per phrasing family (held-out phrasings, never trained on)", "",
             "| family | n | MIMO + reader: Dice | no mask | substituted term | baseline: Dice | no mask | substituted term |",
             "|---|---|---|---|---|---|---|---|"]
    full, base = summary["phrasing"].get("full", {}), summary["phrasing"].get("baseline", {})
    for family in sorted(f for f in full if not f.startswith("_")):
        f, b = full[family], base.get(family, {})
        lines.append(f"| {family} | {f['n']} | {f['dice']:.3f} | {f['no_mask']:.3f} | {f['substituted']:.3f} | "
                     f"{b.get('dice', float('nan')):.3f} | {b.get('no_mask', float('nan')):.3f} | {b.get('substituted', float('nan')):.3f} |")
    for name, part in (("MIMO + reader", full), ("baseline", base)):
        worst = part.get("_worst_family")
        if worst:
            lines.append(f"\nWorst held-out family, {name}: **{worst['family']}**, Dice {worst['dice']:.3f}.")
    lines += ["", "## Naming a boxed region (\"What is this?\" and the held-out naming families)", "",
              "| source / dataset | n | MIMO + familiarity: correct given | wrong given | abstained | baseline: correct | wrong |",
              "|---|---|---|---|---|---|---|"]
    naming_full, naming_base = summary["naming"].get("full", {}), summary["naming"].get("baseline", {})
    for key in sorted(naming_full):
        f, b = naming_full[key], naming_base.get(key, {})
        lines.append(f"| {key} | {f['n']} | {f['correct_given']:.3f} | {f['wrong_given']:.3f} | {f['abstained']:.3f} | "
                     f"{b.get('correct_given', float('nan')):.3f} | {b.get('wrong_given', float('nan')):.3f} |")
    lines += ["", "## Negatives (structure absent, text only)", "", "| system | n | false-mask rate |", "|---|---|---|"]
    for system, v in summary["negatives"].items():
        lines.append(f"| {system} | {v['n']} | {v['false_mask_rate']:.3f} |")
    lines += ["", "## Modality question answered \"unknown\"", "", "| source | n | share |", "|---|---|---|"]
    for source, v in report["modality"].items():
        lines.append(f"| {source} | {v['n']} | {v['answered_unknown']:.3f} |")
    lines += ["", "## Trade-off: thresholds chosen on the validation split", "",
              "| keep each (val) | correct names kept (test) | wrong names on held-out datasets | canonical text Dice | worst family Dice | false masks |",
              "|---|---|---|---|---|---|"]
    for point in report["trade_off"]:
        lines.append(f"| {point['keep_each']} | {point['correct_names_kept_in_domain']} | {point['wrong_names_held_out_datasets']} | "
                     f"{point['canonical_text_dice']} | {point['worst_family_dice']} | {point['false_mask_rate']} |")
    lines.append("")
    return "\n".join(lines)
