"""RefCOCO / RefCOCO+ / RefCOCOg as MDETR's COCO-style JSON (``final_refcoco_testA.json`` and kin).

The ``refs(unc).p`` pickles of the ``refer`` toolkit are not read: the JSON layout MDETR released
(``mdetr_annotations``), which ReferFormer, GLIP and others train on, holds the same splits, one
``images`` entry per referring sentence::

    {"images": [{"id": 17, "file_name": "COCO_train2014_000000581857.jpg", "height": 640, "width": 427,
                 "caption": "the lady with the blue shirt", "original_id": 581857, ...}],
     "annotations": [{"id": 41, "image_id": 17, "segmentation": [[x, y, ...], ...], ...}]}

Each sentence is one expression (``expr_id`` = its entry ``id``, ``text`` = ``caption``) of the
image named by its ``file_name`` without the extension (``video_id`` of a one-frame record whose one
frame carries the same name). Its target is the union of the annotations whose ``image_id`` is the
entry's ``id`` (one in MDETR's files): COCO polygons or RLE, rasterised by pycocotools'
``frPyObjects`` as the ``refer`` toolkit and LISA do; an empty ``segmentation`` is an empty mask.
Point ``--annotations`` at the split's JSON file; the images are not needed to score.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from pipelines.formats.files import location, require, require_type
from pipelines.formats.model import Dataset, Expression, FormatError, VideoRecord


@dataclass
class CocoSegmentationTrack:
    """One COCO ``segmentation`` (polygons, RLE or empty) of a one-frame record, decoded on demand."""

    segmentation: list | dict
    height: int
    width: int
    source: str
    video_id: str
    obj_id: str

    def frame_mask(self, frame_idx: int) -> np.ndarray | None:
        if frame_idx != 0:
            raise FormatError(self.source, f"frame {frame_idx} of a single image", self.video_id, self.obj_id)
        segmentation = self.segmentation
        if not segmentation:
            return np.zeros((self.height, self.width), dtype=bool)
        if isinstance(segmentation, dict) and isinstance(segmentation["counts"], str):  # compressed RLE
            rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode("ascii")}
        else:  # polygons, or an uncompressed RLE (``iscrowd``)
            rles = mask_utils.frPyObjects(segmentation, self.height, self.width)
            rle = mask_utils.merge(rles) if isinstance(rles, list) else rles
        return mask_utils.decode(rle).astype(bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _checked_segmentation(raw: Any, size: tuple[int, int], file: str, image: str, obj_id: str) -> list | dict:
    """A COCO ``segmentation``: polygons (lists of x, y numbers, at least three points each), an RLE of
    the image's size (``counts`` a string or a list of run lengths), or an empty list."""
    if isinstance(raw, list) and all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0
                                     and all(_is_number(v) for v in p) for p in raw):
        return raw
    if isinstance(raw, dict) and list(raw.get("size", ())) == list(size) and (
            isinstance(raw.get("counts"), str) or isinstance(raw.get("counts"), list)
            and all(isinstance(v, int) for v in raw["counts"])):
        return raw
    raise FormatError(file, f"not a COCO segmentation of a {size[0]}x{size[1]} image (polygons [[x, y, ...], ...] "
                      f"or an RLE): {raw!r:.80}", image, obj_id)


def read_refcoco(uri: str, storage_options: Mapping[str, Any] | None = None) -> Dataset:
    """A RefCOCO-family split in MDETR's JSON layout (see the module docstring)."""
    loc = location(uri, storage_options)
    document = loc.read_json()
    images = require_type(require(document, "images", loc.uri, None, "annotation file"), list, loc.uri, None, "images")
    annotations = require_type(require(document, "annotations", loc.uri, None, "annotation file"), list,
                               loc.uri, None, "annotations")
    by_entry: dict[Any, list[dict]] = defaultdict(list)
    for annotation in annotations:
        by_entry[require(annotation, "image_id", loc.uri, None, "annotation")].append(annotation)
    dataset = Dataset(format="refcoco")
    for entry in images:
        file_name = require_type(require(entry, "file_name", loc.uri, None, "image"), str, loc.uri, None, "file_name")
        image = file_name.rsplit(".", 1)[0]
        entry_id = require(entry, "id", loc.uri, image, "image")
        text = require_type(require(entry, "caption", loc.uri, image, "image"), str, loc.uri, image, "caption")
        size = (require_type(require(entry, "height", loc.uri, image, "image"), int, loc.uri, image, "height"),
                require_type(require(entry, "width", loc.uri, image, "image"), int, loc.uri, image, "width"))
        record = dataset.videos.setdefault(image, VideoRecord(image, [image], size[0], size[1]))
        if (record.height, record.width) != size:
            raise FormatError(loc.uri, f"size {list(size)} of sentence {entry_id} disagrees with "
                              f"{[record.height, record.width]} of another sentence of the image", image, "height")
        targets = by_entry.get(entry_id)
        if not targets:
            raise FormatError(loc.uri, f"sentence {entry_id} has no annotation", image, str(entry_id))
        obj_ids = []
        for annotation in targets:
            obj_id = str(require(annotation, "id", loc.uri, image, "annotation"))
            segmentation = _checked_segmentation(require(annotation, "segmentation", loc.uri, image, "annotation"),
                                                 size, loc.uri, image, obj_id)
            record.tracks[obj_id] = CocoSegmentationTrack(segmentation, size[0], size[1], loc.uri, image, obj_id)
            obj_ids.append(obj_id)
        record.expressions.append(Expression(str(entry_id), text.strip(), tuple(obj_ids)))
    return dataset
