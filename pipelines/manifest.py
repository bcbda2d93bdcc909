"""What to label: manifest rows (or a benchmark, or a folder of videos) -> validated entries + error rows.

A manifest is JSON lines or Parquet (a file, or a folder of ``*.jsonl`` / ``*.json`` / ``*.parquet``
files), one row per video: ``video_id``, ``video_uri``, ``expressions: [{expr_id, text}]``. Ray Data reads
the files (explicit filesystem, one task per file) and parses them into rows; every problem with a row
becomes an ``InputIssue`` (an error row of the job) and never stops the others:

- a line that is not JSON, a row that is not an object, a missing or mistyped field: the row is dropped;
- a ``video_id`` that is empty, not valid UTF-8 or holds control characters: the row is dropped (ids like
  ``../../x`` are fine: output keys are sanitised by ``pipelines.storage.video_key``);
- an expression that is empty, longer than ``max_expression_chars``, not valid UTF-8 (raw bytes, or lone
  surrogate escapes such as ``"\\ud800"``) or holds control characters other than tab / newline, or whose
  ``expr_id`` repeats: that expression is dropped, the video's other expressions are labeled;
- a second row with an already seen ``video_id``: dropped (the first row wins).

Other sources produce the same entries: ``entries_from_dataset`` (a benchmark read by
``pipelines.formats.read_dataset``; frame folders or video files), ``entries_from_folder`` (every video
file under a folder, labeled with the expressions of one file: ``.txt``, one expression per line for every
video, or ``.json``, ``{video name: [text, ...]}``) and ``entries_from_moments`` (a grounding benchmark's
queries with the videos of a folder, for ``vrseg ground``).
"""

from __future__ import annotations

import io
import json
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from actors.uri import filesystem_for, join, redact
from actors.video_rows import VideoSource
from pipelines.formats.model import Dataset

MANIFEST_SUFFIXES = (".jsonl", ".json", ".parquet")
VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi")
_ALLOWED_CONTROL = frozenset("\t\n\r")


@dataclass
class InputLimits:
    """Entries beyond these limits become error rows instead of work (the ``inputs`` config section)."""

    max_expression_chars: int = 2000
    max_expressions_per_video: int = 256

    def __post_init__(self) -> None:
        if self.max_expression_chars < 1 or self.max_expressions_per_video < 1:
            raise ValueError("inputs limits must be >= 1")


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


def parse_jsonl(data: bytes, file: str, limits: InputLimits) -> tuple[list[LabelEntry], list[InputIssue]]:
    """Entries and issues of a JSON-lines manifest file (raw bytes: invalid UTF-8 is an issue, not a crash)."""
    entries, issues = [], []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        where = f"{redact(file)} line {number}"
        try:
            record = json.loads(raw.decode("utf-8", "surrogateescape"))
        except json.JSONDecodeError as exc:
            issues.append(InputIssue(None, None, "malformed_row", f"{where}: not valid JSON: {exc.msg}"))
            continue
        entry, found = entry_from_record(record, where, limits)
        issues.extend(found)
        if entry is not None:
            entries.append(entry)
    return entries, issues


def parse_parquet(data: bytes, file: str, limits: InputLimits) -> tuple[list[LabelEntry], list[InputIssue]]:
    """Entries and issues of a Parquet manifest file."""
    try:
        records = pq.read_table(io.BytesIO(data)).to_pylist()
    except (pa.ArrowException, OSError) as exc:
        return [], [InputIssue(None, None, "malformed_manifest", f"{redact(file)}: not a readable Parquet file: {exc}")]
    entries, issues = [], []
    for number, record in enumerate(records):
        entry, found = entry_from_record(record, f"{redact(file)} row {number}", limits)
        issues.extend(found)
        if entry is not None:
            entries.append(entry)
    return entries, issues


def parse_manifest_file(data: bytes, file: str, limits: InputLimits) -> tuple[list[LabelEntry], list[InputIssue]]:
    return parse_parquet(data, file, limits) if file.endswith(".parquet") else parse_jsonl(data, file, limits)


def drop_duplicates(inputs: LabelInputs) -> LabelInputs:
    """The first entry of each ``video_id`` (in order); an issue for every later one."""
    seen: set[str] = set()
    out = LabelInputs(issues=list(inputs.issues))
    for entry in inputs.entries:
        if entry.video_id in seen:
            out.issues.append(InputIssue(entry.video_id, None, "duplicate_video_id",
                                         f"video_id {entry.video_id!r} appears more than once; the first row is labeled"))
            continue
        seen.add(entry.video_id)
        out.entries.append(entry)
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


def read_manifest(uri: str, storage_options: Mapping[str, Any] | None, limits: InputLimits) -> LabelInputs:
    """Read and validate a manifest with Ray Data (one read task per file, explicit filesystem)."""
    import ray.data
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, _ = filesystem_for(uri, storage_options)
    files = manifest_files(uri, storage_options)
    dataset = ray.data.read_binary_files(files, filesystem=PyFileSystem(FSSpecHandler(fs)), include_paths=True)

    order = {path: number for number, path in enumerate(files)}

    def parse(row: dict[str, Any]) -> list[dict[str, Any]]:
        entries, issues = parse_manifest_file(row["bytes"], row["path"], limits)
        file = order[row["path"]]
        return [{"order": [file, n], "entry": entry_to_json(e), "issue": ""} for n, e in enumerate(entries)] + [
            {"order": [file, -1], "entry": "", "issue": json.dumps(vars(i))} for i in issues
        ]

    inputs = LabelInputs()
    # Ray Data does not keep the files' order; the first row of a duplicated id must be the first in the files.
    for row in sorted(dataset.flat_map(parse).take_all(), key=lambda r: list(r["order"])):
        if row["entry"]:
            inputs.entries.append(entry_from_json(row["entry"]))
        else:
            inputs.issues.append(InputIssue(**json.loads(row["issue"])))
    return drop_duplicates(inputs)


def entry_to_json(entry: LabelEntry) -> str:
    return json.dumps({
        "video_id": entry.video_id, "source": entry.source.to_json(),
        "queries": [{"expr_id": e, "text": t} for e, t in entry.queries],
    })


def entry_from_json(text: str) -> LabelEntry:
    raw = json.loads(text)
    return LabelEntry(raw["video_id"], VideoSource.from_json(raw["source"]),
                      tuple((q["expr_id"], q["text"]) for q in raw["queries"]))


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
