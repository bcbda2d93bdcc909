"""What a labeling output holds, read without Ray and without ground truth (for ``vrseg report --labels``).

From the output root (``pipelines.storage.OutputStore``: committed videos only):

- the commit markers: videos, their frame counts and each expression's text;
- ``tracks/<video_key>.parquet`` (``pipelines.formats.track_parquet``) of every committed video: one
  ``pipelines.label_review.Track`` per expression (videos committed before tracks existed are counted apart);
- ``errors/errors.parquet``: the failure rows of the last run, counted by kind, with their first messages;
- ``run.json``: the last run's record (counts, wall and per-stage seconds), if present;
- where each video came from: the manifest (``--manifest``, else the one ``run.json`` names) gives each
  video's ``VideoSource`` (for frames under the overlay strips) and its *source*, the folder holding the
  video file; without a manifest the source is the run's input (the benchmark format or the video folder)
  and no frame can be shown.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from actors.uri import parent, redact
from actors.video_rows import VideoSource
from pipelines.error_log import ERRORS_FILE
from pipelines.export import committed_videos
from pipelines.label_review import Track
from pipelines.label_writer import TRACKS_DIR
from pipelines.manifest import READ_BACK_LIMITS, LabelEntry, manifest_files, manifest_items
from pipelines.storage import RUN_RECORD, CommitRecord, OutputStore

FAILURE_SAMPLES = 3  # messages shown per failure kind
UNKNOWN_SOURCE = "unknown"


@dataclass(frozen=True)
class FailureKind:
    """The failure rows of one kind: how many, and the first messages (first line each)."""

    kind: str
    count: int
    samples: tuple[str, ...]


@dataclass
class LabelingOutput:
    """A labeling output as the QA report sees it (see the module docstring)."""

    uri: str
    store: OutputStore
    records: dict[str, CommitRecord]
    tracks: list[Track]
    without_tracks: list[str]
    failures: list[FailureKind]
    errors_file: bool
    run: dict[str, Any] | None
    sources: dict[str, str] = field(default_factory=dict)  # video_id -> source label
    video_sources: dict[str, VideoSource] = field(default_factory=dict)  # video_id -> where its frames are
    manifest: str | None = None

    @property
    def frames(self) -> int:
        """Frames of the committed videos."""
        return sum(int(r.extra.get("num_frames") or 0) for r in self.records.values())

    @property
    def masks(self) -> int:
        """Mask rows of the committed videos: frames x expressions."""
        return sum(int(r.extra.get("num_frames") or 0) * len(r.extra.get("expressions", []))
                   for r in self.records.values())

    @property
    def failure_rows(self) -> int:
        return sum(f.count for f in self.failures)


def _texts(record: CommitRecord) -> dict[str, str | None]:
    return {str(e.get("expr_id")): e.get("text") for e in record.extra.get("expressions", [])}


def read_tracks(store: OutputStore, record: CommitRecord) -> list[Track] | None:
    """The video's tracks (None when its marker lists no ``tracks/`` file: an output older than tracks)."""
    paths = [f.path for f in record.files if f.path.startswith(f"{TRACKS_DIR}/")]
    if not paths:
        return None
    texts = _texts(record)
    table = pq.read_table(io.BytesIO(store.read_bytes(paths[0])))
    return [Track.from_row(row, texts.get(row["expr_id"])) for row in table.to_pylist()]


def read_failures(store: OutputStore) -> tuple[list[FailureKind], bool]:
    """The failure rows by kind (most frequent first, then by name) and whether ``errors/errors.parquet`` exists;
    counted column-wise, so only ``FAILURE_SAMPLES`` messages per kind become Python strings."""
    try:
        data = store.read_bytes(ERRORS_FILE)
    except FileNotFoundError:
        return [], False
    table = pq.read_table(io.BytesIO(data), columns=["kind", "message"])
    counts = table.group_by("kind").aggregate([("kind", "count")]).to_pylist()
    failures = []
    for entry in sorted(counts, key=lambda item: (-item["kind_count"], item["kind"])):
        messages = table.filter(pc.equal(table["kind"], entry["kind"]))["message"].slice(0, FAILURE_SAMPLES)
        samples = tuple(redact(str(m).splitlines()[0]) if m else "" for m in messages.to_pylist())
        failures.append(FailureKind(entry["kind"], entry["kind_count"], samples))
    return failures, True


def read_run(store: OutputStore) -> dict[str, Any] | None:
    """``run.json`` (the last run's record), or None when the output has none."""
    try:
        return json.loads(store.read_bytes(RUN_RECORD))
    except FileNotFoundError:
        return None


def manifest_sources(manifest_uri: str, video_ids: set[str],
                     storage_options: Mapping[str, Any] | None) -> dict[str, VideoSource]:
    """``video_id -> VideoSource`` from a labeling manifest, for ``video_ids`` only."""
    found: dict[str, VideoSource] = {}
    files = manifest_files(manifest_uri, storage_options)
    for item in manifest_items(manifest_uri, files, storage_options, READ_BACK_LIMITS):
        if isinstance(item, LabelEntry) and item.video_id in video_ids:
            found[item.video_id] = item.source
    return found


def run_source(run: Mapping[str, Any] | None) -> str:
    """The source label of a video the manifest does not place: the run's benchmark or video folder."""
    inputs = (run or {}).get("inputs") or {}
    if inputs.get("dataset_format"):
        return str(inputs["dataset_format"])
    if inputs.get("videos"):
        return redact(str(inputs["videos"]))
    return UNKNOWN_SOURCE


def read_labeling_output(uri: str, storage_options: Mapping[str, Any] | None = None,
                         manifest: str | None = None) -> LabelingOutput:
    """Read the labeling output at ``uri`` (see the module docstring). ``FormatError`` naming ``uri`` when it
    is missing or holds no committed video; ``manifest`` defaults to the one ``run.json`` names."""
    store, records = committed_videos(uri, storage_options)
    tracks: list[Track] = []
    without_tracks: list[str] = []
    for record in records:
        found = read_tracks(store, record)
        if found is None:
            without_tracks.append(record.video_id)
        else:
            tracks.extend(found)
    failures, errors_file = read_failures(store)
    run = read_run(store)
    manifest = manifest or ((run or {}).get("inputs") or {}).get("manifest")
    video_sources = {} if manifest is None else manifest_sources(
        manifest, {r.video_id for r in records}, storage_options)
    fallback = run_source(run)
    sources = {r.video_id: redact(parent(video_sources[r.video_id].uri)) if r.video_id in video_sources else fallback
               for r in records}
    return LabelingOutput(uri, store, {r.video_id: r for r in records}, tracks, without_tracks, failures, errors_file,
                          run, sources, video_sources, manifest)
