"""``mimo-assistant data build``: segmentation data -> instruction data (samples.jsonl + datasheet).

Inputs are open2d-style manifests (one JSON record per image, paths relative to the manifest's
folder) and folders of labelled volumes (:mod:`mimo.data.volumes`). Nothing from a manifest is
copied: samples name the source image and masks by path relative to the manifest's folder and
a ``root`` key that the datasheet maps to that folder. Volume slices are written into the
output folder (``root`` "out": the output folder itself) as PNG, one image per slice and CT
window plus one mask PNG per structure used.

The output is written to a temporary sibling folder and moved into place at the end, so a
failed build leaves no half-written output. Same inputs and seed -> byte-identical
``samples.jsonl``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import MimoError
from . import catalog, grouping
from .generate import Target, Unit, generate, unit_rng
from .knowledge import Knowledge

FORMAT_VERSION = 1
OUT_ROOT = "out"


class BuildError(MimoError):
    """A build that cannot start or finish (bad input, output folder in the way)."""


@dataclass
class BuildOptions:
    manifests: list[Path] = field(default_factory=list)
    volumes: list[Path] = field(default_factory=list)
    out: Path = Path("mimo-data")
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    max_per_dataset: int | None = None
    slices_per_structure: int = 2
    overwrite: bool = False
    workers: int = 1
    near_duplicates: bool = True


@dataclass
class Record:
    uid: str
    root_name: str
    root: Path
    id: str
    local_id: str
    dataset: str
    modality: str
    image: str
    masks: list[tuple[str, str]]  # (canonical target name, mask path relative to root)
    findings: dict
    license: str
    source: str
    group: str = ""
    split: str = ""
    label_conflict: bool = False


# ---------------------------------------------------------------- checks
def check_options(options: BuildOptions) -> None:
    if not options.manifests and not options.volumes:
        raise BuildError("nothing to build: give at least one --manifest or --volumes")
    for path in options.manifests:
        if not Path(path).is_file():
            raise BuildError(f"manifest not found: {path}")
    for path in options.volumes:
        if not Path(path).is_dir():
            raise BuildError(f"volumes folder not found: {path}")
    for name in ("val_fraction", "test_fraction"):
        value = getattr(options, name)
        if not 0.0 <= value < 1.0:
            raise BuildError(f"--{name.replace('_', '-')} must be in [0, 1), got {value}")
    if options.val_fraction + options.test_fraction >= 1.0:
        raise BuildError("--val-fraction plus --test-fraction must leave something for training (sum < 1)")
    if options.max_per_dataset is not None and options.max_per_dataset < 1:
        raise BuildError(f"--max-per-dataset must be at least 1, got {options.max_per_dataset}")
    if options.slices_per_structure < 1:
        raise BuildError(f"--slices-per-structure must be at least 1, got {options.slices_per_structure}")
    out = Path(options.out)
    if out.exists():
        if not out.is_dir():
            raise BuildError(f"output {out} exists and is not a folder")
        if any(out.iterdir()):
            if not options.overwrite:
                raise BuildError(f"output folder {out} exists and is not empty; use --overwrite to replace it")
            if not (out / "datasheet.json").is_file():
                raise BuildError(f"output folder {out} is not empty and is not a previous data build (no datasheet.json); "
                                 "refusing to delete it even with --overwrite")


# ---------------------------------------------------------------- manifests
def _root_names(manifests: list[Path]) -> list[str]:
    names, used = [], Counter()
    for path in manifests:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(path).resolve().parent.name) or "root"
        used[base] += 1
        names.append(base if used[base] == 1 else f"{base}_{used[base]}")
    if OUT_ROOT in names:
        names = [n if n != OUT_ROOT else f"{OUT_ROOT}_manifest" for n in names]
    return names


def read_manifest(path: Path, root_name: str, knowledge: Knowledge, stats: dict) -> list[Record]:
    """Records of one manifest; records whose files are missing are skipped and counted."""
    root = Path(path).resolve().parent
    records = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            record_id, dataset, image = str(data["id"]), str(data["dataset"]), str(data["image"])
            masks = [(str(m["target"]), str(m["file"])) for m in data.get("masks") or []]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            stats["_manifest"]["malformed_record"] += 1
            print(f"warning: {path}:{number}: malformed record skipped ({error})", file=sys.stderr)
            continue
        counts = stats[dataset]
        counts["records"] += 1
        if not (root / image).is_file():
            counts["skipped_missing_image"] += 1
            continue
        if any(not (root / file).is_file() for _, file in masks):
            counts["skipped_missing_mask"] += 1
            continue
        canonical = []
        for target, file in masks:
            entry = knowledge.get(target)
            canonical.append((entry.name if entry else target, file))
        local_id = record_id.split("/", 1)[1] if record_id.startswith(dataset + "/") else record_id
        records.append(Record(
            uid=f"{root_name}:{record_id}", root_name=root_name, root=root, id=record_id, local_id=local_id, dataset=dataset,
            modality=catalog.normalise_modality(str(data.get("modality", ""))), image=image, masks=canonical,
            findings=dict(data.get("findings") or {}), license=str(data.get("license", "unknown")), source=str(data.get("source", "")),
        ))
    return records


def _stratum(record: Record) -> str:
    return json.dumps([sorted(record.findings.items()), sorted(t for t, _ in record.masks)], sort_keys=True)


def select(records: list[Record], limit: int | None, seed: int) -> list[Record]:
    """Up to ``limit`` records, round robin over strata (findings x targets) so that small
    subsets still hold every kind of record (benign, malignant and normal BUSI, ...)."""
    if limit is None or len(records) <= limit:
        return records
    strata: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        strata[_stratum(record)].append(record)
    for key, members in strata.items():
        members.sort(key=lambda r: hashlib.sha256(f"{seed}\x1f{r.uid}".encode()).hexdigest())
    chosen, depth = [], 0
    keys = sorted(strata)
    while len(chosen) < limit:
        for key in keys:
            if depth < len(strata[key]) and len(chosen) < limit:
                chosen.append(strata[key][depth])
        depth += 1
    return sorted(chosen, key=lambda r: r.id)


def assign_groups_and_splits(records: list[Record], options: BuildOptions, stats: dict) -> None:
    by_dataset: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        by_dataset[record.dataset].append(record)
    for dataset, members in by_dataset.items():
        local_ids = [r.local_id for r in members]
        thumbnails = None
        if options.near_duplicates:
            thumbnails = np.stack([grouping.thumbnail(r.root / r.image) for r in members])
        groups, links = grouping.group_records(dataset, local_ids, thumbnails)
        stats[dataset]["near_duplicate_links"] += links
        for record in members:
            record.group = f"{dataset}:{groups[record.local_id]}"
        # image-level labels that disagree inside one group (the same image stored twice with
        # different labels, as in BUSI) are not used for label questions
        labels: dict[tuple[str, str], set[str]] = defaultdict(set)
        for record in members:
            for key in ("pathology", "diagnosis"):
                if key in record.findings:
                    labels[(record.group, key)].add(str(record.findings[key]))
        conflicted = {group for (group, _), values in labels.items() if len(values) > 1}
        for record in members:
            record.label_conflict = record.group in conflicted
        stats[dataset]["label_conflict_images"] += sum(r.label_conflict for r in members)
        sizes = Counter(r.group for r in members)
        splits = grouping.assign_splits(sizes, dataset, options.seed, options.val_fraction, options.test_fraction)
        for record in members:
            record.split = splits[record.group]


# ---------------------------------------------------------------- 2D units
def _read_mask(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        array = np.asarray(image)
    if array.ndim == 3:
        array = array[..., 0]
    return array > 127


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        width, height = image.size
    return height, width


def record_unit(record: Record, dataset_targets: set[str], knowledge: Knowledge) -> tuple[Unit | None, Counter]:
    """The unit for one 2D record (None if its files cannot be used) and what was dropped."""
    counts: Counter = Counter()
    try:
        shape = _image_size(record.root / record.image)
    except OSError:
        counts["skipped_unreadable_image"] += 1
        return None, counts
    targets: dict[str, Target] = {}
    unknown: set[str] = set()
    for name, file in record.masks:
        try:
            mask = _read_mask(record.root / file)
        except OSError:
            counts["skipped_unreadable_mask"] += 1
            return None, counts
        if mask.shape != shape:
            counts["skipped_mask_size_mismatch"] += 1
            return None, counts
        if not mask.any():
            counts["empty_masks"] += 1
            unknown.add(name)
            continue
        if name in targets:  # two masks of one target: merge them
            merged = targets[name].mask | mask
            counts["merged_masks"] += 1
            targets[name] = Target(name, targets[name].mask_path, merged)
        else:
            targets[name] = Target(name, file, mask)
    domain_name = catalog.dataset_domain(record.dataset, record.modality, dataset_targets)
    domain = catalog.domain_info(domain_name, record.modality)
    absent: dict[str, str] = {}
    lesions = {n for n in dataset_targets if (knowledge.get(n) and knowledge.get(n).is_lesion)}
    if record.findings.get("pathology") == "normal" and not record.masks:
        absent.update({n: "label" for n in lesions})
    if record.findings.get("diagnosis") == "normal":
        absent.update({n: "label" for n in lesions if n not in targets})
    for name in domain.negatives:
        if name not in targets and name not in dataset_targets and name in knowledge:
            absent.setdefault(name, "domain")
    for name in list(absent):
        if name in targets or name in unknown:
            del absent[name]
    unit = Unit(
        uid=record.uid, dataset=record.dataset, modality=record.modality, domain=domain, root=record.root_name,
        image=record.image, shape=shape, spacing_mm=(1.0, 1.0), calibrated=False, group=record.group, split=record.split,
        targets=targets, focus=list(targets), absent=absent, findings=record.findings, label_conflict=record.label_conflict,
    )
    return unit, counts


def _record_worker(args) -> tuple[str, list[dict], Counter]:
    record, dataset_targets, seed = args
    knowledge = Knowledge.default()
    unit, counts = record_unit(record, dataset_targets, knowledge)
    if unit is None:
        return record.dataset, [], counts
    lesions = {n for n in dataset_targets if knowledge.get(n) and knowledge.get(n).is_lesion}
    return record.dataset, generate(unit, knowledge, seed, lesions), counts


# ---------------------------------------------------------------- volume units
def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _save_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    if array.dtype == bool:
        Image.fromarray(array.astype(np.uint8) * 255, mode="L").save(path, optimize=False)
    elif array.ndim == 3 and np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 0], array[..., 2]):
        Image.fromarray(np.ascontiguousarray(array[..., 0]), mode="L").save(path, optimize=False)
    else:
        Image.fromarray(np.ascontiguousarray(array), mode="RGB").save(path, optimize=False)


def volume_samples(options: BuildOptions, knowledge: Knowledge, work: Path, stats: dict, licences: dict, log) -> list[dict]:
    from . import volumes as V

    specs = list(V.iter_specs([Path(p) for p in options.volumes]))
    by_dataset: dict[str, list] = defaultdict(list)
    for spec in specs:
        by_dataset[spec.dataset].append(spec)
    samples: list[dict] = []
    axis_order = {axis: n for n, axis in enumerate(V.AXES)}
    for dataset in sorted(by_dataset):
        loaded, chosen = [], []
        for spec in sorted(by_dataset[dataset], key=lambda s: s.volume_id):
            try:
                volume = V.load(spec, knowledge)
            except (MimoError, OSError, ValueError) as error:
                stats[dataset]["skipped_volumes"] += 1
                print(f"warning: volume {spec.uid} skipped: {error}", file=sys.stderr)
                continue
            stats[dataset]["volumes"] += 1
            licences.setdefault(dataset, {"license": set(), "source": set()})
            licences[dataset]["license"].add(spec.license)
            licences[dataset]["source"].add(spec.source)
            loaded.append(volume)
            picks = V.sample_slices(volume, options.slices_per_structure, unit_rng(options.seed, spec.uid))
            chosen.extend((volume, axis, index, names) for (axis, index), names in picks.items())
        if options.max_per_dataset is not None and len(chosen) > options.max_per_dataset:
            rng = unit_rng(options.seed, f"volumes:{dataset}")
            keep = sorted(rng.choice(len(chosen), size=options.max_per_dataset, replace=False))
            chosen = [chosen[i] for i in keep]
        chosen.sort(key=lambda c: (c[0].spec.volume_id, axis_order[c[1]], c[2]))
        sizes = Counter(c[0].spec.uid for c in chosen)
        splits = grouping.assign_splits(sizes, dataset, options.seed, options.val_fraction, options.test_fraction)
        for volume, axis, index, names in chosen:
            spec = volume.spec
            windows = defaultdict(list)
            for name in names:
                windows[V.ct_window(name) if spec.modality == "CT" else None].append(name)
            folder = Path("volumes") / dataset / spec.volume_id
            written: set[str] = set()
            for window in sorted(windows, key=lambda w: w or ""):
                piece = V.extract(volume, axis, index, window)
                stem = f"{axis}_{index:03d}" + (f"_{window}" if window else "")
                image_rel = (folder / f"{stem}.png").as_posix()
                _save_png(piece.pixels, work / image_rel)
                targets = {}
                for name, mask in piece.masks.items():
                    mask_rel = (folder / "masks" / f"{axis}_{index:03d}_{_slug(name)}.png").as_posix()
                    targets[name] = Target(name, mask_rel, mask)
                absent = {name: "slice" for name in piece.absent}
                modality = "CT" if spec.modality == "CT" else "MRI"
                plane = axis
                a_mod = ("an " if plane[0] in "aeiou" else "a ") + f"{plane} {'CT' if modality == 'CT' else 'MR'} slice"
                domain = catalog.domain_info(None, modality)
                uid = f"{spec.uid}/{stem}"
                unit = Unit(
                    uid=uid, dataset=dataset, modality=modality, domain=domain, root=OUT_ROOT, image=image_rel,
                    shape=piece.pixels.shape[:2], spacing_mm=piece.spacing_mm, calibrated=True, group=f"{dataset}:{spec.volume_id}",
                    split=splits[spec.uid], targets=targets, focus=[n for n in windows[window] if n in targets], absent=absent,
                    volume={"volume": spec.uid, "axis": axis, "index": int(index), "window": window},
                    img="slice", a_mod=a_mod,
                )
                unit_samples = generate(unit, knowledge, options.seed)
                for sample in unit_samples:
                    for name, rel in zip(sample["targets"], sample["masks"]):
                        if rel not in written:
                            _save_png(targets[name].mask, work / rel)
                            written.add(rel)
                samples.extend(unit_samples)
                stats[dataset]["slice_images"] += 1
        log(f"volumes {dataset}: {len(loaded)} volumes, {len(chosen)} slices")
    return samples


# ---------------------------------------------------------------- datasheet
def _count(samples: list[dict], key: Callable[[dict], object]) -> dict:
    counter: Counter = Counter()
    for sample in samples:
        value = key(sample)
        for item in value if isinstance(value, list) else [value]:
            counter[str(item)] += 1
    return dict(sorted(counter.items()))


def _nested(samples: list[dict], outer: str, inner: str) -> dict:
    table: dict[str, Counter] = defaultdict(Counter)
    for sample in samples:
        table[str(sample[outer])][str(sample[inner])] += 1
    return {k: dict(sorted(v.items())) for k, v in sorted(table.items())}


def datasheet(samples: list[dict], options: BuildOptions, roots: dict, stats: dict, licences: dict, elapsed: float,
              manifests: list[dict]) -> dict:
    images: dict[str, dict[str, set]] = defaultdict(lambda: defaultdict(set))
    groups: dict[str, dict[str, set]] = defaultdict(lambda: defaultdict(set))
    for sample in samples:
        images[sample["dataset"]][sample["split"]].add((sample["root"], sample["image"]))
        groups[sample["dataset"]][sample["split"]].add(sample["group"])
    return {
        "format": "mimo-instruction-data",
        "version": FORMAT_VERSION,
        "research_use_only": ("Built from public research datasets with mixed, mostly research-only licences (below). Anything "
                              "trained on it is a research/demo artifact and must say so. Not for clinical use."),
        "samples": len(samples),
        "seed": options.seed,
        "options": {
            "val_fraction": options.val_fraction, "test_fraction": options.test_fraction,
            "max_per_dataset": options.max_per_dataset, "slices_per_structure": options.slices_per_structure,
            "near_duplicates": options.near_duplicates,
        },
        "inputs": {"manifests": manifests, "volumes": [str(Path(p).resolve()) for p in options.volumes]},
        "roots": roots,
        "counts": {
            "perspective": _count(samples, lambda s: s["perspective"]),
            "split": _count(samples, lambda s: s["split"]),
            "modality": _count(samples, lambda s: s["modality"]),
            "dataset": _count(samples, lambda s: s["dataset"]),
            "target": _count(samples, lambda s: s["targets"]),
            "absent_target": _count(samples, lambda s: s["absent"]),
            "question_type": _count(samples, lambda s: f"{s['perspective']}/{s['question_type']}"),
            "prompt_type": _count(samples, lambda s: s["prompts"][0]["type"] if s["prompts"] else "none"),
            "closed_answer": _count(samples, lambda s: s["closed_answer"] if s["answer_type"] == "closed" else "open"),
            "perspective_by_split": _nested(samples, "perspective", "split"),
            "dataset_by_split": _nested(samples, "dataset", "split"),
            "images_by_split": {d: {s: len(v) for s, v in sorted(per.items())} for d, per in sorted(images.items())},
            "groups_by_split": {d: {s: len(v) for s, v in sorted(per.items())} for d, per in sorted(groups.items())},
        },
        "sources": {name: dict(sorted(counts.items())) for name, counts in sorted(stats.items()) if name != "_manifest" or counts},
        "licenses": {name: {"license": sorted(v["license"]), "source": sorted(v["source"])} for name, v in sorted(licences.items())},
        "build": {"elapsed_s": round(elapsed, 1), "workers": options.workers},
    }


METHODS_MD = """
## Sample format (`samples.jsonl`, one JSON object per line)

`id`; `image` (path relative to the folder of root `root`; see Roots above); `root`; `spacing_mm` [row, column];
`calibrated` (false: no physical pixel size, 1 mm by convention); `size` [rows, columns]; `modality`; `dataset`;
`group` (patient / near-duplicate group: never in two splits); `split` (train/val/test); `perspective` (text_seg,
prompt_perception, reasoning_seg, prompt_reasoning, vqa, negative); `question_type`; `prompts` (`mimo.prompts.
prompt_to_dict`; a point prompt is a list of points); `conversation` [{role: user, text}, {role: assistant, text}];
`masks` (one path per `<SEG>`, in order); `targets` (the `<p>` phrase of each `<SEG>`, in order); `absent`
(structures asked about that are certainly not in the image); `answer_type` (open/closed); `closed_answer`;
`volume` {volume, axis, index, window} for volume slices; `findings` (the source's image-level labels).
Read it with `mimo.data.dataset.load_samples(folder, split)`.

## How it was made

- **Perspectives** (MIMO): `text_seg` ("Segment the X." -> `<p>X</p><SEG>`), `prompt_perception` (a simulated
  visual prompt + "What is this?" -> name + mask), `reasoning_seg` (knowledge questions answered in sentences
  whose terms are grounded only when their mask exists in the image), `prompt_reasoning` (prompt + a question
  needing the source's label: BUSI pathology, COVID-QU-Ex diagnosis, or knowledge about the marked structure),
  `vqa` (text only, closed answers: modality, plane, presence, pathology, diagnosis, normal), `negative`
  (a request about a structure that is certainly absent; the answer says so, with no `<SEG>` and no mask;
  `absent` names it, for the false-mask rate).
- **Certain absences**: structures of another body region or scale (a polyp on a breast ultrasound, a fetal
  head on a chest X-ray; conservative per-domain lists in `mimo/data/catalog.py`), the lesion of a record the
  source labels normal (BUSI normal, COVID-QU-Ex normal), and, for volume slices, structures labelled
  elsewhere in the same volume with no voxel in the slice. Structures with 1-19 pixels in a slice are
  neither shown nor called absent. An empty mask file makes its target unknown (never absent).
- **Visual prompts** are simulated from the reference mask (`mimo/data/prompt_sim.py`): box = bounding box
  with an outward margin and jitter of a few percent; points = 1-3 positives weighted to the interior
  (distance transform squared), sometimes one negative just outside; scribble = polyline along the
  skeleton's longest path (or principal axis) with a brush about half the local thickness; lasso = dilated
  contour simplified with `approximate_polygon`, covering >= 95 % of the mask. Multi-part targets (lungs,
  patchy infection) get a box around all parts, one point per part or a lasso around their hull, never a
  scribble. Every prompt passes `mimo.prompts.validate_prompt`. A point prompt is a set of points (one
  prompt kind per sample).
- **Diffuse targets** (retinal vessels, cell nuclei, cell membranes) are text-guided only (and VQA): a box
  on a vessel tree or on hundreds of nuclei carries no information.
- **Groups and splits**: see `mimo/data/grouping.py`. Groups come from the ids (HC18 patient, DDTI case,
  MoNuSeg TCGA participant, CVC-ClinicDB video sequence, ISBI 2012 blocks of 5 serial sections) merged with
  near-duplicates found from the pixels (24x24 thumbnails of the central 70 %, dataset mean removed,
  correlation >= 0.9). Splits are per dataset, by group, deterministic in the seed. Every slice of a volume
  goes with its volume. Images whose near-duplicates carry a different label (BUSI stores some images as
  both benign and malignant) get no label questions.
- **Knowledge**: `mimo/data/knowledge.json`, hand-written textbook facts (what, location, function,
  appearance per modality, neighbours, clinical significance) for every structure and finding; no external
  service was used. Answers state general facts, never image-specific findings beyond the source's labels.
- **Images**: 2D records are referenced in place (`root` + `image`, masks likewise); volume slices are exact
  voxel slices as 3D Slicer displays them (`mimo.geometry`), converted with `mimo.intensity.to_display_rgb`
  (CT: lung window for lung structures, bone window for bones, soft-tissue otherwise; MR: percentiles),
  stored under `volumes/` with one mask PNG per structure used. `spacing_mm` is [row, column]; 2D images
  have no calibration (`calibrated: false`, 1 mm by convention).
"""


def datasheet_markdown(sheet: dict) -> str:
    counts = sheet["counts"]
    lines = ["# MIMO instruction data", "", f"{sheet['research_use_only']}", "",
             f"- samples: {sheet['samples']}", f"- seed: {sheet['seed']}",
             f"- options: {json.dumps(sheet['options'], sort_keys=True)}",
             f"- build time: {sheet['build']['elapsed_s']} s", ""]
    lines += ["## Inputs", ""]
    for manifest in sheet["inputs"]["manifests"]:
        lines.append(f"- manifest `{manifest['path']}` (root `{manifest['root']}`, sha256 {manifest['sha256'][:16]}...)")
    for folder in sheet["inputs"]["volumes"]:
        lines.append(f"- volumes `{folder}`")
    lines += ["", "Roots (`root` key of each sample -> folder that `image` and `masks` are relative to):", ""]
    lines += [f"- `{k}`: `{v}`" for k, v in sheet["roots"].items()]

    def table(title: str, data: dict) -> None:
        lines.extend(["", f"## {title}", "", "| | count |", "|---|---:|"])
        lines.extend(f"| {k} | {v} |" for k, v in data.items())

    def cross(title: str, data: dict) -> None:
        columns = list(grouping.SPLITS)
        lines.extend(["", f"## {title}", "", "| | " + " | ".join(columns) + " | total |", "|---|" + "---:|" * (len(columns) + 1)])
        for key, row in data.items():
            lines.append(f"| {key} | " + " | ".join(str(row.get(c, 0)) for c in columns) + f" | {sum(row.values())} |")

    table("Samples per perspective", counts["perspective"])
    table("Samples per split", counts["split"])
    cross("Perspective x split", counts["perspective_by_split"])
    cross("Samples per dataset x split", counts["dataset_by_split"])
    cross("Images per dataset x split", counts["images_by_split"])
    cross("Groups per dataset x split", counts["groups_by_split"])
    table("Samples per modality", counts["modality"])
    table("Question types", counts["question_type"])
    table("Visual prompt types", counts["prompt_type"])
    table("Closed answers", counts["closed_answer"])
    table("Grounded targets (one per <SEG>)", counts["target"])
    table("Absent targets asked about", counts["absent_target"])
    lines += ["", "## Sources: records, skips and groups", ""]
    for name, source in sheet["sources"].items():
        lines.append(f"- **{name}**: " + ", ".join(f"{k} {v}" for k, v in source.items()))
    lines += ["", "## Licences (as stated by the sources)", ""]
    for name, values in sheet["licenses"].items():
        lines.append(f"- **{name}**: " + "; ".join(values["license"]) + " (source: " + "; ".join(values["source"]) + ")")
    lines.append(METHODS_MD)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- build
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build(options: BuildOptions, log: Callable[[str], None] | None = None) -> dict:
    """Build the data set; returns the datasheet. Raises :class:`BuildError` for bad input."""
    log = log or (lambda message: print(message, file=sys.stderr))
    started = time.perf_counter()
    check_options(options)
    knowledge = Knowledge.default()
    out = Path(options.out).resolve()
    work = out.parent / f".{out.name}.partial-{os.getpid()}"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    try:
        stats: dict[str, Counter] = defaultdict(Counter)
        stats["_manifest"]  # malformed lines of any manifest
        licences: dict[str, dict[str, set]] = {}
        roots: dict[str, str] = {OUT_ROOT: "."}
        manifests_info = []
        records: list[Record] = []
        for path, root_name in zip(options.manifests, _root_names(list(options.manifests))):
            path = Path(path)
            roots[root_name] = str(path.resolve().parent)
            manifests_info.append({"path": str(path.resolve()), "root": root_name, "sha256": _sha256(path)})
            manifest_records = read_manifest(path, root_name, knowledge, stats)
            by_dataset: dict[str, list[Record]] = defaultdict(list)
            for record in manifest_records:
                by_dataset[record.dataset].append(record)
                licences.setdefault(record.dataset, {"license": set(), "source": set()})
                licences[record.dataset]["license"].add(record.license)
                licences[record.dataset]["source"].add(record.source)
            for dataset in by_dataset:  # manifest order of first appearance
                chosen = select(sorted(by_dataset[dataset], key=lambda r: r.id), options.max_per_dataset, options.seed)
                stats[dataset]["selected"] += len(chosen)
                records.extend(chosen)
        assign_groups_and_splits(records, options, stats)
        dataset_targets: dict[str, set[str]] = defaultdict(set)
        for record in records:
            dataset_targets[record.dataset].update(name for name, _ in record.masks)
        jobs = [(record, frozenset(dataset_targets[record.dataset]), options.seed) for record in records]
        samples: list[dict] = []
        if options.workers > 1 and len(jobs) > 50:
            import multiprocessing

            with multiprocessing.get_context("fork").Pool(options.workers) as pool:
                results = list(pool.imap(_record_worker, jobs, chunksize=16))
        else:
            results = [_record_worker(job) for job in jobs]
        for dataset, unit_samples, counts in results:
            samples.extend(unit_samples)
            stats[dataset].update(counts)
        log(f"2D records: {len(records)} selected, {len(samples)} samples")
        samples.extend(volume_samples(options, knowledge, work, stats, licences, log))
        with open(work / "samples.jsonl", "w", encoding="utf-8", newline="\n") as handle:
            for sample in samples:
                handle.write(json.dumps(sample, ensure_ascii=False, separators=(", ", ": ")) + "\n")
        for dataset in {r.dataset for r in records}:
            stats[dataset]["groups"] = len({r.group for r in records if r.dataset == dataset})
        sheet = datasheet(samples, options, roots, stats, licences, time.perf_counter() - started, manifests_info)
        (work / "datasheet.json").write_text(json.dumps(sheet, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        (work / "datasheet.md").write_text(datasheet_markdown(sheet), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return sheet
