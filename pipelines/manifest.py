"""What to label: manifest rows (or a benchmark, or a folder of videos) -> validated entries + error rows.

A manifest is JSON lines or Parquet (a file, or a folder of ``*.jsonl`` / ``*.json`` / ``*.parquet``
files), one row per video: ``video_id``, ``video_uri``, ``expressions: [{expr_id, text}]``.
``manifest_items`` streams it in manifest order (the files sorted by path, each row by row: one line or one
Parquet batch in memory) as entries and issues; ``pipelines.label_inputs`` runs it inside a Ray Data read
task, so the rows never reach the driver. Every problem with a row becomes an ``InputIssue`` (an error row
of the job) and never stops the others:

- a line that is not JSON, a row that is not an object, a missing or mistyped field: the row is dropped;
- a ``video_id`` that is empty, not valid UTF-8 or holds control characters: the row is dropped (ids like
  ``../../x`` are fine: output keys are sanitised by ``pipelines.storage.video_key``);
- an expression that is empty, longer than ``max_expression_chars``, not valid UTF-8 (raw bytes, or lone
  surrogate escapes such as ``"\\ud800"``) or holds control characters other than tab / newline, or whose
  ``expr_id`` repeats: that expression is dropped, the video's other expressions are labeled;
- a second row with an already seen ``video_id``: dropped (the first row in manifest order wins, exactly:
  one reader sees the whole manifest in order, ``FirstRowWins``).

Other sources produce the same entries as lists on the driver, because they are small by nature (a
benchmark's annotation file, one folder listing): ``entries_from_dataset`` (a benchmark read by
``pipelines.formats.read_dataset``; frame folders or video files), ``entries_from_folder`` (every video
file under a folder, labeled with the expressions of one file: ``.txt``, one expression per line for every
video, or ``.json``, ``{video name: [text, ...]}``) and ``entries_from_moments`` (a grounding benchmark's
queries with the videos of a folder, for ``vrseg ground``).
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from actors.uri import filesystem_for, join, redact
from actors.video_rows import VideoSource
from pipelines.formats.model import Dataset

MANIFEST_SUFFIXES = (".jsonl", ".json", ".parquet")
VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi")
_ALLOWED_CONTROL = frozenset("\t\n\r")
PARQUET_BATCH_ROWS = 4096  # Parquet manifest rows decoded at a time


@dataclass
class InputLimits:
    """The ``inputs`` config section: entries beyond these limits become error rows instead of work;
    ``reader_num_cpus`` is what the manifest's read task reserves (it mostly waits for the actor pools to
    take its rows: the default 0 never keeps a pool from starting)."""

    max_expression_chars: int = 2000
    max_expressions_per_video: int = 256
    reader_num_cpus: float = 0.0

    def __post_init__(self) -> None:
        if self.max_expression_chars < 1 or self.max_expressions_per_video < 1:
            raise ValueError("inputs limits must be >= 1")
        if self.reader_num_cpus < 0:
            raise ValueError(f"inputs.reader_num_cpus must be >= 0, got {self.reader_num_cpus}")


# For reading back the texts of a labeled manifest: every expression the labeler accepted must be found.
READ_BACK_LIMITS = InputLimits(max_expression_chars=1 << 30, max_expressions_per_video=1 << 30)


@dataclass(frozen=True)
class InputIssue:
    """One error row from reading the inputs (stage ``input``)."""

    video_id: str | None
    expr_id: str | None
    kind: str
    message: str


@dataclass(frozen=True)
class LabelEntry:
    """One video to label: its id, where its frames are, its valid expressions as ``(expr_id, text)``."""

    video_id: str
    source: VideoSource
    queries: tuple[tuple[str, str], ...]


@dataclass
class LabelInputs:
    """Everything the job will label, and every input problem found on the way."""

    entries: list[LabelEntry] = field(default_factory=list)
    issues: list[InputIssue] = field(default_factory=list)


# ---------------------------------------------------------------------------------------- text checks
def printable(value: Any) -> str:  # noqa: ANN401 - any value from a malformed row
    """``value`` as text safe for logs and Parquet (invalid UTF-8 escaped, cut to 200 characters)."""
    text = value if isinstance(value, str) else repr(value)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")[:200]


def text_problem(text: str) -> tuple[str, str] | None:
    """``(kind, message)`` when ``text`` is not valid UTF-8 or holds control characters, else None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return "invalid_utf8", f"not valid UTF-8 at character {exc.start}"
    for position, char in enumerate(text):
        if char not in _ALLOWED_CONTROL and unicodedata.category(char) == "Cc":
            return "control_characters", f"control character U+{ord(char):04X} at character {position}"
    return None


def expression_problem(text: Any, limits: InputLimits) -> tuple[str, str] | None:  # noqa: ANN401
    if not isinstance(text, str):
        return "malformed_expression", f"text must be a string, got {type(text).__name__}"
    if not text.strip():
        return "empty_expression", "the expression text is empty"
    if len(text) > limits.max_expression_chars:
        return "expression_too_long", f"{len(text)} characters (limit {limits.max_expression_chars})"
    return text_problem(text)


def _id_problem(value: Any, name: str) -> tuple[str, str] | None:  # noqa: ANN401
    if isinstance(value, bool) or not isinstance(value, str | int):
        return f"invalid_{name}", f"{name} must be a string, got {type(value).__name__}"
    if isinstance(value, str):
        if not value:
            return f"invalid_{name}", f"{name} is empty"
        problem = text_problem(value)
        if problem is not None:
            return f"invalid_{name}", f"{name} {printable(value)!r}: {problem[1]}"
    return None


# ---------------------------------------------------------------------------------------- rows
def entry_from_record(record: Any, where: str, limits: InputLimits) -> tuple[LabelEntry | None, list[InputIssue]]:  # noqa: ANN401
    """One manifest row -> its entry (None when the row is unusable) and its issues."""
    if not isinstance(record, Mapping):
        return None, [InputIssue(None, None, "malformed_row", f"{where}: a row must be an object")]
    video_id = record.get("video_id")
    if video_id is None:
        return None, [InputIssue(None, None, "missing_field", f"{where}: missing field 'video_id'")]
    problem = _id_problem(video_id, "video_id")
    if problem is not None:
        return None, [InputIssue(printable(video_id), None, problem[0], f"{where}: {problem[1]}")]
    video_id = str(video_id)
    for name in ("video_uri", "expressions"):
        if record.get(name) is None:
            return None, [InputIssue(video_id, None, "missing_field", f"{where}: missing field '{name}'")]
    uri, expressions = record["video_uri"], record["expressions"]
    if not isinstance(uri, str) or not uri or text_problem(uri) is not None:
        return None, [InputIssue(video_id, None, "invalid_video_uri", f"{where}: video_uri must be a non-empty string")]
    if not isinstance(expressions, list):
        return None, [InputIssue(video_id, None, "malformed_row", f"{where}: 'expressions' must be a list")]
    return entry_with_expressions(video_id, VideoSource(video_uri=uri), expressions, where, limits)


def entry_with_expressions(video_id: str, source: VideoSource, expressions: Iterable[Any], where: str,
                           limits: InputLimits) -> tuple[LabelEntry | None, list[InputIssue]]:
    """An entry keeping the valid ``{expr_id, text}`` items of ``expressions``; issues for the others."""
    issues: list[InputIssue] = []
    queries: list[tuple[str, str]] = []
    seen: set[str] = set()
    items = list(expressions)
    for position, item in enumerate(items):
        if not isinstance(item, Mapping) or "expr_id" not in item or "text" not in item:
            issues.append(InputIssue(video_id, None, "missing_field",
                                     f"{where}: expression {position} needs 'expr_id' and 'text'"))
            continue
        expr_id = item["expr_id"]
        problem = _id_problem(expr_id, "expr_id")
        if problem is not None:
            issues.append(InputIssue(video_id, printable(expr_id), problem[0], f"{where}: {problem[1]}"))
            continue
        expr_id = str(expr_id)
        problem = expression_problem(item["text"], limits)
        if problem is None and expr_id in seen:
            problem = ("duplicate_expr_id", f"expr_id {expr_id!r} appears twice in the video")
        if problem is None and len(queries) >= limits.max_expressions_per_video:
            problem = ("too_many_expressions", f"more than {limits.max_expressions_per_video} expressions")
        if problem is not None:
            issues.append(InputIssue(video_id, expr_id, problem[0], f"{where}: {problem[1]}"))
            continue
        seen.add(expr_id)
        queries.append((expr_id, item["text"]))
    if not items:
        issues.append(InputIssue(video_id, None, "no_expressions", f"{where}: the video has no expressions"))
    if not queries:
        return None, issues
    return LabelEntry(video_id, source, tuple(queries)), issues


def jsonl_items(lines: Iterable[bytes], file: str, limits: InputLimits) -> Iterator[LabelEntry | InputIssue]:
    """The entries and issues of a JSON-lines manifest file, line by line in file order (raw bytes: invalid
    UTF-8 is an issue, not a crash)."""
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        where = f"{redact(file)} line {number}"
        try:
            record = json.loads(raw.decode("utf-8", "surrogateescape"))
        except json.JSONDecodeError as exc:
            yield InputIssue(None, None, "malformed_row", f"{where}: not valid JSON: {exc.msg}")
            continue
        yield from _record_items(record, where, limits)


def parquet_items(handle: BinaryIO, file: str, limits: InputLimits) -> Iterator[LabelEntry | InputIssue]:
    """The entries and issues of a Parquet manifest file, ``PARQUET_BATCH_ROWS`` rows in memory at a time."""
    number = 0
    try:
        for batch in pq.ParquetFile(handle).iter_batches(batch_size=PARQUET_BATCH_ROWS):
            for record in batch.to_pylist():
                yield from _record_items(record, f"{redact(file)} row {number}", limits)
                number += 1
    except (pa.ArrowException, OSError) as exc:
        yield InputIssue(None, None, "malformed_manifest", f"{redact(file)}: not a readable Parquet file: {exc}")


def _record_items(record: Any, where: str, limits: InputLimits) -> Iterator[LabelEntry | InputIssue]:  # noqa: ANN401
    entry, issues = entry_from_record(record, where, limits)
    yield from issues
    if entry is not None:
        yield entry


def file_items(handle: BinaryIO, file: str, limits: InputLimits) -> Iterator[LabelEntry | InputIssue]:
    """``parquet_items`` or ``jsonl_items`` by the file's suffix."""
    return parquet_items(handle, file, limits) if file.endswith(".parquet") else jsonl_items(handle, file, limits)


class FirstRowWins:
    """Duplicate ``video_id`` detection: the first entry of an id passes, every later one is an issue. Holds
    the ids seen (about 100 bytes each), so it lives where the entries stream, not on the driver."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def duplicate(self, entry: LabelEntry) -> InputIssue | None:
        """None for the first entry of its id (remembered), else the ``duplicate_video_id`` issue."""
        if entry.video_id in self.seen:
            return InputIssue(entry.video_id, None, "duplicate_video_id",
                              f"video_id {entry.video_id!r} appears more than once; the first row is labeled")
        self.seen.add(entry.video_id)
        return None


def drop_duplicates(inputs: LabelInputs) -> LabelInputs:
    """The first entry of each ``video_id`` (in order); an issue for every later one."""
    first = FirstRowWins()
    out = LabelInputs(issues=list(inputs.issues))
    for entry in inputs.entries:
        issue = first.duplicate(entry)
        if issue is None:
            out.entries.append(entry)
        else:
            out.issues.append(issue)
    return out


# ---------------------------------------------------------------------------------------- sources
def manifest_files(uri: str, storage_options: Mapping[str, Any] | None) -> list[str]:
    """The manifest file(s) at ``uri`` (a file, or the manifest files of a folder), as filesystem paths."""
    fs, path = filesystem_for(uri, storage_options)
    if not fs.exists(path):
        raise FileNotFoundError(f"manifest not found: {redact(uri)}")
    if not fs.isdir(path):
        return [path]
    files = sorted(p for p in fs.find(path) if p.endswith(MANIFEST_SUFFIXES))
    if not files:
        raise FileNotFoundError(f"no {'/'.join(MANIFEST_SUFFIXES)} manifest files under {redact(uri)}")
    return files


def manifest_items(uri: str, files: Sequence[str], storage_options: Mapping[str, Any] | None,
                   limits: InputLimits) -> Iterator[LabelEntry | InputIssue]:
    """Every entry and issue of the manifest ``files`` (``manifest_files(uri)``) in manifest order: the files
    in order, each streamed row by row; a repeated ``video_id`` is a ``duplicate_video_id`` issue
    (``FirstRowWins``). Memory: one line or Parquet batch, plus the ids seen."""
    fs, _ = filesystem_for(uri, storage_options)
    first = FirstRowWins()
    for file in files:
        with fs.open(file, "rb") as handle:
            for item in file_items(handle, file, limits):
                duplicate = first.duplicate(item) if isinstance(item, LabelEntry) else None
                yield item if duplicate is None else duplicate


def entries_from_dataset(dataset: Dataset, limits: InputLimits) -> LabelInputs:
    """A benchmark's videos (video file if the reader knows one, else its frame folder) and expressions."""
    inputs = LabelInputs()
    for record in dataset.videos.values():
        where = f"{dataset.format} video {record.video_id!r}"
        if record.video_uri is not None:
            source = VideoSource(video_uri=record.video_uri, frame_names=list(record.frame_names), fps=record.fps)
        elif record.frames_uri is not None and record.frame_names:
            source = VideoSource(frames_uri=record.frames_uri, frame_names=list(record.frame_names), fps=record.fps)
        else:
            inputs.issues.append(InputIssue(record.video_id, None, "no_frames", f"{where}: neither frames nor a video file"))
            continue
        expressions = [{"expr_id": e.expr_id, "text": e.text} for e in record.expressions]
        entry, issues = entry_with_expressions(record.video_id, source, expressions, where, limits)
        inputs.issues.extend(issues)
        if entry is not None:
            inputs.entries.append(entry)
    return inputs


def _folder_expressions(uri: str, storage_options: Mapping[str, Any] | None) -> Any:  # noqa: ANN401
    fs, path = filesystem_for(uri, storage_options)
    text = fs.cat_file(path).decode("utf-8", "surrogateescape")
    if uri.endswith(".json"):
        mapping = json.loads(text)
        if not isinstance(mapping, dict):
            raise ValueError(f"{redact(uri)}: expected an object {{video name: [expression, ...]}}")
        return mapping
    return [line for line in text.splitlines() if line.strip()]


def video_files(videos_uri: str, storage_options: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """Every video file under ``videos_uri`` as ``(video_id, path below the folder)``, sorted by path; the
    video_id is that path without its suffix."""
    fs, root = filesystem_for(videos_uri, storage_options)
    root = root.rstrip("/")
    relatives = sorted(p[len(root) + 1 :] for p in fs.find(root) if p.lower().endswith(VIDEO_SUFFIXES))
    return [(relative.rsplit(".", 1)[0], relative) for relative in relatives]


def entries_from_folder(videos_uri: str, expressions_uri: str, storage_options: Mapping[str, Any] | None,
                        limits: InputLimits) -> LabelInputs:
    """Every video file under ``videos_uri`` (``video_files``) with the expressions of ``expressions_uri``
    (see the module docstring); expr_ids are the positions."""
    expressions = _folder_expressions(expressions_uri, storage_options)
    inputs = LabelInputs()
    for video_id, relative in video_files(videos_uri, storage_options):
        texts = expressions.get(video_id, expressions.get(relative)) if isinstance(expressions, dict) else expressions
        if texts is None:
            inputs.issues.append(InputIssue(video_id, None, "no_expressions", f"{redact(expressions_uri)}: no entry for {video_id!r}"))
            continue
        items = [{"expr_id": str(i), "text": t} for i, t in enumerate(texts)]
        entry, issues = entry_with_expressions(video_id, VideoSource(video_uri=join(videos_uri, relative)), items,
                                               redact(expressions_uri), limits)
        inputs.issues.extend(issues)
        if entry is not None:
            inputs.entries.append(entry)
    return inputs


def entries_from_moments(dataset: Dataset, videos_uri: str, storage_options: Mapping[str, Any] | None,
                         limits: InputLimits) -> LabelInputs:
    """A grounding benchmark's queries (``Dataset.moments``), one entry per video in the annotations'
    order with its queries as expressions (expr_id: the query's line index, as ``str``), each video the
    file of ``video_files(videos_uri)`` with its id (Charades-STA ``<id>.mp4``, ActivityNet
    ``v_<id>.mp4``). A video without a file is a ``missing_video`` error row per query."""
    files = dict(reversed(video_files(videos_uri, storage_options)))  # the first file of an id wins
    queries: dict[str, list[dict[str, str]]] = {}
    for moment in dataset.moments:
        queries.setdefault(moment.video_id, []).append({"expr_id": str(moment.query_id), "text": moment.text})
    inputs = LabelInputs()
    for video_id, items in queries.items():
        where = f"{dataset.format} video {video_id!r}"
        if video_id not in files:
            inputs.issues.extend(InputIssue(video_id, item["expr_id"], "missing_video",
                                            f"{where}: no video file under {redact(videos_uri)}") for item in items)
            continue
        source = VideoSource(video_uri=join(videos_uri, files[video_id]))
        entry, issues = entry_with_expressions(video_id, source, items, where, limits)
        inputs.issues.extend(issues)
        if entry is not None:
            inputs.entries.append(entry)
    return inputs
