"""Manifest parsing and validation (pure functions; the manifest streamed by Ray Data: test_label_inputs.py)."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.manifest import (
    InputIssue,
    InputLimits,
    LabelEntry,
    LabelInputs,
    drop_duplicates,
    entries_from_dataset,
    entries_from_folder,
    jsonl_items,
    parquet_items,
)

LIMITS = InputLimits(max_expression_chars=100)


def _line(record: object) -> bytes:
    return json.dumps(record).encode() + b"\n"


def _row(video_id: str, *texts: str) -> dict:
    return {"video_id": video_id, "video_uri": f"s3://b/{video_id}.mp4",
            "expressions": [{"expr_id": str(i), "text": t} for i, t in enumerate(texts)]}


def _split(items: list[LabelEntry | InputIssue]) -> tuple[list[LabelEntry], list[InputIssue]]:
    return [i for i in items if isinstance(i, LabelEntry)], [i for i in items if isinstance(i, InputIssue)]


def parse_jsonl(data: bytes, file: str, limits: InputLimits) -> tuple[list[LabelEntry], list[InputIssue]]:
    return _split(list(jsonl_items(io.BytesIO(data), file, limits)))


def parse_parquet(data: bytes, file: str, limits: InputLimits) -> tuple[list[LabelEntry], list[InputIssue]]:
    return _split(list(parquet_items(io.BytesIO(data), file, limits)))


def _kinds(issues: list) -> list[tuple]:
    return sorted((i.video_id, i.expr_id, i.kind) for i in issues)


def test_valid_rows_become_entries_in_order() -> None:
    data = _line(_row("a", "the red ball", "the cat")) + b"\n" + _line(_row("b", "a dog"))
    entries, issues = parse_jsonl(data, "m.jsonl", LIMITS)
    assert issues == []
    assert [e.video_id for e in entries] == ["a", "b"]
    assert entries[0].queries == (("0", "the red ball"), ("1", "the cat"))
    assert entries[0].source.video_uri == "s3://b/a.mp4"


def test_bad_expressions_are_dropped_with_issues_and_the_rest_kept() -> None:
    row = _row("v", "good one", "", "   ", "x" * 101, "bad\x00char", "esc\x1bape", "tab\tand newline\nare fine")
    entries, issues = parse_jsonl(_line(row), "m.jsonl", LIMITS)
    assert [q[0] for q in entries[0].queries] == ["0", "6"]
    assert _kinds(issues) == [
        ("v", "1", "empty_expression"), ("v", "2", "empty_expression"), ("v", "3", "expression_too_long"),
        ("v", "4", "control_characters"), ("v", "5", "control_characters"),
    ]


def test_invalid_utf8_raw_bytes_and_lone_surrogates_are_issues() -> None:
    raw = b'{"video_id": "v", "video_uri": "s3://b/v.mp4", "expressions": [{"expr_id": "0", "text": "bad \xff\xfe"},' \
          b' {"expr_id": "1", "text": "lone \\ud800 surrogate"}, {"expr_id": "2", "text": "fine"}]}\n'
    bad_id = b'{"video_id": "v\xff", "video_uri": "s3://b/v.mp4", "expressions": [{"expr_id": "0", "text": "ok"}]}\n'
    entries, issues = parse_jsonl(raw + bad_id, "m.jsonl", LIMITS)
    assert [e.video_id for e in entries] == ["v"]
    assert entries[0].queries == (("2", "fine"),)
    kinds = _kinds(issues)
    assert kinds[:2] == [("v", "0", "invalid_utf8"), ("v", "1", "invalid_utf8")]
    assert kinds[2][2] == "invalid_video_id"
    kinds[2][0].encode("utf-8")  # the reported id is printable, valid UTF-8


def test_malformed_rows_and_missing_fields() -> None:
    data = (b"not json at all\n" + _line([1, 2]) + _line({"video_uri": "x", "expressions": []})
            + _line({"video_id": "nofield", "video_uri": "s3://b/x.mp4"})
            + _line({"video_id": "nouri", "expressions": [{"expr_id": "0", "text": "a"}]})
            + _line({"video_id": "empty", "video_uri": "s3://b/x.mp4", "expressions": []})
            + _line({"video_id": "", "video_uri": "s3://b/x.mp4", "expressions": []})
            + _line({"video_id": "noexprid", "video_uri": "s3://b/x.mp4", "expressions": [{"text": "a"}]}))
    entries, issues = parse_jsonl(data, "m.jsonl", LIMITS)
    assert entries == []
    assert [(i.video_id, i.kind) for i in issues] == [
        (None, "malformed_row"), (None, "malformed_row"), (None, "missing_field"), ("nofield", "missing_field"),
        ("nouri", "missing_field"), ("empty", "no_expressions"), ("", "invalid_video_id"),
        ("noexprid", "missing_field"),
    ]
    assert "m.jsonl line 1" in issues[0].message and "m.jsonl line 4" in issues[3].message


def test_duplicate_ids_keep_the_first_row() -> None:
    entries, issues = parse_jsonl(_line(_row("a", "one")) + _line(_row("a", "two")) + _line(_row("b", "x")),
                                  "m.jsonl", LIMITS)
    out = drop_duplicates(LabelInputs(entries, issues))
    assert [(e.video_id, e.queries[0][1]) for e in out.entries] == [("a", "one"), ("b", "x")]
    assert _kinds(out.issues) == [("a", None, "duplicate_video_id")]


def test_duplicate_expr_ids_and_path_like_video_ids() -> None:
    row = {"video_id": "../../x", "video_uri": "s3://b/x.mp4",
           "expressions": [{"expr_id": 7, "text": "a"}, {"expr_id": "7", "text": "b"}]}
    entries, issues = parse_jsonl(_line(row), "m.jsonl", LIMITS)
    assert entries[0].video_id == "../../x" and entries[0].queries == (("7", "a"),)
    assert _kinds(issues) == [("../../x", "7", "duplicate_expr_id")]


def test_parquet_manifest() -> None:
    table = pa.Table.from_pylist([_row("a", "one", ""), {"video_id": "b", "video_uri": None, "expressions": []}])
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    entries, issues = parse_parquet(buffer.getvalue(), "m.parquet", LIMITS)
    assert [e.video_id for e in entries] == ["a"]
    assert _kinds(issues) == [("a", "1", "empty_expression"), ("b", None, "missing_field")]
    assert _kinds(parse_parquet(b"garbage", "m.parquet", LIMITS)[1]) == [(None, None, "malformed_manifest")]


def test_folder_of_videos_with_one_expressions_file(tmp_path) -> None:  # noqa: ANN001
    (tmp_path / "videos" / "sub").mkdir(parents=True)
    for name in ("a.mp4", "sub/b.mkv", "notes.txt"):
        (tmp_path / "videos" / name).write_bytes(b"x")
    (tmp_path / "expressions.txt").write_text("the ball\n\nthe cat\n")
    out = entries_from_folder(str(tmp_path / "videos"), str(tmp_path / "expressions.txt"), None, LIMITS)
    assert [(e.video_id, e.queries) for e in out.entries] == [
        ("a", (("0", "the ball"), ("1", "the cat"))), ("sub/b", (("0", "the ball"), ("1", "the cat")))]
    (tmp_path / "expressions.json").write_text(json.dumps({"a": ["only a"]}))
    out = entries_from_folder(str(tmp_path / "videos"), str(tmp_path / "expressions.json"), None, LIMITS)
    assert [(e.video_id, e.queries) for e in out.entries] == [("a", (("0", "only a"),))]
    assert _kinds(out.issues) == [("sub/b", None, "no_expressions")]


def test_benchmark_entries_read_frame_folders(tmp_path) -> None:  # noqa: ANN001
    import numpy as np
    from PIL import Image

    from actors.config import load_config
    from actors.decode import DecoderConfig
    from actors.frames import open_source
    from pipelines.formats import read_dataset
    from pipelines.synthetic_cli import SynthConfig, write_corpus

    synth = load_config(SynthConfig, "configs/synth/tiny.yaml", ["num_videos=1", "output.layouts=[mevis]"])
    write_corpus(synth, str(tmp_path))
    inputs = drop_duplicates(entries_from_dataset(read_dataset("mevis", str(tmp_path)), LIMITS))
    assert inputs.issues == [] and len(inputs.entries) == 1
    entry = inputs.entries[0]
    assert entry.source.video_uri is None and entry.source.frame_names[0] == "00000"
    with open_source(entry.source, None, DecoderConfig()) as video:
        assert (video.num_frames, video.height, video.width) == (16, 48, 64)
        names = entry.source.frame_names
        jpeg = np.asarray(Image.open(tmp_path / "JPEGImages" / entry.video_id / f"{names[5]}.jpg").convert("RGB"))
        assert np.array_equal(video.get([5, 2, 5])[0], jpeg) and np.array_equal(video.get([5, 2, 5])[2], jpeg)
        chunks = list(video.stream(6, "backward", (24, 32), 4))
        assert [c.indices.tolist() for c in chunks] == [[6, 5, 4, 3], [2, 1, 0]]
        assert chunks[0].frames.shape == (4, 24, 32, 3)
