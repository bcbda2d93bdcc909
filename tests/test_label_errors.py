"""Errors a person can act on: internal failures with their traceback, input errors with their one line,
missing S3 credentials as one line before any work, secrets (and only secrets) redacted in run records."""

from __future__ import annotations

import logging

import pyarrow as pa
import pytest

from actors.decode import DecodeError
from actors.uri import redact
from actors.video_rows import (
    INTERNAL,
    MAX_MESSAGE_CHARS,
    MAX_TRACEBACK_CHARS,
    VIDEO_ROW_SCHEMA,
    Failure,
    StageRunner,
)
from pipelines.label_config import DEFAULT_LABEL_CONFIG, load_label_config

SECRET = "sekrit-value-1234"


def _rows(*video_ids: str) -> pa.Table:
    return pa.Table.from_pylist([{"video_id": v, "source": "{}", "queries": "[]", "failure": "", "timings": "{}",
                                  "payload": b""} for v in video_ids], schema=VIDEO_ROW_SCHEMA)


def test_unexpected_exception_is_internal_with_a_redacted_truncated_traceback_also_logged(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)

    def work(row: dict) -> None:
        if row["video_id"] == "long":
            raise RuntimeError("x" * 3 * MAX_TRACEBACK_CHARS)
        raise KeyError(f"lookup with {SECRET} failed")

    with caplog.at_level(logging.ERROR, logger="actors.video_rows"):
        out = StageRunner("mllm", work, backoff=0.0)(_rows("shallow", "long")).to_pylist()

    shallow, long = (Failure.from_json(row["failure"]) for row in out)
    assert (shallow.stage, shallow.kind, long.kind) == ("mllm", INTERNAL, INTERNAL)
    assert shallow.message.splitlines()[0] == "KeyError: 'lookup with *** failed'"
    assert "Traceback (most recent call last)" in shallow.message and "in work" in shallow.message
    assert SECRET not in shallow.message
    first, marker, *trace = long.message.splitlines()
    assert (first, marker) == ("RuntimeError: " + "x" * (MAX_MESSAGE_CHARS - 14), "[... traceback truncated]")
    assert trace == ["x" * MAX_TRACEBACK_CHARS]  # the innermost end of the traceback is kept
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 2 and logged[0].startswith("vrseg mllm: video shallow: KeyError")
    assert SECRET not in "".join(logged)


def test_input_error_keeps_its_one_line_and_is_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    def work(row: dict) -> None:
        raise DecodeError("s3://b/v.mp4", "not_video", "no video stream")

    with caplog.at_level(logging.ERROR, logger="actors.video_rows"):
        out = StageRunner("decode", work, backoff=0.0)(_rows("v")).to_pylist()
    assert Failure.from_json(out[0]["failure"]) == Failure("decode", "not_video", "s3://b/v.mp4: not_video: no video stream")
    assert caplog.records == []


def test_redact_hides_credentials_only() -> None:
    record = redact({"video_tokens_per_frame": 4, "image_max_tokens": 64, "key_frames": [1, 2], "tokenizer": "t",
                     "key": "k", "secret": "s", "session_token": "t", "aws_access_key_id": "a", "api_key": "x",
                     "client_kwargs": {"endpoint_url": "http://e", "password": "p"}})
    assert record == {"video_tokens_per_frame": 4, "image_max_tokens": 64, "key_frames": [1, 2], "tokenizer": "t",
                      "key": "***", "secret": "***", "session_token": "***", "aws_access_key_id": "***",
                      "api_key": "***", "client_kwargs": {"endpoint_url": "http://e", "password": "***"}}


def test_worker_logs_reach_the_driver_unless_silenced() -> None:
    config, _ = load_label_config(DEFAULT_LABEL_CONFIG)
    quiet, _ = load_label_config(DEFAULT_LABEL_CONFIG, ["ray.log_to_driver=false"])
    assert (config.ray.log_to_driver, quiet.ray.log_to_driver) == (True, False)


def test_missing_s3_credentials_are_one_line_and_exit_2_before_any_work(
        monkeypatch: pytest.MonkeyPatch, tmp_path, capsys: pytest.CaptureFixture) -> None:  # noqa: ANN001
    import ray

    from pipelines.label import main

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    initialized = ray.is_initialized()

    status = main(["--manifest", str(tmp_path / "manifest.jsonl"), "--output", "s3://bucket/out", "--no-progress"])

    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1, err
    assert err[0].startswith("vrseg label: s3://bucket/out: no S3 credentials found; looked up in")
    assert "AWS_ACCESS_KEY_ID" in err[0] and "~/.aws/credentials" in err[0]
    assert ray.is_initialized() == initialized  # no Ray started for a job that cannot run
