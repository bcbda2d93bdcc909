"""``vrseg export``: a labeling output as the JSON that annotation and dataset tools import.

Formats (``--format``), both with every mask a compressed COCO RLE (``{"size": [h, w], "counts": str}``):

- ``ytvis``: YouTube-VIS 2019 style video instances. ``videos``: one per committed video, ``{id, name (the
  labeling's video id), length, height, width, file_names}`` with ``file_names`` ``<video id>/<frame name>.jpg``
  (the frames are not exported, the names say where a tool looks for them); ``annotations``: one per (video,
  expression), ``{id, video_id, category_id, segmentations, areas, bboxes, iscrowd: 0, height, width,
  attributes}``, the three lists one entry per frame, ``null`` where the mask is empty. An expression whose
  every frame is empty keeps its annotation (all ``null``): the labeler looked and found nothing.
- ``coco``: COCO instances, one image per (video, frame) ``{id, file_name, height, width, video, frame_index}``
  and one annotation per (video, expression, frame) with a non-empty mask ``{id, image_id, category_id,
  segmentation, area, bbox, iscrowd: 0, score, attributes}``; empty masks are left out.

Categories: a single ``{"id": 1, "name": "object"}``; the expression is an attribute of each annotation,
``attributes: {"expr_id", "expression"}`` (where Datumaro and CVAT import arbitrary attributes). Not one
category per expression text: a referring expression names one object, not a class, so every text would be
a category with one instance, two expressions of a video often name the same object, and the text is not
always known (below).

Expression texts: from the commit markers (``vrseg label`` records each expression's text there); for an
output written before markers carried texts, from ``--manifest`` (the manifest ``vrseg label --manifest``
read; JSON lines or Parquet); ``null`` when neither has it.

Reading: only committed videos (``pipelines.storage`` commit markers), one video's ``masks/`` Parquet at a
time. The JSON is assembled on local disk, its long lists spooled item by item (``SpooledJson``), then written
to ``--out`` (the JSON file itself: path, file://, s3://) in one atomic write, so memory holds one video's
masks whatever the size of the output.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import pyarrow.parquet as pq
from pycocotools import mask as mask_utils

from actors.config import load_config
from actors.uri import filesystem_for, parent, redact
from pipelines.command_line import run_command
from pipelines.formats.model import FormatError
from pipelines.label_writer import MASKS_DIR
from pipelines.manifest import READ_BACK_LIMITS, LabelEntry, manifest_files, manifest_items
from pipelines.preflight import check_credentials
from pipelines.storage import COMMIT_DIR, CommitRecord, OutputStore

FORMATS = ("ytvis", "coco")
CATEGORY_ID = 1
CATEGORIES = [{"id": CATEGORY_ID, "name": "object", "supercategory": "object"}]
FRAME_SUFFIX = ".jpg"


@dataclass
class ExportConfig:
    """``vrseg export`` configuration (``--config`` YAML and ``key=value`` overrides): ``storage_options``
    reach ``--labels``, ``--manifest`` and ``--out`` (e.g. ``storage_options.anon=true``)."""

    storage_options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Segment:
    """A non-empty mask on one frame: its compressed RLE, pixel area, ``[x, y, w, h]`` box and the labeler's score."""

    rle: dict[str, Any]
    area: int
    bbox: list[float]
    score: float | None


@dataclass
class VideoLabels:
    """One committed video: its geometry, frame names and, per expression (marker order), one entry per frame,
    ``None`` where the mask is empty or absent."""

    video_id: str
    height: int
    width: int
    frame_names: list[str]
    tracks: dict[str, list[Segment | None]]
    texts: dict[str, str | None]  # expr_id -> the text its marker records (None: an older marker)

    @property
    def num_frames(self) -> int:
        return len(self.frame_names)

    def file_name(self, frame: int) -> str:
        return f"{self.video_id}/{self.frame_names[frame]}{FRAME_SUFFIX}"


@dataclass(frozen=True)
class ExportSummary:
    """What an export wrote: videos, images (COCO; frames for YTVIS) and annotations."""

    out: str
    videos: int
    images: int
    annotations: int


# ---------------------------------------------------------------------------------------- reading
def committed_videos(labels_uri: str, storage_options: Mapping[str, Any] | None) -> tuple[OutputStore, list[CommitRecord]]:
    """The labeling output's committed videos, sorted by id; ``FormatError`` when ``labels_uri`` is not a
    labeling output with at least one committed video."""
    store = OutputStore(labels_uri, storage_options)
    fs, path = filesystem_for(labels_uri, storage_options)
    if not fs.isdir(path):
        raise FormatError(redact(labels_uri), "no such labeling output (expected a vrseg label --output folder)")
    records = store.committed()
    if not records:
        raise FormatError(redact(labels_uri), f"not a labeling output with committed videos: no commit markers "
                          f"under {COMMIT_DIR}/ (is it a vrseg label --output, and has a video finished?)")
    return store, [records[video_id] for video_id in sorted(records)]


def marker_int(record: CommitRecord, key: str, source: str) -> int:
    """The positive integer ``key`` of a commit marker's ``extra`` (the video's geometry)."""
    value = record.extra.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise FormatError(source, f"the commit marker's {key!r} must be a positive integer, got {value!r}",
                          record.video_id)
    return value


def masks_file(record: CommitRecord, source: str) -> str:
    """The ``masks/`` Parquet a video's marker lists (a ``vrseg ground`` output has none)."""
    paths = [f.path for f in record.files if f.path.startswith(f"{MASKS_DIR}/") and f.path.endswith(".parquet")]
    if len(paths) != 1:
        raise FormatError(source, f"the commit marker lists {len(paths)} {MASKS_DIR}/ Parquet files, expected 1 "
                          "(a vrseg ground output holds moments, not masks)", record.video_id)
    return paths[0]


def segment_of(counts: str, height: int, width: int, score: float | None) -> Segment | None:
    """The frame's ``Segment``, or None for an empty mask."""
    coded = {"size": [height, width], "counts": counts.encode("ascii")}
    area = int(mask_utils.area(coded))
    if area == 0:
        return None
    bbox = [float(v) for v in mask_utils.toBbox(coded)]
    return Segment({"size": [height, width], "counts": counts}, area, bbox, score)


def read_video(store: OutputStore, record: CommitRecord) -> VideoLabels:
    """One committed video's masks from its Parquet, checked against its marker's geometry and expressions."""
    marker = store.uri(OutputStore.marker_path(record.video_id))
    num_frames = marker_int(record, "num_frames", marker)
    height, width = marker_int(record, "height", marker), marker_int(record, "width", marker)
    expressions = record.extra.get("expressions", [])
    relpath = masks_file(record, marker)
    source = store.uri(relpath)
    video = VideoLabels(record.video_id, height, width, [f"{i:05d}" for i in range(num_frames)],
                        {str(e.get("expr_id")): [None] * num_frames for e in expressions},
                        {str(e.get("expr_id")): e.get("text") for e in expressions})
    table = pq.ParquetFile(io.BytesIO(store.read_bytes(relpath)))
    for batch in table.iter_batches(columns=["video_id", "expr_id", "frame_idx", "frame_name", "height", "width",
                                             "rle", "score"]):
        for row in batch.to_pylist():
            add_row(video, row, source)
    return video


def add_row(video: VideoLabels, row: Mapping[str, Any], source: str) -> None:
    """Put one Parquet row (one expression on one frame) into ``video``, refusing rows its marker disagrees with."""
    if row["video_id"] != video.video_id:
        raise FormatError(source, f"row of video {row['video_id']!r} in this video's mask file", video.video_id)
    if row["expr_id"] not in video.tracks:
        raise FormatError(source, "expression not listed in the video's commit marker", video.video_id,
                          row["expr_id"])
    frame = row["frame_idx"]
    if not 0 <= frame < video.num_frames:
        raise FormatError(source, f"frame_idx {frame} outside the video's {video.num_frames} frames",
                          video.video_id, row["expr_id"])
    if (row["height"], row["width"]) != (video.height, video.width):
        raise FormatError(source, f"mask size {row['height']}x{row['width']} differs from the video's "
                          f"{video.height}x{video.width} (commit marker)", video.video_id, row["expr_id"])
    if row["frame_name"]:
        video.frame_names[frame] = row["frame_name"]
    video.tracks[row["expr_id"]][frame] = segment_of(row["rle"], video.height, video.width, row["score"])


def expression_texts(manifest_uri: str, video_ids: set[str],
                     storage_options: Mapping[str, Any] | None) -> dict[tuple[str, str], str]:
    """``(video_id, expr_id) -> text`` from a labeling manifest, for the videos ``video_ids`` only."""
    texts: dict[tuple[str, str], str] = {}
    files = manifest_files(manifest_uri, storage_options)
    for item in manifest_items(manifest_uri, files, storage_options, READ_BACK_LIMITS):
        if isinstance(item, LabelEntry) and item.video_id in video_ids:
            texts.update({(item.video_id, expr_id): text for expr_id, text in item.queries})
    return texts


def expression_text(texts: Mapping[tuple[str, str], str] | None, manifest_uri: str | None, video_id: str,
                    expr_id: str) -> str | None:
    """The expression's text: None without a manifest; ``FormatError`` when the manifest lacks it."""
    if texts is None:
        return None
    text = texts.get((video_id, expr_id))
    if text is None:
        raise FormatError(redact(str(manifest_uri)), "no text for this labeled expression (is it the manifest "
                          "the labels were made from?)", video_id, expr_id)
    return text


# ---------------------------------------------------------------------------------------- writing
class SpooledJson:
    """A JSON object built on local disk: fixed keys given up front, list-valued keys appended item by item to
    one scratch file each, then joined into one file, so no list is ever held in memory."""

    def __init__(self, directory: str, fixed: Mapping[str, Any], lists: Sequence[str]) -> None:
        self.directory, self.fixed = directory, dict(fixed)
        self.counts = dict.fromkeys(lists, 0)
        self._files: dict[str, TextIO] = {
            name: open(os.path.join(directory, f"{name}.part"), "w+", encoding="utf-8") for name in lists}

    def __enter__(self) -> SpooledJson:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for part in self._files.values():
            part.close()

    def append(self, name: str, item: Mapping[str, Any]) -> None:
        self._files[name].write(("," if self.counts[name] else "") + json.dumps(item, separators=(",", ":")))
        self.counts[name] += 1

    def finish(self) -> str:
        """Join everything into ``<directory>/export.json`` and return its path."""
        path = os.path.join(self.directory, "export.json")
        with open(path, "w", encoding="utf-8") as out:
            out.write(json.dumps(self.fixed, separators=(",", ":"))[:-1])
            for position, (name, part) in enumerate(self._files.items()):
                out.write(f"{',' if self.fixed or position else ''}{json.dumps(name)}:[")
                part.seek(0)
                shutil.copyfileobj(part, out)
                out.write("]")
            out.write("}")
        return path


def attributes(video: VideoLabels, expr_id: str, texts: Mapping[tuple[str, str], str] | None,
               manifest_uri: str | None) -> dict[str, Any]:
    """An annotation's ``attributes``: which expression it labels (id, and its text: the marker's, else the
    manifest's)."""
    text = video.texts.get(expr_id)
    if text is None:
        text = expression_text(texts, manifest_uri, video.video_id, expr_id)
    return {"expr_id": expr_id, "expression": text}


def ytvis_video(video_number: int, video: VideoLabels) -> dict[str, Any]:
    """A YTVIS ``videos`` entry (``video_number`` is its 1-based id in the JSON)."""
    return {"id": video_number, "name": video.video_id, "length": video.num_frames, "height": video.height,
            "width": video.width, "file_names": [video.file_name(i) for i in range(video.num_frames)]}


def ytvis_annotation(annotation_id: int, video_number: int, video: VideoLabels, track: list[Segment | None],
                     attrs: dict[str, Any]) -> dict[str, Any]:
    """A YTVIS ``annotations`` entry: one expression's track, ``null`` on the frames where its mask is empty."""
    return {"id": annotation_id, "video_id": video_number, "category_id": CATEGORY_ID,
            "segmentations": [s.rle if s else None for s in track], "areas": [s.area if s else None for s in track],
            "bboxes": [s.bbox if s else None for s in track], "iscrowd": 0, "height": video.height,
            "width": video.width, "attributes": attrs}


def write_ytvis_video(document: SpooledJson, video: VideoLabels, texts: Mapping[tuple[str, str], str] | None,
                      manifest_uri: str | None) -> None:
    """One video and one annotation per expression (see the module docstring)."""
    video_number = document.counts["videos"] + 1
    document.append("videos", ytvis_video(video_number, video))
    for expr_id, track in video.tracks.items():
        attrs = attributes(video, expr_id, texts, manifest_uri)
        document.append("annotations", ytvis_annotation(document.counts["annotations"] + 1, video_number, video,
                                                        track, attrs))


def write_coco_video(document: SpooledJson, video: VideoLabels, texts: Mapping[tuple[str, str], str] | None,
                     manifest_uri: str | None) -> None:
    """One image per frame and one annotation per non-empty (expression, frame) mask."""
    first_image = document.counts["images"] + 1
    for frame in range(video.num_frames):
        document.append("images", {"id": first_image + frame, "file_name": video.file_name(frame),
                                   "height": video.height, "width": video.width, "video": video.video_id,
                                   "frame_index": frame})
    for expr_id, track in video.tracks.items():
        attrs = attributes(video, expr_id, texts, manifest_uri)
        for frame, segment in enumerate(track):
            if segment is not None:
                document.append("annotations", {
                    "id": document.counts["annotations"] + 1, "image_id": first_image + frame,
                    "category_id": CATEGORY_ID, "segmentation": segment.rle, "area": segment.area,
                    "bbox": segment.bbox, "iscrowd": 0, "score": segment.score, "attributes": attrs})


_VIDEO_WRITERS = {"ytvis": write_ytvis_video, "coco": write_coco_video}
_LISTS = {"ytvis": ("videos", "annotations"), "coco": ("images", "annotations")}


def iter_videos(store: OutputStore, records: Sequence[CommitRecord]) -> Iterator[VideoLabels]:
    """The committed videos read one at a time, so only one video's masks are in memory."""
    for record in records:
        yield read_video(store, record)


def check_out(out_uri: str, storage_options: Mapping[str, Any] | None) -> None:
    """``--out`` names a file: refuse an existing folder or a trailing ``/`` before any work."""
    fs, path = filesystem_for(out_uri, storage_options)
    if out_uri.endswith("/") or fs.isdir(path):
        raise ValueError(f"--out must name the JSON file to write (e.g. labels.{FORMATS[0]}.json), "
                         f"{redact(out_uri)} is a folder")


def export(labels_uri: str, fmt: str, out_uri: str, manifest_uri: str | None = None,
           storage_options: Mapping[str, Any] | None = None) -> ExportSummary:
    """Write the committed videos of the labeling output ``labels_uri`` as ``fmt`` JSON to the file ``out_uri``
    (see the module docstring). Raises ``ValueError`` for an unknown format or a folder as ``out_uri``,
    ``FormatError`` when ``labels_uri`` is not a labeling output or its files disagree with their markers."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    check_credentials([u for u in (labels_uri, out_uri, manifest_uri) if u], storage_options or {})
    check_out(out_uri, storage_options)
    store, records = committed_videos(labels_uri, storage_options)
    texts = None if manifest_uri is None else expression_texts(
        manifest_uri, {r.video_id for r in records}, storage_options)
    info = {"description": f"vrseg labels {redact(labels_uri)} exported as {fmt}", "format": fmt}
    with tempfile.TemporaryDirectory(prefix="vrseg-export-") as scratch:
        with SpooledJson(scratch, {"info": info, "licenses": [], "categories": CATEGORIES}, _LISTS[fmt]) as document:
            frames = 0
            for video in iter_videos(store, records):
                _VIDEO_WRITERS[fmt](document, video, texts, manifest_uri)
                frames += video.num_frames
            local = document.finish()
        OutputStore(parent(out_uri), storage_options).put_file(local, out_uri.rsplit("/", 1)[-1])
    return ExportSummary(out_uri, len(records), frames, document.counts["annotations"])


# ---------------------------------------------------------------------------------------- command line
def run(args: argparse.Namespace) -> int:
    """The command (``pipelines.command_line.run_command``)."""

    def work() -> str:
        config = load_config(ExportConfig, args.config, args.overrides)
        summary = export(args.labels, args.format, args.out, args.manifest, config.storage_options)
        unit = "images" if args.format == "coco" else "frames"
        return (f"{summary.videos} videos, {summary.images} {unit}, {summary.annotations} annotations "
                f"({args.format}) -> {redact(summary.out)}")

    return run_command("export", work)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="write a labeling output as YouTube-VIS or COCO JSON",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("--labels", required=True, help="a vrseg label --output folder (path, file://, s3://)")
    parser.add_argument("--format", required=True, choices=FORMATS, help="ytvis (video instances) or coco (per frame)")
    parser.add_argument("--out", required=True, help="the JSON file to write (path, file://, s3://)")
    parser.add_argument("--manifest", default=None, help="the labeling manifest, for the expression texts")
    parser.add_argument("--config", default=None, help="YAML with storage_options (default: none)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. storage_options.anon=true")
    parser.set_defaults(func=run)

