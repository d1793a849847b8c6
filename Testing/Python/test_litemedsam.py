"""The LiteMedSAM backend on real images: boxes, scribbles, lassos, points, sessions."""

from __future__ import annotations

import random

import numpy as np
import pytest
from conftest import box_around, dice, read_mask, shared_path
from PIL import Image

from mimo.backend import SliceImage, Turn
from mimo.errors import BackendError, PromptError
from mimo.image import load_image
from mimo.intensity import to_display_rgb
from mimo.prompts import BoxPrompt, LassoPrompt, PointPrompt, ScribblePrompt

SINGLE_OBJECT_DATASETS = ("busi", "kvasir_seg", "cvc_clinicdb", "ddti", "hc18")


def slice_image_of(record) -> SliceImage:
    pixels = np.asarray(Image.open(shared_path("open2d", record["image"])).convert("RGB"))
    return SliceImage(pixels, (1.0, 1.0), record["modality"], calibrated=False)


def pick(records, dataset, count, seed=0):
    chosen = [r for r in records if r["dataset"] == dataset and r["masks"] and r["masks"][0]["fg_frac"] > 0.01]
    return random.Random(seed).sample(chosen, count)


def test_box_from_reference_mask_reaches_dice_08_per_dataset(litemedsam, open2d_records):
    scores = {}
    for dataset in SINGLE_OBJECT_DATASETS:
        for record in pick(open2d_records, dataset, 3):
            reference = read_mask(shared_path("open2d", record["masks"][0]["file"]))
            session = litemedsam.open_session(slice_image_of(record))
            answer = litemedsam.ask(session, Turn("Segment this.", [BoxPrompt(*box_around(reference))]))
            litemedsam.close_session(session)
            assert len(answer.masks) == 1 and answer.masks[0].shape == reference.shape
            scores.setdefault(dataset, []).append(dice(answer.masks[0], reference))
    means = {dataset: float(np.mean(values)) for dataset, values in scores.items()}
    print("LiteMedSAM box Dice per dataset:", {k: round(v, 3) for k, v in means.items()})
    assert all(value >= 0.8 for value in means.values()), means


@pytest.fixture(scope="module")
def fetal_head(litemedsam, open2d_records):
    record = pick(open2d_records, "hc18", 1, seed=3)[0]
    reference = read_mask(shared_path("open2d", record["masks"][0]["file"]))
    session = litemedsam.open_session(slice_image_of(record))
    return session, reference


def test_scribble_lasso_and_point_prompts(litemedsam, fetal_head):
    session, reference = fetal_head
    rows, cols = np.nonzero(reference)
    cy, cx = rows.mean(), cols.mean()
    half_w, half_h = (cols.max() - cols.min()) / 2, (rows.max() - rows.min()) / 2
    scribble = ScribblePrompt(((cx - 0.4 * half_w, cy), (cx, cy + 0.2 * half_h), (cx + 0.4 * half_w, cy)), 4.0)
    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    height, width = reference.shape
    lasso = LassoPrompt(tuple(
        (float(np.clip(cx + 1.15 * half_w * np.cos(a), 0, width - 1)), float(np.clip(cy + 1.15 * half_h * np.sin(a), 0, height - 1)))
        for a in angles
    ))
    point = PointPrompt(float(cx), float(cy))
    results = {}
    for name, prompt in [("scribble", scribble), ("lasso", lasso), ("point", point)]:
        answer = litemedsam.ask(session, Turn("Segment the fetal head.", [prompt]))
        results[name] = dice(answer.masks[0], reference)
    print("fetal head Dice by prompt type:", {k: round(v, 3) for k, v in results.items()})
    assert results["scribble"] >= 0.85 and results["lasso"] >= 0.85 and results["point"] >= 0.8


def test_two_boxes_make_one_target_unless_two_structures_are_named(litemedsam, open2d_records):
    from scipy import ndimage

    candidates = [r for r in open2d_records if r["dataset"] == "covidqu" and any(m["target"] == "lungs" for m in r["masks"])]
    record = random.Random(1).choice(candidates)
    lungs = read_mask(shared_path("open2d", next(m["file"] for m in record["masks"] if m["target"] == "lungs")))
    labels, count = ndimage.label(lungs)
    sizes = ndimage.sum(lungs, labels, range(1, count + 1))
    first, second = (labels == (int(i) + 1) for i in np.argsort(sizes)[::-1][:2])
    # Image-left component is the patient's right lung.
    right, left = (first, second) if np.nonzero(first)[1].mean() < np.nonzero(second)[1].mean() else (second, first)
    boxes = [BoxPrompt(*box_around(right)), BoxPrompt(*box_around(left))]
    session = litemedsam.open_session(slice_image_of(record))

    both = litemedsam.ask(session, Turn("Segment both lungs.", boxes))
    assert len(both.masks) == 1 and both.spans[0].term == "lungs"
    assert dice(both.masks[0], right | left) >= 0.85

    named = litemedsam.ask(session, Turn("Segment the right lung and the left lung.", boxes))
    assert [span.term for span in named.spans] == ["right lung", "left lung"]
    assert dice(named.masks[0], right) >= 0.8 and dice(named.masks[1], left) >= 0.8


def test_negative_point_removes_the_part_it_touches(litemedsam, open2d_records):
    record = pick(open2d_records, "hc18", 1, seed=3)[0]
    reference = read_mask(shared_path("open2d", record["masks"][0]["file"]))
    session = litemedsam.open_session(slice_image_of(record))
    rows, cols = np.nonzero(reference)
    box = BoxPrompt(*box_around(reference))
    inside = PointPrompt(float(cols.mean()), float(rows.mean()), positive=False)
    answer = litemedsam.ask(session, Turn("", [box, inside]))
    assert answer.masks == [] and "nothing was segmented" in answer.text


def test_answer_text_describes_without_diagnosing(litemedsam):
    volume = load_image(__import__("mimo.demo", fromlist=["demo_image_path"]).demo_image_path())
    image = SliceImage(to_display_rgb(volume.array[0], "CT"), (0.66, 0.66), "CT")
    session = litemedsam.open_session(image)
    answer = litemedsam.ask(session, Turn("Is this vertebra fractured?", [BoxPrompt(30, 6, 84, 84)]))
    assert answer.text.startswith("Segmented the vertebra")
    assert "mm²" in answer.text and "does not identify" in answer.text
    assert not any(word in answer.text.lower() for word in ("fracture", "benign", "malignant", "normal"))
    span = answer.spans[0]
    assert answer.text[span.start : span.end] == "vertebra"
    # The segment covers the bone inside the box: most pixels over 200 HU are in it.
    bone = volume.array[0] > 200
    inside_box = np.zeros_like(bone)
    inside_box[6:85, 30:85] = True
    mask = answer.masks[0]
    assert (mask & bone & inside_box).sum() / (bone & inside_box).sum() > 0.7
    assert not (mask & ~inside_box).sum() > 0.05 * mask.sum()


def test_sessions_are_reused_and_bounded(litemedsam):
    rng = np.random.default_rng(0)
    image = SliceImage(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    session = litemedsam.open_session(image)
    state_before = litemedsam._sessions[session].state
    litemedsam.ask(session, Turn("", [BoxPrompt(10, 10, 40, 40)]))
    litemedsam.ask(session, Turn("", [BoxPrompt(5, 5, 30, 30)]))
    assert litemedsam._sessions[session].state is state_before  # embedding computed once
    opened = [litemedsam.open_session(image) for _ in range(litemedsam.max_sessions)]
    assert litemedsam.session_count == litemedsam.max_sessions
    with pytest.raises(BackendError, match="expired"):
        litemedsam.ask(session, Turn("", [BoxPrompt(10, 10, 40, 40)]))
    for session_id in opened:
        litemedsam.close_session(session_id)
    assert litemedsam.session_count == 0


def test_prompt_errors(litemedsam):
    image = SliceImage(np.zeros((32, 48, 3), dtype=np.uint8))
    session = litemedsam.open_session(image)
    with pytest.raises(BackendError, match="segmentation-only"):
        litemedsam.ask(session, Turn("What is this?"))
    with pytest.raises(PromptError, match="outside the image"):
        litemedsam.ask(session, Turn("", [BoxPrompt(10, 10, 60, 20)]))
    with pytest.raises(PromptError, match="only negative points"):
        litemedsam.ask(session, Turn("", [PointPrompt(5, 5, positive=False)]))
    litemedsam.close_session(session)


def test_bad_checkpoint_is_a_clear_error(tmp_path):
    from mimo.backend import create_backend

    bad = tmp_path / "weights.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(BackendError, match="not a loadable LiteMedSAM checkpoint"):
        create_backend("litemedsam", str(bad))
    with pytest.raises(BackendError, match="unknown backend"):
        create_backend("gpt-9")
