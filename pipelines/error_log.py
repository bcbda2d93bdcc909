"""A run's error rows, streamed to ``errors/errors.parquet`` as they are found, and the run's input counts.

Error rows (``ERROR_SCHEMA``: ``video_id, expr_id, stage, kind, message``) come from two places: the input
reader (stage ``input``: a bad row, a bad expression, a duplicate ``video_id``), which runs in a Ray Data
read task, and the driver (a video's failure in a later stage, from its summary row). Both send them to one
``ErrorLog`` actor on the driver's node, which appends them to a local Parquet file a row group at a time
and, when the run ends, stores it as ``errors/errors.parquet`` under the output root. Nobody holds a whole
corpus' error rows: the actor keeps one row group, the counts by kind and the first ``SAMPLE_ROWS`` rows
(for ``run.json`` and the command's summary).

The reader also reports how many valid videos it read and how many of them were already committed. Its
reports carry a key (the batch of the manifest they describe) and a key counts once, so a reader that is run
again over the same rows (a retried read task, or the check for pending work before the pipeline starts)
does not count them twice.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from actors.uri import redact
from actors.video_rows import Failure
from pipelines.attempts import on_driver_node
from pipelines.manifest import InputIssue
from pipelines.storage import OutputStore

ERRORS_FILE = "errors/errors.parquet"
ERROR_SCHEMA = pa.schema([
    pa.field("video_id", pa.string()),
    pa.field("expr_id", pa.string()),
    pa.field("stage", pa.string(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),
    pa.field("message", pa.string(), nullable=False),
])
ROW_GROUP_ROWS = 4096
SAMPLE_ROWS = 100


def issue_row(issue: InputIssue) -> dict[str, Any]:
    """An input issue as an error row (stage ``input``, message redacted)."""
    return {"video_id": issue.video_id, "expr_id": issue.expr_id, "stage": "input", "kind": issue.kind,
            "message": redact(issue.message)}


def failure_row(video_id: str, failure: Failure) -> dict[str, Any]:
    """A video's failure in a stage as an error row (message redacted)."""
    return {"video_id": video_id, "expr_id": None, "stage": failure.stage, "kind": failure.kind,
            "message": redact(failure.message)}


@dataclass
class ErrorSummary:
    """What a run's ``ErrorLog`` saw: error rows (total, by kind, the first ``SAMPLE_ROWS``) and the input
    reader's counts (valid videos read, of which already committed)."""

    rows: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    first: list[dict[str, Any]] = field(default_factory=list)
    videos: int = 0
    skipped: int = 0


class ErrorLog:
    """Ray actor (see the module docstring): error rows -> local Parquet row groups -> ``ERRORS_FILE``."""

    def __init__(self, output_uri: str, storage_options: Mapping[str, Any] | None) -> None:
        self.store = OutputStore(output_uri, storage_options)
        self.scratch = tempfile.mkdtemp(prefix="vrseg-errors-")
        self.path = os.path.join(self.scratch, "errors.parquet")
        self.writer = pq.ParquetWriter(self.path, ERROR_SCHEMA)
        self.buffer: list[dict[str, Any]] = []
        self.kinds: Counter[str] = Counter()
        self.summary = ErrorSummary()
        self.reports: set[str] = set()

    def report_inputs(self, key: str, issues: Sequence[dict[str, Any]], videos: int, skipped: int) -> None:
        """The input reader's batch ``key``: its issue rows, valid videos and committed videos (once per key)."""
        if key in self.reports:
            return
        self.reports.add(key)
        self.summary.videos += videos
        self.summary.skipped += skipped
        self.add(issues)

    def add(self, rows: Sequence[dict[str, Any]]) -> None:
        """Error rows (``ERROR_SCHEMA`` dicts), written a row group at a time."""
        for row in rows:
            self.kinds[row["kind"]] += 1
            if len(self.summary.first) < SAMPLE_ROWS:
                self.summary.first.append(dict(row))
        self.summary.rows += len(rows)
        self.buffer.extend(rows)
        if len(self.buffer) >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self.buffer:
            self.writer.write_table(pa.Table.from_pylist(self.buffer, schema=ERROR_SCHEMA))
            self.buffer = []

    def close(self) -> ErrorSummary:
        """Store ``ERRORS_FILE`` (every row of the run, possibly none) and return the summary."""
        self._flush()
        self.writer.close()
        self.store.put_file(self.path, ERRORS_FILE)
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.summary.by_kind = dict(sorted(self.kinds.items()))
        return self.summary


@contextmanager
def error_log(output_uri: str, storage_options: Mapping[str, Any] | None) -> Iterator[Any]:
    """An ``ErrorLog`` actor for one run on this (the driver's) node, killed when the run ends; yields its
    handle (call ``close`` before leaving to store the file)."""
    import ray

    log = on_driver_node(ErrorLog, output_uri, storage_options)
    try:
        yield log
    finally:
        ray.kill(log)
