"""Encode RGB frames to an H.264 (yuv420p) mp4 at any fsspec URI, one frame at a time.

Frames are consumed lazily from an iterable, so a video of thousands of frames never sits in memory.
The mp4 muxer needs a seekable file to write its index (``moov`` atom), and object stores are not
seekable, so the video is encoded into a local temporary file and then copied to the URI in one put
(which also means a reader never sees a half-written video at the URI).

Odd dimensions: yuv420p subsamples chroma 2x2 and libx264 rejects odd widths and heights. A frame
with an odd side is padded to the next even size by repeating its last row/column (edge padding,
so no synthetic border colour bleeds into the chroma of the real pixels); the original frame is the
top-left ``height x width`` of the decoded video. ``EncodedVideo`` reports both sizes. Cropping
instead would silently drop real pixels that masks may refer to, so it is not offered.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import numpy as np

from actors.uri import filesystem_for


@dataclass(frozen=True)
class EncodedVideo:
    """What was written: frame count, the frames' size, the encoded (even) size, rate and bytes."""

    uri: str
    num_frames: int
    height: int
    width: int
    encoded_height: int
    encoded_width: int
    fps: float
    num_bytes: int


def even_size(height: int, width: int) -> tuple[int, int]:
    """The encoded size of a ``height x width`` frame: each side rounded up to even."""
    return height + height % 2, width + width % 2


def _pad_to_even(frame: np.ndarray) -> np.ndarray:
    height, width = frame.shape[:2]
    pad_h, pad_w = height % 2, width % 2
    if not (pad_h or pad_w):
        return frame
    return np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def _encode_to_file(
    frames: Iterable[np.ndarray], path: str, fps: float, crf: int, preset: str, uri: str
) -> tuple[int, int, int]:
    """Encode ``frames`` into the local file ``path``; returns (num_frames, height, width)."""
    num_frames, size = 0, None
    with av.open(path, mode="w", format="mp4") as container:
        stream = None
        for frame in frames:
            if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
                raise ValueError(f"{uri}: frame {num_frames} must be uint8 (H, W, 3), got {frame.dtype} {frame.shape}")
            if size is None:
                size = frame.shape[:2]
                stream = container.add_stream(
                    "libx264", rate=Fraction(fps).limit_denominator(1001), options={"crf": str(crf), "preset": preset}
                )
                stream.height, stream.width = even_size(*size)
                stream.pix_fmt = "yuv420p"
            elif frame.shape[:2] != size:
                raise ValueError(f"{uri}: frame {num_frames} has size {frame.shape[:2]}, earlier frames {size}")
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(_pad_to_even(frame)), format="rgb24")
            container.mux(stream.encode(video_frame))
            num_frames += 1
        if stream is None:
            raise ValueError(f"{uri}: no frames to encode")
        container.mux(stream.encode(None))
    return num_frames, size[0], size[1]


def write_mp4(
    frames: Iterable[np.ndarray],
    uri: str,
    fps: float,
    storage_options: Mapping[str, Any] | None = None,
    crf: int = 18,
    preset: str = "veryfast",
) -> EncodedVideo:
    """Encode uint8 RGB ``frames`` (H, W, 3) as H.264 yuv420p at ``fps`` into the mp4 at ``uri``.

    ``crf`` is x264's constant rate factor (0 = lossless luma, 18 = visually lossless, 23 = default);
    ``preset`` trades encoding speed for size. Raises ``ValueError`` naming ``uri`` for empty input,
    non-RGB frames and frames whose size changes.
    """
    if fps <= 0:
        raise ValueError(f"{uri}: fps must be positive, got {fps}")
    fs, path = filesystem_for(uri, storage_options)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    with tempfile.TemporaryDirectory(prefix="vrseg-mp4-") as tmp:
        local = os.path.join(tmp, "video.mp4")
        num_frames, height, width = _encode_to_file(frames, local, fps, crf, preset, uri)
        if parent:
            fs.makedirs(parent, exist_ok=True)
        fs.put_file(local, path)
        num_bytes = os.path.getsize(local)
    encoded_height, encoded_width = even_size(height, width)
    return EncodedVideo(uri, num_frames, height, width, encoded_height, encoded_width, float(fps), num_bytes)
