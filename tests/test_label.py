"""``vrseg label`` end to end: S3 (moto) -> Ray Data (local) -> S3, with bad inputs, resume and PNG output."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from label_corpus import (
    corpus_videos,
    engine_masks,
    engine_moments,
    label_cli,
    label_config,
    masks_bytes,
    read_masks,
    upload_corpus,
    write_manifest,
)

from actors import rle as rle_codec
from pipelines.label import ERRORS_FILE, RUN_RECORD, InputSpec, label
from pipelines.label_writer import png_path, tracks_path
from pipelines.storage import OutputStore, video_key
from pipelines.video_io import write_mp4

DECODE_KINDS_OF_TRUNCATED = {"truncated", "not_video", "no_frames", "corrupt"}


def _bad_inputs(s3, rows: list[dict]) -> tuple[list[dict], bytes]:  # noqa: ANN001
    """Manifest rows exercising every bad input next to the good ones, plus one raw line of invalid UTF-8."""
    fs = s3.filesystem()
    good = fs.cat_file(rows[0]["video_uri"].removeprefix("s3://"))
    fs.pipe(s3.uri("corpus/bad/truncated.mp4").removeprefix("s3://"), good[: len(good) * 2 // 5])
    fs.pipe(s3.uri("corpus/bad/zero.mp4").removeprefix("s3://"), b"")
    fs.pipe(s3.uri("corpus/bad/text.mp4").removeprefix("s3://"), b"this is not a video\n" * 50)
    frame = np.zeros((30, 41, 3), np.uint8)
    frame[5:20, 8:30] = (200, 30, 30)
    write_mp4([frame], s3.uri("corpus/bad/one_frame.mp4"), 8.0, s3.storage_options)

    def video(video_id: str, uri: str) -> dict:
        return {"video_id": video_id, "video_uri": uri, "expressions": [{"expr_id": "0", "text": "the red box"}]}

    first = {**rows[0], "expressions": rows[0]["expressions"] + [
        {"expr_id": "empty", "text": ""}, {"expr_id": "long", "text": "a very long one " * 625},
        {"expr_id": "ctrl", "text": "the\x00red\x07ball"}]}
    second = {**rows[1], "expressions": rows[1]["expressions"] + [{"expr_id": "surrogate", "text": "bad \ud800 text"}]}
    bad = [
        first, second, *rows[2:],
        video("truncated", s3.uri("corpus/bad/truncated.mp4")),
        video("zero_bytes", s3.uri("corpus/bad/zero.mp4")),
        video("not_a_video", s3.uri("corpus/bad/text.mp4")),
        video("one_frame", s3.uri("corpus/bad/one_frame.mp4")),
        video("missing_object", s3.uri("corpus/bad/missing.mp4")),
        video("no_bucket", "s3://no-such-bucket-vrseg/v.mp4"),
        {**rows[2], "expressions": [{"expr_id": "0", "text": "a duplicate row"}]},
        {**rows[3], "video_id": "../../x"},
        {"video_id": "no_expressions_field", "video_uri": rows[0]["video_uri"]},
    ]
    raw = (b'{"video_id": "raw_bytes", "video_uri": "' + rows[0]["video_uri"].encode()
           + b'", "expressions": [{"expr_id": "0", "text": "caf\xe9 \xff"}]}\n')
    return bad, raw


def test_label_s3_to_s3_every_expression_every_frame_once_bad_inputs_isolated(s3, ray_local, capfd) -> None:  # noqa: ANN001
    rows = upload_corpus(s3)
    manifest_rows, raw = _bad_inputs(s3, rows)
    manifest = write_manifest(s3, manifest_rows, extra=raw)
    output = s3.uri("out")
    config, model = label_config(s3)

    result = label(InputSpec(manifest=manifest), output, config, model, progress=False)

    assert (result.done, result.skipped, result.failed) == (6, 0, 5)
    errors = {(e["video_id"], e["expr_id"], e["stage"]): e["kind"] for e in result.errors}
    assert errors.pop((rows[0]["video_id"], "empty", "input")) == "empty_expression"
    assert errors.pop((rows[0]["video_id"], "long", "input")) == "expression_too_long"
    assert errors.pop((rows[0]["video_id"], "ctrl", "input")) == "control_characters"
    assert errors.pop((rows[1]["video_id"], "surrogate", "input")) == "invalid_utf8"
    assert errors.pop(("raw_bytes", "0", "input")) == "invalid_utf8"
    assert errors.pop((rows[2]["video_id"], None, "input")) == "duplicate_video_id"
    assert errors.pop(("no_expressions_field", None, "input")) == "missing_field"
    assert errors.pop(("truncated", None, "decode")) in DECODE_KINDS_OF_TRUNCATED
    assert errors.pop(("zero_bytes", None, "decode")) == "empty"
    assert errors.pop(("not_a_video", None, "decode")) == "not_video"
    assert errors.pop(("missing_object", None, "decode")) == "missing"
    assert errors.pop(("no_bucket", None, "decode")) == "unreadable"
    assert errors == {}

    store = OutputStore(output, s3.storage_options)
    stored_errors = pq.read_table(io.BytesIO(store.read_bytes(ERRORS_FILE))).to_pylist()
    assert sorted(map(str, stored_errors)) == sorted(map(str, result.errors))

    # every valid (video, expression) has exactly one mask per frame, equal to the engine's in one process
    masks = read_masks(s3, output)
    reference = engine_masks()
    expected = {**reference, **{("../../x", e): m for (v, e), m in reference.items() if v == rows[3]["video_id"]},
                ("one_frame", "0"): None}
    assert set(masks) == set(expected)
    for key, frames in masks.items():
        assert [f for f, _ in frames] == list(range(len(frames))), key
        if expected[key] is not None:
            assert [r for _, r in frames] == expected[key], key
    assert len(masks[("one_frame", "0")]) == 1
    extra = OutputStore(output, s3.storage_options).commit_record("one_frame").extra
    assert (extra["num_frames"], extra["height"], extra["width"]) == (1, 30, 42)  # the encoder pads to even sizes
    assert rle_codec.decode({"size": [30, 42], "counts": masks[("one_frame", "0")][0][1]}).shape == (30, 42)

    # nothing outside the output root; the path-like id is stored under its sanitised key
    keys = s3.filesystem().find(s3.bucket)
    assert all(k.startswith((f"{s3.bucket}/corpus/", f"{s3.bucket}/out/", f"{s3.bucket}/manifest")) for k in keys), keys
    assert all("/../" not in k and not k.endswith("/..") for k in keys)
    assert f"{s3.bucket}/out/masks/{video_key('../../x')}.parquet" in keys

    record = json.loads(store.read_bytes(RUN_RECORD))
    assert record["counts"]["done"] == 6 and record["counts"]["failed"] == 5
    assert record["counts"]["error_rows"] == len(result.errors) == 12
    assert set(record["stage_seconds"]) == {"decode", "mllm", "propagate", "write"}
    assert record["versions"]["ray"] == "2.60.0"

    # credentials never in what the run printed or wrote
    secret, key_id = s3.storage_options["secret"], s3.storage_options["key"]
    printed = capfd.readouterr()
    written = b"".join(s3.filesystem().cat_file(k) for k in keys if k.startswith(f"{s3.bucket}/out/"))
    for text in (printed.out, printed.err, written.decode("utf-8", "replace")):
        assert secret not in text and key_id not in text


def test_resume_skips_committed_and_redoes_exactly_the_missing_video(s3, ray_local) -> None:  # noqa: ANN001
    rows = upload_corpus(s3)
    manifest = write_manifest(s3, rows)
    output = s3.uri("out")
    config, model = label_config(s3)
    first = label(InputSpec(manifest=manifest), output, config, model, progress=False)
    assert (first.done, first.skipped, first.failed) == (4, 0, 0)
    before = masks_bytes(s3, output)

    # beside its masks, each expression's predicted moment (seconds) and the compact [FIND] curve it was
    # read from, as the [FIND] pass and actors.grounding compute them in this process
    reference = engine_moments(corpus_videos())
    records = OutputStore(output, s3.storage_options).committed()
    assert sorted((v, t["expr_id"]) for v, r in records.items() for t in r.extra["expressions"]) == sorted(reference)
    for video_id, record in records.items():
        duration = record.extra["num_frames"] / record.extra["fps"]
        for track in record.extra["expressions"]:
            expected = reference[(video_id, track["expr_id"])]
            assert track["moment"] == [expected.start, expected.end]
            assert 0.0 <= track["moment"][0] < track["moment"][1] <= duration
            assert track["find_frames"] == expected.find_frames and len(track["find_frames"]) == 16
            np.testing.assert_allclose(track["find_scores"], expected.find_scores, atol=1e-4)
            assert set(track) == {"expr_id", "text", "moment", "find_frames", "find_scores", "anchor", "key_frames",
                                  "cleared"}

    again = label(InputSpec(manifest=manifest), output, config, model, progress=False)
    assert (again.done, again.skipped, again.failed) == (0, 4, 0)
    assert masks_bytes(s3, output) == before

    redo = rows[1]["video_id"]
    s3.filesystem().rm_file(s3.uri("out", OutputStore.marker_path(redo)).removeprefix("s3://"))
    assert label_cli(["--manifest", manifest, "--output", output, "--config", "configs/label/tiny.yaml", "--png",
                      "--no-progress", f"storage_options.client_kwargs.endpoint_url={s3.endpoint_url}"]) == 0
    store = OutputStore(output, s3.storage_options)
    record = json.loads(store.read_bytes(RUN_RECORD))
    assert (record["counts"]["done"], record["counts"]["skipped_committed"]) == (1, 3)
    assert record["counts"]["frame_store_fallbacks"] == 0
    assert masks_bytes(s3, output) == before  # the redone video is rewritten byte for byte

    # --png wrote the redone video's masks in the PNG layout, listed in its commit marker
    pngs = [f.path for f in store.commit_record(redo).files if f.path.startswith("png/")]
    masks = read_masks(s3, output)
    expressions = [e["expr_id"] for e in rows[1]["expressions"]]
    assert len(pngs) == sum(len(masks[(redo, e)]) for e in expressions)
    from PIL import Image

    frame, counts = masks[(redo, expressions[0])][3]
    png = np.asarray(Image.open(io.BytesIO(store.read_bytes(png_path(redo, expressions[0], f"{frame:05d}")))))
    assert np.array_equal(png > 0, rle_codec.decode({"size": list(png.shape), "counts": counts}))


def _assert_tracks_agree_with_masks(s3, output: str) -> int:  # noqa: ANN001
    """Every committed video lists its ``tracks/`` file, with one row per expression of its marker that agrees
    with its mask rows and its marker; returns how many tracks were checked."""
    store = OutputStore(output, s3.storage_options)
    checked = 0
    for video_id, record in store.committed().items():
        paths = [f.path for f in record.files]
        assert tracks_path(video_id) in paths, video_id
        masks = pq.read_table(io.BytesIO(store.read_bytes(f"masks/{video_key(video_id)}.parquet"))).to_pylist()
        tracks = pq.read_table(io.BytesIO(store.read_bytes(tracks_path(video_id)))).to_pylist()
        expressions = record.extra["expressions"]
        assert [t["expr_id"] for t in tracks] == [e["expr_id"] for e in expressions], video_id
        for track, marker in zip(tracks, expressions, strict=True):
            rows = [m for m in masks if m["expr_id"] == track["expr_id"]]
            non_empty = [rle_codec.area({"size": [m["height"], m["width"]], "counts": m["rle"]}) > 0 for m in rows]
            assert [m["present"] for m in rows] == non_empty, (video_id, track["expr_id"])
            assert track["video_id"] == video_id and track["num_frames"] == len(rows) == record.extra["num_frames"]
            assert track["present_frames"] == sum(non_empty)
            assert track["no_target"] == (sum(non_empty) == 0)
            assert [track["start"], track["end"]] == marker["moment"]
            assert (track["anchor_frame"], track["key_frames"], track["cleared_frames"]) == (
                marker["anchor"], marker["key_frames"], marker["cleared"])
            assert set(track["reseed_frames"]) <= set(track["key_frames"]) - {track["anchor_frame"]}
            assert track["confidence"] is None  # no calibration in the config
            if not track["no_target"]:
                scores = [m["score"] for m in rows if m["present"]]
                assert track["mean_track_score"] == pytest.approx(sum(scores) / len(scores))
                assert 0.0 < track["area_mean"] <= track["area_max"] <= 1.0
            checked += 1
    return checked


def test_fused_stages_give_the_split_stages_outputs(s3, ray_local) -> None:  # noqa: ANN001
    """``stages=fused`` (one actor holding both models, one frame store per video) labels exactly what the
    split pools and the single-process engine label."""
    rows = upload_corpus(s3)
    output = s3.uri("fused")
    # every video over the frame store's budget: read by random access, the same pixels, counted in run.json
    config, model = label_config(s3, ["stages=fused", "decoder.max_store_bytes=1"])
    run = label(InputSpec(manifest=write_manifest(s3, rows)), output, config, model, progress=False)
    assert (run.done, run.failed, run.store_fallbacks) == (4, 0, 4)
    assert json.loads(OutputStore(output, s3.storage_options).read_bytes(RUN_RECORD))["counts"][
        "frame_store_fallbacks"] == 4
    assert "label" in run.stage_seconds and "mllm" not in run.stage_seconds and "propagate" not in run.stage_seconds
    masks, reference = read_masks(s3, output), engine_masks()
    assert set(masks) == set(reference)
    for key, frames in masks.items():
        assert [f for f, _ in frames] == list(range(len(reference[key]))), key
        assert [r for _, r in frames] == reference[key], key
    assert _assert_tracks_agree_with_masks(s3, output) == len(reference)


@pytest.mark.parametrize("video_id", ["../../x", "a/b", ".hidden", "x" * 300])
def test_png_paths_stay_under_the_root(video_id: str) -> None:
    path = png_path(video_id, "../e", "00001")
    assert path.startswith("png/") and ".." not in path.split("/")


def test_stage_runner_retries_transient_errors_and_records_permanent_ones() -> None:
    import pyarrow as pa

    from actors.decode import DecodeError
    from actors.video_rows import VIDEO_ROW_SCHEMA, Failure, StageRunner, payload_of

    calls: list[str] = []

    def work(row: dict) -> str:
        calls.append(row["video_id"])
        if row["video_id"] == "flaky" and calls.count("flaky") < 3:
            raise DecodeError("s3://b/flaky.mp4", "io", "connection reset")
        if row["video_id"] == "broken":
            raise DecodeError("s3://b/broken.mp4", "truncated", "cut short")
        return f"payload of {row['video_id']}"

    rows = [{"video_id": v, "source": "{}", "queries": "[]", "failure": "", "timings": "{}", "payload": b""}
            for v in ("flaky", "broken")]
    rows.append({**rows[0], "video_id": "failed_before", "failure": Failure("decode", "missing", "gone").to_json()})
    out = StageRunner("mllm", work, backoff=0.0)(pa.Table.from_pylist(rows, schema=VIDEO_ROW_SCHEMA)).to_pylist()
    assert calls == ["flaky", "flaky", "flaky", "broken"]
    assert payload_of(out[0]) == "payload of flaky" and out[0]["failure"] == ""
    assert Failure.from_json(out[1]["failure"]) == Failure("mllm", "truncated", "s3://b/broken.mp4: truncated: cut short")
    assert out[2] == rows[2]
    assert set(json.loads(out[0]["timings"])) == {"mllm"}


def test_run_record_redacts_credentials_in_the_command_line() -> None:
    from pipelines.label import _redact_argument

    assert _redact_argument("storage_options.secret=abc") == "storage_options.secret=***"
    assert _redact_argument("storage_options.key=AKIA1") == "storage_options.key=***"
    assert _redact_argument("pools.mllm.size=2") == "pools.mllm.size=2"
