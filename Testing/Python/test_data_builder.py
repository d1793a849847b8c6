"""``mimo-assistant data build`` (mimo.data): instruction data from segmentation data.

Most tests run on a tiny generated manifest and volume (real PNG and NIfTI files written here);
the ones on ../shared/data build a small subset (--max-per-dataset 5) and skip when it is absent.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import SHARED_DATA, shared_path

from mimo.data import catalog, grouping, templates
from mimo.data.builder import BuildOptions, build
from mimo.data.cli import add_data_arguments, main, run_data_build
from mimo.data.dataset import load_samples, read_datasheet
from mimo.data.generate import PERSPECTIVES
from mimo.data.knowledge import Knowledge, references
from mimo.data.prompt_sim import available_kinds, significant_parts, simulate
from mimo.prompts import BoxPrompt, LassoPrompt, PointPrompt, ScribblePrompt, prompt_mask, validate_prompt

PHRASE = re.compile(r"<p>(.*?)</p><SEG>")
DIFFUSE = {"retinal vessels", "cell nuclei", "cell membranes"}
OPEN2D_TARGETS = ["polyp", "breast lesion", "thyroid nodule", "fetal head", "lungs", "COVID-19 infection",
                  "retinal vessels", "cell nuclei", "cell membranes"]


# ---------------------------------------------------------------- generated fixtures
def _disk(shape, centre, radius):
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _write_tiny_manifest(root: Path) -> Path:
    """Three small datasets with real PNGs: colonoscopy-like, breast-ultrasound-like, microscopy-like."""
    rng = np.random.default_rng(5)
    records = []
    shape = (72, 96)
    for n in range(7):
        image = (rng.random(shape + (3,)) * 80 + 60).astype(np.uint8)
        image[..., 0] += np.uint8(40)
        mask = _disk(shape, (30 + n, 40 + 3 * n), 10 + n)
        image[mask] = (200, 120, 110)
        if n == 6:  # an exact duplicate of image 0 under another id: a near-duplicate pair
            image = np.asarray(Image.open(root / "endo/images/e0.png"))
            mask = np.asarray(Image.open(root / "endo/masks/e0.png")) > 127
        _save(image, root / f"endo/images/e{n}.png")
        _save(mask.astype(np.uint8) * 255, root / f"endo/masks/e{n}.png")
        records.append({"id": f"toy_endo/e{n}", "dataset": "toy_endo", "modality": "endoscopy", "image": f"endo/images/e{n}.png",
                        "width": shape[1], "height": shape[0], "findings": {},
                        "masks": [{"target": "polyp", "file": f"endo/masks/e{n}.png"}], "source": "generated", "license": "CC0 (test)"})
    for n, pathology in enumerate(["benign", "malignant", "benign", "malignant", "normal", "normal", "benign"]):
        image = (rng.random(shape) * 120 + 50).astype(np.uint8)
        masks = []
        if pathology != "normal":
            mask = _disk(shape, (36, 30 + 5 * n), 8 + n)
            image[mask] = 30
            _save(mask.astype(np.uint8) * 255, root / f"us/masks/b{n}.png")
            masks = [{"target": "breast lesion", "file": f"us/masks/b{n}.png"}]
        _save(image, root / f"us/images/b{n}.png")
        records.append({"id": f"toy_us/b{n}", "dataset": "toy_us", "modality": "ultrasound", "image": f"us/images/b{n}.png",
                        "width": shape[1], "height": shape[0], "findings": {"pathology": pathology}, "masks": masks,
                        "source": "generated", "license": "CC0 (test)"})
    for n in range(4):
        image = np.zeros(shape, dtype=np.uint8)
        mask = np.zeros(shape, dtype=bool)
        for k in range(6):
            mask |= _disk(shape, (10 + 9 * k, 12 + 13 * ((k + n) % 6)), 3)
        image[mask] = 220
        _save(image, root / f"cells/images/c{n}.png")
        _save(mask.astype(np.uint8) * 255, root / f"cells/masks/c{n}.png")
        records.append({"id": f"toy_cells/c{n}", "dataset": "toy_cells", "modality": "microscopy (fluorescence)",
                        "image": f"cells/images/c{n}.png", "width": shape[1], "height": shape[0], "findings": {},
                        "masks": [{"target": "cell nuclei", "file": f"cells/masks/c{n}.png"}], "source": "generated", "license": "CC0 (test)"})
    # broken records: a missing image and a missing mask (skipped and counted)
    records.append({"id": "toy_endo/missing_image", "dataset": "toy_endo", "modality": "endoscopy", "image": "endo/images/nope.png",
                    "findings": {}, "masks": [], "source": "generated", "license": "CC0 (test)"})
    records.append({"id": "toy_endo/missing_mask", "dataset": "toy_endo", "modality": "endoscopy", "image": "endo/images/e1.png",
                    "findings": {}, "masks": [{"target": "polyp", "file": "endo/masks/nope.png"}], "source": "generated", "license": "CC0 (test)"})
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    return manifest


def _write_tiny_volume(folder: Path) -> Path:
    """A 28x24x20 CT-like volume (2 mm voxels) with a liver-like box and a spleen-like ball, as NIfTI."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    k, j, i = np.mgrid[0:20, 0:24, 0:28]
    image = np.full((20, 24, 28), -1000, dtype=np.int16)
    body = (i - 14) ** 2 / 13**2 + (j - 12) ** 2 / 11**2 <= 1
    image[body] = 30
    labels = np.zeros_like(image, dtype=np.uint8)
    liver = body & (i < 12) & (j > 6) & (k > 2) & (k < 17)
    spleen = ((i - 21) ** 2 + (j - 12) ** 2 + (k - 10) ** 2) <= 16
    labels[liver], labels[spleen] = 1, 2
    image[liver], image[spleen] = 60, 45
    for array, name in ((image, "ct.nii.gz"), (labels, "seg.nii.gz")):
        itk = sitk.GetImageFromArray(array)
        itk.SetSpacing((2.0, 2.0, 2.0))
        sitk.WriteImage(itk, str(folder / name))
    (folder / "volumes.json").write_text(json.dumps({
        "dataset": "toy_ct", "license": "CC0 (test)", "source": "generated",
        "volumes": [{"id": "case1", "image": "ct.nii.gz", "modality": "CT", "labels": "seg.nii.gz", "names": {"1": "liver", "2": "spleen"}}],
    }))
    return folder


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return _write_tiny_manifest(root / "open"), _write_tiny_volume(root / "vols")


def _build(manifests, volumes, out, **kwargs) -> dict:
    options = BuildOptions(manifests=list(manifests), volumes=list(volumes), out=out, workers=1, **kwargs)
    return build(options, log=lambda message: None)


@pytest.fixture(scope="module")
def tiny_build(tiny_inputs, tmp_path_factory):
    manifest, volumes = tiny_inputs
    out = tmp_path_factory.mktemp("tiny_out") / "data"
    _build([manifest], [volumes], out, seed=0, val_fraction=0.2, test_fraction=0.2)
    return out


@pytest.fixture(scope="module")
def shared_build(tmp_path_factory):
    manifest = shared_path("open2d", "manifest.jsonl")
    volumes = shared_path("volumes")
    out = tmp_path_factory.mktemp("shared_out") / "data"
    _build([manifest], [volumes], out, seed=0, max_per_dataset=5)
    return out


def _samples(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------- the checks every build must pass
def check_build(folder: Path) -> list[dict]:
    samples = _samples(folder)
    sheet = read_datasheet(folder)
    knowledge = Knowledge.default()
    assert samples, "no samples"
    assert len({s["id"] for s in samples}) == len(samples), "sample ids are not unique"
    by_id = {s.id: s for s in load_samples(folder)}
    split_of_group, split_of_image = {}, {}
    mask_cache: dict[Path, np.ndarray] = {}
    for data in samples:
        sample = by_id[data["id"]]
        answer = data["conversation"][1]["text"]
        question = data["conversation"][0]["text"]
        assert data["perspective"] in PERSPECTIVES
        assert data["split"] in grouping.SPLITS
        assert "[[" not in answer and "[[" not in question and "<SEG>" not in question
        # groups and images never straddle splits
        assert split_of_group.setdefault(data["group"], data["split"]) == data["split"], f"group {data['group']} in two splits"
        key = (data["root"], data["image"])
        assert split_of_image.setdefault(key, data["split"]) == data["split"], f"image {key} in two splits"
        # <p>X</p><SEG> == masks == targets, in order
        phrases = PHRASE.findall(answer)
        assert answer.count("<SEG>") == len(phrases) == len(data["masks"]) == len(data["targets"]), data["id"]
        assert phrases == data["targets"], data["id"]
        for name in data["targets"] + data["absent"]:
            assert knowledge.get(name) is not None, f"no knowledge-base entry for {name!r}"
        rows, cols = data["size"]
        assert sample.image_path.is_file()
        if data["perspective"] == "negative":
            assert "<SEG>" not in answer and data["masks"] == [] and data["targets"] == [] and data["absent"], data["id"]
            assert data["closed_answer"] == "no"
        if data["perspective"] in ("text_seg", "prompt_perception", "reasoning_seg", "prompt_reasoning"):
            assert data["targets"], f"{data['id']}: a positive without a mask"
        if data["perspective"] == "vqa":
            assert data["masks"] == [] and data["answer_type"] == "closed" and data["closed_answer"]
        for path in sample.mask_paths:
            if path not in mask_cache:
                mask_cache[path] = sample.load_masks()[sample.mask_paths.index(path)]
            assert mask_cache[path].shape == (rows, cols) and mask_cache[path].any(), f"{data['id']}: empty or misshaped mask {path}"
        prompts = sample.prompts()
        if data["perspective"] in ("prompt_perception", "prompt_reasoning"):
            kinds = {p.kind for p in prompts}
            assert len(kinds) == 1, f"{data['id']}: one visual prompt per sample"
            if kinds == {"point"}:
                positives = [p for p in prompts if p.positive]
                assert 1 <= len(positives) <= 4 and len(prompts) - len(positives) <= 1
                target = mask_cache[sample.mask_paths[0]]
                assert all(target[int(p.y), int(p.x)] for p in positives), f"{data['id']}: a positive point outside the mask"
            else:
                assert len(prompts) == 1, data["id"]
            for prompt in prompts:
                validate_prompt(prompt, (rows, cols))
            assert not set(data["targets"][:1]) & DIFFUSE, f"{data['id']}: diffuse targets get no visual prompt"
        else:
            assert prompts == []
        if data["perspective"] == "reasoning_seg":
            assert not set(data["targets"][:1]) & DIFFUSE
        # label questions only when the source has the label
        if data["question_type"] == "pathology":
            assert data["findings"]["pathology"] in ("benign", "malignant")
            assert data["closed_answer"] == data["findings"]["pathology"]
        if data["question_type"] == "diagnosis":
            assert data["closed_answer"] == data["findings"]["diagnosis"].lower()
        if data["perspective"] == "prompt_perception":
            assert len(data["targets"]) == 1
    # the datasheet counts the samples
    counts = sheet["counts"]
    assert sheet["samples"] == len(samples)
    assert counts["perspective"] == dict(sorted(Counter(s["perspective"] for s in samples).items()))
    assert counts["split"] == dict(sorted(Counter(s["split"] for s in samples).items()))
    assert counts["dataset"] == dict(sorted(Counter(s["dataset"] for s in samples).items()))
    assert counts["modality"] == dict(sorted(Counter(s["modality"] for s in samples).items()))
    assert counts["target"] == dict(sorted(Counter(t for s in samples for t in s["targets"]).items()))
    for perspective, row in counts["perspective_by_split"].items():
        assert sum(row.values()) == counts["perspective"][perspective]
    assert (folder / "datasheet.md").read_text().startswith("# MIMO instruction data")
    return samples


# ---------------------------------------------------------------- knowledge base and templates
def test_knowledge_base_is_consistent_and_covers_every_structure():
    knowledge = Knowledge.default()
    assert knowledge.problems() == []
    assert len(knowledge) >= 240
    for name in OPEN2D_TARGETS + ["spleen", "spinal cord", "liver", "heart", "thoracic spine"]:
        assert name in knowledge, name
    from mimo.data.volumes import BUILTIN, display_name

    # every TotalSegmentator class of labels.json (bundled names below when ../shared is absent)
    labels = SHARED_DATA / "volumes" / "totalseg_example" / "labels.json"
    names = [n for section in json.loads(labels.read_text()).values() for n in section.values()] if labels.is_file() else [
        "kidney_left", "vertebrae_L1", "rib_right_12", "lung_middle_lobe_right", "autochthon_left", "hip_right",
        "iliac_vena_left", "portal_vein_and_splenic_vein", "costal_cartilages", "intervertebral_discs", "vertebrae"]
    for raw in names:
        assert display_name(raw, knowledge) in knowledge.entries, raw
    assert len(knowledge.aal_names) == 116
    for display in knowledge.aal_names.values():
        assert display in knowledge.entries
    assert {v["id"] for v in BUILTIN["dcmqi_ct3slice"]["volumes"]} == {"ct-3slice"}
    for raw in ("Liver", "Thoracic spine", "Heart"):
        assert display_name(raw, knowledge) in knowledge.entries
    for kind in ("pathology", "diagnosis"):
        assert knowledge.findings[kind]["values"]
    # references resolve and paired facts are expanded per side
    assert references(knowledge["gallbladder"].function) == ["liver", "duodenum"]
    assert "left" in knowledge["left kidney"].clues[0] and "right" in knowledge["right kidney"].clues[0]
    assert knowledge["lungs"].plural and knowledge["retinal vessels"].is_diffuse


def test_every_template_family_has_five_phrasings():
    for name, family in templates.ALL_FAMILIES.items():
        assert len(family) >= 5, f"{name} has only {len(family)} phrasings"
        assert len(set(family)) == len(family), f"{name} repeats a phrasing"


# ---------------------------------------------------------------- prompts, groups, splits
def test_simulated_prompts_are_valid_and_realistic():
    rng = np.random.default_rng(0)
    shape = (80, 100)
    blob = _disk(shape, (40, 50), 15)
    two = _disk(shape, (40, 25), 10) | _disk(shape, (40, 75), 10)
    elongated = np.zeros(shape, dtype=bool)
    elongated[30:38, 10:90] = True
    tiny = np.zeros(shape, dtype=bool)
    tiny[5:9, 5:9] = True
    assert available_kinds(blob) == ("box", "point", "scribble", "lasso")
    assert available_kinds(two) == ("box", "point", "lasso") and len(significant_parts(two)) == 2
    assert available_kinds(tiny) == ("box", "point")
    for mask in (blob, two, elongated, tiny):
        for kind in available_kinds(mask):
            for _ in range(5):
                prompts = simulate(mask, kind, rng)
                for prompt in prompts:
                    validate_prompt(prompt, shape)
                if kind == "box":
                    (box,) = prompts
                    assert isinstance(box, BoxPrompt)
                    covered = prompt_mask(box, shape)
                    assert (covered & mask).sum() >= 0.75 * mask.sum()
                elif kind == "point":
                    positives = [p for p in prompts if p.positive]
                    assert positives and all(mask[int(p.y), int(p.x)] for p in positives)
                    assert all(not mask[int(p.y), int(p.x)] for p in prompts if not p.positive)
                    if mask is two:
                        assert len(positives) == 2  # one per lung-like part
                elif kind == "scribble":
                    (scribble,) = prompts
                    assert isinstance(scribble, ScribblePrompt)
                    assert all(mask[int(round(y)), int(round(x))] for x, y in scribble.vertices)
                else:
                    (lasso,) = prompts
                    assert isinstance(lasso, LassoPrompt)
                    assert (prompt_mask(lasso, shape) & mask).sum() >= 0.95 * mask.sum()
    elongated_scribble = simulate(elongated, "scribble", rng)[0]
    xs = [x for x, _ in elongated_scribble.vertices]
    assert max(xs) - min(xs) > 40  # along the long axis


def test_group_rules_and_split_assignment():
    assert grouping.id_group("hc18", "010_2HC") == grouping.id_group("hc18", "010_HC") == "patient010"
    assert grouping.id_group("ddti", "106_1_1") == grouping.id_group("ddti", "106_2") == "case106"
    assert grouping.id_group("monuseg", "TCGA-A7-A13E-01Z-00-DX1") == "TCGA-A7-A13E"
    assert grouping.id_group("monuseg", "TCGA-A7-A13F-01Z-00-DX1") != "TCGA-A7-A13E"
    assert grouping.id_group("cvc_clinicdb", "1") == grouping.id_group("cvc_clinicdb", "25") != grouping.id_group("cvc_clinicdb", "26")
    assert len({grouping.id_group("cvc_clinicdb", str(n)) for n in range(1, 613)}) == 29
    assert grouping.id_group("isbi2012", "3") == grouping.id_group("isbi2012", "4") != grouping.id_group("isbi2012", "5")
    assert grouping.id_group("kvasir_seg", "abc") == "abc"
    rng = np.random.default_rng(0)
    thumbs = rng.random((30, 576)).astype(np.float32)
    thumbs[7] = thumbs[3] + 1.0  # a brightness-shifted copy
    assert grouping.near_duplicate_pairs(thumbs) == [(3, 7)]
    groups, links = grouping.group_records("toy", [f"i{n}" for n in range(30)], thumbs)
    assert groups["i3"] == groups["i7"] and links == 1 and len(set(groups.values())) == 29
    sizes = {f"g{n}": 1 + n % 3 for n in range(40)}
    splits = grouping.assign_splits(sizes, "toy", seed=3, val_fraction=0.1, test_fraction=0.1)
    assert splits == grouping.assign_splits(sizes, "toy", seed=3, val_fraction=0.1, test_fraction=0.1)
    per = Counter()
    for group, split in splits.items():
        per[split] += sizes[group]
    total = sum(sizes.values())
    assert abs(per["test"] - 0.1 * total) <= 3 and abs(per["val"] - 0.1 * total) <= 3
    assert set(grouping.assign_splits({"a": 1, "b": 1, "c": 1}, "x", 0, 0.1, 0.1).values()) == {"train", "val", "test"}
    assert set(grouping.assign_splits({"a": 5, "b": 3}, "x", 0, 0.1, 0.1).values()) == {"train"}


def test_modality_names_and_domains():
    assert catalog.normalise_modality("microscopy (fluorescence/brightfield)") == "microscopy"
    assert catalog.normalise_modality("histopathology (H&E)") == "histopathology"
    assert catalog.normalise_modality("electron microscopy") == "electron microscopy"
    assert catalog.normalise_modality("x-ray") == "X-ray"
    assert catalog.normalise_modality("ultrasound") == "ultrasound"
    assert catalog.dataset_domain("toy_us", "ultrasound", {"breast lesion"}) == "breast_us"
    assert "polyp" in catalog.DOMAINS["breast_us"].negatives
    knowledge = Knowledge.default()
    for domain in catalog.DOMAINS.values():
        for name in domain.negatives:
            assert name in knowledge


# ---------------------------------------------------------------- builds without shared data
def test_same_seed_same_bytes_other_seed_other_samples(tiny_inputs, tmp_path):
    manifest, volumes = tiny_inputs
    _build([manifest], [volumes], tmp_path / "a", seed=7)
    _build([manifest], [volumes], tmp_path / "b", seed=7)
    _build([manifest], [volumes], tmp_path / "c", seed=8)
    a, b, c = ((tmp_path / x / "samples.jsonl").read_bytes() for x in "abc")
    assert a == b
    assert a != c


def test_tiny_build_has_every_perspective_and_valid_samples(tiny_build):
    samples = check_build(tiny_build)
    perspectives = Counter(s["perspective"] for s in samples)
    assert set(perspectives) == set(PERSPECTIVES)
    # BUSI-like pathology: asked exactly on the benign/malignant records, never on normal ones
    pathology = [s for s in samples if s["question_type"] == "pathology"]
    assert pathology and {s["closed_answer"] for s in pathology} == {"benign", "malignant"}
    # a lesion asked for on a normal breast ultrasound is a negative; so is a polyp on it
    negatives = [s for s in samples if s["perspective"] == "negative"]
    normal = [s for s in negatives if s.get("findings", {}).get("pathology") == "normal"]
    assert normal and all(s["absent"] for s in normal)
    assert any(s["absent"] == ["breast lesion"] for s in normal)
    endo_negatives = {name for s in negatives if s["dataset"] == "toy_endo" for name in s["absent"]}
    assert endo_negatives and "polyp" not in endo_negatives
    # diffuse nuclei: text-guided and VQA only
    cells = {s["perspective"] for s in samples if s["dataset"] == "toy_cells"}
    assert cells <= {"text_seg", "vqa", "negative"} and "text_seg" in cells
    # the volume: every plane it is big enough for, PNGs written into the output
    volume = [s for s in samples if s["dataset"] == "toy_ct"]
    assert volume and {s["volume"]["axis"] for s in volume} == {"axial", "coronal", "sagittal"}
    assert all(s["root"] == "out" and (tiny_build / s["image"]).is_file() for s in volume)
    assert any(s["perspective"] == "negative" and s["volume"] for s in volume) or all(
        not s["absent"] for s in volume if s["perspective"] != "negative")


def test_tiny_build_counts_skips_and_groups_near_duplicates(tiny_build):
    sheet = read_datasheet(tiny_build)
    endo = sheet["sources"]["toy_endo"]
    assert endo["skipped_missing_image"] == 1 and endo["skipped_missing_mask"] == 1
    assert endo["near_duplicate_links"] >= 1
    samples = _samples(tiny_build)
    group = {s["image"]: s["group"] for s in samples if s["dataset"] == "toy_endo"}
    assert group["endo/images/e0.png"] == group["endo/images/e6.png"]
    assert sheet["licenses"]["toy_endo"]["license"] == ["CC0 (test)"]
    assert sheet["roots"]["out"] == "." and Path(sheet["roots"]["open"]).is_dir()
    # sources are referenced, not copied
    assert not (tiny_build / "endo").exists()


def test_volume_slice_masks_equal_the_label_map(tiny_build, tiny_inputs):
    _, volumes = tiny_inputs
    _check_volume_masks(tiny_build, {"toy_ct/case1": (volumes / "ct.nii.gz", volumes / "seg.nii.gz", {"liver": 1, "spleen": 2})})


def _check_volume_masks(folder: Path, sources: dict) -> int:
    """Every volume mask PNG equals (label map slice == value) exactly; returns how many were checked."""
    from mimo.geometry import axis_slice, extract_slice
    from mimo.image import load_image

    cache = {}
    checked = 0
    for sample in load_samples(folder):
        info = sample.data.get("volume")
        if not info or info["volume"] not in sources or not sample.targets:
            continue
        image_path, label_path, values = sources[info["volume"]]
        if label_path not in cache:
            labels = load_image(label_path)
            cache[label_path] = (labels, np.rint(labels.array).astype(np.int32))
        labels, array = cache[label_path]
        geometry = axis_slice(labels.shape, labels.ijk_to_ras, info["axis"], info["index"])
        plane = extract_slice(array, geometry)
        pixels = sample.load_image().pixels
        assert pixels.shape[:2] == plane.shape
        assert tuple(sample.data["spacing_mm"]) == pytest.approx(geometry.spacing_mm)
        for name, mask in zip(sample.targets, sample.load_masks()):
            assert np.array_equal(mask, plane == values[name]), f"{sample.id}: mask of {name} differs from the label map"
            checked += 1
    return checked


def test_loader_gives_engine_objects(tiny_build):
    from mimo.backend import SliceImage

    train = load_samples(tiny_build, "train")
    assert train and all(s.split == "train" for s in train)
    every = load_samples(tiny_build)
    assert len(every) == sum(len(load_samples(tiny_build, split)) for split in grouping.SPLITS)
    with_prompts = [s for s in every if s.data["prompts"]][:5]
    for sample in with_prompts:
        image = sample.load_image()
        assert isinstance(image, SliceImage) and image.pixels.dtype == np.uint8 and image.pixels.shape[2] == 3
        assert image.pixels.shape[:2] == tuple(sample.data["size"])
        masks = sample.load_masks()
        assert len(masks) == sample.answer.count("<SEG>") and all(m.dtype == bool for m in masks)
        assert all(isinstance(p, (BoxPrompt, PointPrompt, ScribblePrompt, LassoPrompt)) for p in sample.prompts())
    moved = load_samples(tiny_build, "train", roots={"open": "/nowhere"})
    assert str(next(s for s in moved if s.data["root"] == "open").image_path).startswith("/nowhere")


def test_cli_contract(tiny_inputs, tmp_path, capsys):
    import argparse

    manifest, volumes = tiny_inputs
    assert main(["build", "--manifest", str(tmp_path / "absent.jsonl"), "--out", str(tmp_path / "o")]) == 2
    assert "manifest not found" in capsys.readouterr().err
    out = tmp_path / "out"
    args = ["build", "--manifest", str(manifest), "--volumes", str(volumes), "--out", str(out), "--workers", "1"]
    assert main(args) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(args) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(args + ["--overwrite", "--seed", "3"]) == 0
    assert read_datasheet(out)["seed"] == 3
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    assert main(["build", "--manifest", str(manifest), "--out", str(busy), "--overwrite"]) == 2
    assert (busy / "keep.txt").is_file() and "not a previous data build" in capsys.readouterr().err
    assert main(["build", "--manifest", str(manifest), "--out", str(tmp_path / "f"), "--val-fraction", "0.6", "--test-fraction", "0.5"]) == 2
    # the lead wires these two into mimo-assistant
    parser = argparse.ArgumentParser()
    add_data_arguments(parser)
    parsed = parser.parse_args(["--manifest", str(manifest), "--out", str(tmp_path / "g"), "--max-per-dataset", "2", "--workers", "1"])
    assert run_data_build(parsed) == 0
    assert read_datasheet(tmp_path / "g")["options"]["max_per_dataset"] == 2


# ---------------------------------------------------------------- ../shared/data
def test_shared_build_every_perspective_and_consistent_labels(shared_build):
    samples = check_build(shared_build)
    assert set(Counter(s["perspective"] for s in samples)) == set(PERSPECTIVES)
    records = {json.loads(line)["id"]: json.loads(line) for line in (SHARED_DATA / "open2d" / "manifest.jsonl").read_text().splitlines()}
    seen_datasets = set()
    for sample in samples:
        if sample["root"] != "open2d":
            continue
        record = records[sample["id"].split(":", 1)[1].split("#")[0]]
        seen_datasets.add(record["dataset"])
        assert sample["image"] == record["image"]
        assert set(sample["masks"]) <= {m["file"] for m in record["masks"]}
        if sample["question_type"] == "pathology":
            assert record["findings"]["pathology"] == sample["closed_answer"]
        if sample["question_type"] == "diagnosis":
            assert record["findings"]["diagnosis"].lower() == sample["closed_answer"]
        if record["dataset"] == "busi" and record["findings"]["pathology"] == "normal":
            assert not sample["targets"] and sample["question_type"] != "pathology"
        if record["dataset"] in ("drive", "dsb2018", "monuseg", "isbi2012"):
            assert sample["perspective"] in ("text_seg", "vqa", "negative")
    assert len(seen_datasets) == 10
    negatives = [s for s in samples if s["perspective"] == "negative"]
    assert any(s["dataset"] == "busi" and s["absent"] == ["polyp"] for s in negatives) or any(
        s["dataset"] == "busi" and "polyp" in s["absent"] for s in samples)
    assert any(s["dataset"] == "busi" and s["absent"] == ["breast lesion"] for s in negatives)
    assert any(s.get("volume") and s["perspective"] == "negative" for s in samples)


def test_shared_volume_masks_equal_label_maps(shared_build):
    volumes = SHARED_DATA / "volumes"
    from mimo.data.volumes import display_name

    knowledge = Knowledge.default()
    labels = json.loads((volumes / "totalseg_example" / "labels.json").read_text())

    def values(section):
        return {display_name(raw, knowledge): int(v) for v, raw in next(s for k, s in labels.items() if k.startswith(section)).items()}

    aal = {display_name(line.split()[1], knowledge): int(line.split()[0])
           for line in (volumes / "mricron_colin27_aal" / "aal.nii.txt").read_text().splitlines() if line.strip()}
    sources = {
        "totalseg_example/example_ct_sm": (None, volumes / "totalseg_example" / "example_seg.nii.gz", values("example_seg.nii.gz ")),
        "totalseg_example/example_mr_sm": (None, volumes / "totalseg_example" / "example_seg_mr.nii.gz", values("example_seg_mr.nii.gz")),
        "ivadomed_spleen_spine/sub-spleen2_ct": (None, volumes / "ivadomed_spleen_spine" / "sub-spleen2_ct_seg-manual.nii.gz", {"spleen": 1}),
        "ivadomed_spleen_spine/sub-unf01_T2w": (None, volumes / "ivadomed_spleen_spine" / "sub-unf01_T2w_seg-manual.nii.gz", {"spinal cord": 1}),
        "mricron_colin27_aal/colin27_aal": (None, volumes / "mricron_colin27_aal" / "aal.nii.gz", aal),
    }
    assert _check_volume_masks(shared_build, sources) > 10
    # the dcmqi masks are separate files, one per structure
    from mimo.geometry import axis_slice, extract_slice
    from mimo.image import load_image

    folder = volumes / "dcmqi_ct3slice"
    files = {"liver": "liver_seg.nrrd", "thoracic spine": "spine_seg.nrrd", "heart": "heart_seg.nrrd"}
    checked = 0
    for sample in load_samples(shared_build):
        info = sample.data.get("volume")
        if not info or info["volume"] != "dcmqi_ct3slice/ct-3slice":
            continue
        for name, mask in zip(sample.targets, sample.load_masks()):
            volume = load_image(folder / files[name])  # 3 slices of 512 x 512: cheap
            geometry = axis_slice(volume.shape, volume.ijk_to_ras, info["axis"], info["index"])
            assert np.array_equal(mask, extract_slice(volume.array, geometry) != 0)
            checked += 1
    assert checked


def _atlas_pair(folder: Path) -> tuple[Path, Path, Path]:
    """An image (1 mm grid, origin 0) and an atlas on another grid (2 mm voxels, origin x = -4.5 mm,
    so that no image voxel is equidistant from two atlas voxels) in the same world space."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(100, 10, (16, 20, 24)).astype(np.float32))
    sitk.WriteImage(image, str(folder / "t1.nii.gz"))
    atlas_array = np.zeros((12, 14, 16), dtype=np.uint8)  # (z, y, x)
    atlas_array[2:10, 2:12, 4:8] = 1   # voxel centres x = -4.5 + 2 * (4..7) = 3.5..9.5 mm
    atlas_array[2:10, 2:12, 9:13] = 2  # x = 13.5..19.5 mm
    atlas = sitk.GetImageFromArray(atlas_array)
    atlas.SetSpacing((2.0, 2.0, 2.0))
    atlas.SetOrigin((-4.5, -4.0, -4.0))
    sitk.WriteImage(atlas, str(folder / "atlas.nii.gz"))
    (folder / "names.txt").write_text("1 Precentral_L 2001\n2 Precentral_R 2002\n")
    return folder / "t1.nii.gz", folder / "atlas.nii.gz", folder / "names.txt"


def test_atlas_labels_are_carried_by_world_coordinates_into_a_dataset_the_builder_reads(tmp_path):
    import SimpleITK as sitk

    from mimo.data.atlas import write_atlas_dataset
    from mimo.data import volumes as V
    from mimo.data.knowledge import Knowledge

    image, atlas, names = _atlas_pair(tmp_path / "in")
    path = write_atlas_dataset(image, atlas, names, tmp_path / "out", "toy_atlas", "MR", license="CC0 (test)")
    carried = sitk.GetArrayFromImage(sitk.ReadImage(str(path.parent / "labels.nii.gz")))
    assert carried.shape == (16, 20, 24)
    # Nearest neighbour: an atlas voxel reaches 1 mm either side of its centre, so region 1
    # (centres 3.5..9.5 mm) covers image x = 3..10 mm and region 2 (13.5..19.5 mm) x = 13..20 mm.
    row = carried[6, 6]
    assert set(np.nonzero(row == 1)[0]) == set(range(3, 11))
    assert set(np.nonzero(row == 2)[0]) == set(range(13, 21))
    assert row[0] == 0 and row[23] == 0
    specs = V.discover(path.parent)
    assert [(s.dataset, s.volume_id, s.modality) for s in specs] == [("toy_atlas", "toy_atlas", "MR")]
    loaded = V.load(specs[0], Knowledge.default())
    assert loaded.structure_names() == ["left precentral gyrus", "right precentral gyrus"]


def test_atlas_dataset_rejects_disjoint_spaces_float_labels_and_an_existing_folder(tmp_path):
    import SimpleITK as sitk

    from mimo.data.atlas import AtlasError, write_atlas_dataset

    image, atlas, names = _atlas_pair(tmp_path / "in")
    far = sitk.ReadImage(str(atlas))
    far.SetOrigin((500.0, 0.0, 0.0))
    sitk.WriteImage(far, str(tmp_path / "far.nii.gz"))
    with pytest.raises(AtlasError, match="do not overlap in world coordinates"):
        write_atlas_dataset(image, tmp_path / "far.nii.gz", names, tmp_path / "out1", "toy")
    assert not (tmp_path / "out1").exists()
    fractional = sitk.GetImageFromArray(np.full((4, 4, 4), 0.5, dtype=np.float32))
    sitk.WriteImage(fractional, str(tmp_path / "prob.nii.gz"))
    with pytest.raises(AtlasError, match="non-integer"):
        write_atlas_dataset(image, tmp_path / "prob.nii.gz", names, tmp_path / "out2", "toy")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(AtlasError, match="exists"):
        write_atlas_dataset(image, atlas, names, tmp_path / "taken", "toy")
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
