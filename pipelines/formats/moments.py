"""Temporal grounding annotations: Charades-STA text and ActivityNet Captions JSON, into ``Moment``s.

Charades-STA: one query per line, ``<video> <start> <end>##<sentence>`` (seconds); a query is
identified by its 0-based line index (``query_id``), which is what grounding predictions refer to.
Trailing blank lines are ignored; a blank line in the middle is an error (it would shift the ids).

ActivityNet Captions: ``{video: {"duration": s, "timestamps": [[start, end], ...], "sentences": [...]}}``;
``query_id`` runs over the file in order (video by video, sentence by sentence).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from pipelines.formats.files import location, require, require_type
from pipelines.formats.model import Dataset, FormatError, Moment


def read_charades_sta(uri: str, storage_options: Mapping[str, Any] | None = None) -> Dataset:
    loc = location(uri, storage_options)
    try:
        text = loc.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(loc.uri, f"not UTF-8 text: {exc}") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    dataset = Dataset(format="charades-sta")
    for index, line in enumerate(lines):
        dataset.moments.append(_parse_charades_line(loc.uri, index, line))
    return dataset


def _parse_charades_line(file: str, index: int, line: str) -> Moment:
    key = f"line {index + 1}"
    head, separator, sentence = line.partition("##")
    fields = head.split()
    video = fields[0] if fields else None
    if not separator or len(fields) != 3:
        raise FormatError(file, f"expected '<video> <start> <end>##<sentence>', got {line!r:.80}", video, key)
    try:
        start, end = float(fields[1]), float(fields[2])
    except ValueError:
        raise FormatError(file, f"start/end must be numbers, got {fields[1]!r} {fields[2]!r}", video, key) from None
    _check_span(file, start, end, video, key)
    return Moment(query_id=index, video_id=fields[0], text=sentence.strip(), start=start, end=end)


def _check_span(file: str, start: float, end: float, video: str | None, key: str) -> None:
    if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end < start:
        raise FormatError(file, f"need 0 <= start <= end, got start {start} end {end}", video, key)


def write_charades_sta(moments: Iterable[Moment], uri: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """One line per moment; ``query_id``s must be 0, 1, 2, ... in order since the line index is the id.

    Times are written with ``repr`` (the shortest text that reads back to the same float).
    """
    lines = []
    for index, moment in enumerate(moments):
        if moment.query_id != index:
            raise ValueError(f"moment {index} has query_id {moment.query_id}; Charades-STA ids are line indices")
        if any(c in moment.video_id for c in " \t\r\n") or "##" in moment.video_id:
            raise ValueError(f"query {index}: video id {moment.video_id!r} cannot be written in Charades-STA")
        if "\n" in moment.text or "\r" in moment.text:
            raise ValueError(f"query {index}: sentence contains a line break")
        lines.append(f"{moment.video_id} {moment.start!r} {moment.end!r}##{moment.text}\n")
    location(uri, storage_options).write_bytes("".join(lines).encode("utf-8"))


def read_activitynet(uri: str, storage_options: Mapping[str, Any] | None = None) -> Dataset:
    loc = location(uri, storage_options)
    videos = require_type(loc.read_json(), dict, loc.uri, None, "videos")
    dataset = Dataset(format="activitynet")
    for video_id, entry in videos.items():
        duration = float(require_type(require(entry, "duration", loc.uri, video_id, "video"), (int, float),
                                      loc.uri, video_id, "duration"))
        spans = require_type(require(entry, "timestamps", loc.uri, video_id, "video"), list,
                             loc.uri, video_id, "timestamps")
        sentences = require_type(require(entry, "sentences", loc.uri, video_id, "video"), list,
                                 loc.uri, video_id, "sentences")
        if len(spans) != len(sentences):
            raise FormatError(loc.uri, f"{len(spans)} timestamps for {len(sentences)} sentences", video_id, "timestamps")
        for position, (span, sentence) in enumerate(zip(spans, sentences, strict=True)):
            key = f"timestamps[{position}]"
            if not (isinstance(span, list) and len(span) == 2
                    and all(isinstance(v, int | float) and not isinstance(v, bool) for v in span)):
                raise FormatError(loc.uri, f"expected [start, end] in seconds, got {span!r:.60}", video_id, key)
            require_type(sentence, str, loc.uri, video_id, f"sentences[{position}]")
            start, end = float(span[0]), float(span[1])
            _check_span(loc.uri, start, end, video_id, key)
            dataset.moments.append(Moment(query_id=len(dataset.moments), video_id=video_id, text=sentence.strip(),
                                          start=start, end=end, duration=duration))
    return dataset
