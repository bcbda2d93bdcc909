"""Image benchmarks read as one-frame records: RefCOCO in MDETR's JSON layout and ReasonSeg's labelme
JSON, on the hand-made sets of ``image_sets`` (masks worked out there), and their malformed inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from image_sets import box, write_reasonseg, write_refcoco

from pipelines.formats import FormatError, read_dataset


def test_refcoco_sentences_are_expressions_of_their_image_and_polygons_fill_pixel_centres(tmp_path: Path) -> None:
    dataset = read_dataset("refcoco", str(write_refcoco(tmp_path)))
    assert list(dataset.videos) == ["COCO_A", "COCO_B"]
    record = dataset.videos["COCO_A"]
    assert (record.frame_names, record.height, record.width) == (["COCO_A"], 5, 6)
    assert [(e.expr_id, e.text, e.obj_ids) for e in record.expressions] == [
        ("10", "the wide box", ("100",)), ("11", "top left", ("101",))]
    np.testing.assert_array_equal(record.target_mask(record.expressions[0], 0), box((5, 6), (1, 2), (1, 3)))
    two_parts = dataset.videos["COCO_B"]
    np.testing.assert_array_equal(two_parts.target_mask(two_parts.expressions[0], 0),
                                  box((5, 6), (0, 1), (0, 1)) | box((5, 6), (2, 3), (3, 4)))
    assert record.void is None
    path = tmp_path / "final_refcoco_testA.json"  # the same target as an uncompressed (column-major) RLE
    _edit(path, lambda d: d["annotations"][1].update(segmentation={"size": [5, 6], "counts": [0, 2, 3, 2, 23]}))
    record = read_dataset("refcoco", str(path)).videos["COCO_A"]
    np.testing.assert_array_equal(record.target_mask(record.expressions[1], 0), box((5, 6), (0, 1), (0, 1)))


def _edit(path: Path, change) -> None:
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def test_refcoco_refuses_sentences_without_annotation_or_disagreeing_sizes(tmp_path: Path) -> None:
    path = write_refcoco(tmp_path)
    _edit(path, lambda d: d["annotations"].pop(1))
    with pytest.raises(FormatError, match="video 'COCO_A', key '11': sentence 11 has no annotation"):
        read_dataset("refcoco", str(path))
    path = write_refcoco(tmp_path / "again")
    _edit(path, lambda d: d["images"][1].update(height=7))
    with pytest.raises(FormatError, match=r"size \[7, 6\] of sentence 11 disagrees with \[5, 6\]"):
        read_dataset("refcoco", str(path))
    _edit(path, lambda d: [d["images"][1].update(height=5), d["annotations"][0].update(segmentation=[[1, 2, 3]])])
    with pytest.raises(FormatError, match=r"key '100': not a COCO segmentation of a 5x6 image"):
        read_dataset("refcoco", str(path))


def test_reasonseg_draws_largest_first_skips_flags_truncates_and_keeps_the_first_query(tmp_path: Path) -> None:
    dataset = read_dataset("reasonseg", str(write_reasonseg(tmp_path)))
    a, b = dataset.videos["a"], dataset.videos["b"]
    assert [(e.expr_id, e.text, e.kind) for e in a.expressions] == [("0", "what is used to cut bread?", "long_query")]
    target = box((8, 10), (2, 3), (2, 4))
    np.testing.assert_array_equal(a.target_mask(a.expressions[0], 0), target)
    np.testing.assert_array_equal(a.void_mask(0), box((8, 10), (0, 5), (0, 5)) & ~target)
    assert (b.height, b.width) == (8, 10)  # stored 10 x 8, EXIF orientation 6
    assert [(e.text, e.kind) for e in b.expressions] == [("the caf\u00e9 sign", "short_query")]  # cp1252 JSON
    np.testing.assert_array_equal(b.target_mask(b.expressions[0], 0), box((8, 10), (0, 1), (0, 9)))
    assert not b.void_mask(0).any()


def test_reasonseg_malformed_samples(tmp_path: Path) -> None:
    folder = write_reasonseg(tmp_path)
    (folder / "b.jpg").unlink()
    with pytest.raises(FormatError, match=r"b.jpg, video .b.: file not found \(each <name>.json needs its <name>.jpg\)"):
        read_dataset("reasonseg", str(folder))
    _edit(folder / "a.json", lambda d: d["shapes"][0].update(points=[[1, 2, 3]]))
    (folder / "b.json").unlink()
    with pytest.raises(FormatError, match=r"key 'shapes\[0\].points': points must be a non-empty list of \[x, y\]"):
        read_dataset("reasonseg", str(folder))
    with pytest.raises(FormatError, match="no <name>.json sample in the folder"):
        read_dataset("reasonseg", str(tmp_path / "predictions"))
