"""The command-line contract: real images in, coded segmentation files out, clear errors."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import REPO, box_around, dice, read_mask, shared_path
from PIL import Image

from mimo.cli import main


def run(capsys, *args):
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit:  # argparse's own usage errors
        code = exit.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def ultrasound_case(open2d_records):
    chosen = [r for r in open2d_records if r["dataset"] == "hc18"]
    record = random.Random(7).choice(chosen)
    return shared_path("open2d", record["image"]), read_mask(shared_path("open2d", record["masks"][0]["file"]))


def test_ask_box_on_real_ultrasound_writes_png_with_dice_085(capsys, tmp_path, ultrasound_case):
    image, reference = ultrasound_case
    out = tmp_path / "head.png"
    code, stdout, stderr = run(capsys, "ask", image, "Segment the fetal head.", "--box", *box_around(reference), "--out", out, "--json",
                                  "--backend", "litemedsam")
    assert code == 0, stderr
    report = json.loads(stdout)
    labels = np.asarray(Image.open(out))
    assert labels.shape == reference.shape and set(np.unique(labels)) <= {0, 1}
    assert dice(labels == 1, reference) >= 0.85
    segment = report["segments"][0]
    assert segment["name"] == "fetal head" and segment["label"] == 1
    assert segment["pixel_count"] == int((labels == 1).sum())
    assert {"load_s", "encode_s", "decode_s", "total_s"} <= set(report["timings"])


def test_ask_on_endoscopy_writes_seg_nrrd_with_snomed_code(capsys, tmp_path, open2d_records):
    import slicerio

    record = random.Random(2).choice([r for r in open2d_records if r["dataset"] == "kvasir_seg"])
    reference = read_mask(shared_path("open2d", record["masks"][0]["file"]))
    out = tmp_path / "polyp.seg.nrrd"
    code, stdout, stderr = run(capsys, "ask", shared_path("open2d", record["image"]), "Segment the polyp.", "--box", *box_around(reference), "--out", out,
                                  "--backend", "litemedsam")
    assert code == 0, stderr
    assert "Segmented the polyp" in stdout and "SNOMED CT" in stdout
    segmentation = slicerio.read_segmentation(str(out))
    segment = segmentation["segments"][0]
    assert segment["name"] == "polyp"
    assert segment["terminology"]["type"] == ["SCT", "41329004", "Polyp"]  # slicerio: scheme, value, meaning
    labelmap = np.asarray(segmentation["voxels"])[:, :, 0].T  # slicerio gives voxels [i, j, k]
    assert dice(labelmap == segment["labelValue"], reference) >= 0.8


def test_ask_on_a_volume_slice_maps_back_to_the_voxel_grid(capsys, tmp_path):
    spleen_ct = shared_path("volumes", "ivadomed_spleen_spine", "sub-spleen2_ct.nii.gz")
    spleen = sitk.GetArrayFromImage(sitk.ReadImage(str(shared_path("volumes", "ivadomed_spleen_spine", "sub-spleen2_ct_seg-manual.nii.gz")))) > 0
    k = int(np.argmax(spleen.sum(axis=(1, 2))))
    out = tmp_path / "spleen.nii.gz"
    # For this LPS-aligned CT the axial slice shows array[k] as stored.
    box = box_around(spleen[k])
    code, stdout, stderr = run(capsys, "ask", spleen_ct, "Segment the spleen.", "--axis", "axial", "--slice", k, "--box", *box, "--out", out, "--json",
                                  "--backend", "litemedsam")
    assert code == 0, stderr
    written = sitk.ReadImage(str(out))
    original = sitk.ReadImage(str(spleen_ct))
    assert written.GetSize() == original.GetSize()
    np.testing.assert_allclose(written.GetDirection(), original.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(written.GetOrigin(), original.GetOrigin(), atol=1e-4)
    labels = sitk.GetArrayFromImage(written)
    assert labels[np.arange(labels.shape[0]) != k].sum() == 0  # only the asked slice
    assert dice(labels[k] == 1, spleen[k]) >= 0.8
    assert json.loads(stdout)["slice"] == {"axis": "axial", "index": k, "size": list(spleen[k].shape)}


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["ask", "{tmp}/missing.png", "q", "--box", "1", "1", "5", "5", "--out", "{tmp}/o.png"], "no such file"),
        (["ask", "{img}", "q", "--box", "10", "10", "500", "20", "--out", "{tmp}/o.png"], "outside the image"),
        (["ask", "{img}", "q", "--scribble", " ", "--out", "{tmp}/o.png"], "empty"),
        (["ask", "{img}", "q", "--box", "1", "1", "5", "5", "--out", "{tmp}/o.dcm"], "DICOM SEG needs a DICOM input"),
        (["ask", "{img}", "q", "--box", "1", "1", "5", "5", "--out", "{tmp}/o.txt"], "unsupported output type"),
        (["ask", "{img}", "What is this?", "--out", "{tmp}/o.png", "--backend", "litemedsam"], "segmentation-only"),
        (["ask", "{img}", "q", "--box", "1", "1", "5", "5", "--slice", "3", "--out", "{tmp}/o.png"], "the only slice is 0"),
    ],
)
def test_bad_input_is_a_clear_error_and_writes_nothing(capsys, tmp_path, arguments, message):
    image = tmp_path / "input.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60), dtype=np.uint8)).save(image)
    args = [a.format(tmp=tmp_path, img=image) for a in arguments]
    code, _, stderr = run(capsys, *args)
    assert code == 2 and message in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.png"]


def test_4d_volume_and_existing_output(capsys, tmp_path):
    four_d = tmp_path / "4d.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 3, 4, 5), np.float32), isVector=False), str(four_d))
    code, _, stderr = run(capsys, "ask", four_d, "q", "--box", "0", "0", "2", "2", "--out", tmp_path / "o.seg.nrrd")
    assert code == 2 and "4D images" in stderr
    image = tmp_path / "input.png"
    Image.fromarray(np.full((40, 60), 100, np.uint8)).save(image)
    existing = tmp_path / "mine.png"
    existing.write_bytes(b"user's file")
    code, _, stderr = run(capsys, "ask", image, "q", "--box", "5", "5", "30", "30", "--out", existing)
    assert code == 2 and "already exists" in stderr
    assert existing.read_bytes() == b"user's file"


def test_negative_must_follow_a_point(capsys, tmp_path):
    code, _, stderr = run(capsys, "ask", "x.png", "q", "--negative", "--out", tmp_path / "o.png")
    assert code == 2 and "--negative must follow a --point" in stderr


def test_installed_demo_command(tmp_path):
    """The README's main job, through the installed console script."""
    command = shutil.which("mimo-assistant")
    args = [command] if command else [sys.executable, "-m", "mimo.cli"]
    result = subprocess.run(args + ["demo", "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=300,
                            env={**__import__("os").environ, "PYTHONPATH": str(REPO / "MIMOAssistant")})
    assert result.returncode == 0, result.stderr
    answer = next(line for line in result.stdout.splitlines() if line.startswith("A: "))
    assert "vertebra" in answer.lower(), answer  # MIMO names the level ("The L2 vertebra ..."), LiteMedSAM echoes the question
    assert "segment '" in result.stdout and "vertebra" in result.stdout.split("segment '", 1)[1].split("'")[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo-overlay.png", "demo-seg.dcm", "demo.seg.nrrd"]


def test_ask_defaults_to_the_embedded_mimo_tiny_and_grounds_text_only_questions(capsys, tmp_path):
    """With MIMO-Tiny shipped, a question alone (no prompt) is answered in text and its grounded
    term becomes a named, coded segment. 211_HC is in the held-out test split of
    `mimo-assistant data build` (seed 0): MIMO-Tiny never trained on it."""
    from mimo.modeling.presets import embedded_checkpoint

    if embedded_checkpoint() is None:
        pytest.skip("this installation ships no embedded mimo-tiny checkpoint")
    image = shared_path("open2d", "hc18/images/211_HC.jpg")
    reference = read_mask(shared_path("open2d", "hc18/masks/211_HC.png"))
    out = tmp_path / "head.png"
    code, stdout, stderr = run(capsys, "ask", image, "Segment the fetal head.", "--out", out, "--json")
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["backend"]["name"] == "mimo" and "mimo-tiny" in report["backend"]["model"]
    assert [span["term"] for span in report["spans"]] == ["fetal head"], report["answer"]
    segment = report["segments"][0]
    assert segment["name"] == "fetal head" and segment["label"] == 1
    labels = np.asarray(Image.open(out))
    assert dice(labels == 1, reference) >= 0.9  # 0.977 when measured

    code, stdout, stderr = run(capsys, "ask", image, "Which imaging modality is this?", "--out", tmp_path / "none.png", "--json")
    assert code == 0, stderr
    assert "ultrasound" in json.loads(stdout)["answer"].lower()


def test_a_text_only_mask_on_ct_carries_the_model_cards_caution(capsys, tmp_path):
    """MIMO-Tiny's card says its text-only masks on CT and MR are unreliable; the answer says so
    where the user reads it (printed, and in --json), and a box-prompted turn does not."""
    from mimo.modeling.presets import embedded_checkpoint

    if embedded_checkpoint() is None:
        pytest.skip("this installation ships no embedded mimo-tiny checkpoint")
    spleen_ct = shared_path("volumes", "ivadomed_spleen_spine", "sub-spleen2_ct.nii.gz")
    spleen = sitk.GetArrayFromImage(sitk.ReadImage(str(shared_path("volumes", "ivadomed_spleen_spine", "sub-spleen2_ct_seg-manual.nii.gz")))) > 0
    k = int(np.argmax(spleen.sum(axis=(1, 2))))
    where = ["--axis", "axial", "--slice", k]
    code, stdout, stderr = run(capsys, "ask", spleen_ct, "Segment the spleen.", *where, "--out", tmp_path / "text.nii.gz")
    assert code == 0, stderr
    assert "Caution: MIMO-Tiny does not pick one structure among many from the question alone on CT and MR" in stdout
    code, stdout, stderr = run(capsys, "ask", spleen_ct, "Segment the spleen.", *where, "--box", *box_around(spleen[k]),
                               "--out", tmp_path / "box.nii.gz", "--json")
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["caution"] is None and [s["term"] for s in report["spans"]] == ["spleen"], report["answer"]
