"""ReferFormer's Ref-DAVIS17 predictions: one merged palette PNG per annotator run and frame.

Layout (written by ReferFormer's ``inference_davis.py`` and VideoLISA's ``post_process_davis.py``, read
by davis2017-evaluation once per run)::

    anno_<slot>/<video>/<frame>.png    palette PNG: pixel k = the k-th object of the video, i.e. the
                                       slot's expression of the k-th group of four (ids 4(k-1) + slot)

``slot`` is the annotator run (``Expression.slot``: 0 annotator 1 first-frame, 1 annotator 1
full-video, 2 annotator 2 first-frame, 3 annotator 2 full-video). Each expression reads its mask as
``label == k`` in its run's folder, so both Ref-DAVIS17 protocols score these files. Frames carry the
annotation's frame names (ReferFormer writes ``{index:05d}.png``, which are DAVIS' names).
"""

from __future__ import annotations

import numpy as np

from pipelines.formats.files import Location, check_size, decode_label_png
from pipelines.formats.model import Dataset, FormatError, VideoRecord
from pipelines.formats.prediction_store import PredictionStore

RUN_FOLDER = "anno_{slot}"


class MergedPalettePredictions(PredictionStore):
    """``<root>/anno_<slot>/<video>/<frame>.png``, one folder listed per (run, video) on first use."""

    def __init__(self, root: Location, dataset: Dataset | None) -> None:
        super().__init__(root.uri, dataset)
        if dataset is None:
            raise FormatError(root.uri, "the merged-palette layout (anno_<slot>/) needs the annotations")
        self.root = root
        self._listed: dict[tuple[int, str], set[str]] = {}

    def _frames(self, slot: int, video_id: str) -> set[str]:
        """Frame names with a PNG in ``anno_<slot>/<video>/``."""
        if (slot, video_id) not in self._listed:
            files = self.root.child(RUN_FOLDER.format(slot=slot), video_id).list_files()
            self._listed[(slot, video_id)] = {f[: -len(".png")] for f in files if f.endswith(".png") and "/" not in f}
        return self._listed[(slot, video_id)]

    def _label(self, video: VideoRecord, expr_id: str) -> tuple[int, int] | None:
        """(slot, palette value) of an expression of ``video``; None for an unknown or slot-less one."""
        expression = next((e for e in video.expressions if e.expr_id == expr_id), None)
        if expression is None or expression.slot is None:
            return None
        group = [e.expr_id for e in video.expressions if e.slot == expression.slot]
        return expression.slot, group.index(expr_id) + 1

    def expressions(self, video_id: str) -> set[str]:
        video = self._video(video_id)
        if video is None:
            return set()
        return {e.expr_id for e in video.expressions if e.slot is not None and self._frames(e.slot, video_id)}

    def mask(self, video_id: str, expr_id: str, frame: int | str) -> np.ndarray | None:
        video = self._video(video_id)
        label = None if video is None else self._label(video, expr_id)
        if video is None or label is None:
            return None
        slot, value = label
        if isinstance(frame, int):
            frame = video.frame_names[frame] if 0 <= frame < video.num_frames else ""
        if frame not in self._frames(slot, video_id):
            return None
        png = self.root.child(RUN_FOLDER.format(slot=slot), video_id, f"{frame}.png")
        labels = decode_label_png(png.read_bytes(), png.uri, video_id, expr_id)
        check_size(labels, (video.height, video.width), png.uri, video_id, expr_id)
        return labels == value

    def foreign_frames(self, video_id: str, expr_id: str) -> list[str]:
        video = self._video(video_id)
        label = None if video is None else self._label(video, expr_id)
        if video is None or label is None:
            return []
        return sorted(self._frames(label[0], video_id) - set(video.frame_names))
