"""The prediction lookup evaluation calls, whatever the storage: (video, expr_id, frame) -> mask or None.

A store is opened on a predictions URI and optionally the ``Dataset`` they predict. With the dataset
a frame may be given by index or by name in every store (PNG layouts are keyed by frame name,
Parquet by index), and every mask is checked against its video's size. Without it, a PNG store maps
an index to the expression's sorted frame names and a Parquet store maps a name through its
``frame_name`` column. Nothing is read until asked for.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from pipelines.formats.model import Dataset, VideoRecord


@dataclass(frozen=True)
class PredictedMask:
    """One predicted mask: what every prediction writer takes (``mask`` is binarised: non-zero is object)."""

    video_id: str
    expr_id: str
    frame_idx: int
    frame_name: str
    mask: np.ndarray
    score: float | None = None


class PredictionStore(ABC):
    """Lazy (video, expr_id, frame) -> boolean mask lookup over one prediction set."""

    def __init__(self, uri: str, dataset: Dataset | None) -> None:
        self.uri = uri
        self.dataset = dataset

    @abstractmethod
    def expressions(self, video_id: str) -> set[str]:
        """Expression ids that have at least one predicted frame in ``video_id``."""

    def has_expression(self, video_id: str, expr_id: str) -> bool:
        return expr_id in self.expressions(video_id)

    @abstractmethod
    def mask(self, video_id: str, expr_id: str, frame: int | str) -> np.ndarray | None:
        """Boolean (H, W) mask at ``frame`` (index or frame name), or None where nothing was predicted."""

    def foreign_frames(self, video_id: str, expr_id: str) -> list[str]:
        """The expression's predicted frames that are not frames of the video (names, or indices as
        text), sorted; empty when the store cannot tell (no dataset) or holds none."""
        return []

    def _video(self, video_id: str) -> VideoRecord | None:
        return None if self.dataset is None else self.dataset.videos.get(video_id)

    def _expected_size(self, video_id: str) -> tuple[int, int] | None:
        video = self._video(video_id)
        return None if video is None else (video.height, video.width)
