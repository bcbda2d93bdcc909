"""``MaskFileWriter``: a video's spooled masks -> its Parquet (sorted, bounded row groups) and PNGs, locally."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from actors import rle as rle_codec
from actors.mask_spool import MaskSpool
from actors.video_rows import VideoSource
from pipelines import label_writer
from pipelines.label_writer import MaskFileWriter


def _mask(frame: int, expression: int) -> np.ndarray:
    mask = np.zeros((6, 8), dtype=bool)
    mask[frame % 6, : expression + 1 + frame] = True
    return mask


def test_spooled_masks_become_sorted_row_groups_and_pngs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(label_writer, "ROW_GROUP_ROWS", 4)
    source = VideoSource(video_uri="s3://bucket/v.mp4", frame_names=["a", "b", "c", "d", "e"])
    writer = MaskFileWriter(str(tmp_path / "out"), None, png=True)
    with MaskSpool(2, 5, str(tmp_path)) as spool:
        for frame in (2, 1, 0, 3, 4):  # a backward pass from 2, then forward
            for expression in (1, 0):
                spool.put(expression, frame, rle_codec.encode(_mask(frame, expression))["counts"], frame / 10)
        files = writer.write("../v", source, (6, 8), ["e0", "e1"], spool)
    parquet = [f for f in files if f.path.endswith(".parquet")]
    assert [f.path for f in parquet] == [label_writer.masks_path("../v")]
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
    pngs = sorted(f.path for f in files if f.path.endswith(".png"))
    assert pngs == sorted(label_writer.png_path("../v", e, name) for e in ("e0", "e1") for name in "abcde")
    assert all(".." not in p for p in pngs)
    png = np.asarray(Image.open(tmp_path / "out" / label_writer.png_path("../v", "e1", "d")))
    np.testing.assert_array_equal(png > 0, _mask(3, 1))
