"""Ref-YouTube-VOS, Ref-DAVIS17 and ReasonVOS readers on hand-built files (local and S3), and their errors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.formats import read_dataset
from pipelines.formats.model import FormatError
from pipelines.formats.palette_layout import DAVIS_SLOTS, read_refdavis17, read_refytvos
from pipelines.formats.reasonvos import read_reasonvos

H, W = 16, 24
PALETTE = [0, 0, 0, 236, 95, 103, 249, 145, 87, 250, 200, 99] + [0] * (256 * 3 - 12)


def _labels(frame: int) -> np.ndarray:
    """Object 1 a box moving right, object 2 a box on the bottom rows (absent on odd frames)."""
    labels = np.zeros((H, W), dtype=np.uint8)
    labels[2:6, frame:frame + 5] = 1
    if frame % 2 == 0:
        labels[10:14, 3:9] = 2
    return labels


def _png(array: np.ndarray, palette: bool = True) -> bytes:
    """A palette PNG of ``array``'s values (or a plain L / RGB PNG when ``palette`` is False)."""
    image = Image.fromarray(array)
    if palette:
        image.putpalette(PALETTE)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((H, W, 3), 90, dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _put(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


FRAMES = [f"{i:05d}" for i in range(8)]
ANNOTATED = [0, 5]


def _ytvos(root: Path, split: str = "train", annotated: list[int] = ANNOTATED, davis: bool = False) -> None:
    if davis:
        expressions = {str(4 * k + s): {"exp": f"object {obj} text {s}", "obj_id": str(obj)}
                       for k, obj in enumerate([1, 2]) for s in range(4)}
    else:
        expressions = {"0": {"exp": "the red box moving right", "obj_id": "1"},
                       "1": {"exp": "the box at the bottom", "obj_id": "2"},
                       "2": {"exp": "the moving box again", "obj_id": "1"}}
    meta = {"videos": {"vid1": {"expressions": expressions, "frames": FRAMES}}}
    _put(root / "meta_expressions" / split / "meta_expressions.json", json.dumps(meta))
    _put(root / split / "meta.json", json.dumps({"videos": {"vid1": {"objects": {"1": {"category": "box"},
                                                                                 "2": {"category": "box"}}}}}))
    for name in FRAMES:
        _put(root / split / "JPEGImages" / "vid1" / f"{name}.jpg", _jpeg())
    for index in annotated:
        _put(root / split / "Annotations" / "vid1" / f"{FRAMES[index]}.png", _png(_labels(index)))


def test_refytvos_reads_lazy_palette_masks_on_annotated_frames(tmp_path: Path) -> None:
    _ytvos(tmp_path)
    dataset = read_refytvos(str(tmp_path), split="train")
    video = dataset.videos["vid1"]
    assert (dataset.format, video.height, video.width, video.frame_names) == ("refytvos", H, W, FRAMES)
    assert video.annotated_frames == ANNOTATED
    assert [(e.expr_id, e.text, e.obj_ids) for e in video.expressions] == [
        ("0", "the red box moving right", ("1",)), ("1", "the box at the bottom", ("2",)),
        ("2", "the moving box again", ("1",))]
    for index in range(len(FRAMES)):
        for obj in ("1", "2"):
            mask = video.tracks[obj].frame_mask(index)
            if index in ANNOTATED:
                np.testing.assert_array_equal(mask, _labels(index) == int(obj))
            else:
                assert mask is None
    assert video.scored_frames(video.expressions[0]) == ANNOTATED
    assert video.frames_uri == f"{tmp_path}/train/JPEGImages/vid1"


def test_refytvos_valid_without_annotations_over_s3(tmp_path: Path, s3) -> None:
    _ytvos(tmp_path, split="valid", annotated=[])
    s3.filesystem().put(f"{tmp_path}/", s3.uri("ytvos") + "/", recursive=True)
    dataset = read_dataset("refytvos", s3.uri("ytvos"), s3.storage_options, split="valid")
    video = dataset.videos["vid1"]
    assert (video.height, video.width, video.annotated_frames) == (H, W, [])
    assert video.tracks["1"].frame_mask(3) is None


def test_refytvos_annotations_read_from_s3(tmp_path: Path, s3) -> None:
    _ytvos(tmp_path)
    s3.filesystem().put(f"{tmp_path}/", s3.uri("ytvos") + "/", recursive=True)
    video = read_refytvos(s3.uri("ytvos"), "train", s3.storage_options).videos["vid1"]
    assert video.annotated_frames == ANNOTATED
    np.testing.assert_array_equal(video.tracks["2"].frame_mask(0), _labels(0) == 2)


def test_refdavis17_slots_and_every_frame_annotated(tmp_path: Path) -> None:
    _ytvos(tmp_path, split="valid", annotated=list(range(8)), davis=True)
    video = read_refdavis17(str(tmp_path)).videos["vid1"]
    assert video.annotated_frames is None
    assert [(e.expr_id, e.obj_ids, e.slot, e.kind) for e in video.expressions] == [
        (str(4 * k + s), (str(obj),), s, DAVIS_SLOTS[s]) for k, obj in enumerate([1, 2]) for s in range(4)]
    np.testing.assert_array_equal(video.target_mask(video.expressions[6], 4), _labels(4) == 2)
    assert not video.target_mask(video.expressions[6], 3).any()


def test_refdavis17_void_label_and_davis_480p_nesting(tmp_path: Path) -> None:
    _ytvos(tmp_path, split="valid", annotated=list(range(8)), davis=True)
    annotations = tmp_path / "valid" / "Annotations"
    (annotations / "vid1").rename(tmp_path / "vid1")
    (annotations / "480p").mkdir()
    (tmp_path / "vid1").rename(annotations / "480p" / "vid1")  # DAVIS' own nesting by resolution
    labels = _labels(3)
    labels[2:6, 9] = 255  # void right of object 1
    _put(annotations / "480p" / "vid1" / "00003.png", _png(labels))
    video = read_refdavis17(str(tmp_path)).videos["vid1"]
    np.testing.assert_array_equal(video.void_mask(3), labels == 255)
    assert not video.void_mask(2).any()
    np.testing.assert_array_equal(video.target_mask(video.expressions[0], 3), _labels(3) == 1)
    np.testing.assert_array_equal(video.annotation.labels(3), labels)
    assert read_refytvos(str(tmp_path), split="valid").videos["vid1"].void is None  # Ref-YouTube-VOS has none


def test_refdavis17_refuses_a_video_without_annotations_or_with_a_frame_missing(tmp_path: Path) -> None:
    _ytvos(tmp_path, split="valid", annotated=[f for f in range(8) if f != 6], davis=True)
    folder = tmp_path / "valid" / "Annotations" / "vid1"
    _raises(lambda: read_refdavis17(str(tmp_path)), f"{folder}/00006.png", "vid1", "00006",
            "ground-truth frame missing (1 of 8 frames have no PNG); Ref-DAVIS17 annotates every frame")
    for png in folder.iterdir():
        png.rename(tmp_path / "valid" / "Annotations" / png.name)  # one level too high
    _raises(lambda: read_refdavis17(str(tmp_path)), str(folder), "vid1", None,
            "no annotation PNG for the video; Ref-DAVIS17 expects <split>/Annotations/<video>/<frame>.png "
            "(ReferFormer's convert_davis_to_ytvos.py layout) or <split>/Annotations/480p/<video>/<frame>.png")


def test_refdavis17_object_id_255_is_void(tmp_path: Path) -> None:
    _ytvos(tmp_path, split="valid", annotated=list(range(8)), davis=True)
    (tmp_path / "valid" / "meta.json").unlink()
    _edit_meta(tmp_path, "valid", lambda v: [v["expressions"][str(i)].update(obj_id="255") for i in range(4)])
    meta = f"{tmp_path}/meta_expressions/valid/meta_expressions.json"
    _raises(lambda: read_refdavis17(str(tmp_path)), meta, "vid1", "255", "object id 255 is DAVIS' void label")


# --- malformed palette layouts ---------------------------------------------------------------------


def _edit_meta(root: Path, split: str, change) -> None:
    path = root / "meta_expressions" / split / "meta_expressions.json"
    data = json.loads(path.read_text())
    change(data["videos"]["vid1"])
    path.write_text(json.dumps(data))


def _raises(call, file: str, video: str, key: str | None, message: str) -> FormatError:
    with pytest.raises(FormatError) as info:
        call()
    assert info.value.file == file and info.value.video == video and info.value.key == key, str(info.value)
    assert message in str(info.value) and f"file {file}" in str(info.value) and f"video {video!r}" in str(info.value)
    return info.value


def test_wrong_png_size(tmp_path: Path) -> None:
    _ytvos(tmp_path)
    png = tmp_path / "train" / "Annotations" / "vid1" / "00005.png"
    png.write_bytes(_png(np.zeros((H, W + 2), dtype=np.uint8)))
    track = read_refytvos(str(tmp_path)).videos["vid1"].tracks["2"]
    _raises(lambda: track.frame_mask(5), str(png), "vid1", "2", "image size [16, 26] disagrees with frame size [16, 24]")


def test_rgb_annotation_png(tmp_path: Path) -> None:
    _ytvos(tmp_path)
    png = tmp_path / "train" / "Annotations" / "vid1" / "00000.png"
    png.write_bytes(_png(np.zeros((H, W, 3), dtype=np.uint8), palette=False))
    track = read_refytvos(str(tmp_path)).videos["vid1"].tracks["1"]
    _raises(lambda: track.frame_mask(0), str(png), "vid1", "1", "expected a palette or single-channel PNG")


def test_unknown_object_id(tmp_path: Path) -> None:
    _ytvos(tmp_path)
    _edit_meta(tmp_path, "train", lambda v: v["expressions"]["1"].update(obj_id="7"))
    meta = f"{tmp_path}/meta_expressions/train/meta_expressions.json"
    _raises(lambda: read_refytvos(str(tmp_path)), meta, "vid1", "7", "unknown object id (meta.json lists ['1', '2'])")


def test_object_id_not_a_palette_value(tmp_path: Path) -> None:
    _ytvos(tmp_path)
    (tmp_path / "train" / "meta.json").unlink()
    _edit_meta(tmp_path, "train", lambda v: v["expressions"]["0"].update(obj_id="0"))
    meta = f"{tmp_path}/meta_expressions/train/meta_expressions.json"
    _raises(lambda: read_refytvos(str(tmp_path)), meta, "vid1", "0", "object id must be an integer 1-255")


def test_missing_obj_id_key(tmp_path: Path) -> None:
    _ytvos(tmp_path)
    _edit_meta(tmp_path, "train", lambda v: v["expressions"]["2"].pop("obj_id"))
    meta = f"{tmp_path}/meta_expressions/train/meta_expressions.json"
    _raises(lambda: read_refytvos(str(tmp_path)), meta, "vid1", "obj_id", "expression '2' has no 'obj_id'")


def test_davis_group_must_be_one_object(tmp_path: Path) -> None:
    _ytvos(tmp_path, split="valid", annotated=list(range(8)), davis=True)
    _edit_meta(tmp_path, "valid", lambda v: v["expressions"]["5"].update(obj_id="1"))
    meta = f"{tmp_path}/meta_expressions/valid/meta_expressions.json"
    _raises(lambda: read_refdavis17(str(tmp_path)), meta, "vid1", "5", "expressions 4..7 must refer to one object")


def test_davis_needs_four_expressions_per_object(tmp_path: Path) -> None:
    _ytvos(tmp_path, split="valid", annotated=list(range(8)), davis=True)
    _edit_meta(tmp_path, "valid", lambda v: v["expressions"].pop("7"))
    meta = f"{tmp_path}/meta_expressions/valid/meta_expressions.json"
    _raises(lambda: read_refdavis17(str(tmp_path)), meta, "vid1", "expressions", "must be 0..4n-1")


# --- ReasonVOS ---------------------------------------------------------------------------------------


def _reasonvos(root: Path) -> None:
    meta = {"videos": {"vid1": {"source": "mevis", "frames": FRAMES, "expressions": [
        {"exp_id": 0, "obj_id": 1, "exp_text": "what would a cat chase?", "is_sent": True},
        {"exp_id": 1, "obj_id": 2, "exp_text": "box", "is_sent": False},
        {"exp_id": 1, "obj_id": 1, "exp_text": "the thing that moves", "is_sent": True},
    ]}}}
    _put(root / "meta_expressions.json", json.dumps(meta))
    for name in FRAMES:
        _put(root / "JPEGImages" / "vid1" / f"{name}.jpg", _jpeg())
    for obj, frames in ((1, [0, 2, 4]), (2, [4, 6])):
        for index in frames:
            binary = np.where(_labels(index) == obj, 255, 0).astype(np.uint8)
            _put(root / "Annotations" / f"mevis_vid1_{obj}" / f"{FRAMES[index]}.png", _png(binary, palette=False))


def test_reasonvos_list_expressions_and_per_expression_gt_frames(tmp_path: Path) -> None:
    _reasonvos(tmp_path)
    video = read_dataset("reasonvos", str(tmp_path)).videos["vid1"]
    assert [(e.expr_id, e.text, e.obj_ids, e.kind, e.annotated_frames) for e in video.expressions] == [
        ("1", "what would a cat chase?", ("1",), "sentence", (0, 2, 4)),
        ("2", "box", ("2",), "phrase", (4, 6)),
        ("1_1", "the thing that moves", ("1",), "sentence", (0, 2, 4)),
    ]
    assert video.annotated_frames == [0, 2, 4, 6]
    assert video.scored_frames(video.expressions[1]) == [4, 6]
    np.testing.assert_array_equal(video.target_mask(video.expressions[0], 2), _labels(2) == 1)
    assert video.tracks["2"].frame_mask(5) is None


def _edit_reason(root: Path, change) -> None:
    path = root / "meta_expressions.json"
    data = json.loads(path.read_text())
    change(data["videos"]["vid1"])
    path.write_text(json.dumps(data))


def test_reasonvos_missing_annotation_folder(tmp_path: Path) -> None:
    _reasonvos(tmp_path)
    _edit_reason(tmp_path, lambda v: v["expressions"][1].update(obj_id=9))
    _raises(lambda: read_reasonvos(str(tmp_path)), f"{tmp_path}/Annotations/mevis_vid1_9", "vid1", "9",
            "no annotation folder for the expression's object")


def test_reasonvos_annotation_outside_frames(tmp_path: Path) -> None:
    _reasonvos(tmp_path)
    _edit_reason(tmp_path, lambda v: v.update(frames=FRAMES[:5]))
    _raises(lambda: read_reasonvos(str(tmp_path)), f"{tmp_path}/Annotations/mevis_vid1_2/00006.png", "vid1", "2",
            "annotation for a frame that is not in the video's frames")


def test_reasonvos_missing_text(tmp_path: Path) -> None:
    _reasonvos(tmp_path)
    _edit_reason(tmp_path, lambda v: v["expressions"][2].pop("exp_text"))
    _raises(lambda: read_reasonvos(str(tmp_path)), f"{tmp_path}/meta_expressions.json", "vid1", "exp_text",
            "expression 2 has no 'exp_text'")


def test_read_dataset_rejects_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown dataset format 'davis'"):
        read_dataset("davis", str(tmp_path))
