"""Overlay videos of a labeling output for a person to look at: the mask tinted over each frame, the
expression as a caption (``vrseg label --overlays N``).

One mp4 per (video, expression) under ``overlays/<video_key>/<expr_key>.mp4``, frames shown ``side`` pixels
on the longer side (small videos enlarged so the caption stays readable; masks resized with nearest
neighbour). Frames are streamed in
chunks, so a long video costs one chunk of memory.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from actors import rle as rle_codec
from actors.decode import DecoderConfig
from actors.frames import open_source
from actors.uri import join
from actors.video_rows import VideoSource
from pipelines.label_writer import masks_path
from pipelines.storage import OutputStore, video_key
from pipelines.video_io import write_mp4

OVERLAYS_DIR = "overlays"
_TINT = np.array([255, 40, 160], dtype=np.float32)
_ALPHA = 0.5
_CAPTION_CHARS = 90


def _caption(frame: np.ndarray, text: str, frame_idx: int) -> np.ndarray:
    image = Image.fromarray(frame)
    draw = ImageDraw.Draw(image)
    label = f"{frame_idx}: {text[:_CAPTION_CHARS]}"
    box = draw.textbbox((2, 2), label)
    draw.rectangle((0, 0, box[2] + 2, box[3] + 2), fill=(0, 0, 0))
    draw.text((2, 2), label, fill=(255, 255, 255))
    return np.asarray(image)


def display_size(height: int, width: int, side: int) -> tuple[int, int]:
    """``(height, width)`` scaled (up or down, aspect kept) so that the longer side is ``side``."""
    scale = side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def overlay_frames(source: VideoSource, counts: list[str], size: tuple[int, int], text: str,
                   storage_options: Mapping[str, Any] | None, decoder: DecoderConfig,
                   side: int) -> Iterator[np.ndarray]:
    """The frames of one expression's overlay video, one at a time."""
    with open_source(source, storage_options, decoder) as video:
        shown = display_size(video.height, video.width, side)
        for chunk in video.stream(0, "forward", shown, 32):
            for frame_idx, frame in zip(chunk.indices.tolist(), chunk.frames, strict=True):
                mask = rle_codec.decode({"size": list(size), "counts": counts[frame_idx]}, size)
                mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(shown[::-1], Image.NEAREST)) > 0
                tinted = frame.astype(np.float32)
                tinted[mask] = (1 - _ALPHA) * tinted[mask] + _ALPHA * _TINT
                yield _caption(tinted.astype(np.uint8), text, frame_idx)


def write_overlays(output_uri: str, items: list[tuple[str, VideoSource, str, str]], count: int,
                   storage_options: Mapping[str, Any] | None, decoder: DecoderConfig,
                   side: int = 480) -> list[str]:
    """Overlay videos for the first ``count`` of ``items`` = ``(video_id, source, expr_id, text)`` whose video
    is committed; returns their URIs."""
    store = OutputStore(output_uri, storage_options)
    committed = store.committed()
    written: list[str] = []
    tables: dict[str, dict[str, Any]] = {}
    for video_id, source, expr_id, text in items:
        if len(written) >= count:
            break
        if video_id not in committed:
            continue
        if video_id not in tables:
            tables[video_id] = pq.read_table(io.BytesIO(store.read_bytes(masks_path(video_id)))).to_pydict()
        table = tables[video_id]
        rows = [i for i, e in enumerate(table["expr_id"]) if e == expr_id]
        rows.sort(key=lambda i: table["frame_idx"][i])
        counts = [table["rle"][i] for i in rows]
        size = (table["height"][rows[0]], table["width"][rows[0]])
        uri = join(output_uri, OVERLAYS_DIR, video_key(video_id), f"{video_key(expr_id)}.mp4")
        fps = float(committed[video_id].extra.get("fps") or 8.0)
        write_mp4(overlay_frames(source, counts, size, text, storage_options, decoder, side), uri, fps,
                  storage_options)
        written.append(uri)
    return written
