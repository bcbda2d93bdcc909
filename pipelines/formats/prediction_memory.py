"""One video's masks held in memory (the engine's output) read through the evaluator's prediction interface.

Benches and tests that label in-process (``actors.engine.VideoLabeler``) score with
``pipelines.evaluate.score_refvos_expression`` through this store, without writing files first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from actors import rle as rle_codec
from pipelines.formats.model import VideoRecord
from pipelines.formats.prediction_store import PredictionStore


class VideoMasksInMemory(PredictionStore):
    """``rles[expr_id][frame_index]`` of the one video ``record`` describes."""

    def __init__(self, record: VideoRecord, rles: Mapping[str, Sequence[rle_codec.RLE]]) -> None:
        super().__init__("memory://engine", None)
        self.record = record
        self.rles = dict(rles)

    def expressions(self, video_id: str) -> set[str]:
        return set(self.rles) if video_id == self.record.video_id else set()

    def mask(self, video_id: str, expr_id: str, frame: int | str) -> np.ndarray | None:
        if expr_id not in self.expressions(video_id):
            return None
        index = frame if isinstance(frame, int) else self.record.frame_names.index(frame)
        return rle_codec.decode(self.rles[expr_id][index], (self.record.height, self.record.width))
