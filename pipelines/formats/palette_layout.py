"""Ref-YouTube-VOS and Ref-DAVIS17: JPEG frames, palette PNG annotations of object ids, expressions in JSON.

Both use the Ref-YouTube-VOS layout (Ref-DAVIS17 as converted by ReferFormer's
``convert_davis_to_ytvos.py``)::

    meta_expressions/<split>/meta_expressions.json
        {"videos": {video: {"expressions": {eid: {"exp": text, "obj_id": "1"}}, "frames": [...]}}}
    <split>/JPEGImages/<video>/<frame>.jpg
    <split>/Annotations/<video>/<frame>.png     palette PNG, pixel value = object id (0 background)
    <split>/meta.json                           optional {"videos": {video: {"objects": {"1": {...}}}}}

DAVIS' own nesting by resolution, ``<split>/Annotations/480p/<video>/<frame>.png`` (or
``Full-Resolution``), is found too. Ref-DAVIS17's object ids are those of DAVIS'
``Annotations_unsupervised`` (what ``convert_davis_to_ytvos.py`` moves to ``valid/Annotations``).

Ref-YouTube-VOS ships ground truth only on some frames (every 5th frame of the original video in
train; none in valid/test): a video's ``annotated_frames`` are the frames that have a PNG (None when
all do, empty when none do). Ref-DAVIS17 annotates every frame, so a video without a PNG for some
frame is an error naming the first missing one (davis2017-evaluation pairs PNGs with frames by
position). Each Ref-DAVIS17 object has four expressions in consecutive ids ``4k .. 4k+3``:
annotator 1 first-frame, annotator 1 full-video, annotator 2 first-frame, annotator 2 full-video
(``Expression.slot`` 0-3, ``kind`` names the slot). Its label 255 is void (``VideoRecord.void``:
pixels davis2017-evaluation leaves out of J and F), and the raw label maps stay reachable as
``VideoRecord.annotation`` for the official-convention four-run score.

Object ids are checked against ``meta.json`` where it lists the video, and must be integers 1-255
(palette values; 1-254 for Ref-DAVIS17) in any case. Masks are decoded one frame at a time on first
use; a PNG whose size disagrees with the video's (taken from its first annotation, else its first
JPEG) is an error.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from pipelines.formats.files import Location, image_size, location, parallel_map, require, require_type
from pipelines.formats.model import Dataset, Expression, FormatError, VideoRecord
from pipelines.formats.png_tracks import PngFrames, PngTrack

DAVIS_SLOTS = ("annotator1-first-frame", "annotator1-full-video", "annotator2-first-frame", "annotator2-full-video")
DAVIS_RESOLUTIONS = ("480p", "Full-Resolution")
DAVIS_VOID_LABEL = 255
EXPECTED_LAYOUT = ("<split>/Annotations/<video>/<frame>.png (ReferFormer's convert_davis_to_ytvos.py layout) "
                   "or <split>/Annotations/480p/<video>/<frame>.png (DAVIS')")


def read_refytvos(root_uri: str, split: str = "train", storage_options: Mapping[str, Any] | None = None) -> Dataset:
    return _read(location(root_uri, storage_options), split, "refytvos")


def read_refdavis17(root_uri: str, split: str = "valid", storage_options: Mapping[str, Any] | None = None) -> Dataset:
    return _read(location(root_uri, storage_options), split, "refdavis17")


def _read(root: Location, split: str, fmt: str) -> Dataset:
    meta_loc = root.child("meta_expressions", split, "meta_expressions.json")
    meta = meta_loc.read_json()
    videos = require_type(require(meta, "videos", meta_loc.uri, None, "meta_expressions"), dict,
                          meta_loc.uri, None, "videos")
    annotations, pngs = _annotations(root.child(split, "Annotations"))
    objects = _known_objects(root.child(split, "meta.json"))
    parsed = []
    for video_id, entry in videos.items():
        frames = require_type(require(entry, "frames", meta_loc.uri, video_id, "video"), list,
                              meta_loc.uri, video_id, "frames")
        if not frames:
            raise FormatError(meta_loc.uri, "video has no frames", video_id, "frames")
        expressions = _expressions(meta_loc.uri, video_id, entry, objects.get(video_id), fmt)
        if fmt == "refdavis17":
            _require_every_frame(annotations, video_id, [str(f) for f in frames], pngs[video_id])
        parsed.append((video_id, [str(f) for f in frames], expressions))

    def first_image(item: tuple[str, list[str], list[Expression]]) -> tuple[int, int]:
        video_id, frames, _ = item
        annotated = [f for f in frames if f in pngs[video_id]]
        if annotated:
            return image_size(annotations.child(video_id, f"{annotated[0]}.png"), video_id)
        return image_size(root.child(split, "JPEGImages", video_id, f"{frames[0]}.jpg"), video_id)

    sizes = parallel_map(first_image, parsed, root.fs)
    dataset = Dataset(format=fmt)
    for (video_id, frames, expressions), (height, width) in zip(parsed, sizes, strict=True):
        png_frames = PngFrames(annotations.child(video_id), frames, pngs[video_id], height, width, video_id)
        annotated = png_frames.annotated_indices()
        obj_ids = sorted({o for e in expressions for o in e.obj_ids}, key=int)
        record = VideoRecord(
            video_id=video_id, frame_names=frames, height=height, width=width, expressions=expressions,
            tracks={o: PngTrack(png_frames, o, int(o)) for o in obj_ids},
            frames_uri=root.child(split, "JPEGImages", video_id).uri,
            annotated_frames=None if len(annotated) == len(frames) else annotated,
        )
        if fmt == "refdavis17":
            record.void = PngTrack(png_frames, "void", DAVIS_VOID_LABEL)
            record.annotation = png_frames
        dataset.videos[video_id] = record
    return dataset


def _annotations(folder: Location) -> tuple[Location, dict[str, set[str]]]:
    """The folder holding ``<video>/<frame>.png`` (``folder`` itself, or DAVIS' ``folder/480p``) and the
    frame names with a PNG per video, from one listing."""
    files = [f for f in folder.list_files() if f.endswith(".png")]
    for resolution in DAVIS_RESOLUTIONS:
        nested = [f[len(resolution) + 1:] for f in files if f.startswith(f"{resolution}/")]
        if nested:
            folder, files = folder.child(resolution), nested
            break
    found: dict[str, set[str]] = defaultdict(set)
    for relative in files:
        if "/" in relative:
            video_id, name = relative.rsplit("/", 1)
            found[video_id].add(name[: -len(".png")])
    return folder, found


def _require_every_frame(annotations: Location, video_id: str, frames: list[str], pngs: set[str]) -> None:
    """Ref-DAVIS17 annotates every frame: a video without PNGs, or with a frame missing, is refused."""
    missing = [name for name in frames if name not in pngs]
    if len(missing) == len(frames):
        raise FormatError(annotations.child(video_id).uri,
                          f"no annotation PNG for the video; Ref-DAVIS17 expects {EXPECTED_LAYOUT}", video_id)
    if missing:
        raise FormatError(annotations.child(video_id, f"{missing[0]}.png").uri,
                          f"ground-truth frame missing ({len(missing)} of {len(frames)} frames have no PNG); "
                          "Ref-DAVIS17 annotates every frame", video_id, missing[0])


def _known_objects(meta_loc: Location) -> dict[str, set[str]]:
    if not meta_loc.exists():
        return {}
    videos = require_type(require(meta_loc.read_json(), "videos", meta_loc.uri, None, "meta"), dict,
                          meta_loc.uri, None, "videos")
    return {
        video_id: {str(o) for o in require_type(require(entry, "objects", meta_loc.uri, video_id, "video"), dict,
                                                meta_loc.uri, video_id, "objects")}
        for video_id, entry in videos.items()
    }


def _object_id(file: str, video_id: str, raw: Any, known: set[str] | None, fmt: str) -> str:
    value = require_type(raw, (str, int), file, video_id, "obj_id")
    text = str(value)
    if not text.isdigit() or not 1 <= int(text) <= 255:
        raise FormatError(file, "object id must be an integer 1-255 (a palette value)", video_id, text)
    if fmt == "refdavis17" and int(text) == DAVIS_VOID_LABEL:
        raise FormatError(file, f"object id {DAVIS_VOID_LABEL} is DAVIS' void label, not an object", video_id, text)
    text = str(int(text))
    if known is not None and text not in known:
        raise FormatError(file, f"unknown object id (meta.json lists {sorted(known, key=int)})", video_id, text)
    return text


def _expressions(file: str, video_id: str, entry: Any, known: set[str] | None, fmt: str) -> list[Expression]:
    raw_expressions = require_type(require(entry, "expressions", file, video_id, "video"), dict,
                                   file, video_id, "expressions")
    expressions = []
    for expr_id, raw in raw_expressions.items():
        what = f"expression {expr_id!r}"
        text = require_type(require(raw, "exp", file, video_id, what), str, file, video_id, "exp")
        obj_id = _object_id(file, video_id, require(raw, "obj_id", file, video_id, what), known, fmt)
        expressions.append(Expression(expr_id=str(expr_id), text=text, obj_ids=(obj_id,)))
    return _with_davis_slots(file, video_id, expressions) if fmt == "refdavis17" else expressions


def _with_davis_slots(file: str, video_id: str, expressions: list[Expression]) -> list[Expression]:
    """Tag each expression with its slot; ids must be 0..4n-1 with one object per group of four."""
    by_number: dict[int, Expression] = {}
    for expression in expressions:
        if not expression.expr_id.isdigit():
            raise FormatError(file, "Ref-DAVIS17 expression ids must be integers", video_id, expression.expr_id)
        by_number[int(expression.expr_id)] = expression
    if sorted(by_number) != list(range(len(by_number))) or len(by_number) % 4:
        raise FormatError(file, f"expression ids must be 0..4n-1 (four per object), got {sorted(by_number)}",
                          video_id, "expressions")
    tagged = []
    for number in sorted(by_number):
        expression = by_number[number]
        first = by_number[number - number % 4]
        if expression.obj_ids != first.obj_ids:
            raise FormatError(file, f"expressions {number - number % 4}..{number - number % 4 + 3} must refer to "
                              f"one object, got {first.obj_ids[0]} and {expression.obj_ids[0]}",
                              video_id, expression.expr_id)
        slot = number % 4
        tagged.append(Expression(expression.expr_id, expression.text, expression.obj_ids,
                                 kind=DAVIS_SLOTS[slot], slot=slot))
    return tagged
