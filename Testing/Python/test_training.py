"""Training: feature cache, the accelerate loop, resume, NaN stop, configuration, augmentations.

Most tests run on generated data (mimo.training.synthetic) with a tiny random model (a 64 px
SAM as grounding part), so they need no shared data and take seconds. The last two read the
open2d manifest of ../shared/data (skipped when absent); one of them trains the real mimo-tiny
(LiteMedSAM grounding) for a few steps and prints the measured encode and step times.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, shared_path

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from mimo.prompts import BoxPrompt, LassoPrompt, prompt_mask
from mimo.training.augment import allowed_flips, flip_mask, flip_prompt, jitter_box
from mimo.training.batches import image_ref
from mimo.training.cli import add_train_arguments, run_train
from mimo.training.config import (
    AugmentSection,
    ConfigError,
    config_from_dict,
    load_config,
)
from mimo.training.features import FeatureCache, encoder_hash
from mimo.training.samples import Example, load_examples
from mimo.training.synthetic import write_synthetic_folder, write_tiny_checkpoint
from mimo.training.trainer import TrainingDiverged, check_finite

CONFIGS = REPO / "MIMOAssistant" / "mimo" / "training" / "configs"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("training")
    write_synthetic_folder(root / "data", images_per_dataset=4)
    write_tiny_checkpoint(root / "tiny")
    return root


def run_config(workspace: Path, name: str, **settings) -> tuple[int, Path]:
    config = {
        "data": str(workspace / "data"),
        "output_dir": str(workspace / name),
        "model": {"init_checkpoint": str(workspace / "tiny")},
        "steps": 8,
        "batch_size": 4,
        "text_warmup_steps": 2,
        "optimizer": {"lr": 3e-3},
        "schedule": {"name": "linear", "warmup_steps": 1},
        "features": {"cache_dir": str(workspace / "cache")},
        "augment": {"hflip": 0.5, "box_jitter": 0.1},
    }
    for key, value in settings.items():
        if isinstance(value, dict):
            config.setdefault(key, {}).update(value)
        else:
            config[key] = value
    path = workspace / f"{name}.json"
    path.write_text(json.dumps(config))
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    return run_train(parser.parse_args([str(path), "--no-progress"])), workspace / name


def log_of(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "training_log.jsonl").read_text().splitlines()]


# ----- feature cache ------------------------------------------------------------------------


def test_feature_cache_encodes_each_image_once_and_returns_identical_features(workspace):
    from mimo.modeling import load_mimo

    model, processor = load_mimo(workspace / "tiny")
    calls = []
    encode = model.encode_images
    model.encode_images = lambda *args, **kwargs: calls.append(1) or encode(*args, **kwargs)
    examples = load_examples(workspace / "data", "train")
    refs = {image_ref(e) for e in examples} | {image_ref(examples[0], "h")}
    directory = workspace / "cache-test"

    first = FeatureCache(model, processor, directory)
    stats = first.encode_missing(refs, progress=False, batch_size=3)
    batches = -(-len(refs) // 3)
    assert stats["encoded"] == len(refs) and len(calls) == batches and stats["cached"] == 0
    second = FeatureCache(model, processor, directory)
    again = second.encode_missing(refs, progress=False)
    assert again["encoded"] == 0 and again["cached"] == len(refs) and len(calls) == batches, "second pass must hit the cache"

    # Every image of a batch gets its own features, equal to encoding it alone.
    for ref in sorted(refs, key=lambda r: (r.path, r.flip))[:4]:
        alone = first._encode(ref)
        assert torch.allclose(second.get(ref).features.grounding.float(), alone.features.grounding.float(), atol=2e-3)
        assert second.get(ref).geometry == alone.geometry
    calls.clear()

    ref = min(refs, key=lambda r: (r.path, r.flip))
    a, b = first.get(ref), second.get(ref)
    assert not calls and second.hits >= 1
    assert torch.equal(a.features.grounding, b.features.grounding) and a.geometry == b.geometry
    assert a.features.grounding.dtype == torch.float16
    inputs = processor.preprocess_image(ref.load())
    with torch.no_grad():
        fresh = encode(inputs.grounding_pixel_values)
    assert torch.allclose(a.features.grounding.float(), fresh.grounding, atol=2e-3)

    # The key changes with the spacing, the mirroring and the encoder's weights.
    keys = {first.key(ref), first.key(image_ref(examples[0], "h")), first.key(type(ref)(ref.path, (0.5, 1.0), ref.flip))}
    assert len(keys) == 3
    before = encoder_hash(model, processor)
    with torch.no_grad():
        next(model.grounding.image_encoder.parameters()).add_(1.0)
    assert encoder_hash(model, processor) != before


# ----- the training loop --------------------------------------------------------------------


def test_training_lowers_the_loss_and_writes_a_loadable_checkpoint(workspace):
    from mimo.modeling import load_mimo
    from mimo.modeling.checkpoint import trained_state_dict

    status, output = run_config(workspace, "run", steps=16, text_warmup_steps=4, eval_every=16)
    assert status == 0
    log = log_of(output)
    evals = [r for r in log if r["event"] == "eval"]
    assert [r["step"] for r in evals] == [0, 16]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"], evals
    steps = [r for r in log if r["event"] == "step"]
    assert [r["step"] for r in steps] == list(range(1, 17))
    assert all(r["text_only"] == (r["step"] <= 4) for r in steps)
    assert all(np.isfinite(r["loss"]) and r["lr"] >= 0 for r in steps) and steps[1]["lr"] > 0
    assert any("mask_dice_loss" in r for r in steps) and sum(r["perspectives"].get("negative", 0) for r in steps) > 0
    assert log[-1]["event"] == "end" and log[0]["encode"]["images"] > 0

    model, _ = load_mimo(output / "final")
    assert model.config.model_card["training"]["steps"] == 16
    assert "not for clinical use" in model.config.model_card["intended_use"]
    initial, _ = load_mimo(workspace / "tiny")
    changed = trained_state_dict(model)["aligner.queries"]
    assert not torch.equal(changed, trained_state_dict(initial)["aligner.queries"])


def test_a_frozen_language_model_trains_only_the_mask_path(workspace):
    """Fine-tuning the masks alone: text-only steps and batches without masks have nothing to
    learn, which must neither crash the backward pass nor move the frozen parts."""
    from mimo.modeling import load_mimo
    from mimo.modeling.checkpoint import trained_state_dict

    status, output = run_config(workspace, "mask-path", steps=6, text_warmup_steps=2,
                                train={"language_model": "frozen", "aligner": False, "visual_prompt_encoder": False})
    assert status == 0
    before = trained_state_dict(load_mimo(workspace / "tiny")[0])
    after = trained_state_dict(load_mimo(output / "final")[0])
    moved = {name for name in before if not torch.equal(before[name], after[name])}
    assert moved and all(name.startswith(("seg_projection.", "mask_refiner.", "grounding.mask_decoder.")) for name in moved), sorted(moved)[:8]
    assert any(name.startswith("seg_projection.") for name in moved)


def test_a_run_can_widen_the_refiner_of_its_starting_checkpoint(workspace, capsys):
    from mimo.modeling import load_mimo

    assert load_mimo(workspace / "tiny")[0].mask_refiner.channels == (8, 16, 16)
    status, output = run_config(workspace, "widened", steps=3, text_warmup_steps=1,
                                model={"widen_refiner_to": [16, 24, 32]}, sampling={"dataset_weights": {"synth_ct": 2.0}})
    assert status == 0
    model, _ = load_mimo(output / "final")
    assert model.mask_refiner.channels == (16, 24, 32) and tuple(model.config.refiner.channels) == (16, 24, 32)
    assert model.mask_refiner.fuse1[0].weight.shape == (24, 32 + 24 + 1, 3, 3)
    status, _ = run_config(workspace, "misweighted", steps=1, sampling={"dataset_weights": {"drive": 2.0}})
    assert status == 2 and "dataset_weights names datasets with no training samples: drive" in capsys.readouterr().err
    status, _ = run_config(workspace, "miscapped", steps=1, sampling={"dataset_max_images": {"kvasir": 200}})
    assert status == 2 and "dataset_max_images names datasets with no training samples: kvasir" in capsys.readouterr().err


def test_a_run_can_add_a_box_prior_and_train_its_gate_alone(workspace):
    """The box prior's gate learns while every other part stays as the starting checkpoint had it."""
    from mimo.modeling import load_mimo
    from mimo.modeling.checkpoint import trained_state_dict

    assert load_mimo(workspace / "tiny")[0].box_prior is None
    frozen = {"language_model": "frozen", "aligner": False, "visual_prompt_encoder": False, "seg_projection": False,
              "mask_refiner": False, "mask_decoder": False}
    status, output = run_config(workspace, "box-prior", steps=4, text_warmup_steps=0, model={"add_box_prior": True}, train=frozen,
                                optimizer={"lr": 0.05}, sampling={"perspective_weights": {"box_seg": 1.0, "prompt_perception": 1.0}})
    assert status == 0
    before = trained_state_dict(load_mimo(workspace / "tiny")[0])
    model = load_mimo(output / "final")[0]
    after = trained_state_dict(model)
    added = set(after) - set(before)  # this small model's random grounding decoder is saved with it
    assert model.config.segmentation.box_prior and {"box_prior.gate.weight", "box_prior.gate.bias"} <= added
    assert all(name.startswith("box_prior.") for name in added)
    assert all(torch.equal(before[name], after[name]) for name in before), "only the gate may move"
    assert after["box_prior.gate.bias"].item() != -6.0


def test_a_box_teacher_needs_pretrained_grounding_weights(workspace, capsys):
    """The box teacher is the package's pretrained decoder: a model with a random grounding part
    has none, and the run stops before training with the reason."""
    status, output = run_config(workspace, "teacher-without-weights", steps=2, loss={"box_teacher_weight": 1.0})
    assert status == 2 and "box teacher" in (message := capsys.readouterr().err) and "grounding.weights is null" in message, message
    assert not (output / "final").exists()


def test_resume_continues_exactly_where_the_interrupted_run_stopped(workspace):
    status, straight = run_config(workspace, "straight", steps=8, save_every=100)
    assert status == 0
    status, resumed = run_config(workspace, "resumed", steps=8, debug={"stop_after_steps": 5})
    assert status == 0
    state = json.loads((resumed / "checkpoints" / "step-00000005" / "trainer_state.json").read_text())
    assert state["step"] == 5 and not (resumed / "final").exists()
    assert (resumed / "checkpoints" / "step-00000005" / "optimizer.bin").is_file()
    status, _ = run_config(workspace, "resumed", steps=8)
    assert status == 0 and (resumed / "final" / "model.safetensors").is_file()

    expected = {r["step"]: r for r in log_of(straight) if r["event"] == "step"}
    got = [r for r in log_of(resumed) if r["event"] == "step"]
    assert [r["step"] for r in got] == list(range(1, 9)), "a resumed log holds every step once"
    assert any(r["event"] == "resume" and r["step"] == 5 for r in log_of(resumed))
    for record in got:
        reference = expected[record["step"]]
        assert record["lr"] == pytest.approx(reference["lr"], rel=1e-9)
        for term in ("loss", "lm_loss", "mask_bce_loss", "mask_dice_loss"):
            if term in reference:
                assert record[term] == pytest.approx(reference[term], rel=1e-4, abs=1e-5), (record["step"], term)


def test_a_nan_loss_stops_training_with_the_step_and_the_term(workspace, capsys):
    status, output = run_config(workspace, "nan", steps=6, debug={"inject_nan_at_step": 3})
    assert status == 3
    message = capsys.readouterr().err
    assert "training stopped at step 3" in message and "lm_loss is nan" in message
    diverged = [r for r in log_of(output) if r["event"] == "diverged"]
    assert diverged and diverged[0]["step"] == 3 and diverged[0]["term"] == "lm_loss"
    assert not (output / "final").exists()

    class Output:
        loss = torch.tensor(float("inf"))
        lm_loss = torch.tensor(1.0)
        mask_bce_loss = torch.tensor(0.5)
        mask_dice_loss = torch.tensor(float("inf"))

    with pytest.raises(TrainingDiverged, match="step 7: mask_dice_loss is inf"):
        check_finite(Output(), 7, ["a"])


# ----- configuration ------------------------------------------------------------------------


def test_configuration_files_load_and_mistakes_are_named(tmp_path):
    cpu = load_config(CONFIGS / "mimo-tiny-cpu.json")
    assert cpu.model.preset == "mimo-tiny" and cpu.steps and cpu.sampling.max_images_per_dataset
    assert cpu.features.cache and cpu.text_warmup_steps > 0
    gpu = load_config(CONFIGS / "mimo-7b-gpu.yaml")
    assert gpu.model.preset == "mimo-7b" and gpu.mixed_precision == "bf16"
    for launcher in ("cpu.yaml", "single_gpu.yaml", "multi_gpu.yaml", "multi_node.yaml", "deepspeed_zero2.yaml", "fsdp.yaml"):
        import yaml

        assert "distributed_type" in yaml.safe_load((CONFIGS / launcher).read_text()), launcher

    base = {"data": "d", "output_dir": "o", "steps": 1}
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['lrr'\] in optimizer"):
        config_from_dict({**base, "optimizer": {"lrr": 1}})
    with pytest.raises(ConfigError, match="exactly one of 'steps' and 'epochs'"):
        config_from_dict({"data": "d", "output_dir": "o"})
    with pytest.raises(ConfigError, match="mimo-7b needs the local directories"):
        config_from_dict({**base, "model": {"preset": "mimo-7b"}})
    with pytest.raises(ConfigError, match="unknown perspectives"):
        config_from_dict({**base, "sampling": {"perspective_weights": {"textseg": 1}}})
    with pytest.raises(ConfigError, match="widen_refiner_to needs model.init_checkpoint"):
        config_from_dict({**base, "model": {"widen_refiner_to": [16, 32, 32]}})
    with pytest.raises(ConfigError, match="add_box_prior needs model.init_checkpoint"):
        config_from_dict({**base, "model": {"add_box_prior": True}})
    with pytest.raises(ConfigError, match="box_decoder_weight needs model.init_checkpoint"):
        config_from_dict({**base, "model": {"box_decoder_weight": 1.0}})
    with pytest.raises(ConfigError, match="model.box_decoder_weight 1.5 must be a number from 0 to 1"):
        config_from_dict({**base, "model": {"init_checkpoint": "c", "box_decoder_weight": 1.5}})
    with pytest.raises(ConfigError, match="loss.box_teacher_weight -1 must be a number of 0 or more"):
        config_from_dict({**base, "loss": {"box_teacher_weight": -1}})
    with pytest.raises(ConfigError, match="loss.box_teacher_min_dice True must be a number from 0 to 1"):
        config_from_dict({**base, "loss": {"box_teacher_min_dice": True}})
    with pytest.raises(ConfigError, match="dataset_weights must not be negative"):
        config_from_dict({**base, "sampling": {"dataset_weights": {"drive": -1}}})
    with pytest.raises(ConfigError, match=r"dataset_max_images must be whole numbers of at least 1: \{'busi': 0\}"):
        config_from_dict({**base, "sampling": {"dataset_max_images": {"busi": 0, "drive": 3}}})
    with pytest.raises(ConfigError, match=r"dataset_max_images must be whole numbers of at least 1: \{'busi': True\}"):
        config_from_dict({**base, "sampling": {"dataset_max_images": {"busi": True}}})
    relative = tmp_path / "c.json"
    relative.write_text(json.dumps({**base, "data": "sub/data"}))
    assert load_config(relative, {"optimizer.lr": 0.5}).data_path == tmp_path / "sub" / "data"
    assert load_config(relative, {"optimizer.lr": 0.5}).optimizer.lr == 0.5


def test_the_shipped_checkpoints_stage_configurations_still_load():
    """Docs/mimo-tiny-training holds the configuration of every stage that made the shipped
    checkpoint: a schema change that breaks one breaks the recipe."""
    stages = sorted((REPO / "Docs" / "mimo-tiny-training").glob("*.json"))
    assert len(stages) >= 10
    for path in stages:
        config = load_config(path)
        assert config.steps and config.output_dir.startswith("runs/"), path.name
    stage_4e = load_config(stages[0].parent / "phaseG1.json")
    assert stage_4e.sampling.dataset_max_images == {"busi": 300, "kvasir_seg": 240, "cvc_clinicdb": 240}
    stage_4f = load_config(stages[0].parent / "phaseK2.json")
    assert stage_4f.loss.box_teacher_weight == 6.0 and stage_4f.loss.box_teacher_min_dice == 0.8
    assert stage_4f.model.box_decoder_weight == 1.0, "the blend is chosen after training, not trained through"
    stage_4g = load_config(stages[0].parent / "phaseK4.json")
    assert stage_4g.loss.box_teacher_weight == 6.0 and stage_4g.model.box_decoder_weight == 1.0
    assert stage_4g.sampling.dataset_max_images == {"busi": 531, "kvasir_seg": 680, "cvc_clinicdb": 414}


# ----- augmentations ------------------------------------------------------------------------


def test_mirroring_never_touches_lateral_targets_and_keeps_prompts_on_the_mask():
    augment = AugmentSection(hflip=0.5, vflip=0.5)
    common = {"image": "x.png", "dataset": "d", "perspective": "text_seg", "answer": "<p>t</p><SEG>"}
    polyp = Example(id="a", modality="endoscopy", question="Segment the polyp.", targets=["polyp"], **common)
    kidney = Example(id="b", modality="CT", question="Segment the left kidney.", targets=["left kidney"], **common)
    hidden_side = Example(id="c", modality="ultrasound", question="Segment the lesion on the right.", targets=["lesion"], **common)
    chest = Example(id="d", modality="x-ray", question="Segment the lungs.", targets=["lungs"], **common)
    assert allowed_flips(polyp, augment) == ["h", "v"]
    assert allowed_flips(kidney, AugmentSection(hflip=1.0, flip_modalities=["CT"])) == []
    assert allowed_flips(hidden_side, augment) == []
    assert allowed_flips(chest, augment) == []
    assert allowed_flips(polyp, AugmentSection()) == []

    shape = (40, 60)
    rng = random.Random(0)
    for prompt in (BoxPrompt(5, 6, 30, 20), LassoPrompt(((5, 5), (30, 8), (20, 25)))):
        for flip in ("h", "v"):
            assert np.array_equal(prompt_mask(flip_prompt(prompt, flip, shape), shape), flip_mask(prompt_mask(prompt, shape), flip))
    for _ in range(200):
        box = jitter_box(BoxPrompt(0, 0, 59, 39), 0.3, shape, rng)
        assert 0 <= box.x0 < box.x1 <= 59 and 0 <= box.y0 < box.y1 <= 39 and box.x1 - box.x0 >= 1


# ----- real data ----------------------------------------------------------------------------


def test_manifest_samples_mix_every_perspective_with_true_negatives():
    manifest = shared_path("open2d", "manifest.jsonl")
    train = load_examples(manifest, "train", max_images_per_dataset=2)
    test = load_examples(manifest, "test", max_images_per_dataset=2)
    assert {e.perspective for e in train} == {"text_seg", "box_seg", "prompt_perception", "negative", "vqa"}
    assert len({e.dataset for e in train}) == 10 and all(len({e.image for e in train if e.dataset == d}) <= 2 for d in {e.dataset for e in train})
    assert not {e.image for e in train} & {e.image for e in test}
    # A dataset's own cap replaces the common one; its first images stay those of the smaller cap.
    wider = load_examples(manifest, "train", max_images_per_dataset=2, dataset_max_images={"busi": 5})
    images_of = lambda examples, d: {e.image for e in examples if e.dataset == d}  # noqa: E731
    assert len(images_of(wider, "busi")) == 5 and images_of(train, "busi") < images_of(wider, "busi")
    assert images_of(wider, "hc18") == images_of(train, "hc18")
    records = {r["id"]: r for r in map(json.loads, manifest.read_text().splitlines())}
    targets_of_dataset = {}
    for record in records.values():
        targets_of_dataset.setdefault(record["dataset"], set()).update(m["target"] for m in record["masks"])
    negatives = [e for e in train if e.perspective == "negative"]
    assert len(negatives) == len({e.image for e in train})
    for example in negatives:
        record = records[example.id.rsplit("/", 1)[0]]
        assert example.seg_count == 0 and example.absent == example.targets and len(example.targets) == 1
        if example.targets[0] in targets_of_dataset[example.dataset]:  # the dataset's own target only on a normal image
            assert "normal" in {str(v).lower() for v in record["findings"].values()}, example
    boxes = [e for e in train if e.perspective in ("box_seg", "prompt_perception")]
    assert boxes and all(len(e.prompts) == 1 and isinstance(e.prompts[0], BoxPrompt) for e in boxes)


def test_mimo_tiny_trains_a_few_steps_on_real_images(tmp_path, capsys):
    manifest = shared_path("open2d", "manifest.jsonl")
    config = {
        "data": str(manifest), "output_dir": str(tmp_path / "out"), "model": {"preset": "mimo-tiny"},
        "steps": 3, "batch_size": 2, "text_warmup_steps": 1, "optimizer": {"lr": 5e-4},
        "features": {"cache_dir": str(tmp_path / "cache")},
        "sampling": {"datasets": ["kvasir_seg", "busi"], "max_images_per_dataset": 1},
        "loss": {"box_teacher_weight": 1.0, "box_teacher_min_dice": 0.5},
    }
    path = tmp_path / "real.json"
    path.write_text(json.dumps(config))
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    assert run_train(parser.parse_args([str(path), "--no-progress"])) == 0
    log = log_of(tmp_path / "out")
    encode = log[0]["encode"]
    steps = [r for r in log if r["event"] == "step"]
    with capsys.disabled():
        print(f"\nmimo-tiny on real images: encode {encode['seconds_per_image']:.2f} s/image ({encode['encoded']} images); "
              f"step times {[round(r['seconds'], 2) for r in steps]} s (batch 2, first is text only)")
    assert all(np.isfinite(r["loss"]) for r in steps) and (tmp_path / "out" / "final" / "model.safetensors").is_file()
    taught = [r["mask_teacher_loss"] for r in steps if "mask_teacher_loss" in r]
    assert taught and all(-1e-6 <= value < 10 for value in taught), "LiteMedSAM outlines these polyps and lesions: the box teacher teaches"
    from safetensors import safe_open

    with safe_open(str(tmp_path / "out" / "final" / "model.safetensors"), "pt") as weights:
        assert not [name for name in weights.keys() if name.startswith("box_teacher")]
    saved = json.loads((tmp_path / "out" / "final" / "config.json").read_text())
    assert saved["loss"]["box_teacher_weight"] == 1.0 and saved["loss"]["box_teacher_min_dice"] == 0.5


def test_builder_text_seg_samples_get_box_prompted_twins(tmp_path):
    from mimo.training.samples import box_seg_variants

    folder = write_synthetic_folder(tmp_path / "folder", images_per_dataset=2)
    examples = load_examples(folder, None)
    text_seg = [e for e in examples if e.perspective == "text_seg" and len(e.mask_files) == 1]
    variants = box_seg_variants(examples)
    assert text_seg and len(variants) == len(text_seg)
    for source, variant in zip(text_seg, variants):
        mask = source.load_masks()[0]
        rows, cols = np.nonzero(mask)
        box = variant.prompts[0]
        assert variant.perspective == "box_seg" and variant.mask_files == source.mask_files and variant.targets == source.targets
        assert box.x0 <= cols.min() and box.y0 <= rows.min() and box.x1 >= cols.max() and box.y1 >= rows.max()
        assert box.x1 - box.x0 <= cols.max() - cols.min() + 6.01 and f"<p>{source.targets[0]}</p><SEG>" in variant.answer


def test_dataset_balance_draws_small_datasets_as_often_as_large_ones():
    from collections import Counter

    from mimo.training.batches import BatchBuilder

    def example(dataset: str, index: int) -> Example:
        return Example(id=f"{dataset}/{index}", image=f"/{dataset}/{index}.png", dataset=dataset, modality="CT",
                       perspective="text_seg", question="Segment the liver.", answer="<p>liver</p><SEG>")

    examples = [example("large", i) for i in range(900)] + [example("small", i) for i in range(100)]
    counts = {}
    for balance in (1.0, 0.0):
        builder = BatchBuilder(examples, None, None, 10, dataset_balance=balance)
        counts[balance] = Counter(e.dataset for index in range(200) for e, _ in builder.draw(index))
    assert 0.07 < counts[1.0]["small"] / 2000 < 0.13  # proportional to size
    assert 0.45 < counts[0.0]["small"] / 2000 < 0.55  # every dataset equally often
    weighted = BatchBuilder(examples, None, None, 10, dataset_balance=0.0, dataset_weights={"small": 3.0})
    drawn = Counter(e.dataset for index in range(200) for e, _ in weighted.draw(index))
    assert 0.70 < drawn["small"] / 2000 < 0.80  # three draws of "small" for each of "large"
