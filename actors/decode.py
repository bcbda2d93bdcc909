"""VideoDecoder: an fsspec URI -> decord -> frames at the resolution each stage of a labeling job asks for.

One decoder serves one video for one job (ARCHITECTURE "One video through the labeling pipeline",
step 2) through three access patterns:

- ``uniform(count, size)``: the small low-resolution set of ``count`` uniformly spaced frames for the
  MLLM's temporal tokens; the only whole-video array, and its size is fixed by ``count``, not by T.
- ``get(indices, size)``: random access (the high-resolution key frames), decoded in increasing index
  order in one pass whatever order the caller asks for.
- ``stream(start, direction, size, chunk_size)``: consecutive frames forward or backward from an index
  in chunks of at most ``chunk_size`` frames (the SAM2 frames around the anchor).

Fetching. decord reads a file path or a file object, but for a file object it first copies the whole
object into one in-memory ``bytearray`` (``decord.VideoReader.__init__``), so memory would grow with
the file. Remote objects (``s3://`` ...) are therefore streamed once to a local scratch file
(``fs.get_file``, which copies in bounded blocks) that every reader opens; local paths are opened in
place. The scratch copy is deleted by ``close``.

Resolution. decord scales inside its ffmpeg filter graph (``width``/``height``), one reader per output
size. Readers are cached, the least recently used closed beyond ``max_open_readers`` (default 1): an
idle decord reader keeps its decoding thread busy (measured: with 3 idle readers alive, streaming 600
frames took 2.7x the CPU time), so switching size reopens a reader (which re-reads the packet index
from the local file, no decoding) rather than keeping readers around. Native-size
requests (``size=None``) are capped so that the longer side is at most ``max_side`` (aspect ratio
kept), so a very large video is downscaled while decoding instead of exhausting memory. Any size,
odd ones included, may be requested (see ``_DECORD_BROKEN_WIDTHS`` for a decord bug worked around).

Errors. Every failure to open or decode is a ``DecodeError(uri, kind, message)``; a 1-frame video is
a valid video. Kind ``io`` keeps the storage exception as its ``__cause__`` so callers can retry it.

Counting decodes. ``DecodeCounters`` records, per frame, how often the codec decoded it and how often
it was delivered to a caller. decord does not report its codec work, so it is computed from the seek
rule in decord's source (``VideoReader::SeekAccurate``, ``GetBatch`` in ``video_reader.cc``): a frame ahead of the reader in the
same group of pictures is reached by decoding forward from the current position; any other frame by
seeking to its keyframe and decoding forward from there. Frames decoded ahead by ffmpeg's frame
threads and thrown away at the next seek are not counted.

Backward streaming without decoding a frame more than once: a backward chunk starts on a keyframe
whenever the group of pictures (GOP) is no longer than a chunk, so it costs exactly its own frames. When a GOP is longer than a chunk, the part of it still to be
visited (at most ``max_spill_bytes`` of frames) is decoded forward once into a local scratch file and
read back chunk by chunk in reverse; memory holds one chunk, disk at most ``max_spill_bytes``. Only a
GOP longer than the spill budget is decoded again, once per spill window.
"""

from __future__ import annotations

import bisect
import math
import os
import shutil
import tempfile
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import av
import decord
import numpy as np
from PIL import Image

from actors.retry import is_transient, with_retries
from actors.scratch import scratch_prefix
from actors.uri import filesystem_for, protocol_of, redact

Size = tuple[int, int]
"""An output frame size, ``(height, width)`` in pixels."""

Direction = Literal["forward", "backward"]

DecodeErrorKind = Literal[
    "missing", "unreadable", "io", "empty", "not_video", "truncated", "no_frames", "corrupt"
]
DECODE_ERROR_KINDS: tuple[str, ...] = (
    "missing",  # the object or file does not exist
    "unreadable",  # no permission, or the bucket does not exist / is not accessible
    "io",  # transient storage failure after the filesystem's own retries (callers may retry)
    "empty",  # zero bytes
    "not_video",  # bytes of no known container, or a container without a video stream
    "truncated",  # a video container cut short (missing index, missing packets)
    "no_frames",  # a video stream of which no frame can be decoded
    "corrupt",  # decoding failed part way through the video
)

# Leading bytes of the containers a truncated video may still be recognised by.
_CONTAINER_SIGNATURES: tuple[tuple[int, bytes], ...] = (
    (4, b"ftyp"),  # ISO base media: mp4, mov, m4v, 3gp
    (4, b"moov"),
    (4, b"mdat"),
    (4, b"free"),
    (4, b"wide"),
    (0, b"\x1a\x45\xdf\xa3"),  # EBML: mkv, webm
    (0, b"RIFF"),  # avi
    (0, b"FLV"),
    (0, b"OggS"),
    (0, b"\x00\x00\x01\xba"),  # MPEG program stream
    (0, b"\x47"),  # MPEG transport stream sync byte
)


class DecodeError(Exception):
    """A video cannot be decoded; ``kind`` is one of ``DECODE_ERROR_KINDS``, ``uri`` is redacted."""

    def __init__(self, uri: str, kind: DecodeErrorKind, message: str) -> None:
        if kind not in DECODE_ERROR_KINDS:
            raise ValueError(f"unknown decode error kind {kind!r}")
        self.uri = redact(uri)
        self.kind = kind
        self.message = message
        super().__init__(f"{self.uri}: {kind}: {message}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.uri, self.kind, self.message))


@dataclass(frozen=True)
class FrameChunk:
    """Frames and their video indices, in the order they were asked for (descending when backward)."""

    indices: np.ndarray  # (N,) int64
    frames: np.ndarray  # (N, H, W, 3) uint8


class FrameSource(Protocol):
    """What the engine and the SAM2 session need from a video, whatever holds its frames."""

    @property
    def num_frames(self) -> int: ...

    @property
    def fps(self) -> float: ...

    @property
    def height(self) -> int: ...

    @property
    def width(self) -> int: ...

    def get(self, indices: Sequence[int] | np.ndarray, size: Size | None = None) -> np.ndarray:
        """Frames ``indices`` (any order, repeats allowed) as (N, H, W, 3) uint8."""
        ...

    def stream(
        self,
        start: int,
        direction: Direction,
        size: Size | None,
        chunk_size: int,
        stop: int | None = None,
    ) -> Iterator[FrameChunk]:
        """Consecutive frames from ``start`` to ``stop`` (both inclusive) in chunks of <= ``chunk_size``."""
        ...


@dataclass(frozen=True)
class DecoderConfig:
    """Decoder settings (part of the labeling config).

    ``max_side``: native-size requests are downscaled so that the longer side is at most this.
    ``max_chunk_frames``: upper bound on ``stream``'s ``chunk_size`` (memory of one chunk).
    ``max_spill_bytes``: scratch-disk budget for backward streaming through long GOPs.
    ``max_store_bytes``: scratch-disk budget for decoding a whole video once (``actors.frame_store``);
    a larger video is read by random access and streaming instead.
    ``max_open_readers``: decord readers kept open (one per output size).
    ``num_threads``: decord decoding threads (0: ffmpeg's choice).
    ``scratch_dir``: where remote videos and spills are copied (None: the system temporary directory).
    """

    max_side: int = 2048
    max_chunk_frames: int = 256
    max_spill_bytes: int = 1 << 30
    max_store_bytes: int = 16 << 30
    max_open_readers: int = 1
    num_threads: int = 0
    scratch_dir: str | None = None

    def __post_init__(self) -> None:
        for name in ("max_side", "max_chunk_frames", "max_spill_bytes", "max_store_bytes", "max_open_readers"):
            if getattr(self, name) < 1:
                raise ValueError(f"decoder.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_threads < 0:
            raise ValueError(f"decoder.num_threads must be >= 0, got {self.num_threads}")


@dataclass
class DecodeCounters:
    """Per-frame decode accounting of one decoder (one video job)."""

    num_frames: int
    codec: np.ndarray = field(init=False)  # (T,) times the codec decoded each frame
    delivered: np.ndarray = field(init=False)  # (T,) times each frame was returned to a caller
    reader_opens: int = 0
    spilled_frames: int = 0
    bytes_fetched: int = 0

    def __post_init__(self) -> None:
        self.codec = np.zeros(self.num_frames, dtype=np.int32)
        self.delivered = np.zeros(self.num_frames, dtype=np.int32)

    def codec_per_frame(self) -> float:
        """Frames the codec decoded per frame of video (the benchmark's figure; target <= 2)."""
        return float(self.codec.sum()) / self.num_frames

    def summary(self) -> dict[str, float | int]:
        return {
            "num_frames": self.num_frames,
            "codec_frames": int(self.codec.sum()),
            "codec_per_frame": self.codec_per_frame(),
            "max_codec_per_frame": int(self.codec.max()),
            "delivered_frames": int(self.delivered.sum()),
            "max_delivered_per_frame": int(self.delivered.max()),
            "reader_opens": self.reader_opens,
            "spilled_frames": self.spilled_frames,
            "bytes_fetched": self.bytes_fetched,
        }


def uniform_indices(num_frames: int, count: int) -> np.ndarray:
    """``count`` frame indices spread uniformly over ``num_frames``: the centres of ``count`` equal
    segments, ``floor((i + 0.5) * T / count)``; every frame when ``count >= T``."""
    if num_frames < 1 or count < 1:
        raise ValueError(f"uniform_indices needs num_frames >= 1 and count >= 1, got {num_frames}, {count}")
    if count >= num_frames:
        return np.arange(num_frames, dtype=np.int64)
    return np.floor((np.arange(count) + 0.5) * num_frames / count).astype(np.int64)


def fit_within(height: int, width: int, max_side: int) -> Size:
    """``(height, width)`` scaled down (aspect kept, sides >= 1) so that the longer side is <= ``max_side``."""
    longest = max(height, width)
    if longest <= max_side:
        return height, width
    scale = max_side / longest
    return max(1, round(height * scale)), max(1, round(width * scale))


def _looks_like_container(head: bytes) -> bool:
    return any(head[offset : offset + len(magic)] == magic for offset, magic in _CONTAINER_SIGNATURES)


# decord 0.6.0 fails to copy out frames of some narrow widths (1, 2, 3, 4, 6, 8, 12, 16, 24, 48 and 72 px:
# "DECORDArrayCopyFromTo: The size must exactly match"); every other width from 1 to 1400 px works,
# whatever the source. Outputs of those widths are decoded 96 px wide and resized horizontally (bilinear).
_DECORD_BROKEN_WIDTHS = frozenset({1, 2, 3, 4, 6, 8, 12, 16, 24, 48, 72})
_WORKAROUND_WIDTH = 96


class _Reader:
    """One decord reader at one output size, mirroring decord's position to count codec work."""

    def __init__(self, path: str, size: Size, num_threads: int, keyframes: list[int] | None) -> None:
        self.size = size
        width = _WORKAROUND_WIDTH if size[1] in _DECORD_BROKEN_WIDTHS else size[1]
        self.vr = decord.VideoReader(path, ctx=decord.cpu(0), width=width, height=size[0], num_threads=num_threads)
        self.keyframes = keyframes if keyframes is not None else sorted(self.vr.get_key_indices()) or [0]
        self.position = 0  # decord's curr_frame_: a fresh reader has rewound to frame 0

    def __len__(self) -> int:
        return len(self.vr)

    def keyframe_of(self, index: int) -> int:
        return self.keyframes[max(0, bisect.bisect_right(self.keyframes, index) - 1)]

    def decode(self, indices: np.ndarray, codec_counts: np.ndarray) -> np.ndarray:
        """Frames at strictly increasing ``indices`` as (N, H, W, 3) uint8; adds the codec work to ``codec_counts``."""
        for index in indices.tolist():
            first = index
            if index != self.position:
                same_gop_ahead = index > self.position and self.keyframe_of(index) == self.keyframe_of(self.position)
                first = self.position if same_gop_ahead else self.keyframe_of(index)
            codec_counts[first : index + 1] += 1
            self.position = index + 1
        frames = self.vr.get_batch(indices.tolist()).asnumpy()
        if frames.shape[2] == self.size[1]:
            return frames
        height, width = self.size
        return np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.BILINEAR)) for f in frames])


class VideoDecoder:
    """Frames of one video at any fsspec URI, decoded with decord (see the module docstring).

    Use as a context manager, or call ``close()``: it frees the readers and deletes scratch files.
    ``counters`` holds the per-frame decode accounting.
    """

    def __init__(
        self,
        uri: str,
        storage_options: Mapping[str, Any] | None = None,
        config: DecoderConfig | None = None,
    ) -> None:
        self.uri = uri
        self.config = config or DecoderConfig()
        self._scratch = tempfile.mkdtemp(prefix=scratch_prefix("decode"), dir=self.config.scratch_dir)
        self._remove_scratch = weakref.finalize(self, shutil.rmtree, self._scratch, True)  # also if never closed
        self._readers: OrderedDict[Size, _Reader] = OrderedDict()
        try:
            self._path, num_bytes = self._fetch(storage_options)
            self._height, self._width, declared_frames, probe_fps = self._probe()
            self._native = fit_within(self._height, self._width, self.config.max_side)
            reader = self._make_reader(self._native, keyframes=None)
        except BaseException:
            self.close()
            raise
        self._keyframes = reader.keyframes
        self._num_frames = len(reader)
        self._readers[self._native] = reader
        self.counters = DecodeCounters(self._num_frames)
        self.counters.reader_opens = 1
        self.counters.bytes_fetched = num_bytes
        if self._num_frames < 1:
            self.close()
            raise DecodeError(uri, "no_frames", "the video stream has no frames")
        if 0 < declared_frames and self._num_frames < declared_frames:
            self.close()
            raise DecodeError(
                uri, "truncated", f"the container declares {declared_frames} frames but holds {self._num_frames}"
            )
        fps = reader.vr.get_avg_fps()
        self._fps = float(fps) if math.isfinite(fps) and fps > 0 else probe_fps

    # ------------------------------------------------------------------ opening
    def _fetch(self, storage_options: Mapping[str, Any] | None) -> tuple[str, int]:
        """A local path holding the video's bytes (the file itself, or a scratch copy), and its size."""
        fs, path = filesystem_for(self.uri, storage_options)
        try:
            info = with_retries(lambda: fs.info(path), f"stat {self.uri}")
            if info.get("type") == "directory":
                raise DecodeError(self.uri, "not_video", "is a directory, not a video file")
            num_bytes = int(info.get("size") or 0)
            if num_bytes == 0:
                raise DecodeError(self.uri, "empty", "the file has zero bytes")
            if protocol_of(self.uri) == "file":
                with open(path, "rb"):  # readability (permissions) now, not deep inside decord
                    pass
                return path, num_bytes
            local = os.path.join(self._scratch, "video")
            with_retries(lambda: fs.get_file(path, local), f"fetch {self.uri}")
            return local, os.path.getsize(local)
        except DecodeError:
            raise
        except FileNotFoundError as exc:
            if protocol_of(self.uri) != "file" and not _bucket_accessible(fs, path):
                raise DecodeError(self.uri, "unreadable", f"bucket does not exist or is not accessible: {exc}") from exc
            raise DecodeError(self.uri, "missing", "no such object or file") from exc
        except PermissionError as exc:
            raise DecodeError(self.uri, "unreadable", f"access denied: {exc}") from exc
        except Exception as exc:
            if isinstance(exc, OSError | TimeoutError) or is_transient(exc):
                raise DecodeError(self.uri, "io", f"reading the video failed: {exc!r}") from exc
            raise

    def _probe(self) -> tuple[int, int, int, float]:
        """Native (height, width) after rotation, declared frame count and frame rate, via the container."""
        with open(self._path, "rb") as handle:
            head = handle.read(16)
        try:
            with av.open(self._path) as container:
                if not container.streams.video:
                    kinds = sorted({s.type for s in container.streams}) or ["none"]
                    raise DecodeError(self.uri, "not_video", f"no video stream (streams: {', '.join(kinds)})")
                stream = container.streams.video[0]
                height, width = stream.codec_context.height, stream.codec_context.width
                rotation = _rotation_of(stream)
                rate = stream.average_rate or stream.guessed_rate
                declared = int(stream.frames or 0)
        except DecodeError:
            raise
        except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
            if _looks_like_container(head):
                raise DecodeError(self.uri, "truncated", f"video container cannot be parsed: {exc}") from exc
            raise DecodeError(self.uri, "not_video", "not a video file (no known container)") from exc
        if height < 1 or width < 1:
            raise DecodeError(self.uri, "no_frames", f"video stream has no picture size ({width}x{height})")
        if rotation in (90, 270):
            height, width = width, height
        return height, width, declared, float(rate) if rate else 0.0

    def _open_reader(self, size: Size) -> _Reader:
        reader = self._readers.get(size)
        if reader is not None:
            self._readers.move_to_end(size)
            return reader
        reader = self._new_reader(size)
        self._readers[size] = reader
        while len(self._readers) > self.config.max_open_readers:
            self._readers.popitem(last=False)
        return reader

    def _new_reader(self, size: Size) -> _Reader:
        reader = self._make_reader(size, self._keyframes)
        self.counters.reader_opens += 1
        return reader

    def _make_reader(self, size: Size, keyframes: list[int] | None) -> _Reader:
        try:
            return _Reader(self._path, size, self.config.num_threads, keyframes)
        except decord.DECORDError as exc:
            text = str(exc)
            if "av_read_frame" in text:
                raise DecodeError(self.uri, "truncated", "packets cannot be read to the end of the file") from exc
            raise DecodeError(self.uri, "no_frames", f"no decodable frames: {text.splitlines()[-1][:200]}") from exc
        except (RuntimeError, AssertionError) as exc:
            raise DecodeError(self.uri, "no_frames", f"decoder cannot open the video stream: {exc}") from exc

    # ------------------------------------------------------------------ FrameSource
    @property
    def num_frames(self) -> int:
        return self._num_frames

    @property
    def fps(self) -> float:
        return self._fps

    @property
    def height(self) -> int:
        return self._height

    @property
    def width(self) -> int:
        return self._width

    @property
    def keyframes(self) -> list[int]:
        """Indices of the video's keyframes (where decoding can start)."""
        return list(self._keyframes)

    def output_size(self, size: Size | None) -> Size:
        """The size frames come out at for a request of ``size`` (None: native, capped by ``max_side``)."""
        if size is None:
            return self._native
        height, width = size
        if not (isinstance(height, int | np.integer) and isinstance(width, int | np.integer)) or height < 1 or width < 1:
            raise ValueError(f"{redact(self.uri)}: frame size must be two positive ints (height, width), got {size!r}")
        return int(height), int(width)

    def get(self, indices: Sequence[int] | np.ndarray, size: Size | None = None) -> np.ndarray:
        """Frames ``indices`` (any order, repeats allowed) at ``size`` as (N, H, W, 3) uint8.

        The distinct indices are decoded once each, in increasing order, then arranged as asked.
        """
        wanted = self._check_indices(indices)
        unique, inverse = np.unique(wanted, return_inverse=True)
        frames = self._decode(unique, self.output_size(size))
        self.counters.delivered[unique] += 1
        if unique.size == wanted.size and np.array_equal(unique, wanted):
            return frames
        return frames[inverse]

    def uniform(self, count: int, size: Size | None = None) -> FrameChunk:
        """The low-resolution set: ``uniform_indices(T, count)`` and their frames at ``size``."""
        indices = uniform_indices(self._num_frames, count)
        return FrameChunk(indices, self.get(indices, size))

    def stream(
        self,
        start: int,
        direction: Direction,
        size: Size | None,
        chunk_size: int,
        stop: int | None = None,
    ) -> Iterator[FrameChunk]:
        """Frames ``start``..``stop`` (inclusive; default: the last frame forward, frame 0 backward) in
        chunks of at most ``chunk_size``, in traversal order (descending indices when backward).

        The stream holds its reader until it ends; a ``get`` at the same size in between moves that
        reader (costing a seek, which the counters show).
        """
        if direction not in ("forward", "backward"):
            raise ValueError(f"direction must be 'forward' or 'backward', got {direction!r}")
        if not 1 <= chunk_size <= self.config.max_chunk_frames:
            raise ValueError(f"chunk_size must be in [1, {self.config.max_chunk_frames}], got {chunk_size}")
        stop = (self._num_frames - 1 if direction == "forward" else 0) if stop is None else stop
        self._check_indices([start, stop])
        if (direction == "forward" and stop < start) or (direction == "backward" and stop > start):
            raise ValueError(f"{redact(self.uri)}: {direction} stream from {start} cannot stop at {stop}")
        out_size = self.output_size(size)
        return self._forward(start, stop, out_size, chunk_size) if direction == "forward" else (
            self._backward(start, stop, out_size, chunk_size)
        )

    # ------------------------------------------------------------------ internals
    def _check_indices(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        array = np.asarray(indices)
        if array.ndim != 1 or array.size == 0 or not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"{redact(self.uri)}: frame indices must be a non-empty 1-d sequence of ints")
        array = array.astype(np.int64)
        bad = array[(array < 0) | (array >= self._num_frames)]
        if bad.size:
            raise IndexError(f"{redact(self.uri)}: frame indices {bad[:5].tolist()} outside [0, {self._num_frames})")
        return array

    def _decode(self, indices: np.ndarray, size: Size, reader: _Reader | None = None) -> np.ndarray:
        reader = reader or self._open_reader(size)
        try:
            return reader.decode(indices, self.counters.codec)
        except decord.DECORDError as exc:
            if self._readers.get(size) is reader:  # its position is unknown after a failure
                del self._readers[size]
            raise DecodeError(
                self.uri, "corrupt", f"decoding frames {indices[0]}..{indices[-1]} failed: {str(exc).splitlines()[-1][:200]}"
            ) from exc

    def _deliver(self, indices: np.ndarray, frames: np.ndarray) -> FrameChunk:
        self.counters.delivered[indices] += 1
        return FrameChunk(indices, frames)

    def _forward(self, start: int, stop: int, size: Size, chunk_size: int) -> Iterator[FrameChunk]:
        reader = self._open_reader(size)
        for low in range(start, stop + 1, chunk_size):
            indices = np.arange(low, min(low + chunk_size, stop + 1), dtype=np.int64)
            yield self._deliver(indices, self._decode(indices, size, reader))

    def _backward(self, start: int, stop: int, size: Size, chunk_size: int) -> Iterator[FrameChunk]:
        reader = self._open_reader(size)
        frame_bytes = size[0] * size[1] * 3
        spill_frames = max(chunk_size, self.config.max_spill_bytes // frame_bytes)
        end = start + 1  # exclusive upper end of what is left to visit
        while end > stop:
            floor = max(stop, end - chunk_size)
            first_key = bisect.bisect_left(self._keyframes, floor)
            if floor == stop or (first_key < len(self._keyframes) and self._keyframes[first_key] < end):
                low = stop if floor == stop else self._keyframes[first_key]
                indices = np.arange(low, end, dtype=np.int64)
                frames = self._decode(indices, size, reader)
                yield self._deliver(indices[::-1].copy(), np.ascontiguousarray(frames[::-1]))
                end = low
                continue
            low = max(stop, reader.keyframe_of(end - 1), end - spill_frames)
            yield from self._spilled_backward(reader, low, end, size, chunk_size)
            end = low

    def _spilled_backward(
        self, reader: _Reader, low: int, end: int, size: Size, chunk_size: int
    ) -> Iterator[FrameChunk]:
        """Frames ``low..end-1`` decoded forward once into a scratch file, delivered backward by chunk."""
        height, width = size
        frame_bytes = height * width * 3
        spill_path = os.path.join(self._scratch, f"spill-{low}-{end}.rgb")
        try:
            with open(spill_path, "wb") as spill:
                for first in range(low, end, chunk_size):
                    indices = np.arange(first, min(first + chunk_size, end), dtype=np.int64)
                    spill.write(self._decode(indices, size, reader).tobytes())
            self.counters.spilled_frames += end - low
            with open(spill_path, "rb") as spill:
                for top in range(end, low, -chunk_size):
                    first = max(low, top - chunk_size)
                    spill.seek((first - low) * frame_bytes)
                    flat = np.fromfile(spill, dtype=np.uint8, count=(top - first) * frame_bytes)
                    frames = flat.reshape(top - first, height, width, 3)[::-1]
                    yield self._deliver(np.arange(top - 1, first - 1, -1, dtype=np.int64), np.ascontiguousarray(frames))
        finally:
            if os.path.exists(spill_path):
                os.remove(spill_path)

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Free the decord readers and delete the scratch copy and spills."""
        self._readers.clear()
        self._remove_scratch()

    def __enter__(self) -> VideoDecoder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _bucket_accessible(fs: Any, path: str) -> bool:  # noqa: ANN401 - any fsspec filesystem
    bucket = path.split("/", 1)[0]
    try:
        return bool(fs.exists(bucket))
    except (OSError, ValueError):
        return False


def _rotation_of(stream: av.video.stream.VideoStream) -> int:
    """Clockwise display rotation in degrees (0, 90, 180, 270) from the stream's metadata, as decord reads it."""
    value = stream.metadata.get("rotate")
    try:
        return int(float(value)) % 360 if value else 0
    except ValueError:
        return 0
