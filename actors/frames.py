"""Open the video a labeling row names: an encoded video file (``VideoDecoder``) or a folder of frame images.

Benchmarks ship their videos as JPEG folders (``JPEGImages/<video>/<frame>.jpg``), so ``vrseg label
--from-dataset`` needs a ``FrameSource`` over one: ``FrameFolder`` reads each requested frame from its
file (random access is free), converts it to RGB and resizes it with PIL (bilinear). Memory holds the
frames of one request or one stream chunk, never the video.

``LowresDecoder`` is the first labeling stage (CPU actor pool): it opens each row's video and decodes the
L uniformly spaced low-resolution frames for the MLLM's temporal tokens (ARCHITECTURE step 2); only those
small frames travel on. This module imports no torch, so the stage's actors start fast.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image, UnidentifiedImageError

from actors.decode import (
    DecodeError,
    DecoderConfig,
    Direction,
    FrameChunk,
    Size,
    VideoDecoder,
    fit_within,
    uniform_indices,
)
from actors.scratch import remove_orphans
from actors.uri import filesystem_for, join, redact
from actors.video_rows import LowresVideo, StageRunner, VideoSource

DEFAULT_FOLDER_FPS = 24.0


class FrameFolder:
    """A ``FrameSource`` over ``<frames_uri>/<name>.<extension>`` files (see the module docstring)."""

    def __init__(self, source: VideoSource, storage_options: Mapping[str, Any] | None = None,
                 config: DecoderConfig | None = None) -> None:
        assert source.frames_uri is not None
        self.uri = source.frames_uri
        self.config = config or DecoderConfig()
        self._names = list(source.frame_names)
        self._extension = source.extension
        self._fs, self._root = filesystem_for(self.uri, storage_options)
        first = self._read(0)
        self._height, self._width = first.shape[:2]
        self._native = fit_within(self._height, self._width, self.config.max_side)
        self._fps = float(source.fps) if source.fps else DEFAULT_FOLDER_FPS

    def _read(self, index: int) -> np.ndarray:
        path = join(self._root, f"{self._names[index]}.{self._extension}")
        try:
            data = self._fs.cat_file(path)
        except FileNotFoundError as exc:
            raise DecodeError(join(self.uri, f"{self._names[index]}.{self._extension}"), "missing",
                              "no such frame file") from exc
        try:
            with Image.open(io.BytesIO(data)) as image:
                return np.asarray(image.convert("RGB"))
        except (UnidentifiedImageError, OSError) as exc:
            raise DecodeError(join(self.uri, f"{self._names[index]}.{self._extension}"), "corrupt",
                              f"not a readable image: {exc}") from exc

    @property
    def num_frames(self) -> int:
        return len(self._names)

    @property
    def fps(self) -> float:
        return self._fps

    @property
    def height(self) -> int:
        return self._height

    @property
    def width(self) -> int:
        return self._width

    def _frame(self, index: int, size: Size) -> np.ndarray:
        frame = self._read(index)
        if frame.shape[:2] != (self._height, self._width):
            raise DecodeError(self.uri, "corrupt", f"frame {self._names[index]} is {frame.shape[1]}x{frame.shape[0]}, "
                              f"the first frame {self._width}x{self._height}")
        if frame.shape[:2] == size:
            return frame
        return np.asarray(Image.fromarray(frame).resize((size[1], size[0]), Image.BILINEAR))

    def get(self, indices: Sequence[int] | np.ndarray, size: Size | None = None) -> np.ndarray:
        wanted = np.asarray(indices, dtype=np.int64)
        if wanted.ndim != 1 or wanted.size == 0 or wanted.min() < 0 or wanted.max() >= self.num_frames:
            raise ValueError(f"{redact(self.uri)}: frame indices out of range [0, {self.num_frames}): {wanted.tolist()[:10]}")
        out_size = self._native if size is None else (int(size[0]), int(size[1]))
        unique, inverse = np.unique(wanted, return_inverse=True)
        frames = np.stack([self._frame(int(i), out_size) for i in unique])
        return frames[inverse]

    def uniform(self, count: int, size: Size | None = None) -> FrameChunk:
        indices = uniform_indices(self.num_frames, count)
        return FrameChunk(indices, self.get(indices, size))

    def stream(self, start: int, direction: Direction, size: Size | None, chunk_size: int,
               stop: int | None = None) -> Iterator[FrameChunk]:
        step = 1 if direction == "forward" else -1
        stop = (self.num_frames - 1 if step == 1 else 0) if stop is None else stop
        order = np.arange(start, stop + step, step, dtype=np.int64)
        for begin in range(0, len(order), chunk_size):
            indices = order[begin : begin + chunk_size]
            yield FrameChunk(indices, self.get(indices, size))

    def close(self) -> None:
        """Nothing is held open between requests."""

    def __enter__(self) -> FrameFolder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_source(source: VideoSource, storage_options: Mapping[str, Any] | None,
                config: DecoderConfig) -> VideoDecoder | FrameFolder:
    """The ``FrameSource`` of ``source`` (a context manager: close it when done)."""
    if source.video_uri is not None:
        return VideoDecoder(source.video_uri, storage_options, config)
    return FrameFolder(source, storage_options, config)


class LowresDecoder:
    """Ray Data stage (CPU actor pool): a row's video -> ``LowresVideo`` (``count`` frames, longer side ``side``)."""

    def __init__(self, count: int, side: int, decoder: DecoderConfig,
                 storage_options: Mapping[str, Any] | None = None) -> None:
        remove_orphans(decoder.scratch_dir)  # what a killed predecessor on this node left
        self.count, self.side, self.decoder, self.storage_options = count, side, decoder, storage_options
        self.runner = StageRunner("decode", self.decode)

    def decode(self, row: dict[str, Any]) -> LowresVideo:
        with open_source(VideoSource.from_json(row["source"]), self.storage_options, self.decoder) as video:
            lowres = video.uniform(min(self.count, video.num_frames), fit_within(video.height, video.width, self.side))
            return LowresVideo(video.num_frames, video.fps, video.height, video.width, lowres.indices, lowres.frames)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.runner(batch)
