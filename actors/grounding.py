"""Temporal sentence grounding: the moment ``[FIND]`` points at, from its relevance curve (pure numpy).

MomentSeg (3.2.1, Appendix E.4) scores every frame with sigma(l_j), the sigmoid of the ``[FIND]`` logit
l_j = cos / tau (Eq. 5), and keeps the frames whose probability reaches the post-processing threshold
theta = 0.4 (Table 21: the best balance of recall and precision on Charades-STA and ActivityNet). The
paper does not say how a (start, end) is read off the kept frames when they do not form one interval,
nor what happens when no frame reaches theta; ``predict_moment`` documents the choices made here. (The
authors' code, ``find_longest_left_right_index``, keeps the longest run above theta of a curve smoothed
with sigma = 1 and falls back to the whole video; here the curve is used as scored and the run with the
most probability mass wins, see ``predict_moment``.)

``ground_expressions`` is what labeling and ``vrseg ground`` write per expression: the moment and the
compact curve it was read from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

FIND_THRESHOLD = 0.4  # theta of MomentSeg Appendix E.4


def find_probabilities(relevance_logits: np.ndarray) -> np.ndarray:
    """sigma(l) of a ``[FIND]`` logit curve, computed as (1 + tanh(l / 2)) / 2 (no overflow for any l)."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(relevance_logits, dtype=np.float64)))


def predict_moment(relevance_logits: np.ndarray, fps: float, threshold: float = FIND_THRESHOLD) -> tuple[float, float]:
    """The (start, end) in seconds of the moment a (T,) ``[FIND]`` logit curve over every frame points at.

    Frame t spans [t / fps, (t + 1) / fps) seconds. With p = sigmoid(logits):

    - the frames with p >= ``threshold`` form contiguous runs; the run with the largest summed p wins
      (the earliest of equal sums), so a long confident stretch beats an isolated spike and a gap
      below the threshold splits two events instead of bridging them;
    - when no frame reaches the threshold, the single frame of highest p (the earliest of equal ones)
      is the moment, so every query gets a prediction (R@1 needs one).

    The result is ``(first / fps, (last + 1) / fps)`` of the chosen run. Raises ``ValueError`` on an
    empty, non-1-D or non-finite curve, a non-positive ``fps`` or a threshold outside [0, 1].
    """
    logits = np.asarray(relevance_logits, dtype=np.float64)
    if logits.ndim != 1 or logits.size == 0:
        raise ValueError(f"relevance_logits must be a non-empty (T,) curve, got shape {logits.shape}")
    if not np.all(np.isfinite(logits)):
        raise ValueError("relevance_logits must be finite (no NaN or infinity)")
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive finite number, got {fps}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    probabilities = find_probabilities(logits)
    above = probabilities >= threshold
    if not above.any():
        best = int(np.argmax(probabilities))
        return best / fps, (best + 1) / fps
    edges = np.diff(np.concatenate([[0], above.astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)  # run i covers [starts[i], stops[i])
    mass = [probabilities[a:b].sum() for a, b in zip(starts, stops, strict=True)]
    best = int(np.argmax(mass))
    return int(starts[best]) / fps, int(stops[best]) / fps


CURVE_DECIMALS = 4  # of the compact curve's probabilities


@dataclass(frozen=True)
class ExpressionMoment:
    """One expression's predicted moment (seconds) and its compact ``[FIND]`` curve: ``find_scores`` =
    sigma(l) at the ``find_frames`` ``[FIND]`` scored (rounded to ``CURVE_DECIMALS``), from which the
    per-frame curve is the linear interpolation (``actors.engine.interpolate_relevance``)."""

    start: float
    end: float
    find_frames: list[int]
    find_scores: list[float]


def ground_expressions(relevance_logits: np.ndarray, find_frames: np.ndarray, fps: float,
                       threshold: float = FIND_THRESHOLD) -> list[ExpressionMoment]:
    """Per row of the (E, T) ``[FIND]`` logit curves over every frame (interpolated from the frames
    ``find_frames``, where they equal the scored logits): ``predict_moment`` on the whole curve, and the
    curve's probabilities at ``find_frames``."""
    curves = np.asarray(relevance_logits, dtype=np.float64)
    frames = np.asarray(find_frames, dtype=np.int64)
    if curves.ndim != 2 or frames.ndim != 1 or frames.size == 0 or frames.min() < 0 or frames.max() >= curves.shape[1]:
        raise ValueError(f"need (E, T) curves and [FIND] frames within 0..T-1, got shapes {curves.shape} "
                         f"and {frames.tolist()[:10]}")
    out = []
    for curve in curves:
        start, end = predict_moment(curve, fps, threshold)
        scores = np.round(find_probabilities(curve[frames]), CURVE_DECIMALS)
        out.append(ExpressionMoment(start, end, frames.tolist(), scores.tolist()))
    return out
