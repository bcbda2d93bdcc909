"""What ``vrseg evaluate`` reads besides the annotations, and the checks that keep input mistakes loud.

Predictions: a labeling output (``<uri>/masks/`` Parquet, committed videos only) or whatever
``pipelines.formats.open_predictions`` recognises; grounding predictions as JSON lines. A labeling
output's ``tracks/`` (anchor, re-seeded frames, pre-update masks) feed the BAP diagnostics
(``read_label_tracks``, ``pipelines.bap_diagnostics``). Checks, run
on the driver before any scoring: every expression has ground truth on at least one frame (a
Ref-YouTube-VOS valid split has none, a mis-nested annotation folder none either), and at least one
expression of the annotations has a prediction (a folder for another split or another layout must
not score 0 with exit status 0). A predicted frame that is not a frame of its video is refused where
the expression is scored (``pipelines.evaluate_scoring``).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from actors.uri import join
from pipelines.formats import Dataset, FormatError, PredictionStore, open_predictions
from pipelines.formats.files import location
from pipelines.label_writer import TRACKS_DIR
from pipelines.storage import OutputStore

LABEL_MASKS_DIR = "masks"
TRACK_COLUMNS = ("video_id", "expr_id", "anchor_frame", "reseed_frames")
PRE_UPDATE_COLUMN = "pre_update_rles"


class CommittedPredictions(PredictionStore):
    """A labeling output's predictions (``<output>/masks/`` Parquet) restricted to committed videos.

    ``vrseg label`` makes a video visible by writing its commit marker last (``pipelines.storage``);
    a video without a marker (a crash mid-video) has no predictions here, so it scores as missing.
    """

    def __init__(self, masks: PredictionStore, committed: set[str]) -> None:
        super().__init__(masks.uri, masks.dataset)
        self.masks, self.committed = masks, committed

    def expressions(self, video_id: str) -> set[str]:
        return self.masks.expressions(video_id) if video_id in self.committed else set()

    def mask(self, video_id: str, expr_id: str, frame: int | str) -> np.ndarray | None:
        return self.masks.mask(video_id, expr_id, frame) if video_id in self.committed else None

    def foreign_frames(self, video_id: str, expr_id: str) -> list[str]:
        return self.masks.foreign_frames(video_id, expr_id) if video_id in self.committed else []


def is_labeling_output(uri: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    """Whether ``uri`` is a ``vrseg label`` output (a folder with ``masks/``)."""
    masks = location(join(uri, LABEL_MASKS_DIR), storage_options)
    return not uri.rstrip("/").endswith(".zip") and masks.fs.isdir(masks.path)


def open_prediction_store(uri: str, dataset: Dataset | None,
                          storage_options: Mapping[str, Any] | None = None) -> PredictionStore:
    """The predictions at ``uri``: a labeling output (``<uri>/masks/`` + commit markers), else whatever
    ``pipelines.formats.open_predictions`` recognises (PNG layout, Parquet folder, CodaLab zip,
    ReferFormer's merged-palette runs)."""
    if is_labeling_output(uri, storage_options):
        masks = location(join(uri, LABEL_MASKS_DIR), storage_options)
        committed = set(OutputStore(uri, storage_options).committed())
        return CommittedPredictions(open_predictions(masks.uri, dataset, storage_options, kind="parquet"), committed)
    return open_predictions(uri, dataset, storage_options)


def read_label_tracks(uri: str, storage_options: Mapping[str, Any] | None = None,
                      ) -> tuple[dict[tuple[str, str], dict[str, Any]], str | None]:
    """The tracks of a labeling output's committed videos, ``(video_id, expr_id) -> {anchor_frame,
    reseed_frames, pre_update_rles, file}`` (``pre_update_rles`` None in tracks written before it existed,
    ``file`` the tracks file's URI), and
    None; or no tracks and the reason there are none (predictions that are not a labeling output, or whose
    committed videos have no ``tracks/`` file). An unreadable tracks file is a ``FormatError`` naming it."""
    if not is_labeling_output(uri, storage_options):
        return {}, ("the predictions are not a vrseg labeling output (no masks/ and tracks/ beside them): there "
                    "are no anchor frames or pre-update masks to diagnose")
    store = OutputStore(uri, storage_options)
    tracks: dict[tuple[str, str], dict[str, Any]] = {}
    files = [f.path for record in store.committed().values() for f in record.files
             if f.path.startswith(f"{TRACKS_DIR}/")]
    for path in files:
        try:
            parquet = pq.ParquetFile(io.BytesIO(store.read_bytes(path)))
            names = set(parquet.schema_arrow.names)
            absent = [c for c in TRACK_COLUMNS if c not in names]
            if absent:
                raise FormatError(store.uri(path), f"a tracks file without columns {absent}")
            columns = [*TRACK_COLUMNS, *([PRE_UPDATE_COLUMN] if PRE_UPDATE_COLUMN in names else [])]
            rows = parquet.read(columns=columns).to_pylist()
        except (OSError, pa.ArrowException) as exc:
            raise FormatError(store.uri(path), f"not a readable tracks Parquet file: {exc}") from None
        for row in rows:
            tracks[(row["video_id"], row["expr_id"])] = {
                "anchor_frame": row["anchor_frame"], "reseed_frames": row["reseed_frames"],
                "pre_update_rles": row.get(PRE_UPDATE_COLUMN), "file": store.uri(path)}
    if not files:
        return {}, "no committed video of the labeling output has a tracks/ file (labeled before tracks were written)"
    return tracks, None


def require_scorable(dataset: Dataset, annotations_uri: str, grounding: bool) -> None:
    """The annotations hold something to score, and every expression ground truth on some frame."""
    if grounding:
        if not dataset.moments:
            raise FormatError(annotations_uri, "the annotations hold no queries to score")
        return
    if not any(record.expressions for record in dataset.videos.values()):
        raise FormatError(annotations_uri, "the annotations hold no expressions to score")
    for record in dataset.videos.values():
        for expression in record.expressions:
            if not record.scored_frames(expression):
                raise FormatError(annotations_uri, "no frame of the video has ground truth for the expression "
                                  "(a split without annotations cannot be scored here)",
                                  record.video_id, expression.expr_id)


def require_some_prediction(dataset: Dataset, store: PredictionStore) -> None:
    """At least one expression of ``dataset`` has a prediction in ``store`` (stops at the first found)."""
    for record in dataset.videos.values():
        if any(store.has_expression(record.video_id, e.expr_id) for e in record.expressions):
            return
    record = next(r for r in dataset.videos.values() if r.expressions)
    count = sum(len(r.expressions) for r in dataset.videos.values())
    frame = "" if record.num_frames == 1 else f"/{record.frame_names[0]}"
    example = f"{record.video_id}/{record.expressions[0].expr_id}{frame}.png"
    raise FormatError(store.uri, f"no prediction matches any of the {count} expressions of the annotations "
                      f"(in the PNG layout the first would be {example!r})")


def read_grounding_predictions(uri: str, dataset: Dataset,
                               storage_options: Mapping[str, Any] | None = None) -> dict[int, tuple[float, float]]:
    """Top-1 ``(start, end)`` per query id from JSON lines ``{"video", "query", "start", "end"}``.

    The first line of a query is its top-1 prediction (later lines are lower-ranked candidates, which
    R@1 ignores); a line whose video disagrees with the annotation's, an unknown query or an interval
    with start > end is an error naming the file and line.
    """
    loc = location(uri, storage_options)
    try:
        text = loc.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(loc.uri, f"not UTF-8 text: {exc}") from None
    videos = {moment.query_id: moment.video_id for moment in dataset.moments}
    top1: dict[int, tuple[float, float]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        key = f"line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FormatError(loc.uri, f"not valid JSON: {exc.msg}", None, key) from None
        if not isinstance(row, dict) or any(k not in row for k in ("video", "query", "start", "end")):
            raise FormatError(loc.uri, "expected an object with 'video', 'query', 'start', 'end'", None, key)
        video, query = row["video"], row["query"]
        if isinstance(query, bool) or not isinstance(query, int) or query not in videos:
            raise FormatError(loc.uri, f"'query' {query!r} is not a line index of the annotation file", video, key)
        if video != videos[query]:
            raise FormatError(loc.uri, f"query {query} belongs to video {videos[query]!r}", video, key)
        start, end = row["start"], row["end"]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in (start, end)):
            raise FormatError(loc.uri, f"'start'/'end' must be finite numbers, got {start!r} {end!r}", video, key)
        if start > end:
            raise FormatError(loc.uri, f"start {start} is after end {end}", video, key)
        top1.setdefault(query, (float(start), float(end)))
    return top1
