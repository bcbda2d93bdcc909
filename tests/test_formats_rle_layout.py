"""MeViS and ReVOS layouts: write then read back exactly (local and S3), and every malformed input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from actors import rle as rle_codec
from pipelines.formats.model import Dataset, Expression, FormatError, RLETrack, VideoRecord
from pipelines.formats.rle_layout import read_mevis, read_revos, write_mevis, write_revos

H, W = 16, 24


def _masks(seed: int, frames: int) -> list[np.ndarray | None]:
    rng = np.random.default_rng(seed)
    out: list[np.ndarray | None] = []
    for index in range(frames):
        if index == 1:
            out.append(None)  # object not annotated in this frame
            continue
        mask = np.zeros((H, W), dtype=bool)
        top, left = rng.integers(0, H - 4), rng.integers(0, W - 5)
        mask[top:top + 4, left:left + 5] = True
        out.append(mask)
    return out


def _track(masks: list[np.ndarray | None], video: str, key: str) -> RLETrack:
    return RLETrack([None if m is None else dict(rle_codec.encode(m)) for m in masks], H, W, video_id=video, obj_id=key)


def _dataset(fmt: str, video_ids: list[str], frames: int = 4) -> tuple[Dataset, dict[str, dict[str, list]]]:
    dataset = Dataset(format=fmt)
    truth: dict[str, dict[str, list]] = {}
    next_id = 0
    for v, video_id in enumerate(video_ids):
        keys = [str(next_id), str(next_id + 1)]
        next_id += 2
        truth[video_id] = {key: _masks(10 * v + k, frames) for k, key in enumerate(keys)}
        expressions = [
            Expression("0", f"the left thing in {video_id}", (keys[0],), kind="static", type_id=0),
            Expression("1", "both things, moving", tuple(keys), kind="motion", type_id=1),
            Expression("2", "the purple elephant", (), kind="no-target", type_id=0),
        ]
        dataset.videos[video_id] = VideoRecord(
            video_id=video_id, frame_names=[f"{i:05d}" for i in range(frames)], height=H, width=W,
            expressions=expressions, tracks={k: _track(m, video_id, k) for k, m in truth[video_id].items()},
        )
    return dataset, truth


def _frame(video_id: str, index: int) -> np.ndarray:
    """A smooth picture (JPEG keeps it close) that differs per video and frame."""
    y, x = np.mgrid[0:H, 0:W]
    base = (len(video_id) * 37 + index * 11) % 128
    return np.stack([base + 4 * x, base + 6 * y, np.full((H, W), 200 - base)], axis=-1).astype(np.uint8)


def _frames(video_id: str):
    return (_frame(video_id, i) for i in range(4))


def _assert_same(read: Dataset, dataset: Dataset, truth: dict, check_type_id: bool) -> None:
    assert list(read.videos) == list(dataset.videos)
    for video_id, video in dataset.videos.items():
        got = read.videos[video_id]
        assert (got.height, got.width, got.frame_names) == (H, W, video.frame_names)
        assert [(e.expr_id, e.text, e.obj_ids, e.kind) for e in got.expressions] == [
            (e.expr_id, e.text, e.obj_ids, e.kind) for e in video.expressions
        ]
        if check_type_id:
            assert [e.type_id for e in got.expressions] == [e.type_id for e in video.expressions]
        for key, masks in truth[video_id].items():
            for index, mask in enumerate(masks):
                decoded = got.tracks[key].frame_mask(index)
                assert (decoded is None) == (mask is None)
                if mask is not None:
                    np.testing.assert_array_equal(decoded, mask)
        both = video.expressions[1]
        for index in range(video.num_frames):
            np.testing.assert_array_equal(got.target_mask(both, index), video.target_mask(both, index))
            assert not got.target_mask(video.expressions[2], index).any()


def test_mevis_round_trip_local(tmp_path: Path) -> None:
    dataset, truth = _dataset("mevis", ["vidA", "vidB"])
    write_mevis(dataset, str(tmp_path), _frames)
    read = read_mevis(str(tmp_path))
    assert read.format == "mevis"
    _assert_same(read, dataset, truth, check_type_id=False)
    jpeg = np.asarray(Image.open(tmp_path / "JPEGImages" / "vidB" / "00002.jpg"))
    assert jpeg.shape == (H, W, 3)
    assert np.abs(jpeg.astype(int) - _frame("vidB", 2).astype(int)).max() <= 8  # lossy, but the same picture
    meta = json.loads((tmp_path / "meta_expressions.json").read_text())
    assert meta["videos"]["vidA"]["expressions"]["1"]["anno_id"] == [0, 1]
    assert read.videos["vidA"].frames_uri == f"{tmp_path}/JPEGImages/vidA"


def test_mevis_without_mask_dict_reads_sizes_from_jpegs(tmp_path: Path) -> None:
    dataset, _ = _dataset("mevis", ["vidA"])
    write_mevis(dataset, str(tmp_path), _frames)
    (tmp_path / "mask_dict.json").unlink()
    read = read_mevis(str(tmp_path))
    video = read.videos["vidA"]
    assert (video.height, video.width, video.tracks) == (H, W, {})
    assert [e.obj_ids for e in video.expressions] == [e.obj_ids for e in dataset.videos["vidA"].expressions]


def test_revos_round_trip_over_s3_with_nested_names(s3) -> None:
    dataset, truth = _dataset("revos", ["UVO/all/-fbscF", "LVVIS/train/0001"])
    root = s3.uri("revos")
    write_revos(dataset, root, _frames, split="valid", storage_options=s3.storage_options)
    fs = s3.filesystem()
    assert fs.exists(s3.uri("revos/JPEGImages/UVO/all/-fbscF/00003.jpg"))
    read = read_revos(root, split="valid", storage_options=s3.storage_options)
    assert read.format == "revos"
    _assert_same(read, dataset, truth, check_type_id=True)
    for video_id, video in dataset.videos.items():
        for index in range(video.num_frames):
            union = np.zeros((H, W), dtype=bool)
            for masks in truth[video_id].values():
                if masks[index] is not None:
                    union |= masks[index]
            np.testing.assert_array_equal(read.videos[video_id].foreground.frame_mask(index), union)


def test_mevis_round_trip_over_s3(s3) -> None:
    dataset, truth = _dataset("mevis", ["v0"])
    write_mevis(dataset, s3.uri("mevis/train"), _frames, storage_options=s3.storage_options)
    _assert_same(read_mevis(s3.uri("mevis/train"), s3.storage_options), dataset, truth, check_type_id=False)


def test_writer_rejects_bad_frames_and_shared_track_ids(tmp_path: Path) -> None:
    dataset, _ = _dataset("mevis", ["a"])
    with pytest.raises(ValueError, match="video 'a'.*yields 3 frames"):
        write_mevis(dataset, str(tmp_path / "x"), lambda v: (_frame(v, i) for i in range(3)))
    with pytest.raises(ValueError, match="video 'a' frame 0: expected uint8"):
        write_mevis(dataset, str(tmp_path / "y"), lambda v: iter([np.zeros((H + 1, W, 3), np.uint8)] * 4))
    clash = Dataset("mevis", {"a": dataset.videos["a"], "b": VideoRecord("b", ["0"], H, W, tracks={"0": _track([None], "b", "0")})})
    with pytest.raises(ValueError, match="track id '0' is used by videos 'a' and 'b'"):
        write_mevis(clash, str(tmp_path / "z"), None)
    dataset.videos["a"].expressions.append(Expression("9", "untyped", ()))
    with pytest.raises(ValueError, match="expression '9': ReVOS needs type_id"):
        write_revos(dataset, str(tmp_path / "w"), None)


# --- malformed input -------------------------------------------------------------------------------


@pytest.fixture()
def mevis_root(tmp_path: Path) -> Path:
    dataset, _ = _dataset("mevis", ["vidA", "vidB"])
    write_mevis(dataset, str(tmp_path), None)
    return tmp_path


def _edit(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _expect(root: Path, file: str, video: str | None, key: str | None, message: str, reader=read_mevis) -> None:
    with pytest.raises(FormatError) as info:
        reader(str(root))
    text = str(info.value)
    assert f"file {root}/{file}" in text and message in text
    if video is not None:
        assert f"video {video!r}" in text and info.value.video == video
    if key is not None:
        assert f"key {key!r}" in text and info.value.key == key


def test_bad_json(mevis_root: Path) -> None:
    (mevis_root / "meta_expressions.json").write_text('{"videos": {"vidA": ')
    _expect(mevis_root, "meta_expressions.json", None, None, "not valid JSON (line 1")


def test_missing_videos_key(mevis_root: Path) -> None:
    (mevis_root / "meta_expressions.json").write_text('{"vids": {}}')
    _expect(mevis_root, "meta_expressions.json", None, "videos", "has no 'videos'")


def test_missing_exp_key(mevis_root: Path) -> None:
    _edit(mevis_root / "meta_expressions.json", lambda d: d["videos"]["vidB"]["expressions"]["1"].pop("exp"))
    _expect(mevis_root, "meta_expressions.json", "vidB", "exp", "expression '1' has no 'exp'")


def test_missing_anno_id_key(mevis_root: Path) -> None:
    _edit(mevis_root / "meta_expressions.json", lambda d: d["videos"]["vidA"]["expressions"]["0"].pop("anno_id"))
    _expect(mevis_root, "meta_expressions.json", "vidA", "anno_id", "has no 'anno_id'")


def test_missing_frames_key(mevis_root: Path) -> None:
    _edit(mevis_root / "meta_expressions.json", lambda d: d["videos"]["vidB"].pop("frames"))
    _expect(mevis_root, "meta_expressions.json", "vidB", "frames", "video has no 'frames'")


def test_unknown_anno_id(mevis_root: Path) -> None:
    _edit(mevis_root / "meta_expressions.json",
          lambda d: d["videos"]["vidB"]["expressions"]["0"].update(anno_id=[77]))
    _expect(mevis_root, "mask_dict.json", "vidB", "77", "names an annotation id that has no masks")


def test_rle_size_disagrees_with_frame(mevis_root: Path) -> None:
    wrong = dict(rle_codec.encode(np.ones((H, W + 1), dtype=bool)))
    _edit(mevis_root / "mask_dict.json", lambda d: d["3"].__setitem__(2, wrong))
    _expect(mevis_root, "mask_dict.json", "vidB", "3", "frame 2 (00002): RLE size [16, 25] disagrees with frame size [16, 24]")


def test_rle_without_counts(mevis_root: Path) -> None:
    _edit(mevis_root / "mask_dict.json", lambda d: d["0"].__setitem__(0, {"size": [H, W]}))
    _expect(mevis_root, "mask_dict.json", "vidA", "0", "RLE must be null or have 'size' and 'counts'")


def test_mask_count_disagrees_with_frames(mevis_root: Path) -> None:
    _edit(mevis_root / "mask_dict.json", lambda d: d["2"].pop())
    _expect(mevis_root, "mask_dict.json", "vidB", "2", "3 masks for 4 frames")


def test_revos_missing_type_id(tmp_path: Path) -> None:
    dataset, _ = _dataset("revos", ["UVO/all/x"])
    write_revos(dataset, str(tmp_path), None, split="valid")
    _edit(tmp_path / "meta_expressions_valid_.json", lambda d: d["videos"]["UVO/all/x"]["expressions"]["2"].pop("type_id"))
    _expect(tmp_path, "meta_expressions_valid_.json", "UVO/all/x", "type_id", "expression '2' has no 'type_id'",
            reader=lambda uri: read_revos(uri, "valid"))


def test_revos_foreground_size_disagrees(tmp_path: Path) -> None:
    dataset, _ = _dataset("revos", ["UVO/all/x"])
    write_revos(dataset, str(tmp_path), None, split="valid")
    wrong = dict(rle_codec.encode(np.ones((H - 1, W), dtype=bool)))
    _edit(tmp_path / "mask_dict_foreground.json", lambda d: d["UVO/all/x"]["masks_rle"].__setitem__(3, wrong))
    _expect(tmp_path, "mask_dict_foreground.json", "UVO/all/x", "masks_rle", "RLE size [15, 24] disagrees",
            reader=lambda uri: read_revos(uri, "valid"))


def test_missing_jpeg_when_size_unknown(tmp_path: Path) -> None:
    (tmp_path / "meta_expressions.json").write_text(json.dumps(
        {"videos": {"v": {"expressions": {"0": {"exp": "x"}}, "frames": ["00000"]}}}))
    _expect(tmp_path, "JPEGImages/v/00000.jpg", "v", None, "file not found")


def test_encode_many_equals_one_by_one_and_decodes_back() -> None:
    rng = np.random.default_rng(3)
    masks = rng.random((5, H, W)) > 0.6
    masks[2] = False  # an empty mask
    many = rle_codec.encode_many(masks)
    assert many == [rle_codec.encode(m) for m in masks]
    for mask, rle in zip(masks, many, strict=True):
        np.testing.assert_array_equal(rle_codec.decode(rle, (H, W)), mask)
    with pytest.raises(rle_codec.RLEError, match=r"3-D \(N, H, W\), got shape \(16, 24\)"):
        rle_codec.encode_many(masks[0])
