"""Prediction I/O: PNG folders, Parquet with RLE, CodaLab zips — written, then read back through the one
lookup evaluation uses (local and S3), and every malformed prediction."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.formats import (
    PREDICTION_SCHEMA,
    Dataset,
    Expression,
    FormatError,
    PredictedMask,
    VideoRecord,
    open_predictions,
    prediction_row,
    write_codalab_zip,
    write_parquet_predictions,
    write_png_predictions,
)
from pipelines.formats.prediction_palette import MergedPalettePredictions
from pipelines.formats.prediction_parquet import ParquetPredictions
from pipelines.formats.prediction_png import PngFolderPredictions, ZipPredictions

H, W = 16, 24
VIDEOS = ["0ab4afe7fb46", "UVO/all/-fbscF"]
FRAMES = [f"{i:05d}" for i in range(4)]


def _mask(v: int, e: int, f: int) -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[v + 2 * e: v + 2 * e + 5, f * 3: f * 3 + 7] = True
    return mask


def _predictions() -> list[PredictedMask]:
    out = []
    for v, video_id in enumerate(VIDEOS):
        for e in range(2):
            for f, name in enumerate(FRAMES):
                if (v, e, f) == (1, 1, 2):
                    continue  # one frame never predicted
                out.append(PredictedMask(video_id, str(e), f, name, _mask(v, e, f), score=0.25 * f + 0.1 * e))
    return out


def _dataset() -> Dataset:
    return Dataset("mevis", {v: VideoRecord(v, list(FRAMES), H, W) for v in VIDEOS})


def _assert_lookup(store, by_name: bool = True) -> None:
    for v, video_id in enumerate(VIDEOS):
        assert store.expressions(video_id) == {"0", "1"}
        assert store.has_expression(video_id, "1") and not store.has_expression(video_id, "7")
        for e in range(2):
            for f, name in enumerate(FRAMES):
                got = store.mask(video_id, str(e), f)
                if (v, e, f) == (1, 1, 2):
                    assert got is None
                    continue
                np.testing.assert_array_equal(got, _mask(v, e, f))
                if by_name:
                    np.testing.assert_array_equal(store.mask(video_id, str(e), name), _mask(v, e, f))
    assert store.mask("nope", "0", 0) is None
    assert store.mask(VIDEOS[0], "0", 99) is None


def test_png_folder_round_trip(tmp_path: Path) -> None:
    assert write_png_predictions(_predictions(), str(tmp_path)) == 15
    png = Image.open(tmp_path / "UVO/all/-fbscF" / "1" / "00003.png")
    assert png.mode == "L" and set(np.unique(np.asarray(png))) == {0, 255}
    store = open_predictions(str(tmp_path), _dataset())
    assert isinstance(store, PngFolderPredictions)
    _assert_lookup(store)


def test_png_folder_without_dataset_maps_index_to_sorted_names(tmp_path: Path) -> None:
    write_png_predictions(_predictions(), str(tmp_path))
    store = open_predictions(str(tmp_path))
    np.testing.assert_array_equal(store.mask(VIDEOS[0], "1", 3), _mask(0, 1, 3))
    np.testing.assert_array_equal(store.mask(VIDEOS[0], "1", "00002"), _mask(0, 1, 2))


def test_parquet_round_trip_local(tmp_path: Path) -> None:
    files = write_parquet_predictions(_predictions(), str(tmp_path))
    assert files == [f"{tmp_path}/0ab4afe7fb46.parquet", f"{tmp_path}/UVO%2Fall%2F-fbscF.parquet"]
    table = pq.read_table(tmp_path / "0ab4afe7fb46.parquet")
    assert table.schema.equals(PREDICTION_SCHEMA, check_metadata=False) and table.num_rows == 8
    store = open_predictions(str(tmp_path), _dataset())
    assert isinstance(store, ParquetPredictions)
    _assert_lookup(store)
    assert store.score(VIDEOS[1], "1", "00003") == pytest.approx(0.85)
    bare = open_predictions(str(tmp_path))  # frame names come from the frame_name column
    np.testing.assert_array_equal(bare.mask(VIDEOS[1], "0", "00001"), _mask(1, 0, 1))


def test_parquet_round_trip_s3(s3) -> None:
    write_parquet_predictions(_predictions(), s3.uri("preds/run1"), s3.storage_options)
    _assert_lookup(open_predictions(s3.uri("preds/run1"), _dataset(), s3.storage_options))


def test_parquet_files_holding_several_videos_any_name(tmp_path: Path) -> None:
    rows = [prediction_row(p) for p in _predictions()]
    pq.write_table(pa.Table.from_pylist(rows[:10], schema=PREDICTION_SCHEMA), tmp_path / "a1b2_000000.parquet")
    (tmp_path / "part").mkdir()
    pq.write_table(pa.Table.from_pylist(rows[10:], schema=PREDICTION_SCHEMA), tmp_path / "part" / "x.parquet")
    _assert_lookup(open_predictions(str(tmp_path), _dataset()))


def test_parquet_written_before_the_present_column_still_reads(tmp_path: Path) -> None:
    rows = [prediction_row(p) for p in _predictions()]
    assert {r["present"] for r in rows} == {None}  # unknown for predictions from elsewhere
    pq.write_table(pa.Table.from_pylist(rows, schema=PREDICTION_SCHEMA).drop_columns(["present"]),
                   tmp_path / "old.parquet")
    _assert_lookup(open_predictions(str(tmp_path), _dataset()))


@pytest.mark.parametrize(("layout", "prefix"), [("mevis", ""), ("refytvos", "Annotations/")])
def test_codalab_zip_round_trip(tmp_path: Path, layout: str, prefix: str) -> None:
    target = tmp_path / "submission.zip"
    assert write_codalab_zip(_predictions(), str(target), layout) == 15
    names = zipfile.ZipFile(target).namelist()
    assert f"{prefix}0ab4afe7fb46/0/00000.png" in names and len(names) == 15
    store = open_predictions(str(target), _dataset())
    assert isinstance(store, ZipPredictions)
    _assert_lookup(store)
    store.close()


def test_codalab_zip_over_s3(s3) -> None:
    write_codalab_zip(_predictions(), s3.uri("sub/ytvos.zip"), "refytvos", s3.storage_options)
    _assert_lookup(open_predictions(s3.uri("sub/ytvos.zip"), _dataset(), s3.storage_options))


def _by_index(predictions: list[PredictedMask]) -> list[PredictedMask]:
    """The same predictions named by frame index ("0") instead of the annotation's names ("00000")."""
    return [PredictedMask(p.video_id, p.expr_id, p.frame_idx, str(p.frame_idx), p.mask) for p in predictions]


def test_every_store_names_the_frames_that_are_not_frames_of_the_video(tmp_path: Path) -> None:
    predictions = [p for p in _predictions() if p.video_id == VIDEOS[0]]
    write_png_predictions(_by_index(predictions[:4]) + predictions[4:], str(tmp_path / "png"))
    write_codalab_zip(_by_index(predictions), str(tmp_path / "sub.zip"), "mevis")
    for uri in (tmp_path / "png", tmp_path / "sub.zip"):
        store = open_predictions(str(uri), _dataset())
        assert store.foreign_frames(VIDEOS[0], "0") == (["0", "1", "2", "3"])
        assert store.foreign_frames(VIDEOS[0], "1") == ([] if uri.name == "png" else ["0", "1", "2", "3"])
        assert store.mask(VIDEOS[0], "0", 0) is None  # a foreign name is never read as frame 0
    moved = [PredictedMask(p.video_id, p.expr_id, p.frame_idx + 3, p.frame_name, p.mask) for p in predictions]
    write_parquet_predictions(moved, str(tmp_path / "parquet"))
    store = open_predictions(str(tmp_path / "parquet"), _dataset())
    assert store.foreign_frames(VIDEOS[0], "1") == ["4", "5", "6"]  # indices past the 4 frames
    assert open_predictions(str(tmp_path / "png")).foreign_frames(VIDEOS[0], "0") == []  # no dataset: cannot tell


def test_png_folder_one_frame_record_without_the_frame_level(tmp_path: Path) -> None:
    mask = _mask(0, 0, 1)
    (tmp_path / "COCO_1").mkdir()
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(tmp_path / "COCO_1" / "17.png")
    dataset = Dataset("refcoco", {"COCO_1": VideoRecord("COCO_1", ["COCO_1"], H, W)})
    store = open_predictions(str(tmp_path), dataset)
    assert store.expressions("COCO_1") == {"17"} and store.foreign_frames("COCO_1", "17") == []
    np.testing.assert_array_equal(store.mask("COCO_1", "17", 0), mask)


def _davis_dataset() -> Dataset:
    expressions = [Expression(str(i), f"e{i}", (str(i // 4 + 1),), slot=i % 4) for i in range(8)]
    return Dataset("refdavis17", {"vid": VideoRecord("vid", FRAMES, H, W, expressions=expressions)})


def test_referformer_merged_palette_runs(tmp_path: Path) -> None:
    labels = np.zeros((H, W), dtype=np.uint8)
    labels[1:4, 1:4] = 1  # the first object of the video (expressions 0..3)
    labels[8:12, 5:9] = 2  # the second (expressions 4..7)
    for name in FRAMES[:2]:
        (tmp_path / "anno_1" / "vid").mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(labels, mode="P")
        image.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (253 * 3))
        image.save(tmp_path / "anno_1" / "vid" / f"{name}.png")
    store = open_predictions(str(tmp_path), _davis_dataset())
    assert isinstance(store, MergedPalettePredictions)
    assert store.expressions("vid") == {"1", "5"}  # run 1 of both objects; runs 0, 2, 3 absent
    np.testing.assert_array_equal(store.mask("vid", "5", 1), labels == 2)
    np.testing.assert_array_equal(store.mask("vid", "1", "00000"), labels == 1)
    assert store.mask("vid", "5", 3) is None and store.mask("vid", "4", 0) is None
    Image.fromarray(labels).save(tmp_path / "anno_1" / "vid" / "7.png")
    assert store.foreign_frames("vid", "5") == []  # listed before the file appeared
    assert open_predictions(str(tmp_path), _davis_dataset()).foreign_frames("vid", "5") == ["7"]
    _raises(lambda: open_predictions(str(tmp_path)), str(tmp_path), None, None,
            "the merged-palette layout (anno_<slot>/) needs the annotations")


# --- malformed predictions ---------------------------------------------------------------------------


def _raises(call, file: str, video: str | None, key: str | None, message: str) -> None:
    with pytest.raises(FormatError) as info:
        call()
    assert (info.value.file, info.value.video, info.value.key) == (file, video, key), str(info.value)
    assert message in str(info.value)


def test_png_prediction_of_wrong_size(tmp_path: Path) -> None:
    write_png_predictions(_predictions(), str(tmp_path))
    bad = tmp_path / "0ab4afe7fb46" / "1" / "00002.png"
    Image.fromarray(np.zeros((H, W - 1), dtype=np.uint8)).save(bad)
    store = open_predictions(str(tmp_path), _dataset())
    _raises(lambda: store.mask("0ab4afe7fb46", "1", 2), str(bad), "0ab4afe7fb46", "1",
            "image size [16, 23] disagrees with frame size [16, 24]")


def test_rgb_png_prediction(tmp_path: Path) -> None:
    write_png_predictions(_predictions(), str(tmp_path))
    bad = tmp_path / "UVO/all/-fbscF" / "0" / "00000.png"
    Image.fromarray(np.zeros((H, W, 3), dtype=np.uint8)).save(bad)
    store = open_predictions(str(tmp_path), _dataset())
    _raises(lambda: store.mask("UVO/all/-fbscF", "0", "00000"), str(bad), "UVO/all/-fbscF", "0",
            "expected a palette or single-channel PNG, got mode RGB")


def test_zip_member_of_wrong_size(tmp_path: Path) -> None:
    target = tmp_path / "sub.zip"
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((H + 1, W), dtype=np.uint8)).save(buffer, format="PNG")
    with zipfile.ZipFile(target, "w") as archive:
        archive.writestr("vid/3/00001.png", buffer.getvalue())
    store = open_predictions(str(target), Dataset("mevis", {"vid": VideoRecord("vid", FRAMES, H, W)}))
    _raises(lambda: store.mask("vid", "3", 1), f"{target}!vid/3/00001.png", "vid", "3", "image size [17, 24]")


def test_parquet_rle_size_disagrees_with_frame(tmp_path: Path) -> None:
    write_parquet_predictions(_predictions(), str(tmp_path))
    store = open_predictions(str(tmp_path), Dataset("mevis", {VIDEOS[0]: VideoRecord(VIDEOS[0], FRAMES, H, W + 8)}))
    _raises(lambda: store.mask(VIDEOS[0], "0", 1), f"{tmp_path}/0ab4afe7fb46.parquet", VIDEOS[0], "0",
            "frame 1: mask size [16, 24] disagrees with frame size [16, 32]")


def test_parquet_missing_column(tmp_path: Path) -> None:
    rows = [prediction_row(p) for p in _predictions()[:3]]
    table = pa.Table.from_pylist(rows, schema=PREDICTION_SCHEMA).drop_columns(["rle"])
    pq.write_table(table, tmp_path / "p.parquet")
    store = open_predictions(str(tmp_path))
    _raises(lambda: store.mask(VIDEOS[0], "0", 0), f"{tmp_path}/p.parquet", VIDEOS[0], "rle",
            "missing column(s) ['rle']")


def test_parquet_duplicate_rows(tmp_path: Path) -> None:
    rows = [prediction_row(p) for p in _predictions()[:2]]
    pq.write_table(pa.Table.from_pylist(rows + rows[:1], schema=PREDICTION_SCHEMA), tmp_path / "p.parquet")
    store = open_predictions(str(tmp_path))
    _raises(lambda: store.mask(VIDEOS[0], "0", 0), f"{tmp_path}/p.parquet", VIDEOS[0], "0", "two rows for frame 0")


def test_not_a_parquet_file(tmp_path: Path) -> None:
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    _raises(lambda: open_predictions(str(tmp_path)), f"{tmp_path}/junk.parquet", None, None,
            "not a readable Parquet file")


def test_not_a_zip_and_missing_predictions(tmp_path: Path) -> None:
    (tmp_path / "sub.zip").write_bytes(b"PK nonsense")
    _raises(lambda: open_predictions(str(tmp_path / "sub.zip")), f"{tmp_path}/sub.zip", None, None, "not a zip file")
    _raises(lambda: open_predictions(str(tmp_path / "absent")), f"{tmp_path}/absent", None, None,
            "predictions not found")


def test_parquet_writer_needs_videos_together(tmp_path: Path) -> None:
    predictions = _predictions()
    with pytest.raises(ValueError, match="predictions of video '0ab4afe7fb46' must come together"):
        write_parquet_predictions([predictions[0], predictions[-1], predictions[1]], str(tmp_path))
