"""SweptFrames: a video decoded once, front to back, into a local scratch file that serves every later read.

Why (issue 4, P3: every frame decoded at most twice). After the low-resolution pass, one labeling job
reads the video three more ways: the key frames by random access, the SAM2 stream forward from the
earliest anchor, and backward from the latest anchor. Through a video with long groups of pictures
(x264's default keyframe interval is 250) each way decodes forward from a keyframe, so together they
decode most frames two or three more times (measured 2.79 decodes per frame with the low-res pass).
``SweptFrames`` decodes the video once, in order, at one size (the largest any of those readers needs),
writes the raw frames to a scratch file on local disk (a worker's ``StoreFile``, overwritten in place by
its next video), and serves ``get`` and ``stream`` by reading that file: one decode per frame whatever the
keyframe interval, the number of anchors and the direction.

Memory holds one chunk (``SWEEP_CHUNK_BYTES`` while sweeping); the scratch file holds ``num_frames * height * width * 3`` bytes and is read
with ``pread`` (the page cache, not this process's RSS, keeps it warm). ``frame_store`` sweeps only
an encoded video (a frame folder is random access already) and only when the file fits the decoder's
``max_store_bytes``; otherwise it logs a warning and returns the decoder itself (``random_access_fallback``
tells, and ``vrseg label`` counts such videos in ``run.json``). Both give identical pixels: the sweep and
random access decode through the same decord reader size, and decoding does not depend on where it
started.
"""

from __future__ import annotations

import logging
import os
import tempfile
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress

import numpy as np

from actors.decode import Direction, FrameChunk, FrameSource, Size, VideoDecoder
from actors.scratch import scratch_prefix
from actors.uri import redact

logger = logging.getLogger(__name__)

SWEEP_CHUNK_BYTES = 16 << 20
"""Frames decoded per step of the sweep: small steps keep the decoded arrays in reused memory (measured:
256-frame steps of 512 px frames made the sweep 1.5-2x slower than 32-frame ones on the CI machines)."""


class StoreFile:
    """The scratch file a worker's successive frame stores overwrite in place.

    Writing over pages the page cache already holds costs a copy; writing a new file first allocates them
    (measured on the CI machines: 0.06 s vs 0.1-0.8 s for 300 MB). The file grows to the largest video's
    frames and is deleted by ``close`` (or when the object is collected). Created on first use.
    """

    def __init__(self, scratch_dir: str | None = None) -> None:
        self.scratch_dir = scratch_dir
        self.path: str | None = None
        self._fd = -1
        self._finalizer: weakref.finalize | None = None

    @property
    def fd(self) -> int:
        if self._fd < 0:
            self._fd, self.path = tempfile.mkstemp(prefix=scratch_prefix("sweep"), suffix=".rgb", dir=self.scratch_dir)
            self._finalizer = weakref.finalize(self, _remove_file, self._fd, self.path)
        return self._fd

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
            self._fd, self._finalizer = -1, None


def _remove_file(fd: int, path: str) -> None:
    os.close(fd)
    with suppress(FileNotFoundError):  # its directory may be gone already (a temporary one, at exit)
        os.remove(path)


class SweptFrames:
    """A ``FrameSource`` at one fixed ``size`` over a ``StoreFile`` holding every frame (see the module
    docstring). Valid until the next sweep into the same file."""

    def __init__(self, decoder: VideoDecoder, size: Size, file: StoreFile) -> None:
        self._decoder = decoder
        self._size = decoder.output_size(size)
        self._frame_bytes = self._size[0] * self._size[1] * 3
        self._fd = file.fd
        chunk_size = max(1, min(decoder.config.max_chunk_frames, SWEEP_CHUNK_BYTES // self._frame_bytes))
        offset = 0
        for chunk in decoder.stream(0, "forward", self._size, chunk_size):
            data = memoryview(np.ascontiguousarray(chunk.frames)).cast("B")
            while data:
                written = os.pwrite(self._fd, data, offset)
                data, offset = data[written:], offset + written

    @property
    def num_frames(self) -> int:
        return self._decoder.num_frames

    @property
    def fps(self) -> float:
        return self._decoder.fps

    @property
    def height(self) -> int:
        return self._decoder.height

    @property
    def width(self) -> int:
        return self._decoder.width

    @property
    def size(self) -> Size:
        """The (height, width) every frame is stored and served at."""
        return self._size

    def _check_size(self, size: Size | None) -> None:
        if size is not None and tuple(size) != self._size:
            raise ValueError(f"frames are stored at {self._size}, {tuple(size)} was asked for")

    def _read(self, first: int, count: int) -> np.ndarray:
        """Frames ``first .. first + count - 1`` as (count, H, W, 3) uint8."""
        frames = np.empty((count, *self._size, 3), dtype=np.uint8)
        if os.preadv(self._fd, [memoryview(frames).cast("B")], first * self._frame_bytes) != frames.nbytes:
            raise OSError(f"the frame store is shorter than its {self.num_frames} frames")
        return frames

    def get(self, indices: Sequence[int] | np.ndarray, size: Size | None = None) -> np.ndarray:
        """Frames ``indices`` (any order, repeats allowed) as (N, H, W, 3) uint8."""
        self._check_size(size)
        wanted = np.asarray(indices, dtype=np.int64)
        if wanted.ndim != 1 or wanted.size == 0 or wanted.min() < 0 or wanted.max() >= self.num_frames:
            raise IndexError(f"frame indices must be a non-empty 1-d sequence in [0, {self.num_frames}), "
                             f"got {wanted.tolist()[:10]}")
        return np.stack([self._read(int(i), 1)[0] for i in wanted])

    def stream(self, start: int, direction: Direction, size: Size | None, chunk_size: int,
               stop: int | None = None) -> Iterator[FrameChunk]:
        """Frames ``start``..``stop`` (inclusive) in chunks of <= ``chunk_size``, in traversal order."""
        self._check_size(size)
        if direction not in ("forward", "backward"):
            raise ValueError(f"direction must be 'forward' or 'backward', got {direction!r}")
        step = 1 if direction == "forward" else -1
        stop = (self.num_frames - 1 if step == 1 else 0) if stop is None else stop
        if not (0 <= start < self.num_frames and 0 <= stop < self.num_frames) or (stop - start) * step < 0:
            raise IndexError(f"cannot stream {direction} from {start} to {stop} in {self.num_frames} frames")
        return self._chunks(start, stop, step, chunk_size)

    def _chunks(self, start: int, stop: int, step: int, chunk_size: int) -> Iterator[FrameChunk]:
        for offset in range(0, abs(stop - start) + 1, chunk_size):
            first = start + step * offset
            last = start + step * min(offset + chunk_size - 1, abs(stop - start))
            low, count = min(first, last), abs(last - first) + 1
            frames = self._read(low, count)
            indices = np.arange(low, low + count, dtype=np.int64)
            if step < 0:
                frames, indices = frames[::-1], indices[::-1]
            yield FrameChunk(indices.copy(), np.ascontiguousarray(frames))


def random_access_fallback(frames: FrameSource) -> bool:
    """Whether ``frames``, from ``frame_store``, is an encoded video left to random access (too large for its
    ``max_store_bytes``): ``frame_store`` gives a decoder back only then."""
    return isinstance(frames, VideoDecoder)


@contextmanager
def frame_store(source: FrameSource, size: Size, file: StoreFile | None = None) -> Iterator[FrameSource]:
    """``source``'s frames at ``size`` for a job that reads most of them: swept once into ``file`` (a
    worker's reused ``StoreFile``; None: a new one, deleted on leaving the block) when ``source`` is an
    encoded video whose sweep fits its decoder's ``max_store_bytes``, else ``source`` itself."""
    if not isinstance(source, VideoDecoder):
        yield source
        return
    out_size = source.output_size(size)
    needed = source.num_frames * out_size[0] * out_size[1] * 3
    if needed > source.config.max_store_bytes:
        logger.warning("%s: %d frames at %dx%d need %d bytes of frame store, above decoder.max_store_bytes %d: "
                       "read by random access instead (frames may be decoded several times)", redact(source.uri),
                       source.num_frames, out_size[1], out_size[0], needed, source.config.max_store_bytes)
        yield source
        return
    own = file is None
    store_file = StoreFile(source.config.scratch_dir) if file is None else file
    try:
        yield SweptFrames(source, out_size, store_file)
    finally:
        if own:
            store_file.close()
