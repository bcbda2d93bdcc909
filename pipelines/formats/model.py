"""The one internal model every dataset reader produces and every writer consumes.

A ``Dataset`` holds ``VideoRecord``s (frames, expressions, lazily decoded object masks) and
``Moment``s (temporal grounding queries). Masks are never decoded until asked for: a record keeps
per-object ``MaskTrack``s that decode one frame at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from actors import rle as rle_codec


class FormatError(ValueError):
    """Malformed dataset or prediction input; the message names the file, the video and the key."""

    def __init__(self, file: str, message: str, video: str | None = None, key: str | None = None) -> None:
        where = [f"file {file}"]
        if video is not None:
            where.append(f"video {video!r}")
        if key is not None:
            where.append(f"key {key!r}")
        super().__init__(f"{', '.join(where)}: {message}")
        self.file, self.video, self.key = file, video, key


@dataclass(frozen=True)
class Expression:
    """One referring / reasoning expression of a video.

    ``obj_ids`` are the annotation ids whose union is the target (empty: no target in the video).
    ``kind`` is a free tag for subsets (synthetic kinds, "referring"/"reasoning", ...);
    ``type_id`` is ReVOS' 0 = referring, 1 = reasoning.
    ``slot`` is Ref-DAVIS17's annotator slot of the object's four expressions (0 = annotator 1
    first-frame, 1 = annotator 1 full-video, 2 = annotator 2 first-frame, 3 = annotator 2 full-video).
    ``annotated_frames`` lists the frame indices with ground truth for this expression where that
    differs per expression (ReasonVOS); None defers to the video's ``annotated_frames``.
    """

    expr_id: str
    text: str
    obj_ids: tuple[str, ...] = ()
    kind: str | None = None
    type_id: int | None = None
    slot: int | None = None
    annotated_frames: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Moment:
    """A temporal grounding query: ``text`` happens in ``video_id`` from ``start`` to ``end`` seconds.

    ``query_id`` is the query's line index in its annotation file (Charades-STA) or its running index.
    """

    query_id: int
    video_id: str
    text: str
    start: float
    end: float
    duration: float | None = None


class MaskTrack(Protocol):
    """One object's masks over a video, decoded on demand."""

    def frame_mask(self, frame_idx: int) -> np.ndarray | None:
        """Boolean (H, W) mask at ``frame_idx``, or None where the object has no annotation."""
        ...


class LabelFrames(Protocol):
    """A video's annotation as one label map per frame (palette layouts: object ids, 0 background)."""

    def labels(self, frame_idx: int, key: str | None = None) -> np.ndarray | None:
        """The (H, W) uint8 label map at ``frame_idx``, or None where the frame has no annotation."""
        ...


@dataclass
class RLETrack:
    """A track stored as one COCO RLE (or None) per frame; ``source`` names the file for errors."""

    rles: list[dict | None]
    height: int
    width: int
    source: str = "<memory>"
    video_id: str | None = None
    obj_id: str | None = None

    def frame_mask(self, frame_idx: int) -> np.ndarray | None:
        if not 0 <= frame_idx < len(self.rles):
            raise FormatError(self.source, f"frame {frame_idx} out of range [0, {len(self.rles)})", self.video_id, self.obj_id)
        rle = self.rles[frame_idx]
        if rle is None:
            return None
        try:
            return rle_codec.decode(rle, (self.height, self.width))
        except rle_codec.RLEError as exc:
            raise FormatError(self.source, f"frame {frame_idx}: {exc}", self.video_id, self.obj_id) from None


@dataclass
class VideoRecord:
    """A video with its expressions and object tracks.

    ``frame_names`` are the frame file stems in order (JPEG layouts) and define the frame count;
    ``frames_uri`` is the folder holding ``<frame_name>.jpg``; ``video_uri`` an encoded video if any.
    ``annotated_frames`` lists the frame indices that carry ground truth where that is not every frame
    (Ref-YouTube-VOS every 5th frame, ReasonVOS); None means every frame.
    ``foreground`` is the union of all annotated objects per frame where a dataset ships it (ReVOS'
    ``mask_dict_foreground.json``, used by its robustness score).
    ``void`` marks the pixels the benchmark's scorer leaves out (Ref-DAVIS17's label 255, ReasonSeg's
    "ignore" polygons); ``annotation`` is the raw per-frame label map where the official scorer reads
    more than the expressions' objects from it (Ref-DAVIS17: every object id of frame 0).
    """

    video_id: str
    frame_names: list[str]
    height: int
    width: int
    expressions: list[Expression] = field(default_factory=list)
    tracks: dict[str, MaskTrack] = field(default_factory=dict)
    frames_uri: str | None = None
    video_uri: str | None = None
    fps: float | None = None
    annotated_frames: list[int] | None = None
    foreground: MaskTrack | None = None
    void: MaskTrack | None = None
    annotation: LabelFrames | None = None

    @property
    def num_frames(self) -> int:
        return len(self.frame_names)

    def scored_frames(self, expression: Expression) -> list[int]:
        """Frame indices with ground truth for ``expression``: its own list, else the video's, else all."""
        if expression.annotated_frames is not None:
            return list(expression.annotated_frames)
        if self.annotated_frames is not None:
            return list(self.annotated_frames)
        return list(range(self.num_frames))

    def target_mask(self, expression: Expression, frame_idx: int) -> np.ndarray:
        """Union of the expression's object masks at ``frame_idx`` (absent objects are empty)."""
        out = np.zeros((self.height, self.width), dtype=bool)
        for obj_id in expression.obj_ids:
            track = self.tracks.get(obj_id)
            if track is None:
                raise FormatError("<annotations>", f"expression {expression.expr_id!r} names unknown object", self.video_id, obj_id)
            mask = track.frame_mask(frame_idx)
            if mask is not None:
                out |= mask
        return out

    def void_mask(self, frame_idx: int) -> np.ndarray | None:
        """Void pixels at ``frame_idx`` (None when the dataset marks none)."""
        if self.void is None:
            return None
        mask = self.void.frame_mask(frame_idx)
        return np.zeros((self.height, self.width), dtype=bool) if mask is None else mask


@dataclass
class Dataset:
    """A whole benchmark split in the internal model; ``format`` names the reader that produced it."""

    format: str
    videos: dict[str, VideoRecord] = field(default_factory=dict)
    moments: list[Moment] = field(default_factory=list)
