"""Open any prediction set evaluation may be handed: a PNG folder, a Parquet folder, a CodaLab zip or
ReferFormer's merged-palette Ref-DAVIS17 runs.

``open_predictions(uri)`` decides by the URI: a ``.zip`` file is a CodaLab zip; a folder with
``*.parquet`` files at its top level is Parquet; a folder holding only ``anno_<0-3>/`` folders is
the merged-palette layout; any other folder is the PNG layout. ``kind`` overrides the guess.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pipelines.formats.files import location
from pipelines.formats.model import Dataset, FormatError
from pipelines.formats.prediction_palette import MergedPalettePredictions
from pipelines.formats.prediction_parquet import ParquetPredictions
from pipelines.formats.prediction_png import PngFolderPredictions, ZipPredictions
from pipelines.formats.prediction_store import PredictionStore

PredictionKind = Literal["auto", "png", "parquet", "zip", "merged"]
_RUN_FOLDER = re.compile(r"anno_[0-3]")


def open_predictions(uri: str, dataset: Dataset | None = None, storage_options: Mapping[str, Any] | None = None,
                     kind: PredictionKind = "auto") -> PredictionStore:
    """A lazy (video, expr_id, frame) -> mask lookup; ``dataset`` enables size checks and index/name mapping."""
    loc = location(uri, storage_options)
    if not loc.exists():
        raise FormatError(loc.uri, "predictions not found")
    if kind == "auto":
        is_dir = loc.fs.isdir(loc.path)
        kind = _guess(is_dir, uri, [str(p) for p in loc.fs.ls(loc.path, detail=False)] if is_dir else [])
    if kind == "zip":
        return ZipPredictions(loc, dataset)
    if kind == "parquet":
        return ParquetPredictions(loc, dataset)
    if kind == "png":
        return PngFolderPredictions(loc, dataset)
    if kind == "merged":
        return MergedPalettePredictions(loc, dataset)
    raise ValueError(f"unknown prediction kind {kind!r}; expected auto, png, parquet, zip or merged")


def _guess(is_dir: bool, uri: str, children: list[str]) -> PredictionKind:
    if not is_dir:
        if uri.endswith(".zip"):
            return "zip"
        raise FormatError(uri, "a prediction file must be a .zip (CodaLab layout); folders hold PNGs or Parquet")
    if any(c.endswith(".parquet") for c in children):
        return "parquet"
    names = [c.rstrip("/").rsplit("/", 1)[-1] for c in children]
    return "merged" if names and all(_RUN_FOLDER.fullmatch(n) for n in names) else "png"
