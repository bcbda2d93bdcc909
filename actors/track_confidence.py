"""What one labeled track looks like as numbers: its per-frame statistics and the feature vector its
confidence is predicted from.

Pure numpy (no torch, no Ray): the labeling writer computes these from a video's spooled masks
(``pipelines.label_writer``), and a calibration is fitted on them (``actors.track_calibration``).

Per-frame inputs of one track (expression) over the video's T frames: ``scores`` (the engine's per-frame
confidence: S^t = sigmoid(SAM2's object-score logit) where tracked, S^p where a key-frame mask was used),
``present`` (the engine's per-frame decision that the object is visible: object-score logit > 0 and a
non-empty mask) and ``areas`` (mask area as a fraction of the frame). ``track_stats`` reduces them to
``TrackStats``; the means and area statistics are over the present frames only, and ``None`` when no frame
is present (a no-target track).

``track_features`` gives the fixed vector ``FEATURE_NAMES`` (a calibration file records these names and
is refused when they differ):

- ``find_max``: the highest ``[FIND]`` relevance probability (sigmoid of the logit) of the expression's
  ``[FIND]`` frames: how strongly the MLLM finds the expression anywhere in the video;
- ``find_contrast``: that maximum minus the mean relevance: a peaked curve (an event) against a flat one;
- ``key_mean`` / ``key_max``: the mean and the highest key-frame prediction confidence S^p
  (sigmoid of SAM2's object-score logit of the mask decoded from ``[SEG]`` on each key frame);
- ``track_mean``: the mean per-frame score over the present frames (0 when none is present);
- ``present_fraction``: the share of the video's frames where the object is present;
- ``area_mean``: the mean mask area fraction over the present frames (0 when none);
- ``area_cv``: the area's coefficient of variation (std / mean) over the present frames (0 when none):
  a stable track keeps its size, a drifting one jumps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

FEATURE_NAMES = ("find_max", "find_contrast", "key_mean", "key_max", "track_mean", "present_fraction",
                 "area_mean", "area_cv")


@dataclass(frozen=True)
class TrackStats:
    """A track's per-frame outputs reduced (see the module docstring); ``None`` fields: no present frame."""

    num_frames: int
    present_frames: int
    mean_track_score: float | None
    area_mean: float | None
    area_std: float | None
    area_max: float | None

    @property
    def no_target(self) -> bool:
        """The model found the object on no frame (every mask of the track is empty)."""
        return self.present_frames == 0


def track_stats(scores: np.ndarray, present: np.ndarray, areas: np.ndarray) -> TrackStats:
    """``TrackStats`` of (T,) per-frame ``scores``, ``present`` flags and mask ``areas`` (fractions of the frame)."""
    scores, present, areas = np.asarray(scores, np.float64), np.asarray(present, bool), np.asarray(areas, np.float64)
    if scores.ndim != 1 or scores.size == 0 or scores.shape != present.shape or scores.shape != areas.shape:
        raise ValueError(f"track_stats needs equal non-empty (T,) arrays, got shapes {scores.shape}, "
                         f"{present.shape}, {areas.shape}")
    count = int(present.sum())
    if count == 0:
        return TrackStats(scores.size, 0, None, None, None, None)
    shown = areas[present]
    return TrackStats(scores.size, count, float(scores[present].mean()), float(shown.mean()), float(shown.std()),
                      float(shown.max()))


def track_features(find_scores: Sequence[float], key_scores: Sequence[float], stats: TrackStats) -> np.ndarray:
    """The (len(FEATURE_NAMES),) float64 feature vector of one track (see the module docstring).

    ``find_scores``: the ``[FIND]`` relevance probabilities at the frames ``[FIND]`` scored; ``key_scores``:
    S^p of each key frame."""
    find, key = np.asarray(find_scores, np.float64), np.asarray(key_scores, np.float64)
    if find.size == 0 or key.size == 0:
        raise ValueError(f"track_features needs [FIND] scores and key-frame scores, got {find.size} and {key.size}")
    area_cv = 0.0 if stats.no_target or not stats.area_mean else stats.area_std / stats.area_mean
    values = [
        find.max(), find.max() - find.mean(), key.mean(), key.max(),
        stats.mean_track_score or 0.0, stats.present_frames / stats.num_frames, stats.area_mean or 0.0, area_cv,
    ]
    return np.asarray(values, dtype=np.float64)
