"""Paired differences with a group-bootstrap interval (mimo.evaluation.differences)."""

from __future__ import annotations

import numpy as np
import pytest

from mimo.evaluation.differences import MIN_GROUPS, paired_difference


def test_a_system_that_is_always_lower_is_called_lower_with_an_interval_below_zero():
    rng = np.random.default_rng(1)
    baseline = rng.uniform(0.85, 0.95, 60)
    system = baseline - rng.uniform(0.03, 0.07, 60)
    groups = [f"patient{k // 3}" for k in range(60)]
    result = paired_difference(system, baseline, groups)
    assert result["n"] == 60 and result["groups"] == 20
    assert result["mean"] == pytest.approx(float(np.mean(system - baseline)), abs=1e-4)
    assert -0.07 < result["low"] < result["mean"] < result["high"] < -0.03
    assert result["verdict"] == "lower"
    assert paired_difference(baseline, system, groups)["verdict"] == "higher"


def test_noise_around_zero_is_not_distinguishable():
    rng = np.random.default_rng(2)
    baseline = rng.uniform(0.8, 0.95, 40)
    system = baseline + rng.normal(0, 0.02, 40)
    result = paired_difference(system, baseline, [str(k) for k in range(40)])
    assert result["low"] < 0 < result["high"] and result["verdict"] == "not distinguishable"


def test_frames_of_one_video_count_as_one_group_and_widen_the_interval():
    """Ten videos of eight near-identical frames: resampling videos gives a wider interval than
    pretending the 80 frames are independent, and the same mean."""
    rng = np.random.default_rng(3)
    per_video = rng.normal(0, 0.05, 10)
    differences = np.repeat(per_video, 8) + rng.normal(0, 0.003, 80)
    zeros = np.zeros(80)
    by_video = paired_difference(differences, zeros, [f"video{k // 8}" for k in range(80)])
    by_frame = paired_difference(differences, zeros, [f"frame{k}" for k in range(80)])
    assert by_video["mean"] == by_frame["mean"] and by_video["groups"] == 10 and by_frame["groups"] == 80
    assert (by_video["high"] - by_video["low"]) > 2 * (by_frame["high"] - by_frame["low"])


def test_too_few_groups_give_no_interval_and_say_so():
    result = paired_difference([0.8] * 12, [0.9] * 12, ["video1"] * 6 + ["video2"] * 6)
    assert result == {"n": 12, "groups": 2, "mean": -0.1, "low": None, "high": None, "verdict": "too few groups"}
    groups = [str(k) for k in range(MIN_GROUPS)]
    assert paired_difference([0.5] * MIN_GROUPS, [0.5] * MIN_GROUPS, groups)["verdict"] == "not distinguishable"


@pytest.mark.parametrize("first, second, groups, message", [
    ([0.5, 0.6], [0.5], ["a", "b"], "one group per pair"),
    ([], [], [], "at least one pair"),
    ([0.5, float("nan")], [0.5, 0.5], ["a", "b"], "not a finite number"),
])
def test_bad_input_is_refused_with_the_reason(first, second, groups, message):
    with pytest.raises(ValueError, match=message):
        paired_difference(first, second, groups)


def test_the_report_prints_an_interval_end_just_above_zero_with_its_sign():
    from mimo.evaluation.report import signed

    assert [signed(v) for v in (0.0097, 0.0001, -0.0004, 0.0, -0.063)] == ["+0.010", "+0.0001", "-0.0004", "+0.000", "-0.063"]
