"""ReasonVOS (VideoLISA's benchmark): one binary-mask folder per (video, object), gt on annotated frames only.

Layout::

    meta_expressions.json   {"videos": {video: {"source": "mevis", "frames": [...],
                              "expressions": [{"exp_id": 0, "obj_id": 3, "exp_text": ..., "is_sent": true}]}}}
    JPEGImages/<video>/<frame>.jpg
    Annotations/<source>_<video>_<obj_id>/<frame>.png    non-zero = object, only on annotated frames

``expressions`` is a list in the released file (a dict of the same entries is accepted too). The
official evaluation names prediction folders ``<video>/<obj_id>/``, so ``expr_id`` is the object id;
a second expression of the same object in a video gets ``<obj_id>_<n>`` (n = 1, 2, ...) — the
official script would overwrite the first one's predictions. Each expression's ``annotated_frames``
are the frames with a PNG in its folder, and the video's are their union: ReasonVOS scores only
those frames.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from pipelines.formats.files import Location, image_size, location, parallel_map, require, require_type
from pipelines.formats.model import Dataset, Expression, FormatError, VideoRecord
from pipelines.formats.png_tracks import PngFrames, PngTrack


def read_reasonvos(root_uri: str, storage_options: Mapping[str, Any] | None = None) -> Dataset:
    root = location(root_uri, storage_options)
    meta_loc = root.child("meta_expressions.json")
    videos = require_type(require(meta_loc.read_json(), "videos", meta_loc.uri, None, "meta_expressions"), dict,
                          meta_loc.uri, None, "videos")
    annotations = root.child("Annotations")
    pngs: dict[str, set[str]] = defaultdict(set)
    for relative in annotations.list_files():
        if relative.endswith(".png") and "/" in relative:
            folder, name = relative.rsplit("/", 1)
            pngs[folder].add(name[: -len(".png")])

    parsed = [_parse_video(meta_loc.uri, annotations, pngs, video_id, entry) for video_id, entry in videos.items()]

    def first_image(item: tuple[str, list[str], list[tuple[Expression, str]]]) -> tuple[int, int]:
        video_id, frames, expressions = item
        for _, folder in expressions:
            annotated = [f for f in frames if f in pngs[folder]]
            if annotated:
                return image_size(annotations.child(folder, f"{annotated[0]}.png"), video_id)
        return image_size(root.child("JPEGImages", video_id, f"{frames[0]}.jpg"), video_id)

    sizes = parallel_map(first_image, parsed, root.fs)
    dataset = Dataset(format="reasonvos")
    for (video_id, frames, expressions), (height, width) in zip(parsed, sizes, strict=True):
        tracks = {}
        finished = []
        for expression, folder in expressions:
            obj_id = expression.obj_ids[0]
            png_frames = PngFrames(annotations.child(folder), frames, pngs[folder], height, width, video_id, obj_id)
            tracks[obj_id] = PngTrack(png_frames, obj_id)
            finished.append(Expression(expression.expr_id, expression.text, expression.obj_ids, expression.kind,
                                       annotated_frames=tuple(png_frames.annotated_indices())))
        union = sorted({i for e in finished for i in e.annotated_frames or ()})
        dataset.videos[video_id] = VideoRecord(
            video_id=video_id, frame_names=frames, height=height, width=width, expressions=finished, tracks=tracks,
            frames_uri=root.child("JPEGImages", video_id).uri, annotated_frames=union,
        )
    return dataset


def _parse_video(file: str, annotations: Location, pngs: dict[str, set[str]], video_id: str,
                 entry: Any) -> tuple[str, list[str], list[tuple[Expression, str]]]:
    source = require_type(require(entry, "source", file, video_id, "video"), str, file, video_id, "source")
    frames = [str(f) for f in require_type(require(entry, "frames", file, video_id, "video"), list,
                                           file, video_id, "frames")]
    if not frames:
        raise FormatError(file, "video has no frames", video_id, "frames")
    raw = require_type(require(entry, "expressions", file, video_id, "video"), (list, dict), file, video_id,
                       "expressions")
    expressions: list[tuple[Expression, str]] = []
    used: dict[str, int] = {}
    for position, item in enumerate(raw.values() if isinstance(raw, dict) else raw):
        what = f"expression {position}"
        obj_id = str(require_type(require(item, "obj_id", file, video_id, what), (int, str), file, video_id, "obj_id"))
        text = require_type(require(item, "exp_text", file, video_id, what), str, file, video_id, "exp_text")
        folder = f"{source}_{video_id}_{obj_id}"
        if folder not in pngs:
            raise FormatError(annotations.child(folder).uri, "no annotation folder for the expression's object",
                              video_id, obj_id)
        extra = sorted(pngs[folder] - set(frames))
        if extra:
            raise FormatError(annotations.child(folder, f"{extra[0]}.png").uri,
                              "annotation for a frame that is not in the video's frames", video_id, obj_id)
        count = used.get(obj_id, 0)
        used[obj_id] = count + 1
        expr_id = obj_id if count == 0 else f"{obj_id}_{count}"
        kind = None
        if "is_sent" in item:
            kind = "sentence" if require_type(item["is_sent"], bool, file, video_id, "is_sent") else "phrase"
        expressions.append((Expression(expr_id, text, (obj_id,), kind), folder))
    return video_id, frames, expressions
