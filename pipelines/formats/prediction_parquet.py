"""Predictions as Parquet: one row per (video_id, expr_id, frame_idx) with the mask as COCO RLE.

Columns (``PREDICTION_SCHEMA``): ``video_id``, ``expr_id``, ``frame_idx``, ``frame_name``, ``height``,
``width``, ``rle`` (the compressed COCO RLE ``counts`` string, pycocotools-compatible with
``{"size": [height, width], "counts": rle}``), ``score`` (nullable) and ``present`` (nullable: whether the
model says the object is on the frame, as ``vrseg label`` writes it; null where unknown, and absent from
files written before it existed, which still read). ``write_parquet_predictions``
writes one file per video (``<root>/<url-quoted video_id>.parquet``); the reader takes every
``*.parquet`` below the folder whatever its name (so Ray Data's ``write_parquet`` output works too),
finds which files hold which videos from their ``video_id`` column, and loads a video's rows on
first use (the last few videos stay cached).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from actors import rle as rle_codec
from pipelines.formats.files import Location, location
from pipelines.formats.model import Dataset, FormatError
from pipelines.formats.prediction_store import PredictedMask, PredictionStore

PREDICTION_SCHEMA = pa.schema([
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("expr_id", pa.string(), nullable=False),
    pa.field("frame_idx", pa.int32(), nullable=False),
    pa.field("frame_name", pa.string()),
    pa.field("height", pa.int32(), nullable=False),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("rle", pa.string(), nullable=False),
    pa.field("score", pa.float64()),
    pa.field("present", pa.bool_()),
])
_REQUIRED = ("video_id", "expr_id", "frame_idx", "height", "width", "rle")
_CACHED_VIDEOS = 2


def prediction_row(prediction: PredictedMask) -> dict[str, Any]:
    """The Parquet row of one prediction (for writers that batch rows themselves, e.g. Ray Data)."""
    encoded = rle_codec.encode(prediction.mask)
    return {
        "video_id": prediction.video_id, "expr_id": prediction.expr_id, "frame_idx": prediction.frame_idx,
        "frame_name": prediction.frame_name, "height": encoded["size"][0], "width": encoded["size"][1],
        "rle": encoded["counts"], "score": prediction.score, "present": None,
    }


def video_file_name(video_id: str) -> str:
    return f"{quote(video_id, safe='')}.parquet"


def write_parquet_predictions(predictions: Iterable[PredictedMask], root_uri: str,
                              storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """One file per video; predictions must come grouped by video. Returns the URIs written."""
    root = location(root_uri, storage_options)
    written: list[str] = []
    done: set[str] = set()
    rows: list[dict[str, Any]] = []

    def flush() -> None:
        if rows:
            target = root.child(video_file_name(rows[0]["video_id"]))
            _write_table(target, pa.Table.from_pylist(rows, schema=PREDICTION_SCHEMA))
            written.append(target.uri)
            done.add(rows[0]["video_id"])
            rows.clear()

    for prediction in predictions:
        if rows and prediction.video_id != rows[0]["video_id"]:
            flush()
        if prediction.video_id in done:
            raise ValueError(f"predictions of video {prediction.video_id!r} must come together (one file per video)")
        rows.append(prediction_row(prediction))
    flush()
    return written


def _write_table(target: Location, table: pa.Table) -> None:
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    target.write_bytes(buffer.getvalue().to_pybytes())


@dataclass(frozen=True)
class _Row:
    rle: str
    height: int
    width: int
    score: float | None
    file: str


class ParquetPredictions(PredictionStore):
    """Every ``*.parquet`` below ``root``; rows of one video are loaded on first use."""

    def __init__(self, root: Location, dataset: Dataset | None) -> None:
        super().__init__(root.uri, dataset)
        self.root = root
        self._files_of: dict[str, list[str]] = {}
        for relative in root.list_files():
            if relative.endswith(".parquet"):
                for video_id in self._videos_in(relative):
                    self._files_of.setdefault(video_id, []).append(relative)
        self._loaded: OrderedDict[str, tuple[dict[tuple[str, int], _Row], dict[tuple[str, str], int]]] = OrderedDict()

    def _read(self, relative: str, columns: list[str] | None, video_id: str | None = None) -> pa.Table:
        """``columns`` of one file (all when None), only the rows of ``video_id`` when given."""
        loc = self.root.child(relative)
        try:
            with loc.fs.open(loc.path, "rb") as handle:
                names = pq.ParquetFile(handle).schema_arrow.names
                missing = [c for c in (columns or _REQUIRED) if c not in names]
                if missing:
                    raise FormatError(loc.uri, f"missing column(s) {missing}", video_id, missing[0])
                handle.seek(0)
                filters = None if video_id is None else [("video_id", "==", video_id)]
                return pq.read_table(handle, columns=columns, filters=filters)
        except (pa.ArrowInvalid, OSError) as exc:
            raise FormatError(loc.uri, f"not a readable Parquet file: {exc}", video_id) from None

    def _videos_in(self, relative: str) -> list[str]:
        column = self._read(relative, ["video_id"]).column("video_id")
        return [str(v) for v in pc.unique(column).to_pylist()]

    def _rows(self, video_id: str) -> tuple[dict[tuple[str, int], _Row], dict[tuple[str, str], int]]:
        if video_id in self._loaded:
            self._loaded.move_to_end(video_id)
            return self._loaded[video_id]
        by_index: dict[tuple[str, int], _Row] = {}
        by_name: dict[tuple[str, str], int] = {}
        for relative in self._files_of.get(video_id, []):
            table = self._read(relative, None, video_id)
            file = self.root.child(relative).uri
            names = table.column("frame_name").to_pylist() if "frame_name" in table.column_names else None
            scores = table.column("score").to_pylist() if "score" in table.column_names else None
            columns = {c: table.column(c).to_pylist() for c in ("expr_id", "frame_idx", "height", "width", "rle")}
            for i, (expr_id, frame_idx) in enumerate(zip(columns["expr_id"], columns["frame_idx"], strict=True)):
                key = (str(expr_id), int(frame_idx))
                if key in by_index:
                    raise FormatError(file, f"two rows for frame {frame_idx}", video_id, str(expr_id))
                by_index[key] = _Row(columns["rle"][i], int(columns["height"][i]), int(columns["width"][i]),
                                     None if scores is None else scores[i], file)
                if names is not None and names[i] is not None:
                    by_name[(str(expr_id), str(names[i]))] = int(frame_idx)
        self._loaded[video_id] = (by_index, by_name)
        if len(self._loaded) > _CACHED_VIDEOS:
            self._loaded.popitem(last=False)
        return by_index, by_name

    def expressions(self, video_id: str) -> set[str]:
        return {expr_id for expr_id, _ in self._rows(video_id)[0]}

    def foreign_frames(self, video_id: str, expr_id: str) -> list[str]:
        video = self._video(video_id)
        if video is None:
            return []
        by_index, _ = self._rows(video_id)
        return [str(i) for e, i in sorted(by_index) if e == expr_id and not 0 <= i < video.num_frames]

    def _lookup(self, video_id: str, expr_id: str, frame: int | str) -> _Row | None:
        by_index, by_name = self._rows(video_id)
        if isinstance(frame, str):
            video = self._video(video_id)
            if video is not None:
                index = video.frame_names.index(frame) if frame in video.frame_names else None
            else:
                index = by_name.get((expr_id, frame))
            if index is None:
                return None
            frame = index
        return by_index.get((expr_id, frame))

    def mask(self, video_id: str, expr_id: str, frame: int | str) -> np.ndarray | None:
        row = self._lookup(video_id, expr_id, frame)
        if row is None:
            return None
        expected = self._expected_size(video_id)
        if expected is not None and (row.height, row.width) != expected:
            raise FormatError(row.file, f"frame {frame}: mask size {[row.height, row.width]} disagrees with frame "
                              f"size {list(expected)}", video_id, expr_id)
        try:
            return rle_codec.decode({"size": [row.height, row.width], "counts": row.rle})
        except rle_codec.RLEError as exc:
            raise FormatError(row.file, f"frame {frame}: {exc}", video_id, expr_id) from None

    def score(self, video_id: str, expr_id: str, frame: int | str) -> float | None:
        row = self._lookup(video_id, expr_id, frame)
        return None if row is None else row.score
