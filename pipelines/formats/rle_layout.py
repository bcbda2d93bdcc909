"""MeViS and ReVOS: JPEG frame folders, expressions in JSON, object masks as COCO RLE in ``mask_dict.json``.

MeViS split folder (``train/``, ``valid_u/``, ``valid/``)::

    JPEGImages/<video>/<frame>.jpg
    meta_expressions.json   {"videos": {video: {"expressions": {eid: {"exp", "obj_id": [..],
                              "anno_id": [..]}}, "frames": [frame, ...]}}}
    mask_dict.json          {anno_id: [RLE or null, one per frame of the video]}   (absent in ``valid``)

ReVOS root: the same with ``meta_expressions_<split>_.json`` whose videos also carry ``vid_id``,
``height``, ``width`` and whose expressions carry ``type_id`` (0 referring, 1 reasoning); video names
contain ``/`` (``UVO/all/<id>``) and are nested folders under ``JPEGImages``. The optional
``mask_dict_foreground.json`` is ``{video: {"masks_rle": [RLE per frame], "foreground_ratio": [...]}}``.

An expression's target is the union of its ``anno_id`` masks; a null entry is an empty frame.
``Expression.obj_ids`` holds the anno ids as strings, which are also the keys of ``VideoRecord.tracks``.
The video size comes from the meta file (ReVOS), else from its first mask, else from its first JPEG;
every RLE must agree with it. Writers add an optional ``kind`` key to each expression (ignored by
the official tools) so synthetic expression kinds survive a round trip.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from actors import rle as rle_codec
from pipelines.formats.files import (
    FrameSource,
    Location,
    image_size,
    location,
    parallel_map,
    require,
    require_type,
    write_jpeg_frames,
)
from pipelines.formats.model import Dataset, Expression, FormatError, MaskTrack, RLETrack, VideoRecord

MEVIS_META = "meta_expressions.json"
MASK_DICT = "mask_dict.json"
FOREGROUND_DICT = "mask_dict_foreground.json"


def revos_meta_name(split: str) -> str:
    return f"meta_expressions_{split}_.json"


def read_mevis(root_uri: str, storage_options: Mapping[str, Any] | None = None) -> Dataset:
    """A MeViS split folder; without ``mask_dict.json`` (the ``valid`` split) videos have no tracks."""
    root = location(root_uri, storage_options)
    return _read(root, root.child(MEVIS_META), "mevis")


def read_revos(root_uri: str, split: str = "valid", storage_options: Mapping[str, Any] | None = None) -> Dataset:
    """A ReVOS root with ``meta_expressions_<split>_.json``, ``mask_dict.json`` and optionally the foreground."""
    root = location(root_uri, storage_options)
    return _read(root, root.child(revos_meta_name(split)), "revos")


def write_mevis(dataset: Dataset, root_uri: str, frames: FrameSource | None,
                storage_options: Mapping[str, Any] | None = None) -> None:
    """Write ``dataset`` as a MeViS split folder; ``frames(video_id)`` yields its frames (None: no JPEGs).

    Track keys become the global ``anno_id``s, so they must be unique across videos.
    """
    _write(dataset, location(root_uri, storage_options), frames, MEVIS_META, revos=False)


def write_revos(dataset: Dataset, root_uri: str, frames: FrameSource | None, split: str = "valid",
                storage_options: Mapping[str, Any] | None = None) -> None:
    """Write ``dataset`` in the ReVOS layout (every expression needs ``type_id``), with the foreground dict."""
    _write(dataset, location(root_uri, storage_options), frames, revos_meta_name(split), revos=True)


@dataclass
class _VideoEntry:
    video_id: str
    frame_names: list[str]
    expressions: list[Expression]
    anno_ids: list[str]
    size: tuple[int, int] | None
    tracks: dict[str, MaskTrack] = field(default_factory=dict)


def _read(root: Location, meta_loc: Location, fmt: str) -> Dataset:
    revos = fmt == "revos"
    meta = meta_loc.read_json()
    videos = require_type(require(meta, "videos", meta_loc.uri, None, "meta_expressions"), dict,
                          meta_loc.uri, None, "videos")
    mask_loc = root.child(MASK_DICT)
    mask_dict = mask_loc.read_json() if mask_loc.exists() else None
    if mask_dict is not None:
        require_type(mask_dict, dict, mask_loc.uri, None, "mask_dict")
    entries = [_parse_video(meta_loc.uri, video_id, entry, needs_anno=mask_dict is not None, revos=revos)
               for video_id, entry in videos.items()]
    if mask_dict is not None:
        for entry in entries:
            entry.size = entry.size or _first_rle_size(mask_dict, entry)
    _fill_sizes_from_jpegs(root, [e for e in entries if e.size is None])
    foreground = _read_foreground(root) if revos else {}
    dataset = Dataset(format=fmt)
    for entry in entries:
        assert entry.size is not None
        if mask_dict is not None:
            entry.tracks = {a: _track(mask_loc.uri, mask_dict, entry, a) for a in entry.anno_ids}
        record = VideoRecord(
            video_id=entry.video_id, frame_names=entry.frame_names, height=entry.size[0], width=entry.size[1],
            expressions=entry.expressions, tracks=entry.tracks,
            frames_uri=root.child("JPEGImages", entry.video_id).uri,
        )
        if entry.video_id in foreground:
            record.foreground = _foreground_track(root.child(FOREGROUND_DICT).uri, foreground[entry.video_id], entry)
        dataset.videos[entry.video_id] = record
    return dataset


def _parse_video(file: str, video_id: str, entry: Any, needs_anno: bool, revos: bool) -> _VideoEntry:
    frames = require_type(require(entry, "frames", file, video_id, "video"), list, file, video_id, "frames")
    for name in frames:
        require_type(name, str, file, video_id, "frames")
    raw_expressions = require_type(require(entry, "expressions", file, video_id, "video"), dict,
                                   file, video_id, "expressions")
    expressions: list[Expression] = []
    anno_ids: list[str] = []
    for expr_id, raw in raw_expressions.items():
        text = require_type(require(raw, "exp", file, video_id, f"expression {expr_id!r}"), str, file, video_id, "exp")
        if needs_anno or "anno_id" in raw:
            raw_ids = require_type(require(raw, "anno_id", file, video_id, f"expression {expr_id!r}"), list,
                                   file, video_id, "anno_id")
            ids = tuple(str(require_type(a, (int, str), file, video_id, "anno_id")) for a in raw_ids)
        else:
            ids = ()
        type_id = None
        if revos:
            type_id = require_type(require(raw, "type_id", file, video_id, f"expression {expr_id!r}"), int,
                                   file, video_id, "type_id")
        kind = raw.get("kind")
        if kind is not None:
            require_type(kind, str, file, video_id, "kind")
        expressions.append(Expression(expr_id=str(expr_id), text=text, obj_ids=ids, kind=kind, type_id=type_id))
        anno_ids.extend(a for a in ids if a not in anno_ids)
    size = None
    if revos and "height" in entry and "width" in entry:
        size = (require_type(entry["height"], int, file, video_id, "height"),
                require_type(entry["width"], int, file, video_id, "width"))
    return _VideoEntry(video_id, list(frames), expressions, anno_ids, size)


def _first_rle_size(mask_dict: dict, entry: _VideoEntry) -> tuple[int, int] | None:
    for anno in entry.anno_ids:
        rles = mask_dict.get(anno)
        for rle in rles if isinstance(rles, list) else ():
            if isinstance(rle, dict) and isinstance(rle.get("size"), list) and len(rle["size"]) == 2:
                return int(rle["size"][0]), int(rle["size"][1])
    return None


def _fill_sizes_from_jpegs(root: Location, entries: list[_VideoEntry]) -> None:
    for entry in entries:
        if not entry.frame_names:
            raise FormatError(root.child(MEVIS_META).uri, "video has no frames and no masks: size unknown",
                              entry.video_id, "frames")
    firsts = [root.child("JPEGImages", e.video_id, f"{e.frame_names[0]}.jpg") for e in entries]
    sizes = parallel_map(lambda pair: image_size(pair[0], pair[1].video_id), list(zip(firsts, entries, strict=True)),
                         root.fs)
    for entry, size in zip(entries, sizes, strict=True):
        entry.size = size


def _checked_rles(file: str, rles: Any, entry: _VideoEntry, key: str) -> list[dict | None]:
    """The per-frame RLE list, checked for length, shape and size without decoding."""
    assert entry.size is not None
    require_type(rles, list, file, entry.video_id, key)
    if len(rles) != len(entry.frame_names):
        raise FormatError(file, f"{len(rles)} masks for {len(entry.frame_names)} frames", entry.video_id, key)
    for index, rle in enumerate(rles):
        if rle is None:
            continue
        frame = f"frame {index} ({entry.frame_names[index]})"
        if not isinstance(rle, dict) or "counts" not in rle or "size" not in rle:
            raise FormatError(file, f"{frame}: RLE must be null or have 'size' and 'counts'", entry.video_id, key)
        if list(rle["size"]) != list(entry.size):
            raise FormatError(file, f"{frame}: RLE size {list(rle['size'])} disagrees with frame size "
                              f"{list(entry.size)}", entry.video_id, key)
    return rles


def _track(file: str, mask_dict: dict, entry: _VideoEntry, anno: str) -> RLETrack:
    if anno not in mask_dict:
        raise FormatError(file, "an expression names an annotation id that has no masks", entry.video_id, anno)
    assert entry.size is not None
    rles = _checked_rles(file, mask_dict[anno], entry, anno)
    return RLETrack(rles, entry.size[0], entry.size[1], source=file, video_id=entry.video_id, obj_id=anno)


def _read_foreground(root: Location) -> dict:
    loc = root.child(FOREGROUND_DICT)
    if not loc.exists():
        return {}
    return require_type(loc.read_json(), dict, loc.uri, None, "mask_dict_foreground")


def _foreground_track(file: str, raw: Any, entry: _VideoEntry) -> RLETrack:
    assert entry.size is not None
    rles = _checked_rles(file, require(raw, "masks_rle", file, entry.video_id, "foreground"), entry, "masks_rle")
    return RLETrack(rles, entry.size[0], entry.size[1], source=file, video_id=entry.video_id, obj_id="foreground")


def _write(dataset: Dataset, root: Location, frames: FrameSource | None, meta_name: str, revos: bool) -> None:
    owners: dict[str, str] = {}
    for video in dataset.videos.values():
        for key in video.tracks:
            if key in owners:
                raise ValueError(f"track id {key!r} is used by videos {owners[key]!r} and {video.video_id!r}; "
                                 "annotation ids of this layout are global")
            owners[key] = video.video_id
    meta_videos: dict[str, Any] = {}
    mask_dict: dict[str, list[dict | None]] = {}
    foreground: dict[str, Any] = {}
    for index, video in enumerate(dataset.videos.values()):
        if frames is not None:
            write_jpeg_frames(root.child("JPEGImages", video.video_id), video.video_id, video.frame_names,
                              frames(video.video_id), (video.height, video.width))
        track_rles, union_rles, ratios = _encode_tracks(video, with_union=revos)
        mask_dict.update(track_rles)
        meta_videos[video.video_id] = _meta_entry(video, index, revos)
        if revos:
            foreground[video.video_id] = {"masks_rle": union_rles, "foreground_ratio": ratios}
    root.child(meta_name).write_json({"videos": meta_videos})
    root.child(MASK_DICT).write_json(mask_dict)
    if revos:
        root.child(FOREGROUND_DICT).write_json(foreground)


def _encode_tracks(video: VideoRecord, with_union: bool) -> tuple[dict[str, list], list[dict], list[float]]:
    """One pass over the frames: each track's RLE per frame and, if asked, the foreground (the
    record's own ``foreground`` track where it has one, else the union of the tracks)."""
    size = (video.height, video.width)
    per_track: dict[str, list[dict | None]] = {key: [] for key in video.tracks}
    union_rles: list[dict] = []
    ratios: list[float] = []
    for frame_idx in range(video.num_frames):
        union = np.zeros(size, dtype=bool)
        for key, track in video.tracks.items():
            mask = track.frame_mask(frame_idx)
            if mask is not None and mask.shape != size:
                raise ValueError(f"video {video.video_id!r} track {key!r} frame {frame_idx}: mask shape "
                                 f"{mask.shape} disagrees with frame size {size}")
            per_track[key].append(None if mask is None else dict(rle_codec.encode(mask)))
            if with_union and mask is not None:
                union |= mask != 0
        if with_union:
            given = video.foreground.frame_mask(frame_idx) if video.foreground is not None else None
            foreground = union if given is None else given != 0
            union_rles.append(dict(rle_codec.encode(foreground)))
            ratios.append(float(foreground.mean()))
    return per_track, union_rles, ratios


def _json_id(anno: str) -> int | str:
    """Anno ids are integers in the real files; keep any other string as it is."""
    return int(anno) if anno.isdigit() and str(int(anno)) == anno else anno


def _meta_entry(video: VideoRecord, index: int, revos: bool) -> dict[str, Any]:
    order = {key: position for position, key in enumerate(video.tracks)}
    expressions: dict[str, Any] = {}
    for expression in video.expressions:
        unknown = [a for a in expression.obj_ids if a not in order]
        if unknown:
            raise ValueError(f"video {video.video_id!r} expression {expression.expr_id!r} names unknown tracks {unknown}")
        raw: dict[str, Any] = {
            "exp": expression.text,
            "obj_id": [order[a] for a in expression.obj_ids],
            "anno_id": [_json_id(a) for a in expression.obj_ids],
        }
        if revos:
            if expression.type_id is None:
                raise ValueError(f"video {video.video_id!r} expression {expression.expr_id!r}: ReVOS needs type_id")
            raw["type_id"] = expression.type_id
        if expression.kind is not None:
            raw["kind"] = expression.kind
        expressions[expression.expr_id] = raw
    entry: dict[str, Any] = {"expressions": expressions, "frames": list(video.frame_names)}
    if revos:
        entry.update(vid_id=index, height=video.height, width=video.width)
    return entry
