"""``actors.grounding``: the [FIND] moment rule on hand-made curves (exact seconds), and what labeling and
``vrseg ground`` write per expression."""

from __future__ import annotations

import math

import numpy as np
import pytest

from actors.grounding import ExpressionMoment, find_probabilities, ground_expressions, predict_moment

HIGH, LOW = 5.0, -5.0  # sigmoid 0.993 and 0.007: clearly above and below theta = 0.4


def logits_of(probabilities: list[float]) -> np.ndarray:
    """Logits whose sigmoid is exactly ``probabilities`` (up to float rounding)."""
    p = np.asarray(probabilities, dtype=np.float64)
    return np.log(p / (1.0 - p))


def test_single_run_spans_its_frames_in_seconds() -> None:
    curve = np.array([LOW, LOW, HIGH, HIGH, HIGH, LOW, LOW, LOW])
    assert predict_moment(curve, fps=2.0) == (1.0, 2.5)  # frames 2..4 -> [2/2, 5/2)


def test_of_several_runs_the_largest_summed_probability_wins() -> None:
    # run A: frames 1-2 at 0.9 (mass 1.8); run B: frames 5-8 at 0.5 (mass 2.0); run C: frame 10 at 0.99
    probabilities = [0.1, 0.9, 0.9, 0.1, 0.1, 0.5, 0.5, 0.5, 0.5, 0.1, 0.99, 0.1]
    assert predict_moment(logits_of(probabilities), fps=4.0) == (1.25, 2.25)  # frames 5..8
    # lower B to 0.42 (mass 1.68): A wins although B is longer
    probabilities[5:9] = [0.42] * 4
    assert predict_moment(logits_of(probabilities), fps=4.0) == (0.25, 0.75)  # frames 1..2


def test_equal_runs_go_to_the_earliest() -> None:
    curve = np.array([LOW, HIGH, HIGH, LOW, HIGH, HIGH, LOW])
    assert predict_moment(curve, fps=1.0) == (1.0, 3.0)


def test_no_frame_above_threshold_falls_back_to_the_best_frame() -> None:
    probabilities = [0.1, 0.2, 0.35, 0.3, 0.39, 0.05]
    assert predict_moment(logits_of(probabilities), fps=10.0) == (0.4, 0.5)  # frame 4
    # ties among the best frames: the earliest
    assert predict_moment(np.full(5, LOW), fps=5.0) == (0.0, 0.2)


def test_runs_touching_the_edges() -> None:
    assert predict_moment(np.array([HIGH, HIGH, LOW, LOW, LOW]), fps=1.0) == (0.0, 2.0)
    assert predict_moment(np.array([LOW, LOW, LOW, HIGH, HIGH]), fps=1.0) == (3.0, 5.0)
    assert predict_moment(np.full(6, HIGH), fps=3.0) == (0.0, 2.0)  # the whole video
    assert predict_moment(np.array([HIGH]), fps=8.0) == (0.0, 0.125)


def test_threshold_is_inclusive_and_configurable() -> None:
    curve = np.array([-1.0, 0.0, 0.0, -1.0, 2.0, -1.0])  # p = 0.27, 0.5, 0.5, 0.27, 0.88, 0.27
    assert find_probabilities(np.array([0.0]))[0] == 0.5
    assert predict_moment(curve, fps=1.0, threshold=0.5) == (1.0, 3.0)  # mass 1.0 beats 0.88
    assert predict_moment(curve, fps=1.0, threshold=0.6) == (4.0, 5.0)
    assert predict_moment(curve, fps=1.0, threshold=0.2) == (0.0, 6.0)  # every frame passes: one run
    assert predict_moment(curve, fps=1.0, threshold=0.9) == (4.0, 5.0)  # none passes: best frame


def test_extreme_logits_do_not_overflow() -> None:
    assert predict_moment(np.array([-1e6, 1e6, 1e6, -1e6]), fps=1.0) == (1.0, 3.0)


@pytest.mark.parametrize(
    ("curve", "fps", "threshold", "message"),
    [
        (np.array([]), 1.0, 0.4, "non-empty"),
        (np.zeros((2, 3)), 1.0, 0.4, "non-empty"),
        (np.array([0.0, math.nan]), 1.0, 0.4, "finite"),
        (np.array([0.0, math.inf]), 1.0, 0.4, "finite"),
        (np.zeros(3), 0.0, 0.4, "fps"),
        (np.zeros(3), math.nan, 0.4, "fps"),
        (np.zeros(3), 1.0, 1.5, "threshold"),
    ],
)
def test_unusable_inputs_raise(curve: np.ndarray, fps: float, threshold: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        predict_moment(curve, fps, threshold)


def test_ground_expressions_gives_each_expression_its_moment_and_compact_curve() -> None:
    # [FIND] scored frames 1, 3, 5, 7 of an 8-frame video at 2 fps; the curve over every frame is their
    # linear interpolation (constant beyond the ends), as the engine builds it
    find_frames = np.array([1, 3, 5, 7])
    scored = np.array([[LOW, HIGH, HIGH, LOW], [0.0, LOW, LOW, LOW]])
    curves = np.stack([np.interp(np.arange(8), find_frames, row) for row in scored])
    # expression 0: logits LOW LOW 0 HIGH HIGH HIGH 0 LOW -> p >= 0.4 on frames 2..6 -> [1.0, 3.5) s
    # expression 1: logits 0 0 -2.5 LOW ... -> frames 0..1 -> [0.0, 1.0) s
    low, high = round(1 / (1 + math.exp(5.0)), 4), round(1 / (1 + math.exp(-5.0)), 4)
    assert ground_expressions(curves, find_frames, fps=2.0) == [
        ExpressionMoment(1.0, 3.5, [1, 3, 5, 7], [low, high, high, low]),
        ExpressionMoment(0.0, 1.0, [1, 3, 5, 7], [0.5, low, low, low]),
    ]
    assert ground_expressions(curves, find_frames, fps=2.0, threshold=0.6)[0].start == 1.5  # frames 3..5
    with pytest.raises(ValueError, match="within 0..T-1"):
        ground_expressions(curves, np.array([1, 8]), fps=2.0)
