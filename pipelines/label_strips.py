"""Overlay strips of doubtful tracks: a few frames of a video with one expression's mask painted on them.

``track_strip`` reads the expression's mask rows at ``frames`` evenly spread frames from the video's
``masks/`` Parquet (through its commit marker) and, when the video's source is known (the labeling manifest,
``pipelines.label_output``), the same frames from the video at the mask's size. A video that cannot be read
gives mask-only panels (mid grey background) and says why in ``Strip.note``.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from actors import rle as rle_codec
from actors.decode import DecoderConfig
from actors.frames import open_source
from actors.uri import redact
from actors.video_rows import VideoSource
from pipelines.export import masks_file
from pipelines.html_page import background, enlarge, tint
from pipelines.storage import CommitRecord, OutputStore

MASK_RGB = np.array([230, 40, 200], dtype=np.float32)


@dataclass(frozen=True)
class StripFrame:
    """One panel: the frame index, whether the object is present there, the painted (H, W, 3) image."""

    frame_idx: int
    present: bool
    panel: np.ndarray


@dataclass(frozen=True)
class Strip:
    """A track's panels; ``note`` says why they have no video frames behind them (empty when they do)."""

    frames: tuple[StripFrame, ...]
    note: str = ""


def strip_frames(num_frames: int, count: int) -> list[int]:
    """``count`` frame indices spread evenly over ``num_frames`` frames, first and last included, ascending."""
    return sorted({int(round(i)) for i in np.linspace(0, num_frames - 1, min(count, num_frames))})


def _masks(store: OutputStore, record: CommitRecord, expr_id: str,
           frames: list[int]) -> list[tuple[int, bool, np.ndarray]]:
    """``(frame_idx, present, mask)`` of ``expr_id`` at ``frames`` (those the mask file holds), ascending."""
    relpath = masks_file(record, store.uri(OutputStore.marker_path(record.video_id)))
    table = pq.read_table(io.BytesIO(store.read_bytes(relpath)),
                          columns=["expr_id", "frame_idx", "height", "width", "rle", "present"])
    wanted = pc.is_in(table["frame_idx"], value_set=pa.array(frames, type=table.schema.field("frame_idx").type))
    table = table.filter(pc.and_(pc.equal(table["expr_id"], expr_id), wanted))
    rows = sorted(table.to_pylist(), key=lambda row: row["frame_idx"])
    return [(row["frame_idx"], row["present"] is not False,
             rle_codec.decode({"size": [row["height"], row["width"]], "counts": row["rle"]},
                              (row["height"], row["width"])))
            for row in rows]


def _video_frames(source: VideoSource | None, indices: list[int], size: tuple[int, int],
                  storage_options: Mapping[str, Any] | None, unplaced: str) -> tuple[np.ndarray | None, str]:
    """(N, H, W, 3) frames at ``size``, or None and why not (``unplaced``: why the source is unknown)."""
    if source is None:
        return None, f"video location unknown ({unplaced}): masks only"
    try:
        with open_source(source, storage_options, DecoderConfig()) as video:
            return video.get(indices, size), ""
    except Exception as exc:  # an unreadable video still gets its masks shown
        return None, f"video {redact(source.uri)} unreadable ({type(exc).__name__}): masks only"


def track_strip(store: OutputStore, record: CommitRecord, expr_id: str, source: VideoSource | None,
                frames: int, storage_options: Mapping[str, Any] | None = None,
                unplaced: str = "no labeling manifest") -> Strip:
    """The strip of ``expr_id`` in the committed video ``record`` (see the module docstring); ``unplaced``
    says why ``source`` is None, if it is."""
    num_frames = int(record.extra.get("num_frames") or 0)
    masks = _masks(store, record, expr_id, strip_frames(num_frames, frames)) if num_frames else []
    if not masks:
        return Strip((), "no mask rows for this expression")
    size = masks[0][2].shape
    images, note = _video_frames(source, [m[0] for m in masks], size, storage_options, unplaced)
    panels = tuple(
        StripFrame(frame, present, enlarge(tint(background(None if images is None else images[i], *size), mask,
                                                MASK_RGB)))
        for i, (frame, present, mask) in enumerate(masks))
    return Strip(panels, note)
