"""``MaskFileWriter``: a video's spooled masks -> its masks' Parquet (sorted, bounded row groups), its tracks'
Parquet and PNGs, locally."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from actors import rle as rle_codec
from actors.grounding import ExpressionMoment
from actors.mask_spool import MaskSpool
from actors.track_calibration import TrackCalibration
from actors.track_confidence import FEATURE_NAMES
from actors.video_rows import ExpressionTrack, VideoSource
from pipelines import label_writer
from pipelines.formats.track_parquet import FEATURES_METADATA_KEY, TRACK_SCHEMA
from pipelines.label_writer import MaskFileWriter


def _mask(frame: int, expression: int) -> np.ndarray:
    mask = np.zeros((6, 8), dtype=bool)
    mask[frame % 6, : expression + 1 + frame] = True
    return mask


def _track(expr_id: str, anchor: int = 0, reseeds: list[int] | None = None, cleared: list[int] | None = None,
           key_scores: list[float] | None = None, pre_update: list[dict] | None = None) -> ExpressionTrack:
    return ExpressionTrack(expr_id, f"text of {expr_id}", anchor, [anchor, *(reseeds or [])], cleared or [],
                           ExpressionMoment(0.25, 0.5, [0, 2, 4], [0.2, 0.9, 0.4]), key_scores or [0.8],
                           reseeds or [], pre_update or [])


def test_spooled_masks_become_sorted_row_groups_and_pngs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(label_writer, "ROW_GROUP_ROWS", 4)
    source = VideoSource(video_uri="s3://bucket/v.mp4", frame_names=["a", "b", "c", "d", "e"])
    writer = MaskFileWriter(str(tmp_path / "out"), None, png=True)
    with MaskSpool(2, 5, str(tmp_path)) as spool:
        for frame in (2, 1, 0, 3, 4):  # a backward pass from 2, then forward
            for expression in (1, 0):
                spool.put(expression, frame, rle_codec.encode(_mask(frame, expression))["counts"], frame / 10, True)
        files = writer.write("../v", source, (6, 8), [_track("e0"), _track("e1")], spool)
    parquet = [f for f in files if f.path.endswith(".parquet")]
    assert [f.path for f in parquet] == [label_writer.masks_path("../v"), label_writer.tracks_path("../v")]
    table = pq.ParquetFile(tmp_path / "out" / parquet[0].path)
    assert table.metadata.num_row_groups == 3  # 10 rows, at most 4 per group
    rows = table.read().to_pylist()
    assert [(r["expr_id"], r["frame_idx"], r["frame_name"]) for r in rows] == [
        (e, f, "abcde"[f]) for e in ("e0", "e1") for f in range(5)]
    for row in rows:
        expression = int(row["expr_id"][1])
        decoded = rle_codec.decode({"size": [row["height"], row["width"]], "counts": row["rle"]})
        np.testing.assert_array_equal(decoded, _mask(row["frame_idx"], expression))
        assert row["score"] == pytest.approx(row["frame_idx"] / 10)
        assert row["present"] is True
    pngs = sorted(f.path for f in files if f.path.endswith(".png"))
    assert pngs == sorted(label_writer.png_path("../v", e, name) for e in ("e0", "e1") for name in "abcde")
    assert all(".." not in p for p in pngs)
    png = np.asarray(Image.open(tmp_path / "out" / label_writer.png_path("../v", "e1", "d")))
    np.testing.assert_array_equal(png > 0, _mask(3, 1))


def test_tracks_of_a_tracked_and_a_no_target_expression(tmp_path: Path) -> None:
    """One expression tracked on frames 1-3 of 5 (absent, so empty, on 0 and 4), one the model never finds: the
    tracks' rows agree with the mask rows, the no-target one has every mask empty and ``no_target``."""
    size, frames = (4, 5), 5
    boxes = {1: (slice(0, 2), slice(0, 2)), 2: (slice(0, 2), slice(0, 4)), 3: (slice(0, 4), slice(0, 5))}
    scores = [0.3, 0.9, 0.8, 0.7, 0.2]
    source = VideoSource(video_uri="file:///v.mp4")
    before_update = np.zeros(size, dtype=bool)
    before_update[3, :2] = True  # what tracking gave on frame 3 before its key-frame mask replaced it
    tracks = [_track("tracked", anchor=2, reseeds=[3], cleared=[3], key_scores=[0.95, 0.85],
                     pre_update=[rle_codec.encode(before_update)]),
              _track("nothing", anchor=2, key_scores=[0.1])]
    with MaskSpool(2, frames, str(tmp_path)) as spool:
        for t in range(frames):
            mask = np.zeros(size, dtype=bool)
            if t in boxes:
                mask[boxes[t]] = True
            spool.put(0, t, rle_codec.encode(mask)["counts"], scores[t], t in boxes)
            spool.put(1, t, rle_codec.encode(np.zeros(size, dtype=bool))["counts"], 0.05, False)
        plain = MaskFileWriter(str(tmp_path / "plain"), None, png=False).write("v", source, size, tracks, spool)
        calibration = TrackCalibration.fit(np.array([[0.9, 0.5, 0.9, 0.95, 0.8, 0.6, 0.5, 0.5],
                                                     [0.1, 0.1, 0.1, 0.1, 0.0, 0.0, 0.0, 0.0]]), np.array([1, 0]),
                                           FEATURE_NAMES)
        calibrated = MaskFileWriter(str(tmp_path / "calibrated"), None, png=False, calibration=calibration).write(
            "v", source, size, tracks, spool)
    assert [f.path for f in plain] == ["masks/v.parquet", "tracks/v.parquet"]

    masks = pq.read_table(tmp_path / "plain" / "masks" / "v.parquet").to_pylist()
    assert [(m["expr_id"], m["present"]) for m in masks] == [
        *[("tracked", t in boxes) for t in range(frames)], *[("nothing", False)] * frames]
    nothing = [m for m in masks if m["expr_id"] == "nothing"]
    assert all(rle_codec.area({"size": [4, 5], "counts": m["rle"]}) == 0 for m in nothing)

    table = pq.read_table(tmp_path / "plain" / "tracks" / "v.parquet")
    assert table.schema.names == TRACK_SCHEMA.names
    assert json.loads(table.schema.metadata[FEATURES_METADATA_KEY]) == list(FEATURE_NAMES)
    tracked, absent = table.to_pylist()
    assert {k: tracked[k] for k in ("video_id", "expr_id", "confidence", "no_target", "start", "end", "anchor_frame",
                                    "key_frames", "reseed_frames", "cleared_frames", "num_frames", "present_frames")} == {
        "video_id": "v", "expr_id": "tracked", "confidence": None, "no_target": False, "start": 0.25, "end": 0.5,
        "anchor_frame": 2, "key_frames": [2, 3], "reseed_frames": [3], "cleared_frames": [3], "num_frames": 5,
        "present_frames": 3}
    assert [r["size"] for r in tracked["pre_update_rles"]] == [[4, 5]]
    np.testing.assert_array_equal(rle_codec.decode(tracked["pre_update_rles"][0], size), before_update)
    assert absent["reseed_frames"] == [] and absent["pre_update_rles"] == []
    areas = np.array([4, 8, 20]) / 20
    assert tracked["mean_track_score"] == pytest.approx(0.8)
    assert (tracked["area_mean"], tracked["area_std"], tracked["area_max"]) == pytest.approx(
        (areas.mean(), areas.std(), 1.0))
    assert dict(zip(FEATURE_NAMES, tracked["features"], strict=True)) == pytest.approx({
        "find_max": 0.9, "find_contrast": 0.4, "key_mean": 0.9, "key_max": 0.95, "track_mean": 0.8,
        "present_fraction": 0.6, "area_mean": areas.mean(), "area_cv": areas.std() / areas.mean()})
    assert (absent["expr_id"], absent["no_target"], absent["present_frames"], absent["confidence"]) == (
        "nothing", True, 0, None)
    assert (absent["mean_track_score"], absent["area_mean"], absent["area_std"], absent["area_max"]) == (
        None, None, None, None)

    # with a calibration, confidence is its prediction on the stored features
    rows = pq.read_table(tmp_path / "calibrated" / "tracks" / "v.parquet").to_pylist()
    expected = calibration.predict(np.array([r["features"] for r in rows]))
    assert [r["confidence"] for r in rows] == pytest.approx(expected.tolist())
    assert rows[0]["confidence"] > 0.5 > rows[1]["confidence"]
    assert [f.path for f in calibrated] == ["masks/v.parquet", "tracks/v.parquet"]


def test_a_track_whose_pre_update_masks_disagree_with_its_reseeds_is_refused(tmp_path: Path) -> None:
    track = _track("e0", anchor=0, reseeds=[2, 4], key_scores=[0.8, 0.7, 0.6],
                   pre_update=[rle_codec.encode(np.zeros((4, 5), dtype=bool))])
    with MaskSpool(1, 5, str(tmp_path)) as spool:
        for t in range(5):
            spool.put(0, t, rle_codec.encode(np.zeros((4, 5), dtype=bool))["counts"], 0.5, False)
        with pytest.raises(ValueError, match=r"'e0' of video 'v': 1 pre-update masks for 2 re-seeded frames"):
            MaskFileWriter(str(tmp_path / "out"), None, png=False).write(
                "v", VideoSource(video_uri="file:///v.mp4"), (4, 5), [track], spool)
