"""The last labeling stage: write one video's masks, then its commit marker (ARCHITECTURE step 7).

Per video, under the output root (``pipelines.storage.OutputStore``: atomic writes, retries):

- ``masks/<video_key>.parquet``: one row per (expression, frame) in ``PREDICTION_SCHEMA``
  (``video_id, expr_id, frame_idx, frame_name, height, width, rle, score``), expressions in manifest order,
  frames ascending; the same inputs give the same bytes, so a video redone after a crash is rewritten
  identically under the same name;
- with ``png``: ``png/<video>/<expr_id>/<frame_name>.png`` (the layout the official evaluators read; each
  ``/``-separated part of the id passed through ``video_key`` so nothing lands outside the root);
- then ``_committed/<video_key>.json`` listing those files: the video becomes visible at once.

The stage returns one small summary row per video (``SUMMARY_SCHEMA``) for the driver's progress and
run record; failures of earlier stages pass through as summary rows with their failure.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from actors import rle as rle_codec
from actors.video_rows import Failure, VideoMasks, VideoSource, payload_of
from pipelines.formats import PREDICTION_SCHEMA
from pipelines.formats.files import encode_mask_png
from pipelines.storage import OutputStore, RetryPolicy, WrittenFile, check_relative, video_key

MASKS_DIR = "masks"
PNG_DIR = "png"
SUMMARY_SCHEMA = pa.schema([
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("failure", pa.string(), nullable=False),
    pa.field("timings", pa.string(), nullable=False),
    pa.field("num_expressions", pa.int64(), nullable=False),
    pa.field("num_frames", pa.int64(), nullable=False),
])


def masks_path(video_id: str) -> str:
    return f"{MASKS_DIR}/{video_key(video_id)}.parquet"


def png_path(video_id: str, expr_id: str, frame_name: str) -> str:
    """``png/<video>/<expr_id>/<frame>.png`` with every path part made safe by ``video_key``."""
    parts = [video_key(part) for part in video_id.split("/") if part]
    return check_relative("/".join([PNG_DIR, *parts, video_key(expr_id), f"{video_key(frame_name)}.png"]))


def masks_table(video_id: str, masks: VideoMasks, source: VideoSource) -> pa.Table:
    """The Parquet rows of one video (see the module docstring)."""
    rows: dict[str, list[Any]] = {name: [] for name in PREDICTION_SCHEMA.names}
    for track in masks.tracks:
        for frame_idx, (counts, score) in enumerate(zip(track.counts, track.scores.tolist(), strict=True)):
            rows["video_id"].append(video_id)
            rows["expr_id"].append(track.expr_id)
            rows["frame_idx"].append(frame_idx)
            rows["frame_name"].append(source.frame_name(frame_idx))
            rows["height"].append(masks.height)
            rows["width"].append(masks.width)
            rows["rle"].append(counts)
            rows["score"].append(float(score))
    return pa.table(rows, schema=PREDICTION_SCHEMA)


def parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


class VideoWriter:
    """Ray Data stage (small CPU actor pool): ``VideoMasks`` rows -> files + commit marker -> summary rows."""

    def __init__(self, output_uri: str, storage_options: Mapping[str, Any] | None, png: bool,
                 retry: RetryPolicy | None = None) -> None:
        self.store = OutputStore(output_uri, storage_options, retry)
        self.png = png

    def write(self, row: dict[str, Any]) -> tuple[int, int]:
        masks: VideoMasks = payload_of(row)
        video_id = row["video_id"]
        source = VideoSource.from_json(row["source"])
        files: list[WrittenFile] = []
        if self.png:
            size = (masks.height, masks.width)
            for track in masks.tracks:
                for frame_idx, counts in enumerate(track.counts):
                    mask = rle_codec.decode({"size": list(size), "counts": counts}, size)
                    files.append(self.store.write_bytes(png_path(video_id, track.expr_id, source.frame_name(frame_idx)),
                                                        encode_mask_png(np.asarray(mask, dtype=bool))))
        files.append(self.store.write_bytes(masks_path(video_id), parquet_bytes(masks_table(video_id, masks, source))))
        extra = {
            "num_frames": masks.num_frames, "fps": masks.fps, "height": masks.height, "width": masks.width,
            "expressions": [
                {"expr_id": t.expr_id, "anchor": t.anchor, "key_frames": t.key_frames, "reseeded": t.reseeded}
                for t in masks.tracks
            ],
        }
        self.store.commit(video_id, files, extra)
        return len(masks.tracks), masks.num_frames

    def summary(self, row: dict[str, Any]) -> dict[str, Any]:
        out = {"video_id": row["video_id"], "failure": row["failure"], "timings": row["timings"],
               "num_expressions": 0, "num_frames": 0}
        if row["failure"]:
            return out
        timings = json.loads(row["timings"])
        start = time.perf_counter()
        try:
            out["num_expressions"], out["num_frames"] = self.write(row)
        except Exception as exc:  # a video that cannot be written is an error row, not the end of the job
            out["failure"] = Failure.of("write", exc).to_json()
        timings["write"] = time.perf_counter() - start
        out["timings"] = json.dumps(timings)
        return out

    def __call__(self, batch: pa.Table) -> pa.Table:
        return pa.Table.from_pylist([self.summary(row) for row in batch.to_pylist()], schema=SUMMARY_SCHEMA)
