"""A labeling output written through the labeler's own writer classes, without Ray or models: masks into a
``MaskSpool``, ``MaskFileWriter`` (mask and track Parquet), then the commit marker ``vrseg label`` writes."""

from __future__ import annotations

import numpy as np

from actors import rle
from actors.grounding import ExpressionMoment
from actors.mask_spool import MaskSpool
from actors.track_calibration import TrackCalibration
from actors.video_rows import ExpressionTrack, VideoMasks, VideoSource
from pipelines.label_writer import MaskFileWriter
from pipelines.storage import OutputStore


def write_video(output: str, video_id: str, frame_names: list[str], expressions: dict, commit: bool = True,
                marker_texts: bool = True, scores: dict[str, list[float]] | None = None,
                calibration: TrackCalibration | None = None) -> None:
    """One video's labels as ``vrseg label`` writes them: ``expressions`` maps expr_id -> (text, (T, H, W) bool
    masks); a frame's object is present where its mask is not empty, its score ``scores[expr_id][t]`` (default
    ``0.5 + 0.1 t``); ``calibration`` gives the tracks a confidence; without ``marker_texts`` the marker lacks
    the texts (as markers written before they carried them)."""
    expr_ids = list(expressions)
    frames, height, width = next(iter(expressions.values()))[1].shape
    with MaskSpool(len(expr_ids), frames) as spool:
        for e, expr_id in enumerate(expr_ids):
            for t, mask in enumerate(expressions[expr_id][1]):
                score = scores[expr_id][t] if scores and expr_id in scores else 0.5 + 0.1 * t
                spool.put(e, t, rle.encode(mask)["counts"], score, bool(mask.any()))
        tracks = [ExpressionTrack(e, expressions[e][0], 0, [0], [], ExpressionMoment(0.0, 0.1, [0], [0.5]), [0.5], [])
                  for e in expr_ids]
        files = MaskFileWriter(output, None, png=False, calibration=calibration).write(
            video_id, VideoSource(video_uri=f"file:///videos/{video_id}.mp4", frame_names=frame_names),
            (height, width), tracks, spool)
    if commit:
        extra = VideoMasks(frames, 10.0, height, width, tracks, files).commit_extra()
        if not marker_texts:
            for expression in extra["expressions"]:
                del expression["text"]
        OutputStore(output).commit(video_id, files, extra)


def box_masks(frames: int, height: int, width: int, boxes: dict[int, tuple[int, int, int, int]]) -> np.ndarray:
    """(T, H, W) bool: on frame t the box ``boxes[t] = (top, left, bottom, right)``, nothing on other frames."""
    masks = np.zeros((frames, height, width), dtype=bool)
    for t, (top, left, bottom, right) in boxes.items():
        masks[t, top:bottom, left:right] = True
    return masks
