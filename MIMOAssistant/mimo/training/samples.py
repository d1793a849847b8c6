"""Training and evaluation samples from a data-builder folder or from an open2d-format manifest.

Both sources become :class:`Example` objects: one image, one user turn (with the visual prompts
and the conversation before it), the answer with ``<p>term</p><SEG>`` markers and one reference
mask file per ``<SEG>``.

* A **data-builder folder** holds ``samples.jsonl`` (one JSON object per sample: ``id``,
  ``image``, ``spacing_mm``, ``modality``, ``dataset``, ``group``, ``split``, ``perspective``,
  ``prompts``, ``conversation``, ``masks``, ``targets``, ``absent``, ``answer_type``,
  ``closed_answer``, ``root``) and ``datasheet.json``, whose ``roots`` map each sample's
  ``root`` name to a folder ("out" is the folder itself). A
  multi-turn conversation gives one example per assistant turn, with the turns before it as
  history. :func:`load_folder` reads through the data builder's loader
  (``mimo.data.dataset.load_samples``) when present, else the format directly.
* An **open2d manifest** (``manifest.jsonl``: ``id``, ``dataset``, ``modality``, ``image``,
  ``masks`` [{``target``, ``file``}], ``findings``) gets its samples built here: per mask,
  text-guided segmentation ("Segment the X."), the same with a box around the mask, naming
  ("What is this?" with a box); per image a negative (a structure that cannot be in such an
  image: the data builder's catalogue of certain absences when known, else a target of another
  modality; or the dataset's own target where the findings say the image is normal) and
  closed questions from the findings. The manifest has no splits: :func:`manifest_split` assigns one from a hash of
  the id (80 % train, 10 % val, 10 % test), the same on every machine.

Nothing here needs torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..backend import Message, SliceImage
from ..errors import MimoError
from ..prompts import BoxPrompt, Prompt, prompt_from_dict, prompt_to_dict
from . import phrasings

SEG_TOKEN = "<SEG>"
SPLITS = ("train", "val", "test")
#: Structures of a microscopic scale: never offered as a negative for another microscopy image.
_CELL_TARGETS = {"cell nuclei", "cell membranes"}
_CELL_MODALITIES = ("microscopy", "histopathology")
_SIDE_WORDS = re.compile(r"\b(left|right|links|rechts|gauche|droite|sinistra|destra|izquierda|derecha)\b", re.IGNORECASE)


class DataError(MimoError):
    """Training or evaluation data is missing or malformed."""


@dataclass
class Example:
    """One question and its reference answer on one image."""

    id: str
    image: str
    """Absolute path of the image file."""
    dataset: str
    modality: str
    perspective: str
    question: str
    answer: str | None
    prompts: list[Prompt] = field(default_factory=list)
    history: list[Message] = field(default_factory=list)
    mask_files: list[str] = field(default_factory=list)
    """Absolute paths, one per ``<SEG>`` of the answer, in order."""
    targets: list[str] = field(default_factory=list)
    """Structures the answer grounds (or, for manifest-built negatives, the one asked about)."""
    absent: list[str] = field(default_factory=list)
    """Structures a negative sample asks about that are not in the image."""
    spacing_mm: tuple[float, float] = (1.0, 1.0)
    calibrated: bool = True
    split: str = "train"
    group: str | None = None
    answer_type: str = "open"
    closed_answer: str | None = None
    question_type: str | None = None
    """The kind of question (data builder's ``question_type``; a phrasing kind for manifest samples)."""
    kind: str | None = None
    """How to re-phrase the sample (manifest-built samples): a :func:`phrasings.phrase` kind."""
    value: str | None = None
    """The value a closed question asks for (finding, yes/no)."""

    @property
    def seg_count(self) -> int:
        return (self.answer or "").count(SEG_TOKEN)

    @property
    def has_laterality(self) -> bool:
        """True when a target or any text names a side: such images are never mirrored."""
        from ..terminology import Terminology

        texts = [self.question, self.answer or "", *(m.text for m in self.history), *self.targets, *self.absent]
        if any(_SIDE_WORDS.search(text) for text in texts):
            return True
        terminology = Terminology.default()
        for target in [*self.targets, *self.absent]:
            entry = terminology.find(target)
            if entry is not None and entry.laterality in ("left", "right"):
                return True
        return False

    def load_image(self) -> SliceImage:
        return SliceImage(read_rgb(self.image), tuple(self.spacing_mm), self.modality, calibrated=self.calibrated)

    def load_masks(self) -> list[np.ndarray]:
        return [read_mask(path) for path in self.mask_files]

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["prompts"] = [prompt_to_dict(p) for p in self.prompts]
        data["history"] = [{"role": m.role, "text": m.text} for m in self.history]
        return data


# ----- files ---------------------------------------------------------------------------------


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file as uint8 (rows, cols, 3): PNG/JPEG/TIFF through Pillow, or a .npy array."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image {path} does not exist")
    if path.suffix.lower() == ".npy":
        array = np.load(path)
        if array.dtype != np.uint8:
            low, high = float(array.min()), float(array.max())
            array = ((array - low) / max(high - low, 1e-8) * 255).round().astype(np.uint8)
    else:
        from PIL import Image

        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"))
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    return np.ascontiguousarray(array[..., :3])


def read_mask(path: str | Path) -> np.ndarray:
    """A mask file (PNG 0/255 or .npy) as bool (rows, cols)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"mask {path} does not exist")
    if path.suffix.lower() == ".npy":
        mask = np.load(path)
    else:
        from PIL import Image

        with Image.open(path) as image:
            mask = np.asarray(image)
    if mask.ndim == 3:
        mask = mask[..., 0]
    return mask > (127 if mask.dtype == np.uint8 else 0)


def image_size(path: str | Path) -> tuple[int, int]:
    """(rows, cols) of an image file without decoding its pixels."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        return tuple(np.load(path, mmap_mode="r").shape[:2])
    from PIL import Image

    with Image.open(path) as image:
        return image.height, image.width


def _stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def manifest_split(record_id: str) -> str:
    """Deterministic 80/10/10 split of a manifest record by its id."""
    bucket = _stable_hash(record_id) % 10
    return "test" if bucket == 0 else "val" if bucket == 1 else "train"


# ----- data-builder folders ------------------------------------------------------------------


def _folder_roots(folder: Path) -> dict[str, Path]:
    """Root name -> folder, from ``datasheet.json`` (``roots``; an older single ``root``); "out" is the folder."""
    roots = {"out": folder}
    sheet = folder / "datasheet.json"
    if sheet.is_file():
        try:
            data = json.loads(sheet.read_text())
        except json.JSONDecodeError as error:
            raise DataError(f"{sheet} is not valid JSON: {error}") from error
        named = dict(data.get("roots") or {})
        if data.get("root"):
            named.setdefault("out", data["root"])
        for name, location in named.items():
            location = Path(str(location)).expanduser()
            roots[name] = location if location.is_absolute() else folder / location
    return roots


def _resolve(root: Path, value: str) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (root / path).resolve())


def _folder_examples(record: dict, root: Path, where: str) -> list[Example]:
    try:
        conversation = record["conversation"]
        image = _resolve(root, record["image"])
        prompts = [prompt_from_dict(p) for p in record.get("prompts") or []]
        masks = [_resolve(root, m) for m in record.get("masks") or []]
    except (KeyError, TypeError) as error:
        raise DataError(f"{where}: malformed sample ({error!r} missing or wrong)") from error
    except MimoError as error:
        raise DataError(f"{where}: {error}") from error
    spacing = tuple(float(v) for v in record.get("spacing_mm") or (1.0, 1.0))
    common = {
        "image": image,
        "dataset": str(record.get("dataset", "unknown")),
        "modality": str(record.get("modality", "OT")),
        "perspective": str(record.get("perspective", "text_seg")),
        "prompts": prompts,
        "targets": [str(t) for t in record.get("targets") or []],
        "absent": [str(t) for t in record.get("absent") or []],
        "spacing_mm": spacing,
        "calibrated": bool(record.get("calibrated", "spacing_mm" in record)),
        "split": str(record.get("split", "train")),
        "group": record.get("group"),
        "answer_type": str(record.get("answer_type", "open")),
        "closed_answer": None if record.get("closed_answer") is None else str(record.get("closed_answer")),
        "question_type": record.get("question_type"),
    }
    examples, used = [], 0
    turns = [(str(t.get("role")), str(t.get("text", ""))) for t in conversation]
    assistant_turns = sum(1 for role, _ in turns if role == "assistant")
    for index, (role, text) in enumerate(turns):
        if role != "assistant":
            continue
        question = next((t for r, t in reversed(turns[:index]) if r == "user"), "")
        before = [Message(r, t) for r, t in turns[:index]]
        if before and before[-1].role == "user":
            before = before[:-1]
        count = text.count(SEG_TOKEN)
        turn_masks = masks[used : used + count]
        used += count
        if len(turn_masks) != count:
            raise DataError(f"{where}: the conversation has at least {used} <SEG> but the sample lists {len(masks)} masks")
        suffix = f"#{len(examples)}" if assistant_turns > 1 else ""
        examples.append(Example(id=str(record.get("id", where)) + suffix, question=question, answer=text, history=list(before),
                                mask_files=turn_masks, **common))
    if used != len(masks):
        raise DataError(f"{where}: the conversation has {used} <SEG> but the sample lists {len(masks)} masks")
    return examples


def _builder_records(folder: Path, split: str | None) -> list[tuple[dict, Path, str]] | None:
    """(record, root folder, where) through the data builder's own loader, when it is installed."""
    try:
        from ..data.dataset import load_samples
    except ImportError:
        return None
    samples = load_samples(folder, None if split in (None, "all") else split)
    return [(sample.data, Path(sample.root), f"{folder}/samples.jsonl ({sample.id})") for sample in samples]


def load_folder(folder: str | Path, split: str | None = None) -> list[Example]:
    """Examples of a data-builder folder (``split=None`` or ``"all"``: every split).

    Reads through :func:`mimo.data.dataset.load_samples` when that package is present, else
    through the documented format directly (the same result).
    """
    folder = Path(folder)
    path = folder / "samples.jsonl"
    if not path.is_file():
        raise DataError(f"{folder} is not a data-builder folder: samples.jsonl is missing")
    try:
        records = _builder_records(folder, split) if (folder / "datasheet.json").is_file() else None
    except MimoError as error:
        raise DataError(str(error)) from error
    if records is None:
        roots = _folder_roots(folder)
        records = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{number} is not valid JSON: {error}") from error
            if split not in (None, "all") and record.get("split") != split:
                continue
            root = roots.get(record.get("root", "out"))
            if root is None:
                raise DataError(f"{path}:{number}: unknown root {record.get('root')!r} (datasheet roots: {sorted(roots)})")
            records.append((record, root, f"{path}:{number}"))
    examples = []
    for record, root, where in records:
        examples.extend(_folder_examples(record, root, where))
    return examples


# ----- open2d manifests ----------------------------------------------------------------------


#: Pixels a reference box prompt extends beyond its mask's bounding box on every side: the box
#: prompts built from masks for training (before jitter) and the evaluation's comparisons.
REFERENCE_BOX_MARGIN_PX = 3.0


def box_around(mask: np.ndarray, margin: float = REFERENCE_BOX_MARGIN_PX) -> BoxPrompt:
    rows, cols = np.nonzero(mask)
    height, width = mask.shape
    return BoxPrompt(
        float(max(cols.min() - margin, 0)), float(max(rows.min() - margin, 0)),
        float(min(cols.max() + margin, width - 1)), float(min(rows.max() + margin, height - 1)),
    )


def read_manifest(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest {path} does not exist")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{number} is not valid JSON: {error}") from error
    return records


def _negative_target(record: dict, targets_by_modality: dict[str, set[str]], normal: bool) -> str | None:
    """A structure certainly absent from the image, or None."""
    own = {m["target"] for m in record.get("masks") or []}
    if normal:
        dataset_targets = sorted(targets_by_modality.get(("dataset", record["dataset"]), set()) - own)
        if dataset_targets:
            return dataset_targets[_stable_hash(record["id"]) % len(dataset_targets)]
    certain = _certain_absences(record)
    if certain:
        return certain[_stable_hash(record["id"] + "/negative") % len(certain)]
    modality = record.get("modality", "")
    excluded = set(targets_by_modality.get(modality, set())) | own
    if any(word in modality.lower() for word in _CELL_MODALITIES) or "microscopy" in modality.lower():
        excluded |= _CELL_TARGETS
    candidates = sorted({t for key, targets in targets_by_modality.items() if isinstance(key, str) for t in targets} - excluded)
    if not candidates:
        return None
    return candidates[_stable_hash(record["id"] + "/negative") % len(candidates)]


def _certain_absences(record: dict) -> list[str]:
    """Structures the data builder's catalogue says can never be in this kind of image."""
    try:
        from ..data import catalog
    except ImportError:
        return []
    try:
        modality = catalog.normalise_modality(str(record.get("modality", "")))
        targets = {m["target"] for m in record.get("masks") or []}
        domain = catalog.dataset_domain(record["dataset"], modality, targets)
        return sorted(set(catalog.DOMAINS[domain].negatives) - targets) if domain in catalog.DOMAINS else []
    except (AttributeError, KeyError, TypeError):  # the catalogue changed shape: use the fallback
        return []


def _is_normal(findings: dict) -> bool:
    return any(str(v).lower() == "normal" for v in (findings or {}).values())


def manifest_examples(
    records: Sequence[dict], root: Path, split: str | None, box_margin: float = REFERENCE_BOX_MARGIN_PX, vocabulary: Sequence[dict] | None = None
) -> list[Example]:
    """Samples of every perspective built from manifest records (see the module docstring).

    ``vocabulary`` (default ``records``) are the records whose targets negatives are drawn from.
    """
    targets_by_modality: dict = defaultdict(set)
    for record in vocabulary if vocabulary is not None else records:
        for mask in record.get("masks") or []:
            targets_by_modality[record.get("modality", "")].add(mask["target"])
            targets_by_modality[("dataset", record["dataset"])].add(mask["target"])
    examples = []
    for record in records:
        record_split = record.get("split") or manifest_split(record["id"])
        if split not in (None, "all") and record_split != split:
            continue
        image = str((root / record["image"]).resolve())
        modality = record.get("modality", "OT")
        common = {"image": image, "dataset": record["dataset"], "modality": modality, "calibrated": False, "split": record_split,
                  "group": record.get("group")}
        masks = [m for m in record.get("masks") or [] if m.get("fg_frac", 1.0) > 0]
        for index, mask in enumerate(masks):
            target, file = mask["target"], str((root / mask["file"]).resolve())
            for kind in ("text_seg", "box_seg", "prompt_perception"):
                question, answer = phrasings.phrase(kind, [target], modality)
                prompts = [] if kind == "text_seg" else [box_around(read_mask(file), box_margin)]
                examples.append(Example(id=f"{record['id']}/{kind}/{index}", perspective=kind, question=question, answer=answer,
                                        prompts=prompts, mask_files=[file], targets=[target], kind=kind, **common))
            question, answer = phrasings.phrase("presence", [target], modality, value="yes")
            examples.append(Example(id=f"{record['id']}/presence/{index}", perspective="vqa", question=question, answer=answer,
                                    targets=[target], answer_type="closed", closed_answer="yes", kind="presence", value="yes",
                                    question_type="presence", **common))
        if len(masks) > 1:
            targets = [m["target"] for m in masks]
            question, answer = phrasings.phrase("text_seg", targets, modality)
            examples.append(Example(id=f"{record['id']}/text_seg/all", perspective="text_seg", question=question, answer=answer,
                                    mask_files=[str((root / m["file"]).resolve()) for m in masks], targets=targets, kind="text_seg", **common))
        normal = _is_normal(record.get("findings"))
        negative = _negative_target(record, targets_by_modality, normal)
        if negative:
            question, answer = phrasings.phrase("negative", [negative], modality)
            examples.append(Example(id=f"{record['id']}/negative", perspective="negative", question=question, answer=answer,
                                    targets=[negative], absent=[negative], kind="negative", **common))
            question, answer = phrasings.phrase("presence", [negative], modality, value="no")
            examples.append(Example(id=f"{record['id']}/presence/absent", perspective="vqa", question=question, answer=answer,
                                    targets=[negative], answer_type="closed", closed_answer="no", kind="presence", value="no",
                                    question_type="presence", **common))
        for key, value in sorted((record.get("findings") or {}).items()):
            if key in phrasings.FINDING_QUESTIONS:
                question, answer = phrasings.phrase(f"finding:{key}", [], modality, value=str(value))
                examples.append(Example(id=f"{record['id']}/{key}", perspective="vqa", question=question, answer=answer,
                                        answer_type="closed", closed_answer=str(value).lower(), kind=f"finding:{key}", value=str(value),
                                        question_type=key, **common))
    return examples


# ----- selection -----------------------------------------------------------------------------


def _kept_images(paths_by_dataset: Mapping[str, Iterable[str]], limit: int | None, seed: int, prefer,
                 overrides: Mapping[str, int] | None) -> set[str]:
    """At most ``limit`` image paths per dataset (``overrides``: other caps for named datasets),
    a seeded, stable choice; paths for which ``prefer(path)`` is true first."""
    kept = set()
    for dataset, paths in paths_by_dataset.items():
        ordered = sorted(paths, key=lambda p: (prefer is not None and not prefer(p), _stable_hash(f"{seed}/{p}")))
        kept.update(ordered[:(overrides or {}).get(dataset, limit)])
    return kept


def cap_images_per_dataset(examples: Iterable[Example], limit: int | None, seed: int = 0, prefer=None,
                           overrides: Mapping[str, int] | None = None) -> list[Example]:
    """Keep the examples of at most ``limit`` images per dataset (``overrides``: other caps for
    named datasets), a seeded, stable choice; images for which ``prefer(path)`` is true first,
    e.g. those already in the feature cache."""
    examples = list(examples)
    if limit is None and not overrides:
        return examples
    images: dict[str, set[str]] = defaultdict(set)
    for example in examples:
        images[example.dataset].add(example.image)
    kept = _kept_images(images, limit, seed, prefer, overrides)
    return [e for e in examples if e.image in kept]


def cap_per_key(examples: Sequence[Example], key, limit: int | None, seed: int = 0) -> list[Example]:
    if limit is None:
        return list(examples)
    groups: dict[str, list[Example]] = defaultdict(list)
    for example in examples:
        groups[key(example)].append(example)
    kept = set()
    for members in groups.values():
        kept.update(id(e) for e in sorted(members, key=lambda e: _stable_hash(f"{seed}/{e.id}"))[:limit])
    return [e for e in examples if id(e) in kept]


def is_manifest(path: Path) -> bool:
    return path.is_file() and path.suffix == ".jsonl" and path.name != "samples.jsonl"


def _capped_manifest_examples(path: Path, split, datasets, limit, seed, prefer=None, overrides=None) -> list[Example]:
    """Filter and cap the records before building samples (building reads every mask)."""
    records = read_manifest(path)
    if split not in (None, "all"):
        records = [r for r in records if (r.get("split") or manifest_split(r["id"])) == split]
    if datasets:
        records = [r for r in records if r.get("dataset") in set(datasets)]
    capped = limit is not None or bool(overrides)
    if capped:
        image_of = {r["id"]: str((path.parent / r["image"]).resolve()) for r in records}
        images: dict[str, set[str]] = defaultdict(set)
        for record in records:
            images[record["dataset"]].add(image_of[record["id"]])
        kept = _kept_images(images, limit, seed, prefer, overrides)
        records = [r for r in records if image_of[r["id"]] in kept]
    # Negatives are chosen from every target of the manifest, not only the kept records'.
    return manifest_examples(records, path.parent, None, vocabulary=read_manifest(path) if capped or datasets or split else None)


def load_examples(
    data: str | Path,
    split: str | None,
    datasets: Sequence[str] | None = None,
    max_images_per_dataset: int | None = None,
    seed: int = 0,
    prefer=None,
    dataset_max_images: Mapping[str, int] | None = None,
) -> list[Example]:
    """Examples of a data-builder folder or a manifest, filtered and capped.

    ``prefer(image_path) -> bool``: images kept first under the cap (already encoded ones).
    ``dataset_max_images``: caps for named datasets, in place of ``max_images_per_dataset``.
    """
    path = Path(data)
    if not path.exists():
        raise DataError(f"{path} does not exist (a data-builder folder or an open2d manifest.jsonl was expected)")
    if path.is_dir() and (path / "samples.jsonl").is_file():
        examples = load_folder(path, split)
    elif path.is_dir() and (path / "manifest.jsonl").is_file():
        examples = _capped_manifest_examples(path / "manifest.jsonl", split, datasets, max_images_per_dataset, seed, prefer,
                                             dataset_max_images)
    elif path.is_file() and path.name == "samples.jsonl":
        examples = load_folder(path.parent, split)
    elif is_manifest(path):
        examples = _capped_manifest_examples(path, split, datasets, max_images_per_dataset, seed, prefer, dataset_max_images)
    else:
        raise DataError(f"{path} is neither a data-builder folder (samples.jsonl) nor a manifest (.jsonl)")
    if datasets:
        examples = [e for e in examples if e.dataset in set(datasets)]
    return cap_images_per_dataset(examples, max_images_per_dataset, seed, prefer, dataset_max_images)


def box_seg_variants(examples: Sequence[Example], box_margin: float = REFERENCE_BOX_MARGIN_PX) -> list[Example]:
    """A box-prompted "Segment the X." turn for every single-target text_seg example.

    Data-builder folders have no box_seg perspective (a box with a naming question is
    prompt_perception); without it a model never sees a box beside a segmentation request, and
    fine-tuning the decoder on text queries alone costs box-prompted Dice. The box is the
    mask's bounding box plus ``box_margin`` pixels (training jitters it).
    """
    variants = []
    for example in examples:
        if example.perspective != "text_seg" or len(example.mask_files) != 1 or example.kind is not None:
            continue
        mask = read_mask(example.mask_files[0])
        if not mask.any():
            continue
        question, answer = phrasings.phrase("box_seg", example.targets, example.modality)
        variants.append(dataclasses.replace(
            example, id=f"{example.id}/box", perspective="box_seg", question=question, answer=answer,
            prompts=[box_around(mask, box_margin)], kind="box_seg", history=[],
        ))
    return variants


def rephrased(example: Example, rng: random.Random) -> Example:
    """The same sample in another phrasing (manifest-built samples only)."""
    if example.kind is None:
        return example
    question, answer = phrasings.phrase(example.kind, example.targets, example.modality, rng, example.value)
    if example.prompts and "<region>" in question and len(example.prompts) != 1:
        return example
    return dataclasses.replace(example, question=question, answer=answer)
