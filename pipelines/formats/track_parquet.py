"""The per-track table of a labeling output: one row per (video, expression), ``tracks/<video_key>.parquet``.

Columns (``TRACK_SCHEMA``):

- ``video_id``, ``expr_id``;
- ``confidence``: the probability that the track is right, the labeling config's calibration
  (``tracks.calibration``, ``actors.track_calibration``) applied to ``features``; null without one;
- ``no_target``: the object is present on no frame (every mask of the expression is empty), or a calibration's
  no-target rule decided so (``TrackCalibration.assess``), and its masks were then written empty;
- ``start``, ``end``: the moment ``[FIND]`` predicts, in seconds (nullable);
- ``anchor_frame``: where propagation started; ``key_frames``; ``reseed_frames``: the key frames where the
  key-frame mask was fed in during propagation (anchor updating); ``cleared_frames``: the key frames where
  Eq. 8 cleared the tracked memory;
- ``pre_update_rles``: one COCO RLE (``size`` [height, width], ``counts``) per entry of ``reseed_frames``, in
  its order: the mask propagation tracked on that frame before anchor updating replaced it with the key-frame
  mask (``actors.engine``), for MomentSeg Table 13's "Anchor mIoU w/o updating" and Correction Ratio
  (``pipelines.bap_diagnostics``);
- ``num_frames``, ``present_frames``: the video's frames and those where the object is present (the
  mask rows' ``present``); ``mean_track_score``: the mean per-frame score over the present frames;
  ``area_mean``, ``area_std``, ``area_max``: mask area as a fraction of the frame over the present frames
  (these four null when no frame is present);
- ``features``: the track's feature vector, named in order by the schema metadata key
  ``vrseg.track_features`` (``actors.track_confidence.FEATURE_NAMES``), from which a calibration is fitted
  once the tracks are scored against ground truth.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from actors.track_confidence import FEATURE_NAMES, TrackStats
from actors.video_rows import ExpressionTrack

FEATURES_METADATA_KEY = b"vrseg.track_features"
RLE_TYPE = pa.struct([pa.field("size", pa.list_(pa.int32()), nullable=False),
                      pa.field("counts", pa.string(), nullable=False)])
TRACK_SCHEMA = pa.schema([
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("expr_id", pa.string(), nullable=False),
    pa.field("confidence", pa.float64()),
    pa.field("no_target", pa.bool_(), nullable=False),
    pa.field("start", pa.float64()),
    pa.field("end", pa.float64()),
    pa.field("anchor_frame", pa.int32(), nullable=False),
    pa.field("key_frames", pa.list_(pa.int32()), nullable=False),
    pa.field("reseed_frames", pa.list_(pa.int32()), nullable=False),
    pa.field("cleared_frames", pa.list_(pa.int32()), nullable=False),
    pa.field("pre_update_rles", pa.list_(RLE_TYPE), nullable=False),
    pa.field("num_frames", pa.int32(), nullable=False),
    pa.field("present_frames", pa.int32(), nullable=False),
    pa.field("mean_track_score", pa.float64()),
    pa.field("area_mean", pa.float64()),
    pa.field("area_std", pa.float64()),
    pa.field("area_max", pa.float64()),
    pa.field("features", pa.list_(pa.float64()), nullable=False),
], metadata={FEATURES_METADATA_KEY: json.dumps(list(FEATURE_NAMES)).encode("utf-8")})


def track_row(video_id: str, track: ExpressionTrack, stats: TrackStats, features: np.ndarray,
              confidence: float | None) -> dict[str, Any]:
    """The ``TRACK_SCHEMA`` row of one expression's track."""
    if len(track.pre_update) != len(track.reseeds):
        raise ValueError(f"expression {track.expr_id!r} of video {video_id!r}: {len(track.pre_update)} pre-update "
                         f"masks for {len(track.reseeds)} re-seeded frames {track.reseeds}")
    return {
        "video_id": video_id, "expr_id": track.expr_id, "confidence": confidence, "no_target": stats.no_target,
        "start": track.moment.start, "end": track.moment.end, "anchor_frame": track.anchor,
        "key_frames": track.key_frames, "reseed_frames": track.reseeds, "cleared_frames": track.cleared,
        "pre_update_rles": [{"size": list(rle["size"]), "counts": rle["counts"]} for rle in track.pre_update],
        "num_frames": stats.num_frames, "present_frames": stats.present_frames,
        "mean_track_score": stats.mean_track_score, "area_mean": stats.area_mean, "area_std": stats.area_std,
        "area_max": stats.area_max, "features": [float(v) for v in features],
    }


def track_table_bytes(rows: Sequence[dict[str, Any]]) -> bytes:
    """``rows`` as one Parquet file (the same rows give the same bytes)."""
    buffer = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(list(rows), schema=TRACK_SCHEMA), buffer, compression="zstd")
    return buffer.getvalue().to_pybytes()
