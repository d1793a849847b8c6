"""Prompt validation and rasterisation."""

from __future__ import annotations

import numpy as np
import pytest

from mimo.errors import PromptError
from mimo.prompts import (
    BoxPrompt,
    LassoPrompt,
    PointPrompt,
    ScribblePrompt,
    parse_vertices,
    prompt_bbox,
    prompt_from_dict,
    prompt_mask,
    prompt_to_dict,
    validate_prompt,
)

SHAPE = (50, 80)  # rows, cols


def test_box_is_normalised_and_rasterised():
    box = validate_prompt(BoxPrompt(30, 40, 10, 20), SHAPE)
    assert (box.x0, box.y0, box.x1, box.y1) == (10, 20, 30, 40)
    assert prompt_mask(box, SHAPE).sum() == 21 * 21


@pytest.mark.parametrize(
    "prompt, message",
    [
        (BoxPrompt(10, 10, 90, 20), "outside the image"),
        (BoxPrompt(10, 10, 10.5, 20), "degenerate"),
        (PointPrompt(-3, 4), "outside the image"),
        (PointPrompt(float("nan"), 4), "not finite"),
        (ScribblePrompt((), 3.0), "empty"),
        (ScribblePrompt(((1, 1), (5, 5)), 0.0), "brush width"),
        (LassoPrompt(((1, 1), (5, 5))), "degenerate"),
        (LassoPrompt(((1, 1), (5, 5), (9, 9))), "degenerate"),
    ],
)
def test_bad_prompts_name_the_problem(prompt, message):
    with pytest.raises(PromptError, match=message):
        validate_prompt(prompt, SHAPE)


def test_scribble_width_and_lasso_fill():
    scribble = ScribblePrompt(((10, 10), (30, 10)), width=5.0)
    mask = prompt_mask(scribble, SHAPE)
    rows, cols = np.nonzero(mask)
    assert rows.min() == 8 and rows.max() == 12  # 5 px brush
    assert cols.min() == 8 and cols.max() == 32
    lasso = LassoPrompt(((10, 10), (40, 10), (40, 30), (10, 30)))
    filled = prompt_mask(lasso, SHAPE)
    assert filled.sum() == 31 * 21
    assert prompt_bbox(lasso, SHAPE) == (10, 10, 40, 30)


def test_parse_vertices():
    assert parse_vertices("1,2 3.5,4", "--lasso") == ((1.0, 2.0), (3.5, 4.0))
    with pytest.raises(PromptError, match="not an 'x,y' pair"):
        parse_vertices("1,2,3", "--scribble")
    with pytest.raises(PromptError, match="empty"):
        parse_vertices("  ", "--scribble")


def test_dict_round_trip():
    prompts = [BoxPrompt(1, 2, 3, 4), PointPrompt(5, 6, False), ScribblePrompt(((1, 1), (2, 2)), 4.0), LassoPrompt(((0, 0), (4, 0), (4, 4)))]
    assert [prompt_from_dict(prompt_to_dict(p)) for p in prompts] == prompts
    with pytest.raises(PromptError, match="unknown prompt type"):
        prompt_from_dict({"type": "circle"})
