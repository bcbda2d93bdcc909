"""Corpus input streams (issue 14): the manifest is read, validated and de-duplicated by a Ray Data read task
and flows into the pools without the driver parsing a row; committed videos are skipped by the reader from
the markers' names; error rows stream to ``errors/errors.parquet`` (real Ray, real moto S3)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipelines.manifest
from pipelines.error_log import ERROR_SCHEMA, ERRORS_FILE, ROW_GROUP_ROWS, SAMPLE_ROWS, ErrorLog, error_log
from pipelines.label_inputs import ManifestInput
from pipelines.manifest import InputLimits
from pipelines.storage import OutputStore

LIMITS = InputLimits(max_expression_chars=100)


def _row(video_id: str, text: str = "the red ball") -> dict:
    return {"video_id": video_id, "video_uri": f"s3://b/{video_id}.mp4", "expressions": [{"expr_id": "0", "text": text}]}


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _parquet(rows: list[dict]) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    return buffer.getvalue()


def _read(manifest: ManifestInput, store: OutputStore, options: dict | None) -> tuple[list[str], object]:
    """The pending rows' ids as Ray Data yields them, and the ErrorLog's summary (errors.parquet written)."""
    import ray

    with error_log(store.root, options) as errors:
        rows = manifest.rows(store, errors)
        ids = [] if rows is None else [r["video_id"] for r in rows.take_all()]
        summary = ray.get(errors.close.remote())
    return ids, summary


def test_multi_file_manifest_on_s3_streams_with_error_rows_in_parquet(s3, ray_local) -> None:  # noqa: ANN001
    fs = s3.filesystem()
    fs.pipe(s3.uri("m/part-0.jsonl").removeprefix("s3://"), _jsonl([_row("a", "one")]) + b"{broken\n")
    fs.pipe(s3.uri("m/part-1.parquet").removeprefix("s3://"),
            _parquet([_row("a", "dup"), _row("b", ""), _row("c", "two"), {**_row("d"), "video_uri": None}]))
    fs.pipe(s3.uri("m/part-2.jsonl").removeprefix("s3://"), _jsonl([_row("e", "x" * 101), _row("f", "three")]))
    store = OutputStore(s3.uri("out"), s3.storage_options)

    ids, summary = _read(ManifestInput(s3.uri("m"), s3.storage_options, LIMITS), store, s3.storage_options)

    assert sorted(ids) == ["a", "c", "f"]
    assert (summary.videos, summary.skipped, summary.rows) == (3, 0, 5)
    stored = pq.read_table(io.BytesIO(store.read_bytes(ERRORS_FILE)))
    assert stored.schema == ERROR_SCHEMA
    errors = [(r["video_id"], r["expr_id"], r["stage"], r["kind"]) for r in stored.to_pylist()]
    assert len(errors) == 5 and set(errors) == {
        (None, None, "input", "malformed_row"), ("a", None, "input", "duplicate_video_id"),
        ("b", "0", "input", "empty_expression"), ("d", None, "input", "missing_field"),
        ("e", "0", "input", "expression_too_long")}
    messages = {r["kind"]: r["message"] for r in stored.to_pylist()}
    assert messages["malformed_row"].startswith(f"{s3.bucket}/m/part-0.jsonl line 2: not valid JSON")
    assert messages["missing_field"].startswith(f"{s3.bucket}/m/part-1.parquet row 3: missing field 'video_uri'")
    assert summary.by_kind == {"duplicate_video_id": 1, "empty_expression": 1, "expression_too_long": 1,
                               "malformed_row": 1, "missing_field": 1}
    with pytest.raises(FileNotFoundError):
        ManifestInput(s3.uri("nothing-here"), s3.storage_options, LIMITS).files()


def test_committed_videos_are_skipped_exactly_by_the_reader(tmp_path: Path, ray_local) -> None:  # noqa: ANN001
    """Three batches of the reader; every third video committed (markers written directly); a repeated id
    whose first row is committed is still a duplicate, and is not labeled."""
    batch = 32
    count = 3 * batch
    ids = [f"clip/{i:05d}" for i in range(count)]
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "a.jsonl").write_bytes(_jsonl([_row(v) for v in ids[: count // 2]]))
    (tmp_path / "m" / "b.jsonl").write_bytes(_jsonl([_row(v) for v in ids[count // 2 :]] + [_row(ids[0], "again")]))
    store = OutputStore(str(tmp_path / "out"), None)
    committed = set(ids[::3])
    for video_id in committed:
        store.commit(video_id, [])

    pending, summary = _read(ManifestInput(str(tmp_path / "m"), {}, LIMITS, batch), store, None)

    assert sorted(pending) == [v for v in ids if v not in committed]  # exactly the others, each once
    assert (summary.videos, summary.skipped) == (count, len(committed))
    assert [(r["video_id"], r["kind"]) for r in summary.first] == [(ids[0], "duplicate_video_id")]
    for video_id in ids:
        store.commit(video_id, [])
    assert _read(ManifestInput(str(tmp_path / "m"), {}, LIMITS, batch), store, None)[0] == []  # nothing to run


def test_the_driver_never_parses_a_manifest_row_the_rows_reach_the_actors(
        tmp_path: Path, ray_local, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """Parsing a row or building an entry in this (the driver's) process fails the test; every row reaches a
    stage actor, and the driver gets only counts back."""
    import ray
    import ray.data

    count = 100
    (tmp_path / "m.jsonl").write_bytes(_jsonl([_row(f"v{i}") for i in range(count)]))

    def driver_parsed(*args: object) -> None:
        raise AssertionError("the driver parsed a manifest row")

    def driver_built(*args: object) -> None:
        raise AssertionError("the driver built a LabelEntry")

    class Counter:
        def __init__(self) -> None:
            self.rows = 0

        def add(self, rows: int) -> None:
            self.rows += rows

        def total(self) -> int:
            return self.rows

    class CountAndDrop:
        """A stage counting the rows that reach it (in an actor), passing none on to the driver."""

        def __init__(self, counter) -> None:  # noqa: ANN001 - an actor handle
            self.counter = counter

        def __call__(self, batch: pa.Table) -> pa.Table:
            ray.get(self.counter.add.remote(batch.num_rows))
            return batch.slice(0, 0)

    monkeypatch.setattr(pipelines.manifest, "entry_from_record", driver_parsed)  # this process only
    monkeypatch.setattr(pipelines.manifest.LabelEntry, "__init__", driver_built)
    counter = ray.remote(Counter).remote()
    store = OutputStore(str(tmp_path / "out"), None)
    with error_log(store.root, None) as errors:
        rows = ManifestInput(str(tmp_path / "m.jsonl"), {}, LIMITS, batch_rows=32).rows(store, errors)
        out = rows.map_batches(CountAndDrop, fn_constructor_args=(counter,), batch_size=count // 4, batch_format="pyarrow",
                               compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.1)
        assert out.take_all() == []
        summary = ray.get(errors.close.remote())
    assert ray.get(counter.total.remote()) == summary.videos == count


def test_error_log_writes_row_groups_and_counts_each_report_once(tmp_path: Path) -> None:
    log = ErrorLog(str(tmp_path / "out"), None)
    issue = {"video_id": "v", "expr_id": "0", "stage": "input", "kind": "empty_expression", "message": "m"}
    log.report_inputs("manifest/0", [issue] * 3, 10, 4)
    log.report_inputs("manifest/0", [issue] * 3, 10, 4)  # a retried reader's report of the same batch
    failure = {"video_id": "w", "expr_id": None, "stage": "decode", "kind": "missing", "message": "gone"}
    log.add([failure] * ROW_GROUP_ROWS)  # a row group is written: the log keeps none of these rows
    assert log.buffer == []
    log.add([failure])
    summary = log.close()
    assert (summary.rows, summary.videos, summary.skipped) == (4 + ROW_GROUP_ROWS, 10, 4)
    assert summary.by_kind == {"empty_expression": 3, "missing": ROW_GROUP_ROWS + 1}
    assert summary.first[:4] == [issue] * 3 + [failure] and len(summary.first) == SAMPLE_ROWS
    stored = pq.ParquetFile(tmp_path / "out" / ERRORS_FILE)
    assert stored.metadata.num_rows == 4 + ROW_GROUP_ROWS and stored.metadata.num_row_groups == 2
