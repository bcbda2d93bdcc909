"""Score one work item of ``vrseg evaluate``: pure functions of a ``VideoRecord``, a prediction store
and ``pipelines.metrics``, run inside the scoring actors (no Ray here).

An item is one expression (RefVOS protocols, image benchmarks) or one (video, annotator run) of
Ref-DAVIS17's four-run protocol. Each returns the JSON-ready row(s) of the report; a RefVOS expression with
a labeling output's track also gets its BAP measurements (``measure_bap_expression``). Void pixels of the
record (Ref-DAVIS17's 255, ReasonSeg's "ignore") are passed to every metric. A prediction of an
expression holding a frame that is not a frame of its video (``0.png`` where the annotation says
``00000``) is a ``FormatError``, never a silently empty frame.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from actors import rle as rle_codec
from pipelines import bap_diagnostics, metrics
from pipelines.formats import Expression, FormatError, PredictionStore, VideoRecord


def require_known_frames(store: PredictionStore, record: VideoRecord, expr_id: str) -> None:
    """Every frame predicted for the expression is a frame of the video, else a ``FormatError``."""
    foreign = store.foreign_frames(record.video_id, expr_id)
    if foreign:
        raise FormatError(store.uri, f"predicted frame {foreign[0]!r} is not a frame of the video ({len(foreign)} "
                          f"such; the annotation's frames are {record.frame_names[0]!r} .. {record.frame_names[-1]!r})",
                          record.video_id, expr_id)


def _chunks(items: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for begin in range(0, len(items), size):
        yield items[begin : begin + size]


def _predicted_stack(store: PredictionStore, record: VideoRecord, expr_id: str, frames: Sequence[int]) -> np.ndarray:
    empty = np.zeros((record.height, record.width), dtype=bool)
    masks = [store.mask(record.video_id, expr_id, f) for f in frames]
    return np.stack([empty if m is None else m for m in masks])


def _truth_stack(record: VideoRecord, expression: Expression, frames: Sequence[int]) -> np.ndarray:
    return np.stack([record.target_mask(expression, f) for f in frames])


def _void_stack(record: VideoRecord, frames: Sequence[int]) -> np.ndarray | None:
    if record.void is None:
        return None
    return np.stack([record.void_mask(f) for f in frames])


def score_refvos_expression(record: VideoRecord, expression: Expression, store: PredictionStore,
                            chunk_frames: int = 64, worst_frames: int = 4) -> dict[str, Any]:
    """One expression's report row: ``ExpressionResult.to_dict()`` plus ``text``, and ``worst_frames``
    (the indices of its lowest-J frames, at most ``worst_frames``, for the overlays).

    Truth and prediction are decoded ``chunk_frames`` frames at a time over ``record.scored_frames``;
    J and F are the frame means of ``metrics.score_expression`` weighted by chunk length, which is the
    mean over all scored frames.
    """
    frames = record.scored_frames(expression)
    present = store.has_expression(record.video_id, expression.expr_id)
    if present:
        require_known_frames(store, record, expression.expr_id)
    results: list[metrics.ExpressionResult] = []
    frame_j: list[np.ndarray] = []
    for chunk in _chunks(frames, chunk_frames):
        truth, void = _truth_stack(record, expression, chunk), _void_stack(record, chunk)
        predicted = _predicted_stack(store, record, expression.expr_id, chunk) if present else None
        results.append(metrics.score_expression(
            record.video_id, expression.expr_id, predicted, truth, kind=expression.kind,
            type_id=expression.type_id, no_target=not expression.obj_ids, void=void,
        ))
        if predicted is not None:
            frame_j.append(metrics.jaccard_per_frame(predicted, truth, void))
    weights = np.array([r.num_frames for r in results], dtype=np.float64)
    combined = dataclasses.replace(
        results[0],
        J=float(np.dot(weights, [r.J for r in results]) / weights.sum()),
        F=float(np.dot(weights, [r.F for r in results]) / weights.sum()),
        num_frames=int(weights.sum()),
        empty_fraction=None if results[0].empty_fraction is None
        else float(np.dot(weights, [r.empty_fraction or 0.0 for r in results]) / weights.sum()),
    )
    worst: list[int] = []
    if frame_j:
        per_frame = np.concatenate(frame_j)
        worst = [int(frames[i]) for i in np.argsort(per_frame, kind="stable")[:worst_frames]]
    return {**combined.to_dict(), "text": expression.text, "worst_frames": sorted(worst)}


def measure_bap_expression(record: VideoRecord, expression: Expression, store: PredictionStore,
                           track: dict[str, Any]) -> dict[str, Any]:
    """MomentSeg Table 13's measurements of one expression (``pipelines.bap_diagnostics``) from its track
    (``pipelines.evaluate_inputs.read_label_tracks``): the predicted mask and the truth on the anchor frame,
    and on each re-seeded frame the pre-update mask of the track, the predicted mask (the key-frame mask
    written after the update) and the truth; frames without ground truth are skipped. A track naming a frame
    outside the video, or whose pre-update masks disagree with its re-seeded frames or the video's size, is a
    ``FormatError`` naming the tracks file."""
    where, size = track["file"], (record.height, record.width)
    annotated = set(record.scored_frames(expression))
    reseed_frames, rles = list(track["reseed_frames"]), track["pre_update_rles"]
    for frame in [track["anchor_frame"], *reseed_frames]:
        if not 0 <= frame < record.num_frames:
            raise FormatError(where, f"frame {frame} is outside the video's {record.num_frames} frames",
                              record.video_id, expression.expr_id)
    if rles is not None and len(rles) != len(reseed_frames):
        raise FormatError(where, f"{len(rles)} pre-update masks for {len(reseed_frames)} re-seeded frames",
                          record.video_id, expression.expr_id)

    def predicted(frame: int) -> np.ndarray:
        mask = store.mask(record.video_id, expression.expr_id, frame)
        return np.zeros(size, dtype=bool) if mask is None else mask

    anchor_frame = track["anchor_frame"]
    anchor = ((predicted(anchor_frame), record.target_mask(expression, anchor_frame), record.void_mask(anchor_frame))
              if anchor_frame in annotated else None)
    reseeds = None
    if rles is not None:
        reseeds = []
        for frame, rle in zip(reseed_frames, rles, strict=True):
            if frame not in annotated:
                continue
            try:
                before = rle_codec.decode(rle, size)
            except rle_codec.RLEError as exc:
                raise FormatError(where, f"pre-update mask of frame {frame}: {exc}", record.video_id,
                                  expression.expr_id) from None
            reseeds.append((frame, before, predicted(frame), record.target_mask(expression, frame),
                            record.void_mask(frame)))
    return bap_diagnostics.measure_expression(anchor_frame, anchor, reseeds).to_dict()


def score_image_expression(record: VideoRecord, expression: Expression, store: PredictionStore) -> dict[str, Any]:
    """One image expression's report row (a one-frame record): ``ImageResult`` with ``IoU``, ``text``."""
    present = store.has_expression(record.video_id, expression.expr_id)
    if present:
        require_known_frames(store, record, expression.expr_id)
    predicted = store.mask(record.video_id, expression.expr_id, 0) if present else None
    result = metrics.score_image(record.video_id, expression.expr_id, predicted, record.target_mask(expression, 0),
                                 void=record.void_mask(0), kind=expression.kind)
    row = result.to_dict()
    row["IoU"] = row.pop("iou")
    return {**row, "text": expression.text, "worst_frames": [0]}


def score_davis_run(record: VideoRecord, slot: int, store: PredictionStore) -> dict[str, Any]:
    """Ref-DAVIS17 protocol (b) for one video and one annotator run, under both conventions.

    The run's expressions (one per object) give binary masks, used as probabilities 0/1. Returns
    ``rows`` (vrseg: the expressions' objects, ``metrics.score_davis_slot``), ``official`` (the ids of
    frame 0, ``metrics.score_davis_slot_official``), and the objects the two disagree on: ``dropped``
    (described by an expression, id above frame 0's highest) and ``unexpressed`` (in frame 0, no
    expression). Whole-video stacks are built here: Ref-DAVIS17 videos are short (tens of frames).
    """
    if record.annotation is None:
        raise ValueError(f"video {record.video_id!r}: the four-run protocol needs the palette annotation")
    expressions = [e for e in record.expressions if e.slot == slot]
    frames = list(range(record.num_frames))
    obj_ids = [e.obj_ids[0] for e in expressions]
    expr_ids = [e.expr_id for e in expressions]
    probabilities = [
        _predicted_stack(store, record, e.expr_id, frames).astype(np.float32)
        if store.has_expression(record.video_id, e.expr_id) else None
        for e in expressions
    ]
    truth = np.stack([_truth_stack(record, e, frames) for e in expressions])
    rows = metrics.score_davis_slot(record.video_id, slot, obj_ids, expr_ids, probabilities, truth,
                                    _void_stack(record, frames))
    annotation = np.stack([record.annotation.labels(f) for f in frames])
    official = metrics.score_davis_slot_official(record.video_id, slot, obj_ids, expr_ids, probabilities, annotation)
    first_frame_objects = {row.obj_id for row in official}
    return {
        "rows": [row.to_dict() for row in rows],
        "official": [row.to_dict() for row in official],
        "dropped": [o for o in obj_ids if o not in first_frame_objects],
        "unexpressed": sorted(first_frame_objects - set(obj_ids), key=int),
    }
