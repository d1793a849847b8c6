"""Evaluation: metrics, perfect-prediction sanity, and full reports with the baselines.

The report tests run a tiny random MIMO checkpoint (mimo.training.synthetic) on generated
images and the real LiteMedSAM as the box baseline. The open2d tests read ../shared/data
(skipped when absent).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from conftest import shared_path

pytest.importorskip("transformers")

from mimo.evaluation import metrics
from mimo.evaluation.cli import add_eval_arguments, evaluate, run_eval
from mimo.evaluation.predictors import LiteMedSAMPredictor, ReferencePredictor
from mimo.training.synthetic import (
    write_synthetic_folder,
    write_synthetic_manifest,
    write_tiny_checkpoint,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluation")
    write_synthetic_folder(root / "folder", images_per_dataset=3)
    write_synthetic_manifest(root / "manifest", images_per_dataset=3)
    write_tiny_checkpoint(root / "tiny")
    return root


def eval_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    return parser.parse_args([*argv, "--no-progress"])


def walk_numbers(node, path=""):
    """Every (path, value) of a metric in the aggregated report."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk_numbers(value, f"{path}/{key}")
    elif isinstance(node, float):
        yield path, node


# ----- metrics --------------------------------------------------------------------------------


def test_metrics_score_the_references_perfectly():
    rng = np.random.default_rng(0)
    reference = rng.random((30, 40)) > 0.6
    assert metrics.dice(reference, reference) == 1.0 and metrics.iou(reference, reference) == 1.0
    assert metrics.dice(np.zeros((4, 4), bool), np.zeros((4, 4), bool)) == 1.0
    half = reference.copy()
    half[:15] = False
    assert 0 < metrics.iou(half, reference) < metrics.dice(half, reference) < 1
    assert metrics.dice(~reference, reference) == 0.0
    assert metrics.match_masks([reference], [reference])[0].sum() == reference.sum()
    left, right = reference.copy(), reference.copy()
    left[:, 20:], right[:, :20] = False, False
    assert metrics.dice(metrics.match_masks([left, right], [reference])[0], reference) == 1.0, "one structure in two parts"

    for target in ("polyp", "lungs", "COVID-19 infection", "cell membranes", "left kidney", "some new structure"):
        assert metrics.naming_correct(f"This is the {target}.", [target], target)
    assert metrics.naming_correct("These are polyps.", [], "polyp"), "known terms in the text when nothing is grounded"
    assert not metrics.naming_correct("This is the liver.", ["liver"], "spleen")
    assert not metrics.naming_correct("This is the left kidney.", ["left kidney"], "right kidney")

    for answer, closed, candidates in [
        ("Yes, there is a polyp in this colonoscopy image.", "yes", ()),
        ("No.", "no", ()),
        ("The diagnosis is non-COVID pneumonia.", "non-covid pneumonia", ("covid-19", "normal")),
        ("This chest X-ray shows pneumonia that is not caused by COVID-19.", "non-covid pneumonia", ("covid-19", "normal")),
        ("It shows COVID-19.", "covid-19", ("non-covid pneumonia", "normal")),
        ("This is an electron micrograph of neural tissue.", "electron microscopy", ("microscopy", "ultrasound")),
        ("Benign.", "benign", ("malignant",)),
    ]:
        assert metrics.exact_match(answer, closed, answer, candidates), answer
        assert metrics.exact_match(answer, closed, None, candidates), answer
    assert not metrics.exact_match("No, there is none.", "yes")
    assert not metrics.exact_match("It is malignant.", "benign", None, ("malignant",))
    assert not metrics.exact_match("COVID-19 or normal, hard to say.", "normal", None, ("covid-19",)), "two answers are no answer"
    assert metrics.false_mask([np.zeros((3, 3), bool), np.eye(3, dtype=bool)]) and not metrics.false_mask([np.zeros((3, 3), bool)])


def test_perfect_answers_score_one_everywhere(workspace, tmp_path):
    reference = ReferencePredictor()
    for data in (workspace / "folder", workspace / "manifest" / "manifest.jsonl"):
        out = tmp_path / data.stem / "report.json"
        report = evaluate(eval_args("--model", "reference", "--data", str(data), "--out", str(out), "--split", "all"),
                          model=reference, litemedsam=reference, log=lambda message: None)
        overall = report["metrics"]["overall"]
        assert {"text_seg", "prompt_perception", "negative", "vqa"} <= set(overall)
        for perspective, summary in overall.items():
            for key in ("dice", "miou", "naming_accuracy", "exact_match"):
                if key in summary:
                    assert summary[key] == 1.0, (data, perspective, key)
            if "false_mask_rate" in summary:
                assert summary["false_mask_rate"] == 0.0
        assert overall["prompt_perception"]["naming_accuracy"] == 1.0 and overall["vqa"]["exact_match"] == 1.0
        assert all(report["baselines"]["overall"][s]["dice"] == 1.0 for s in ("mimo_box", "mimo_text", "litemedsam_box"))


# ----- full reports ---------------------------------------------------------------------------


def check_report(out, datasets: set[str]) -> dict:
    report = json.loads(out.read_text())
    assert out.with_suffix(".md").is_file() and out.with_suffix(".png").stat().st_size > 5000
    assert report["command"].startswith("mimo-assistant eval --model ") and "--data" in report["command"]
    metrics_ = report["metrics"]
    assert set(metrics_["by_dataset"]) == datasets
    assert set(metrics_) == {"overall", "by_dataset", "by_modality", "by_target"}
    baselines = report["baselines"]
    assert baselines["systems"] == ["mimo_box", "mimo_text", "litemedsam_box"]
    assert set(baselines["by_dataset"]) == datasets and baselines["by_target"]
    differences = baselines["differences"]["mimo_box - litemedsam_box"]
    numbers = list(walk_numbers(metrics_)) + list(walk_numbers({k: v for k, v in baselines.items() if k != "differences"}))
    assert numbers and all(0.0 <= value <= 1.0 for path, value in numbers if not path.endswith("box_margin_px")), numbers
    # the paired difference on the same masks is the difference of the two systems' means
    assert set(differences["by_dataset"]) == datasets
    for dataset, difference in differences["by_dataset"].items():
        table = baselines["by_dataset"][dataset]
        assert difference["n"] == table["mimo_box"]["n"] == table["litemedsam_box"]["n"]
        assert difference["mean"] == pytest.approx(table["mimo_box"]["dice"] - table["litemedsam_box"]["dice"], abs=2e-4)
    markdown = out.with_suffix(".md").read_text()
    assert "LiteMedSAM + box Dice" in markdown and "MIMO, text only Dice" in markdown and "report.png" in markdown
    assert "MIMO + box minus LiteMedSAM + box, Dice on the same masks" in markdown and "| verdict |" in markdown
    return report


def test_eval_writes_json_markdown_and_chart_with_the_baselines(workspace, tmp_path, litemedsam):
    out = tmp_path / "reports" / "report.json"
    args = eval_args("--model", str(workspace / "tiny"), "--data", str(workspace / "folder"), "--out", str(out),
                     "--split", "test", "--max-new-tokens", "6")
    evaluate(args, litemedsam=LiteMedSAMPredictor(backend=litemedsam), log=lambda message: None)
    report = check_report(out, {"synth_us", "synth_endo", "synth_ct"})
    assert report["data"]["kind"] == "data-builder folder" and report["data"]["images"] == 3
    assert report["model"]["preset"] == "mimo-tiny" and len(report["model"]["weights_sha256"]) == 64
    litemedsam = report["baselines"]["overall"]["litemedsam_box"]["dice"]
    assert litemedsam > 0.8, f"LiteMedSAM with a box on bright shapes: {litemedsam}"
    perspectives = report["metrics"]["overall"]
    assert "naming_accuracy" in perspectives["prompt_perception"] and "false_mask_rate" in perspectives["negative"]
    assert "exact_match" in perspectives["vqa"] and set(report["metrics"]["by_target"]) >= {"cyst", "polyp", "left kidney"}
    assert report["timings"]["model_encode_s_per_image"] is not None

    assert run_eval(eval_args("--model", str(workspace / "tiny"), "--data", str(workspace / "nothing"), "--out", str(out))) == 2


def test_eval_on_the_open2d_manifest(workspace, tmp_path, litemedsam):
    manifest = shared_path("open2d", "manifest.jsonl")
    out = tmp_path / "open2d" / "report.json"
    args = eval_args("--model", str(workspace / "tiny"), "--data", str(manifest), "--out", str(out), "--split", "test",
                     "--max-per-dataset", "1", "--datasets", "kvasir_seg,busi", "--max-new-tokens", "4")
    evaluate(args, litemedsam=LiteMedSAMPredictor(backend=litemedsam), log=lambda message: None)
    report = check_report(out, {"kvasir_seg", "busi"})
    assert report["data"]["kind"] == "manifest"
    assert {"text_seg", "box_seg", "prompt_perception", "negative", "vqa"} == set(report["metrics"]["overall"])


def test_box_decoder_weight_is_evaluated_and_recorded_or_refused_with_the_reason(workspace, tmp_path, litemedsam, capsys):
    """``--box-decoder-weight`` evaluates the shipped model with another blend of its fine-tuned
    and pretrained decoders for box answers (text-only masks stay the same) and records it; on a
    model without pretrained grounding weights it is refused with the reason."""
    from mimo.backend import EMBEDDED_CHECKPOINT

    manifest = shared_path("open2d", "manifest.jsonl")
    reports = {}
    for weight in ("1.0", "0.0"):
        out = tmp_path / weight / "report.json"
        args = eval_args("--model", str(EMBEDDED_CHECKPOINT), "--data", str(manifest), "--out", str(out), "--split", "test",
                         "--max-per-dataset", "1", "--datasets", "kvasir_seg,busi", "--perspectives", "text_seg",
                         "--box-decoder-weight", weight)
        reports[weight] = evaluate(args, litemedsam=LiteMedSAMPredictor(backend=litemedsam), log=lambda message: None)
        assert reports[weight]["model"]["box_decoder_weight"] == float(weight)
        assert f"--box-decoder-weight {weight}" in reports[weight]["command"]
    fine_tuned, pretrained = (reports[w]["comparisons"] for w in ("1.0", "0.0"))
    assert len(fine_tuned) == len(pretrained) == 2
    for a, b in zip(fine_tuned, pretrained):
        assert a["mimo_text"]["dice"] == b["mimo_text"]["dice"]
    assert any(abs(a["mimo_box"]["dice"] - b["mimo_box"]["dice"]) > 1e-3 for a, b in zip(fine_tuned, pretrained))

    args = eval_args("--model", str(workspace / "tiny"), "--data", str(workspace / "folder"), "--out", str(tmp_path / "tiny.json"),
                     "--box-decoder-weight", "0.5")
    assert run_eval(args) == 2
    assert "grounding.weights is null" in capsys.readouterr().err


def test_box_margin_loosens_the_comparisons_box_and_is_recorded_or_refused(workspace, tmp_path, capsys):
    """``--box-margin PX`` grows every comparison's box by PX pixels around the reference mask
    (clipped to the image), and the report says which margin it used; a negative or absurd
    margin is refused naming the option."""
    from PIL import Image

    from mimo.training.samples import REFERENCE_BOX_MARGIN_PX

    default_args = eval_args("--model", "reference", "--data", str(workspace / "folder"), "--out", str(tmp_path / "d.json"))
    assert default_args.box_margin == REFERENCE_BOX_MARGIN_PX == 3.0, "the default is the data builder's box margin"
    reference = ReferencePredictor()
    boxes = {}
    for margin in ("3", "12.5"):
        out = tmp_path / margin / "report.json"
        report = evaluate(eval_args("--model", "reference", "--data", str(workspace / "folder"), "--out", str(out),
                                    "--split", "all", "--box-margin", margin),
                          model=reference, litemedsam=reference, log=lambda message: None)
        assert report["baselines"]["box_margin_px"] == float(margin)
        assert f"--box-margin {margin}" in report["command"]
        assert f"+ {margin} px" in out.with_suffix(".md").read_text()
        boxes[margin] = {c["mask"]: c["box"]["box"] for c in report["comparisons"]}
    assert boxes["3"].keys() == boxes["12.5"].keys() and len(boxes["3"]) >= 3
    for mask_file, box in boxes["12.5"].items():
        mask = np.asarray(Image.open(mask_file)) > 0
        rows, cols = np.nonzero(mask)
        height, width = mask.shape
        assert box == [max(cols.min() - 12.5, 0), max(rows.min() - 12.5, 0),
                       min(cols.max() + 12.5, width - 1), min(rows.max() + 12.5, height - 1)]
        tight = boxes["3"][mask_file]
        assert box[0] <= tight[0] and box[1] <= tight[1] and box[2] >= tight[2] and box[3] >= tight[3] and box != tight

    for bad in ("-1", "nan", "5000"):
        args = eval_args("--model", "reference", "--data", str(workspace / "folder"), "--out", str(tmp_path / "bad.json"),
                         "--box-margin", bad)
        assert run_eval(args) == 2
        assert "--box-margin must be a number of pixels from 0 to 1000" in capsys.readouterr().err
    assert not (tmp_path / "bad.json").exists()


def test_several_splits_are_evaluated_together_and_a_bad_split_is_refused(workspace, tmp_path, capsys):
    """``--split val,test`` evaluates everything held out in one report: the union of the two
    splits' samples, each image once; a repeated or unknown split is refused naming the option."""
    reference = ReferencePredictor()
    images = {}
    for split in ("val", "test", "val,test"):
        out = tmp_path / split / "report.json"
        report = evaluate(eval_args("--model", "reference", "--data", str(workspace / "folder"), "--out", str(out), "--split", split),
                          model=reference, litemedsam=reference, log=lambda message: None)
        assert report["data"]["split"] == split and f"--split {split}" in report["command"]
        images[split] = ({row["image"] for row in report["comparisons"]}, {item["id"] for item in report["items"]})
    (val_images, val_ids), (test_images, test_ids) = images["val"], images["test"]
    assert val_images and test_images and not val_images & test_images
    assert images["val,test"] == (val_images | test_images, val_ids | test_ids)

    for bad in ("val,val", "vals", "val,all", ","):
        args = eval_args("--model", "reference", "--data", str(workspace / "folder"), "--out", str(tmp_path / "bad.json"), "--split", bad)
        assert run_eval(args) == 2
        assert f"--split must be train, val, test (or several of them, comma-separated, each once) or all, got {bad!r}" in capsys.readouterr().err
    assert not (tmp_path / "bad.json").exists()


def test_reference_answers_on_open2d_score_perfectly(tmp_path):
    manifest = shared_path("open2d", "manifest.jsonl")
    reference = ReferencePredictor()
    report = evaluate(eval_args("--model", "reference", "--data", str(manifest), "--out", str(tmp_path / "r.json"),
                                "--split", "all", "--max-per-dataset", "2", "--baselines", "text"),
                      model=reference, log=lambda message: None)
    assert len(report["metrics"]["by_dataset"]) == 10
    for perspective, summary in report["metrics"]["overall"].items():
        for key in ("dice", "naming_accuracy", "exact_match"):
            assert summary.get(key, 1.0) == 1.0, (perspective, key)


def test_query_specificity_asks_for_another_target_of_the_same_image(tmp_path):
    """On an image with two structures, each reference mask is also scored against the answer
    to a question about the other one: the reference answers give Dice 1 for the right term
    and the overlap of the two masks for the wrong one."""
    from PIL import Image

    from mimo.evaluation.runner import aggregate_comparisons, comparisons_for, run_evaluation
    from mimo.training.samples import Example

    lungs = np.zeros((32, 32), dtype=np.uint8)
    lungs[4:28, 2:30] = 255
    infection = np.zeros((32, 32), dtype=np.uint8)
    infection[20:28, 4:12] = 255
    Image.fromarray(np.full((32, 32), 90, dtype=np.uint8)).save(tmp_path / "cxr.png")
    for name, mask in (("lungs", lungs), ("infection", infection)):
        Image.fromarray(mask).save(tmp_path / f"{name}.png")
    common = {"image": str(tmp_path / "cxr.png"), "dataset": "covidqu", "modality": "xray", "perspective": "text_seg"}
    examples = [
        Example(id="a", question="Segment the lungs.", answer="<p>lungs</p><SEG>", mask_files=[str(tmp_path / "lungs.png")], targets=["lungs"], **common),
        Example(id="b", question="Segment the COVID-19 infection.", answer="<p>COVID-19 infection</p><SEG>",
                mask_files=[str(tmp_path / "infection.png")], targets=["COVID-19 infection"], **common),
    ]
    comparisons = comparisons_for(examples)
    assert [(c.target, c.other_term.question) for c in comparisons] == [
        ("lungs", "Segment the COVID-19 infection."), ("COVID-19 infection", "Segment the lungs.")]

    class ByTarget(ReferencePredictor):
        """Answers each question with the reference mask of the target it names."""

        def predict(self, example):
            named = next(e for e in examples if e.targets == example.targets)
            return super().predict(named)

    result = run_evaluation(examples, ByTarget(), text_baseline=True, progress=False)
    table = aggregate_comparisons(result.comparisons)["by_target"]
    overlap = 2 * (infection > 0).sum() / ((infection > 0).sum() + (lungs > 0).sum())
    assert table["lungs"]["mimo_text"]["dice"] == 1.0
    assert table["lungs"]["mimo_text_other_term"]["dice"] == pytest.approx(overlap)
    assert table["COVID-19 infection"]["mimo_text_other_term"]["dice"] == pytest.approx(overlap)
    assert table["lungs"]["reference_other_term"]["dice"] == pytest.approx(overlap)
