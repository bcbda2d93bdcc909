"""A labeling job's input rows: the videos not committed yet, as a Ray Data dataset of ``VIDEO_ROW_SCHEMA``
rows (one video per block), with input issues and counts sent to the run's ``ErrorLog``.

- ``ManifestInput`` (``--manifest``, any size): one Ray Data read task streams the manifest in manifest order
  (``pipelines.manifest.manifest_items``: validation, exact first-row-wins de-duplication) and yields the
  rows of videos not committed; the driver holds the list of manifest files, never a row. Resume: a task
  lists the commit markers' names once per run (``OutputStore.committed_keys``, no marker is read) into
  Ray's object store; the driver holds a reference to that listing, the read task fetches it and keeps the
  keys in a set beside the ids seen, about 100 bytes per video in the read task's process. Every
  ``READ_BATCH_ROWS`` manifest rows it reports that batch's issue rows and counts to the ``ErrorLog`` (keyed
  by the batch's position), then yields the batch's pending rows. One task reads the whole manifest: manifest
  order is what makes the first row of a repeated id win, and one task is enough: it skips committed rows
  at parsing speed and hands on each pending video as a block of its own at about 100 a second (measured on
  2 loaded cores; Ray Data's per-block cost), ahead of pools that label a few videos a second, so Ray Data's
  backpressure paces it. The reader is deterministic for the run (one listing, manifest order), as Ray
  requires of a streaming task it retries: a retry after its worker or node died yields the same rows in
  the same order, and its reports count once.
- ``ListedInput`` (benchmarks, folders of videos, grounding queries): entries already listed on the driver
  (small by nature: one annotation file or one folder listing), filtered against the markers' names there.

``rows`` returns None when no video is pending, so that a re-run with nothing left to do starts no actor
pool (for a manifest this reads it until its first pending row; with none, to its end).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Any, Protocol

import pyarrow as pa

from actors.video_rows import VIDEO_ROW_SCHEMA
from pipelines.error_log import issue_row
from pipelines.manifest import InputLimits, LabelEntry, LabelInputs, manifest_files, manifest_items
from pipelines.storage import OutputStore, video_key

READ_BATCH_ROWS = 1024  # manifest rows per report to the ErrorLog and per yielded table
MAX_BLOCKS = 20_000  # listed inputs: one video per block up to this many blocks
ONE_VIDEO_PER_BLOCK = 1  # bytes: Ray Data's target block size, below any row, so every block holds one video


def input_row(entry: LabelEntry) -> dict[str, Any]:
    """``entry`` as the first stage's row (``VIDEO_ROW_SCHEMA``)."""
    queries = [{"expr_id": expr_id, "text": text} for expr_id, text in entry.queries]
    return {"video_id": entry.video_id, "source": entry.source.to_json(), "queries": json.dumps(queries),
            "failure": "", "timings": "{}", "payload": b""}


class LabelInput(Protocol):
    """What a per-video job reads (see the module docstring)."""

    def rows(self, store: OutputStore, errors: Any) -> Any:  # noqa: ANN401 - ErrorLog handle, ray.data.Dataset
        """The pending videos' rows (None when there is none); issues and counts reported to ``errors``."""

    def first_entries(self, count: int) -> list[LabelEntry]:
        """The first ``count`` valid entries in input order (committed or not)."""


@dataclass(frozen=True)
class ListedInput:
    """Entries and issues listed on the driver (small inputs, see the module docstring)."""

    inputs: LabelInputs

    def rows(self, store: OutputStore, errors: Any) -> Any:  # noqa: ANN401 - ErrorLog handle, ray.data.Dataset
        import ray
        import ray.data

        committed = store.committed_keys()  # names only: no marker is read
        pending = [e for e in self.inputs.entries if video_key(e.video_id) not in committed]
        entries = len(self.inputs.entries)
        ray.get(errors.report_inputs.remote("listed", [issue_row(i) for i in self.inputs.issues], entries,
                                            entries - len(pending)))
        if not pending:
            return None
        return ray.data.from_items([input_row(e) for e in pending], override_num_blocks=min(len(pending), MAX_BLOCKS))

    def first_entries(self, count: int) -> list[LabelEntry]:
        return self.inputs.entries[:count]


@dataclass(frozen=True)
class ManifestReader:
    """The read task's work (picklable: Ray Data ships it to a worker): ``files`` of the manifest at ``uri``
    -> reports to ``errors`` and tables of pending rows, skipping the keys of the ``committed`` listing."""

    uri: str
    files: tuple[str, ...]
    storage_options: Mapping[str, Any]
    limits: InputLimits
    committed: Any  # ObjectRef of committed_keys(): the run's one listing of the markers
    errors: Any  # the ErrorLog actor handle
    batch_rows: int

    def __call__(self) -> Iterator[pa.Table]:
        import ray

        committed = ray.get(self.committed)
        items = manifest_items(self.uri, self.files, self.storage_options, self.limits)
        for number, batch in enumerate(iter(lambda: list(islice(items, self.batch_rows)), [])):
            issues = [issue_row(item) for item in batch if not isinstance(item, LabelEntry)]
            entries = [item for item in batch if isinstance(item, LabelEntry)]
            pending = [input_row(e) for e in entries if video_key(e.video_id) not in committed]
            ray.get(self.errors.report_inputs.remote(f"manifest/{number}", issues, len(entries),
                                                     len(entries) - len(pending)))
            if pending:
                yield pa.Table.from_pylist(pending, schema=VIDEO_ROW_SCHEMA)


def committed_keys(output_uri: str, storage_options: Mapping[str, Any]) -> set[str]:
    """The ``video_key`` of every video committed under ``output_uri`` (run as a Ray task: see the module
    docstring)."""
    return OutputStore(output_uri, storage_options).committed_keys()


def _datasource(reader: ManifestReader) -> Any:  # noqa: ANN401 - a ray.data.Datasource
    """A Ray Data datasource of one read task running ``reader``."""
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class ManifestDatasource(Datasource):
        def estimate_inmemory_data_size(self) -> int | None:
            return None

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                           data_context: Any = None) -> list[ReadTask]:  # noqa: ANN401 - a DataContext
            metadata = BlockMetadata(num_rows=None, size_bytes=None, input_files=list(reader.files), exec_stats=None)
            return [ReadTask(reader, metadata, schema=VIDEO_ROW_SCHEMA, per_task_row_limit=per_task_row_limit)]

    return ManifestDatasource()


@dataclass(frozen=True)
class ManifestInput:
    """A manifest of any size, streamed by one Ray Data read task (see the module docstring), reporting every
    ``batch_rows`` manifest rows."""

    uri: str
    storage_options: Mapping[str, Any]
    limits: InputLimits
    batch_rows: int = READ_BATCH_ROWS

    def files(self) -> tuple[str, ...]:
        """The manifest's files (``FileNotFoundError`` when there is none): checked before any work."""
        return tuple(manifest_files(self.uri, self.storage_options))

    def rows(self, store: OutputStore, errors: Any) -> Any:  # noqa: ANN401 - ErrorLog handle, ray.data.Dataset
        import ray
        import ray.data

        options = dict(self.storage_options)
        listing = ray.remote(committed_keys).options(num_cpus=0).remote(store.root, options)
        reader = ManifestReader(self.uri, self.files(), options, self.limits, listing, errors, self.batch_rows)
        dataset = ray.data.read_datasource(_datasource(reader), override_num_blocks=1,
                                           num_cpus=self.limits.reader_num_cpus)
        # Read tasks coalesce their output up to this size: below one row, each video is a block of its own
        # as it is read (streamed at once; a retried block redoes one video). Derived datasets share it.
        dataset.context.target_max_block_size = ONE_VIDEO_PER_BLOCK
        return dataset if dataset.take(1) else None

    def first_entries(self, count: int) -> list[LabelEntry]:
        """Read here, on the driver, up to the ``count``-th valid entry only (overlays ask for a few)."""
        items = manifest_items(self.uri, self.files(), self.storage_options, self.limits)
        return list(islice((item for item in items if isinstance(item, LabelEntry)), count))
