"""ReasonSeg (LISA): one image and one labelme-style JSON of polygons per sample.

Split folder (``train/``, ``val/``, ``test/``)::

    <name>.jpg
    <name>.json   {"text": [query, ...], "is_sentence": bool,
                   "shapes": [{"label": "target" | "ignore" | "flag", "points": [[x, y], ...]}, ...]}

Read as LISA's ``get_mask_from_json`` and ``ValDataset`` read it: the JSON is UTF-8, else cp1252;
one expression per image (``expr_id`` "0") whose text is the first query (LISA evaluates
``text[0]`` only); ``kind`` is ``long_query`` when ``is_sentence`` else ``short_query``. Shapes
labelled ``flag`` are skipped; the others are drawn largest first (area = pixels of the shape drawn
alone; equal areas: later shape first), so smaller shapes lie on top; a label containing ``ignore``
draws void (label 255, left out of intersection and union), any other draws target. Each shape is
its polygon filled together with its one-pixel outline, vertices truncated to integer pixels
(OpenCV's ``fillPoly`` + ``polylines`` in LISA; here Pillow's ``ImageDraw.polygon``, whose slanted
outlines may differ from OpenCV's by a pixel). The mask has the size of the JPEG as displayed (its
EXIF orientation applied, as ``cv2.imread`` does).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

from pipelines.formats.files import Location, image_error, location, parallel_map, require, require_type
from pipelines.formats.model import Dataset, Expression, FormatError, VideoRecord

TARGET, VOID = 1, 255
_ROTATED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height
_EXIF_ORIENTATION = 0x0112


@dataclass
class ShapeRaster:
    """The label map (0 background, 1 target, 255 void) of one sample's shapes, drawn on first use."""

    shapes: list[tuple[int, list[tuple[int, int]]]]  # (label value, integer vertices), in file order
    height: int
    width: int
    _labels: np.ndarray | None = field(default=None, repr=False)

    def labels(self) -> np.ndarray:
        if self._labels is None:
            areas = [int(np.count_nonzero(_draw([(1, points)], self.height, self.width))) for _, points in self.shapes]
            order = sorted(range(len(self.shapes)), key=lambda i: (areas[i], i), reverse=True)
            self._labels = _draw([self.shapes[i] for i in order], self.height, self.width)
        return self._labels


@dataclass
class ShapeTrack:
    """The pixels of one label value of a ``ShapeRaster`` (the target, or the void)."""

    raster: ShapeRaster
    value: int

    def frame_mask(self, frame_idx: int) -> np.ndarray | None:
        return self.raster.labels() == self.value if frame_idx == 0 else None


def _draw(shapes: list[tuple[int, list[tuple[int, int]]]], height: int, width: int) -> np.ndarray:
    image = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(image)
    for value, points in shapes:
        if len(points) == 1:
            draw.point(points, fill=value)
        else:
            draw.polygon(points, fill=value, outline=value)
    return np.asarray(image, dtype=np.uint8)


def read_reasonseg(root_uri: str, storage_options: Mapping[str, Any] | None = None) -> Dataset:
    """A ReasonSeg split folder (see the module docstring)."""
    root = location(root_uri, storage_options)
    names = sorted(f[: -len(".json")] for f in root.list_files() if f.endswith(".json") and "/" not in f)
    if not names:
        raise FormatError(root.uri, "no <name>.json sample in the folder (ReasonSeg: <name>.jpg + <name>.json)")
    samples = parallel_map(lambda name: _read_sample(root, name), names, root.fs)
    dataset = Dataset(format="reasonseg")
    for name, (text, kind, shapes, (height, width)) in zip(names, samples, strict=True):
        raster = ShapeRaster(shapes, height, width)
        dataset.videos[name] = VideoRecord(
            name, [name], height, width, expressions=[Expression("0", text, ("target",), kind)],
            tracks={"target": ShapeTrack(raster, TARGET)}, frames_uri=root.uri, void=ShapeTrack(raster, VOID),
        )
    return dataset


def _read_sample(root: Location, name: str) -> tuple[str, str, list[tuple[int, list[tuple[int, int]]]],
                                                     tuple[int, int]]:
    loc = root.child(f"{name}.json")
    raw = loc.read_bytes()
    try:
        document = json.loads(_decode(raw))
    except UnicodeDecodeError as exc:
        raise FormatError(loc.uri, f"neither UTF-8 nor cp1252 text: {exc}", name) from None
    except json.JSONDecodeError as exc:
        raise FormatError(loc.uri, f"not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}", name) from None
    texts = require_type(require(document, "text", loc.uri, name, "sample"), list, loc.uri, name, "text")
    if not texts:
        raise FormatError(loc.uri, "no query in 'text'", name, "text")
    text = require_type(texts[0], str, loc.uri, name, "text")
    is_sentence = require_type(require(document, "is_sentence", loc.uri, name, "sample"), bool, loc.uri, name,
                               "is_sentence")
    raw_shapes = require_type(require(document, "shapes", loc.uri, name, "sample"), list, loc.uri, name, "shapes")
    shapes = []
    for position, shape in enumerate(raw_shapes):
        key = f"shapes[{position}]"
        label = require_type(require(shape, "label", loc.uri, name, key), str, loc.uri, name, f"{key}.label")
        if label.lower() == "flag":
            continue
        points = require_type(require(shape, "points", loc.uri, name, key), list, loc.uri, name, f"{key}.points")
        shapes.append((VOID if "ignore" in label.lower() else TARGET, _vertices(loc.uri, name, key, points)))
    return text.strip(), "long_query" if is_sentence else "short_query", shapes, _displayed_size(root, name)


def _decode(raw: bytes) -> str:
    """UTF-8, else cp1252 (LISA retries a JSON that UTF-8 cannot read with cp1252)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252")


def _vertices(file: str, name: str, key: str, points: list) -> list[tuple[int, int]]:
    """Vertices truncated toward zero, as ``np.array(points, dtype=np.int32)`` does."""
    if not points or not all(isinstance(p, list) and len(p) == 2 and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in p) for p in points):
        raise FormatError(file, "points must be a non-empty list of [x, y] numbers", name, f"{key}.points")
    return [(int(x), int(y)) for x, y in points]


def _displayed_size(root: Location, name: str) -> tuple[int, int]:
    """(height, width) of ``<name>.jpg`` after its EXIF orientation, read from the header."""
    loc = root.child(f"{name}.jpg")
    try:
        with loc.fs.open(loc.path, "rb") as handle:
            image = Image.open(handle)
            width, height = image.size
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except FileNotFoundError:
        raise FormatError(loc.uri, "file not found (each <name>.json needs its <name>.jpg)", name) from None
    except (UnidentifiedImageError, OSError) as exc:
        raise FormatError(loc.uri, f"not a readable image: {image_error(exc)}", name) from None
    return (width, height) if orientation in _ROTATED_ORIENTATIONS else (height, width)
