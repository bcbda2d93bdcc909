"""Writing one video's labels: its mask and track files as propagation finishes, then its commit marker
(ARCHITECTURE step 7).

Per video, under the output root (``pipelines.storage.OutputStore``: atomic writes, retries):

- ``masks/<video_key>.parquet``: one row per (expression, frame) in ``PREDICTION_SCHEMA``
  (``video_id, expr_id, frame_idx, frame_name, height, width, rle, score, present``: ``present`` is the
  engine's decision that the object is on the frame, and the mask is empty where it is not), expressions
  in manifest order, frames ascending, in row groups of at most ``ROW_GROUP_ROWS`` rows and about
  ``ROW_GROUP_BYTES`` of RLE;
- ``tracks/<video_key>.parquet``: one row per expression in ``TRACK_SCHEMA``
  (``pipelines.formats.track_parquet``): confidence (with a calibration, else null), ``no_target``, the
  moment, anchor, key, re-seed and cleared frames, the mean tracking score and mask area statistics over
  the present frames, and the feature vector the confidence is predicted from
  (``actors.track_confidence``), all computed from the same spooled masks as the mask rows. A track is
  no-target when the engine found its object on no frame or, with a calibration holding a no-target rule,
  when the rule decides so (``TrackCalibration.assess``); the masks of a track decided no-target are
  written empty (``present`` false) on every frame, its statistics are those of that empty track, and its
  features stay those of the masks the engine produced (what the decision was made from);
- with ``png``: ``png/<video>/<expr_id>/<frame_name>.png`` (the layout the official evaluators read; each
  ``/``-separated part of the id passed through ``video_key`` so nothing lands outside the root);
- then ``_committed/<video_key>.json`` listing those files: the video becomes visible at once. Its
  ``extra`` holds the video's geometry and, per expression, the predicted moment (``moment``: [start, end]
  seconds), the compact ``[FIND]`` curve it was read from (``find_frames``, ``find_scores``: sigma of the
  logits at the frames ``[FIND]`` scored), where propagation started (``anchor``), the ``key_frames`` and
  the key frames where Eq. 8 cleared memory (``cleared``).

The same inputs give the same bytes, so a video redone after a crash is rewritten identically under the
same names.

``MaskFileWriter`` writes the files. The ``Propagator`` calls it (injected, so ``actors`` never imports
``pipelines``) with the video's ``MaskSpool`` and tracks the moment propagation ends: the masks are read
from the spool one at a time into a local Parquet file (one row group in memory) that is then uploaded, so
neither the object store nor any process ever holds a whole long video's masks (the track statistics keep
one area per expression and frame, read in a first pass over the spool so that the no-target decisions are
known before any mask is written). ``VideoWriter``, the last stage, writes the commit marker naming
those files and returns one small summary row per video (``SUMMARY_SCHEMA``) for the driver's progress and
run record; failures of earlier stages pass through as summary rows with their failure.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from actors import rle as rle_codec
from actors.mask_spool import MaskSpool, SpooledMask
from actors.track_calibration import TrackCalibration
from actors.track_confidence import track_features, track_stats
from actors.video_rows import ExpressionTrack, VideoOutput, VideoSource, failure_json, payload_of
from pipelines.formats import PREDICTION_SCHEMA
from pipelines.formats.files import encode_mask_png
from pipelines.formats.track_parquet import track_row, track_table_bytes
from pipelines.storage import OutputStore, RetryPolicy, WrittenFile, check_relative, video_key

MASKS_DIR = "masks"
TRACKS_DIR = "tracks"
PNG_DIR = "png"
ROW_GROUP_ROWS = 4096
ROW_GROUP_BYTES = 4 << 20  # of RLE text: noisy masks of an untrained model run to ~12 KB each
SUMMARY_SCHEMA = pa.schema([
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("failure", pa.string(), nullable=False),
    pa.field("timings", pa.string(), nullable=False),
    pa.field("num_expressions", pa.int64(), nullable=False),
    pa.field("num_frames", pa.int64(), nullable=False),
    pa.field("store_fallback", pa.bool_(), nullable=False),
])


def masks_path(video_id: str) -> str:
    return f"{MASKS_DIR}/{video_key(video_id)}.parquet"


def tracks_path(video_id: str) -> str:
    return f"{TRACKS_DIR}/{video_key(video_id)}.parquet"


def png_path(video_id: str, expr_id: str, frame_name: str) -> str:
    """``png/<video>/<expr_id>/<frame>.png`` with every path part made safe by ``video_key``."""
    parts = [video_key(part) for part in video_id.split("/") if part]
    return check_relative("/".join([PNG_DIR, *parts, video_key(expr_id), f"{video_key(frame_name)}.png"]))


class MaskFileWriter:
    """Writes a video's spooled masks and its tracks as its files (see the module docstring); picklable, so
    Ray Data can hand it to every ``Propagator``. ``calibration``: gives the tracks their ``confidence``."""

    def __init__(self, output_uri: str, storage_options: Mapping[str, Any] | None, png: bool,
                 retry: RetryPolicy | None = None, calibration: TrackCalibration | None = None) -> None:
        self.output_uri, self.storage_options, self.png, self.retry = output_uri, storage_options, png, retry
        self.calibration = calibration
        self._store: OutputStore | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_store": None}

    @property
    def store(self) -> OutputStore:
        if self._store is None:
            self._store = OutputStore(self.output_uri, self.storage_options, self.retry)
        return self._store

    def write(self, video_id: str, source: VideoSource, size: tuple[int, int], tracks: list[ExpressionTrack],
              spool: MaskSpool) -> list[WrittenFile]:
        """The video's files (optional PNGs, the masks' Parquet, then the tracks'), written from ``spool``;
        ``tracks[e]`` is the spool's expression ``e``."""
        files: list[WrittenFile] = []
        expr_ids = [track.expr_id for track in tracks]
        track_rows, emptied = self.track_rows(video_id, tracks, spool, spool_areas(spool, size))
        if self.png:
            for mask in _written_masks(spool, size, emptied):
                pixels = rle_codec.decode({"size": list(size), "counts": mask.counts}, size)
                relpath = png_path(video_id, expr_ids[mask.expression], source.frame_name(mask.frame))
                files.append(self.store.write_bytes(relpath, encode_mask_png(np.asarray(pixels, dtype=bool))))
        with tempfile.TemporaryDirectory(prefix="vrseg-write-") as scratch:
            local = os.path.join(scratch, "masks.parquet")
            with pq.ParquetWriter(local, PREDICTION_SCHEMA, compression="zstd") as parquet:
                for rows in _row_groups(video_id, source, size, expr_ids, _written_masks(spool, size, emptied)):
                    parquet.write_table(pa.table(rows, schema=PREDICTION_SCHEMA))
            files.append(self.store.put_file(local, masks_path(video_id)))
        files.append(self.store.write_bytes(tracks_path(video_id), track_table_bytes(track_rows)))
        return files

    def track_rows(self, video_id: str, tracks: list[ExpressionTrack], spool: MaskSpool,
                   areas: np.ndarray) -> tuple[list[dict[str, Any]], set[int]]:
        """The tracks' rows (per expression its statistics over the spooled frames, its features and, with a
        calibration, its confidence and no-target decision) and the expressions whose masks are to be written
        empty (decided no-target while the engine found the object somewhere); ``areas`` (E, T): mask areas
        as fractions of the frame."""
        rows, emptied = [], set()
        for e, track in enumerate(tracks):
            stats = track_stats(spool.scores(e), spool.present(e), areas[e])
            features = track_features(track.moment.find_scores, track.key_scores, stats)
            confidence = None
            if self.calibration is not None:
                confidence, no_target = self.calibration.assess(features, stats.no_target)
                if no_target and not stats.no_target:
                    emptied.add(e)
                    absent = np.zeros(spool.num_frames)
                    stats = track_stats(spool.scores(e), absent.astype(bool), absent)
            rows.append(track_row(video_id, track, stats, features, confidence))
        return rows, emptied


def spool_areas(spool: MaskSpool, size: tuple[int, int]) -> np.ndarray:
    """(E, T) area of every spooled mask as a fraction of the frame."""
    areas = np.zeros((spool.num_expressions, spool.num_frames), dtype=np.float64)
    pixels = size[0] * size[1]
    for mask in spool.rows():
        areas[mask.expression, mask.frame] = rle_codec.area({"size": list(size), "counts": mask.counts}) / pixels
    return areas


def _written_masks(spool: MaskSpool, size: tuple[int, int], emptied: set[int]) -> Iterator[SpooledMask]:
    """The spool's masks as written: those of the ``emptied`` expressions empty and not present."""
    blank = rle_codec.encode(np.zeros(size, dtype=bool))["counts"] if emptied else ""
    for mask in spool.rows():
        yield dataclasses.replace(mask, counts=blank, present=False) if mask.expression in emptied else mask


def _row_groups(video_id: str, source: VideoSource, size: tuple[int, int], expr_ids: list[str],
                masks: Iterator[SpooledMask]) -> Iterator[dict[str, list[Any]]]:
    """The Parquet rows of one video's ``masks`` (see the module docstring), a row group at a time."""
    rows: dict[str, list[Any]] = {name: [] for name in PREDICTION_SCHEMA.names}
    rle_bytes = 0
    for mask in masks:
        rows["video_id"].append(video_id)
        rows["expr_id"].append(expr_ids[mask.expression])
        rows["frame_idx"].append(mask.frame)
        rows["frame_name"].append(source.frame_name(mask.frame))
        rows["height"].append(size[0])
        rows["width"].append(size[1])
        rows["rle"].append(mask.counts)
        rows["score"].append(mask.score)
        rows["present"].append(mask.present)
        rle_bytes += len(mask.counts)
        if len(rows["rle"]) == ROW_GROUP_ROWS or rle_bytes >= ROW_GROUP_BYTES:
            yield rows
            rows, rle_bytes = {name: [] for name in PREDICTION_SCHEMA.names}, 0
    if rows["rle"]:
        yield rows


class VideoWriter:
    """Ray Data stage (small CPU actor pool): ``VideoOutput`` rows (``VideoMasks`` of labeling,
    ``VideoMoments`` of grounding) -> commit marker -> summary rows."""

    def __init__(self, output_uri: str, storage_options: Mapping[str, Any] | None,
                 retry: RetryPolicy | None = None) -> None:
        self.store = OutputStore(output_uri, storage_options, retry)

    def write(self, row: dict[str, Any]) -> VideoOutput:
        output: VideoOutput = payload_of(row)
        self.store.commit(row["video_id"], output.files, output.commit_extra())
        return output

    def summary(self, row: dict[str, Any]) -> dict[str, Any]:
        out = {"video_id": row["video_id"], "failure": row["failure"], "timings": row["timings"],
               "num_expressions": 0, "num_frames": 0, "store_fallback": False}
        if row["failure"]:
            return out
        timings = json.loads(row["timings"])
        start = time.perf_counter()
        try:
            output = self.write(row)
            out.update(num_expressions=output.num_expressions, num_frames=output.num_frames,
                       store_fallback=output.store_fallback)
        except Exception as exc:  # a video that cannot be written is an error row, not the end of the job
            out["failure"] = failure_json("write", row["video_id"], exc)
        timings["write"] = time.perf_counter() - start
        out["timings"] = json.dumps(timings)
        return out

    def __call__(self, batch: pa.Table) -> pa.Table:
        return pa.Table.from_pylist([self.summary(row) for row in batch.to_pylist()], schema=SUMMARY_SCHEMA)
