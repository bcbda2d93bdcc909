"""MomentSeg Table 13 ("Analysis of Robustness" of BAP) from a labeling output's tracks and the ground truth.

Pure: numpy masks and numbers in, numbers out (``vrseg evaluate`` decodes the masks in its scoring workers,
``pipelines.evaluate_scoring.measure_bap_expression``, and sums here). Per evaluated RefVOS expression that
refers to a target and has a track (``tracks/``, ``pipelines.formats.track_parquet``):

- *Initial Shot Ratio*: the fraction of expressions whose anchor frame (``anchor_frame``, where
  propagation started: MCS's c* in BAP) shows the referred target in the ground truth;
- *Initial mIoU*: the mean over expressions of the IoU of the predicted mask on the anchor frame;
- *Anchor mIoU w/o -> w/ updating*: over the key moments where anchor updating fed the key-frame mask in
  (``reseed_frames``), the mean IoU of the mask propagation had tracked there before the update
  (``pre_update_rles``) and of the mask written after it (the key-frame mask, the output there);
- *Correction Ratio*: "the proportion of frames with IoU < 0.3 that are corrected to IoU > 0.7 via
  updating": of the re-seeded frames whose pre-update IoU is < ``LOW_IOU``, the fraction whose
  post-update IoU is > ``HIGH_IOU`` (both strict, as the paper writes them). The denominator is those
  low-IoU re-seeded frames (not every re-seeded frame): the ratio says how often updating rescues a lost
  track, not how often tracks are lost.

Choices the paper leaves open: IoU is ``pipelines.metrics.jaccard`` (void pixels left out, 1 when both
masks are empty, so an absent target left unsegmented counts as right); the anchor mIoUs and the
Correction Ratio pool the re-seeded frames of all expressions (each frame counts once), the initial
figures average over expressions; frames without ground truth (sparsely annotated benchmarks) are left
out, and expressions without a target (no target to shoot; Table 13 is measured on MeViS val^u, where
every expression has one) or without a track are counted apart. A figure whose denominator is empty is
``None`` with a note saying why, never 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines import metrics

LOW_IOU = 0.3  # Table 13's Correction Ratio: frames below this IoU before updating ...
HIGH_IOU = 0.7  # ... that updating lifts above this one

SUMMARY_KEYS = ("initial_shot_ratio", "initial_miou", "anchor_miou_without_update", "anchor_miou_with_update",
                "correction_ratio")


class DiagnosticsError(ValueError):
    """Masks or measurements handed to the diagnostics disagree (shape, frame count, value range)."""


@dataclass(frozen=True)
class ReseedIoU:
    """One re-seeded frame: the IoU of the mask tracked there before the update and of the one after it."""

    frame: int
    before: float
    after: float


@dataclass(frozen=True)
class ExpressionMeasures:
    """One expression's Table 13 measurements. ``anchor_has_target`` and ``anchor_iou`` are None when the
    anchor frame has no ground truth; ``reseeds`` is None when the track recorded no pre-update masks (an
    output labeled before they were), empty when nothing was re-seeded."""

    anchor_frame: int
    anchor_has_target: bool | None
    anchor_iou: float | None
    reseeds: tuple[ReseedIoU, ...] | None

    def to_dict(self) -> dict[str, Any]:
        return {"anchor_frame": self.anchor_frame, "anchor_has_target": self.anchor_has_target,
                "anchor_iou": self.anchor_iou,
                "reseeds": None if self.reseeds is None else [[r.frame, r.before, r.after] for r in self.reseeds]}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ExpressionMeasures:
        reseeds = raw["reseeds"]
        return cls(int(raw["anchor_frame"]), raw["anchor_has_target"], raw["anchor_iou"],
                   None if reseeds is None else tuple(ReseedIoU(int(f), float(b), float(a)) for f, b, a in reseeds))


def _check_pair(name: str, predicted: np.ndarray, truth: np.ndarray) -> None:
    if predicted.shape != truth.shape or predicted.ndim != 2:
        raise DiagnosticsError(f"{name}: predicted mask {predicted.shape} and truth {truth.shape} must be equal (H, W)")


def measure_expression(anchor_frame: int, anchor: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None,
                       reseeds: Sequence[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]] | None,
                       ) -> ExpressionMeasures:
    """One expression's measurements.

    ``anchor``: (predicted mask, truth, void or None) on the anchor frame, None when it has no ground truth;
    ``reseeds``: per re-seeded frame with ground truth, (frame, pre-update mask, post-update mask, truth,
    void or None); None when the track has no pre-update masks.
    """
    anchor_has_target = anchor_iou = None
    if anchor is not None:
        predicted, truth, void = (np.asarray(anchor[0], dtype=bool), np.asarray(anchor[1], dtype=bool), anchor[2])
        _check_pair(f"anchor frame {anchor_frame}", predicted, truth)
        anchor_has_target = bool(truth.any())
        anchor_iou = metrics.jaccard(predicted, truth, void)
    measured = None
    if reseeds is not None:
        rows = []
        for frame, before, after, truth, void in reseeds:
            before, after, truth = (np.asarray(m, dtype=bool) for m in (before, after, truth))
            _check_pair(f"re-seeded frame {frame} (before updating)", before, truth)
            _check_pair(f"re-seeded frame {frame} (after updating)", after, truth)
            rows.append(ReseedIoU(int(frame), metrics.jaccard(before, truth, void), metrics.jaccard(after, truth, void)))
        measured = tuple(rows)
    return ExpressionMeasures(int(anchor_frame), anchor_has_target, anchor_iou, measured)


def correction_ratio(before: Sequence[float], after: Sequence[float]) -> tuple[float | None, int, int]:
    """(ratio, corrected, low): of the ``low`` frames with IoU < ``LOW_IOU`` before updating, the ``corrected``
    ones have IoU > ``HIGH_IOU`` after it; ratio None when no frame was that low (MomentSeg Table 13)."""
    if len(before) != len(after):
        raise DiagnosticsError(f"{len(before)} IoUs before updating but {len(after)} after")
    low = [a for b, a in zip(before, after, strict=True) if b < LOW_IOU]
    corrected = sum(a > HIGH_IOU for a in low)
    return (corrected / len(low) if low else None), corrected, len(low)


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


def summarize(measures: Sequence[ExpressionMeasures], no_track: int = 0, no_target: int = 0) -> dict[str, Any]:
    """The ``bap_diagnostics`` block of ``report.json``: the Table 13 figures (fractions in [0, 1], or None
    with a note), their denominators, and the evaluated expressions left out (``no_track``, ``no_target``)."""
    anchored = [m for m in measures if m.anchor_iou is not None]
    recorded = [m for m in measures if m.reseeds is not None]
    frames = [r for m in recorded for r in m.reseeds or ()]
    before, after = [r.before for r in frames], [r.after for r in frames]
    ratio, corrected, low = correction_ratio(before, after)
    out: dict[str, Any] = {
        "initial_shot_ratio": _mean([float(bool(m.anchor_has_target)) for m in anchored]),
        "initial_miou": _mean([float(m.anchor_iou) for m in anchored]),  # type: ignore[arg-type]
        "anchor_miou_without_update": _mean(before),
        "anchor_miou_with_update": _mean(after),
        "correction_ratio": ratio,
        "num_expressions": len(measures),
        "num_anchor_frames": len(anchored),
        "num_reseed_frames": len(frames),
        "num_low_iou_reseed_frames": low,
        "num_corrected": corrected,
        "left_out": {"no_track": no_track, "no_target": no_target},
        "notes": [],
    }
    for key in SUMMARY_KEYS:
        value = out[key]
        if value is not None and not 0.0 <= value <= 1.0:
            raise DiagnosticsError(f"{key} {value!r} is not a fraction in [0, 1]")
    notes = out["notes"]
    if len(anchored) < len(measures):
        notes.append(f"{len(measures) - len(anchored)} anchor frames have no ground truth and are left out")
    if len(recorded) < len(measures):
        notes.append(f"{len(measures) - len(recorded)} tracks have no pre-update masks (labeled before they "
                     "were recorded)")
    if recorded and not frames:
        notes.append("no key frame was re-seeded with ground truth on it (a propagation mode without anchor "
                     "updating re-seeds none): no anchor mIoU")
    if frames and low == 0:
        notes.append(f"no re-seeded frame had IoU < {LOW_IOU} before updating: no Correction Ratio")
    return out
