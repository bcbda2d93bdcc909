"""MaskSpool: per-frame masks of one video's expressions, kept on local disk until they are written out in order.

Propagation produces masks in its own order: the backward pass walks frames down from the latest anchor,
the forward pass up from the earliest, objects interleaved. Outputs want them sorted by (expression,
frame). Holding every RLE until the video ends makes memory grow with its length (measured ~50 KB per
frame for 4 noisy expressions), so the spool appends each RLE's bytes to a scratch file as it arrives and
keeps only a fixed-size index entry (offset, length, score, presence: 17 bytes per expression and frame) in
memory.
``rows`` then reads them back sorted, one at a time.

No torch, no Ray: the engine fills it (``MaskSink``), the writer drains it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from actors.scratch import scratch_prefix


class MaskSink(Protocol):
    """Where the engine hands each (expression, frame) mask the moment it is final."""

    def put(self, expression: int, frame: int, counts: str, score: float, present: bool) -> None:
        """``counts``: the COCO compressed RLE string at the video's size; ``score``: its confidence;
        ``present``: whether the model says the object is on the frame (the mask is empty where not)."""
        ...


@dataclass(frozen=True)
class SpooledMask:
    expression: int
    frame: int
    counts: str
    score: float
    present: bool


class MaskSpool:
    """A ``MaskSink`` backed by a scratch file (see the module docstring); a context manager that deletes it."""

    def __init__(self, num_expressions: int, num_frames: int, scratch_dir: str | None = None) -> None:
        if num_expressions < 1 or num_frames < 1:
            raise ValueError(f"a spool needs >= 1 expression and frame, got {num_expressions}, {num_frames}")
        self.num_expressions, self.num_frames = num_expressions, num_frames
        self._offset = np.full((num_expressions, num_frames), -1, dtype=np.int64)
        self._length = np.zeros((num_expressions, num_frames), dtype=np.int32)
        self._score = np.zeros((num_expressions, num_frames), dtype=np.float32)
        self._present = np.zeros((num_expressions, num_frames), dtype=bool)
        handle, self._path = tempfile.mkstemp(prefix=scratch_prefix("masks"), suffix=".rle", dir=scratch_dir)
        self._file = os.fdopen(handle, "w+b")
        self._size = 0

    def put(self, expression: int, frame: int, counts: str, score: float, present: bool) -> None:
        """Record (a later ``put`` of the same expression and frame replaces the earlier one)."""
        data = counts.encode("ascii")
        self._file.write(data)  # appended: only ``os.pread`` reads, which leaves the position at the end
        self._offset[expression, frame] = self._size
        self._length[expression, frame] = len(data)
        self._score[expression, frame] = score
        self._present[expression, frame] = present
        self._size += len(data)

    def missing(self, expression: int) -> list[int]:
        """Frames of ``expression`` that have no mask yet."""
        return np.flatnonzero(self._offset[expression] < 0).tolist()

    def scores(self, expression: int) -> np.ndarray:
        """(T,) float32 scores of ``expression`` (0 where missing)."""
        return self._score[expression].copy()

    def present(self, expression: int) -> np.ndarray:
        """(T,) bool: where the object of ``expression`` is present (False where missing)."""
        return self._present[expression].copy()

    def rows(self, expression: int | None = None) -> Iterator[SpooledMask]:
        """Every mask sorted by (expression, frame), or one expression's by frame; raises on a missing frame."""
        self._file.flush()
        expressions = range(self.num_expressions) if expression is None else [expression]
        for e in expressions:
            gaps = self.missing(e)
            if gaps:
                raise RuntimeError(f"expression {e} has no mask at frames {gaps[:10]} ({len(gaps)} missing)")
            for frame in range(self.num_frames):
                data = os.pread(self._file.fileno(), int(self._length[e, frame]), int(self._offset[e, frame]))
                yield SpooledMask(e, frame, data.decode("ascii"), float(self._score[e, frame]),
                                  bool(self._present[e, frame]))

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
            os.remove(self._path)

    def __enter__(self) -> MaskSpool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if hasattr(self, "_file"):
            self.close()
