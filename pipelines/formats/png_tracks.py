"""Object masks stored as one PNG per annotated frame, decoded lazily and checked against the frame size.

``PngFrames`` is one folder of ``<frame>.png`` (palette images of object ids, or binary masks) for one
video; ``PngTrack`` is one object in it: pixels equal to its id (palette layouts) or any non-zero
pixel (one folder per object). Several tracks share a ``PngFrames``, which keeps the last decoded
frames so that the objects of one frame cost one decode.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import numpy as np

from pipelines.formats.files import Location, check_size, decode_label_png

_CACHED_FRAMES = 2


@dataclass
class PngFrames:
    """``folder/<frame_names[i]>.png`` for the frames in ``available``; others carry no annotation."""

    folder: Location
    frame_names: Sequence[str]
    available: Collection[str]
    height: int
    width: int
    video_id: str
    key: str | None = None
    _cache: OrderedDict[int, np.ndarray] = field(default_factory=OrderedDict, repr=False)

    def annotated_indices(self) -> list[int]:
        return [i for i, name in enumerate(self.frame_names) if name in self.available]

    def labels(self, frame_idx: int, key: str | None = None) -> np.ndarray | None:
        """The PNG's indices at ``frame_idx`` (uint8, H x W), or None where the frame has no PNG."""
        name = self.frame_names[frame_idx]
        if name not in self.available:
            return None
        if frame_idx in self._cache:
            self._cache.move_to_end(frame_idx)
            return self._cache[frame_idx]
        png = self.folder.child(f"{name}.png")
        labels = decode_label_png(png.read_bytes(), png.uri, self.video_id, key or self.key)
        check_size(labels, (self.height, self.width), png.uri, self.video_id, key or self.key)
        self._cache[frame_idx] = labels
        if len(self._cache) > _CACHED_FRAMES:
            self._cache.popitem(last=False)
        return labels


@dataclass
class PngTrack:
    """One object of a ``PngFrames``: pixels equal to ``label``, or any non-zero pixel when it is None."""

    frames: PngFrames
    obj_id: str
    label: int | None = None

    def frame_mask(self, frame_idx: int) -> np.ndarray | None:
        labels = self.frames.labels(frame_idx, self.obj_id)
        if labels is None:
            return None
        return labels != 0 if self.label is None else labels == self.label
