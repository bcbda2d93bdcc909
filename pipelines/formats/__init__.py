"""Dataset readers/writers into one internal model (see `pipelines.formats.model`).

Image benchmarks (RefCOCO family, ReasonSeg) are read as one-frame videos, so every prediction store
and the per-expression scoring serve them unchanged.

``read_dataset(format, uri)`` is the one entry point evaluation uses; ``FORMATS`` lists the names.
Prediction sets are opened with ``open_predictions`` (PNG folder, Parquet folder, CodaLab zip or
ReferFormer's merged-palette Ref-DAVIS17 runs).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pipelines.formats.model import Dataset, Expression, FormatError, MaskTrack, Moment, RLETrack, VideoRecord
from pipelines.formats.moments import read_activitynet, read_charades_sta, write_charades_sta
from pipelines.formats.palette_layout import read_refdavis17, read_refytvos
from pipelines.formats.prediction_parquet import PREDICTION_SCHEMA, prediction_row, write_parquet_predictions
from pipelines.formats.prediction_png import write_codalab_zip, write_png_predictions
from pipelines.formats.prediction_store import PredictedMask, PredictionStore
from pipelines.formats.predictions import open_predictions
from pipelines.formats.reasonseg import read_reasonseg
from pipelines.formats.reasonvos import read_reasonvos
from pipelines.formats.refcoco import read_refcoco
from pipelines.formats.rle_layout import read_mevis, read_revos, write_mevis, write_revos

_SPLIT_READERS: dict[str, Callable[..., Dataset]] = {
    "revos": read_revos,
    "refytvos": read_refytvos,
    "refdavis17": read_refdavis17,
}
_READERS: dict[str, Callable[..., Dataset]] = {
    "mevis": read_mevis,
    "reasonvos": read_reasonvos,
    "charades-sta": read_charades_sta,
    "activitynet": read_activitynet,
    "refcoco": read_refcoco,
    "reasonseg": read_reasonseg,
}
FORMATS = tuple(sorted([*_READERS, *_SPLIT_READERS]))


def read_dataset(fmt: str, uri: str, storage_options: Mapping[str, Any] | None = None,
                 split: str | None = None) -> Dataset:
    """Read ``uri`` as ``fmt``; ``split`` applies to revos (default valid), refytvos (train), refdavis17 (valid)."""
    if fmt in _SPLIT_READERS:
        reader = _SPLIT_READERS[fmt]
        return reader(uri, storage_options=storage_options) if split is None else reader(
            uri, split=split, storage_options=storage_options)
    if fmt not in _READERS:
        raise ValueError(f"unknown dataset format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if split is not None:
        raise ValueError(f"format {fmt!r} takes no split (point the URI at the split's folder or file)")
    return _READERS[fmt](uri, storage_options=storage_options)


__all__ = [
    "FORMATS", "PREDICTION_SCHEMA", "Dataset", "Expression", "FormatError", "MaskTrack", "Moment", "PredictedMask",
    "PredictionStore", "RLETrack", "VideoRecord", "open_predictions", "prediction_row", "read_activitynet",
    "read_charades_sta", "read_dataset", "read_mevis", "read_reasonseg", "read_reasonvos", "read_refcoco",
    "read_refdavis17", "read_refytvos",
    "read_revos", "write_charades_sta", "write_codalab_zip", "write_mevis", "write_parquet_predictions",
    "write_png_predictions", "write_revos",
]
