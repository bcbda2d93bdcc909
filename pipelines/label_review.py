"""Which labels a person should look at first: the review order of a labeling output's tracks (pure).

Every track (one row of ``tracks/``, ``pipelines.formats.track_parquet``) gets a review score:

- its ``confidence`` when every track of the output has one (the run named a fitted calibration,
  ``tracks.calibration``): a probability that the track is right;
- otherwise, for every track alike (so that the order compares like with like), the **uncalibrated** fallback
  ``mean_track_score``: SAM2's mean per-frame score over the frames where the object is present, 0 for a
  no-target track (present on no frame). It ranks tracks but is no probability; ``score_kind`` says which.

The review list is the ``count`` tracks with the lowest score, lowest first, ties broken by video id then
expression id (deterministic). Each item says why it is doubtful, in machine-readable ``reasons`` (all that
apply, in this order) and ``reason`` (the first):

- ``no_target``: the model says the object is on no frame (every mask empty);
- ``low_confidence``: score below ``LOW_SCORE``;
- ``track_drops``: present on fewer than ``MIN_PRESENT_FRACTION`` of the video's frames (not no-target);
- ``unstable_area``: the mask area's coefficient of variation over the present frames above ``MAX_AREA_CV``;
- ``lowest_score``: none of the above: listed only for being among the lowest.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

LOW_SCORE = 0.5
MIN_PRESENT_FRACTION = 0.5
MAX_AREA_CV = 0.5
ScoreKind = Literal["confidence", "mean_track_score"]
REASONS = ("no_target", "low_confidence", "track_drops", "unstable_area", "lowest_score")


@dataclass(frozen=True, slots=True)
class Track:
    """What the review needs of one track (a ``tracks/`` row) and its expression's text (None: unknown)."""

    video_id: str
    expr_id: str
    text: str | None
    confidence: float | None
    no_target: bool
    num_frames: int
    present_frames: int
    mean_track_score: float | None
    area_mean: float | None
    area_std: float | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any], text: str | None) -> Track:
        """From a ``TRACK_SCHEMA`` row (extra columns ignored)."""
        return cls(row["video_id"], row["expr_id"], text, row["confidence"], bool(row["no_target"]),
                   int(row["num_frames"]), int(row["present_frames"]), row["mean_track_score"], row["area_mean"],
                   row["area_std"])


def score_kind(tracks: Iterable[Track]) -> ScoreKind:
    """``confidence`` when every track has one, else the uncalibrated fallback ``mean_track_score``."""
    return "confidence" if all(t.confidence is not None for t in tracks) else "mean_track_score"


def review_score(track: Track, kind: ScoreKind) -> float:
    """The track's score of ``kind`` (the fallback is 0 where no frame is present)."""
    if kind == "confidence":
        return float(track.confidence)  # type: ignore[arg-type] - score_kind checked every track has one
    return float(track.mean_track_score or 0.0)


def reasons(track: Track, score: float) -> list[str]:
    """Why ``track`` (with review score ``score``) is doubtful (see the module docstring), never empty."""
    found = []
    if track.no_target:
        found.append("no_target")
    if score < LOW_SCORE:
        found.append("low_confidence")
    if not track.no_target and track.present_frames < MIN_PRESENT_FRACTION * track.num_frames:
        found.append("track_drops")
    if track.area_mean and track.area_std is not None and track.area_std / track.area_mean > MAX_AREA_CV:
        found.append("unstable_area")
    return found or ["lowest_score"]


def review_order(tracks: Sequence[Track], kind: ScoreKind) -> list[tuple[float, Track]]:
    """``(score, track)`` lowest score first, ties by video id then expression id."""
    scored = [(review_score(t, kind), t) for t in tracks]
    return sorted(scored, key=lambda item: (item[0], item[1].video_id, item[1].expr_id))


def review_item(track: Track, score: float, kind: ScoreKind) -> dict[str, Any]:
    """One ``review.jsonl`` object: ``video``, ``expr_id``, ``expression``, ``confidence`` (null when
    uncalibrated), ``score`` and ``score_kind`` (what ``score`` is), ``reason`` and ``reasons``."""
    why = reasons(track, score)
    return {"video": track.video_id, "expr_id": track.expr_id, "expression": track.text,
            "confidence": track.confidence, "score": score, "score_kind": kind, "reason": why[0], "reasons": why}


def review_list(tracks: Sequence[Track], count: int) -> list[dict[str, Any]]:
    """The ``count`` lowest-scoring tracks as ``review_item`` objects, lowest first."""
    kind = score_kind(tracks)
    return [review_item(track, score, kind) for score, track in review_order(tracks, kind)[:count]]
