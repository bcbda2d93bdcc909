"""Hand-made RefCOCO (MDETR JSON) and ReasonSeg (labelme JSON) sets whose masks are worked out by hand in
the comments, and predictions on them; shared by the reader tests and the end-to-end evaluation test."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.formats import PredictedMask, write_parquet_predictions

EXIF_ORIENTATION = 0x0112


def box(shape: tuple[int, int], rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """A mask with rows[0]..rows[1] x cols[0]..cols[1] (inclusive) set."""
    mask = np.zeros(shape, dtype=bool)
    mask[rows[0] : rows[1] + 1, cols[0] : cols[1] + 1] = True
    return mask


def write_refcoco(root: Path) -> Path:
    """Two 5 x 6 images, three sentences. pycocotools fills a pixel when its centre lies inside the
    polygon, so the rectangle (1,1)-(4,3) is rows 1-2 x cols 1-3 (6 px) and (0,0)-(2,2) rows 0-1 x cols
    0-1 (4 px). Predictions (Parquet RLE): sentence 10 gets rows 1-2 x cols 1-2 (I 4, U 6), sentence 11
    none (I 0, U 4), sentence 12 its two-part target exactly (I 8, U 8).
    cIoU = 12 / 18 = 2/3, gIoU = (2/3 + 0 + 1) / 3 = 5/9."""
    images = [
        {"id": 10, "file_name": "COCO_A.jpg", "height": 5, "width": 6, "caption": "the wide box", "original_id": 1},
        {"id": 11, "file_name": "COCO_A.jpg", "height": 5, "width": 6, "caption": "top left", "original_id": 1},
        {"id": 12, "file_name": "COCO_B.jpg", "height": 5, "width": 6, "caption": "two parts", "original_id": 2},
    ]
    annotations = [
        {"id": 100, "image_id": 10, "segmentation": [[1, 1, 4, 1, 4, 3, 1, 3]], "category_id": 1},
        {"id": 101, "image_id": 11, "segmentation": [[0, 0, 2, 0, 2, 2, 0, 2]], "category_id": 1},
        {"id": 102, "image_id": 12, "segmentation": [[0, 0, 2, 0, 2, 2, 0, 2], [3, 2, 5, 2, 5, 4, 3, 4]],
         "category_id": 1},
    ]
    root.mkdir(parents=True, exist_ok=True)
    path = root / "final_refcoco_testA.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": []}))
    predictions = [PredictedMask("COCO_A", "10", 0, "COCO_A", box((5, 6), (1, 2), (1, 2))),
                   PredictedMask("COCO_B", "12", 0, "COCO_B", box((5, 6), (0, 1), (0, 1)) | box((5, 6), (2, 3), (3, 4)))]
    write_parquet_predictions(predictions, str(root / "predictions"))
    return path


def _jpeg(size: tuple[int, int], orientation: int | None = None) -> bytes:
    """A grey JPEG stored ``size`` = (height, width), with an EXIF orientation if given."""
    buffer = io.BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[EXIF_ORIENTATION] = orientation
    Image.fromarray(np.full((*size, 3), 100, dtype=np.uint8)).save(buffer, format="JPEG", exif=exif)
    return buffer.getvalue()


def write_reasonseg(root: Path) -> Path:
    """Two samples shown 8 x 10. ``a``: a target listed before a larger ``ignore`` rectangle (drawn
    first: largest first) and a ``flag`` shape (skipped); vertices truncated: the target is rows 2-3 x
    cols 2-4 (6 px, fill and outline), the void rows 0-5 x cols 0-5 minus the target (30 px). ``b``:
    stored 10 x 8 with EXIF orientation 6 (shown 8 x 10), a cp1252 JSON, target rows 0-1 x cols 0-9
    (20 px). Predictions (``<image>/0.png``): ``a`` rows 0-5 x cols 0-5 (the target and the void: I 6,
    U 6), ``b`` rows 0-3 (I 20, U 40). cIoU = 26 / 46 = 13/23, gIoU = (1 + 0.5) / 2 = 3/4."""
    folder = root / "val"
    folder.mkdir(parents=True)
    (folder / "a.jpg").write_bytes(_jpeg((8, 10)))
    (folder / "a.json").write_text(json.dumps({"text": ["what is used to cut bread?", "another"], "is_sentence": True,
                                               "shapes": [
        {"label": "target", "points": [[2.7, 2.2], [4.9, 2.0], [4.1, 3.99], [2.0, 3.5]]},
        {"label": "ignore", "points": [[0, 0], [5, 0], [5, 5], [0, 5]]},
        {"label": "flag", "points": [[7, 6], [9, 6], [9, 7], [7, 7]]},
    ]}))
    (folder / "b.jpg").write_bytes(_jpeg((10, 8), orientation=6))
    (folder / "b.json").write_bytes(json.dumps({"text": ["the caf\u00e9 sign"], "is_sentence": False, "shapes": [
        {"label": "target", "points": [[0, 0], [9, 0], [9, 1], [0, 1]]}]}, ensure_ascii=False).encode("cp1252"))
    predictions = root / "predictions"
    for name, mask in (("a", box((8, 10), (0, 5), (0, 5))), ("b", box((8, 10), (0, 3), (0, 9)))):
        (predictions / name).mkdir(parents=True)
        Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(predictions / name / "0.png")
    return folder
