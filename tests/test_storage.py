"""Output storage: atomic writes, commit markers, resume, safe keys, retries (local, flaky fsspec, moto S3)."""

from __future__ import annotations

import errno
import json
import os
import posixpath
from pathlib import Path

import botocore.exceptions
import fsspec
import pytest
from fsspec.implementations.local import LocalFileSystem
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.storage import (
    COMMIT_DIR,
    OutputStore,
    RetryPolicy,
    StorageError,
    check_relative,
    is_transient,
    video_key,
    with_retries,
)

FAST = RetryPolicy(attempts=6, initial_delay=0.0, max_delay=0.0)
NASTY_IDS = ["../../x", "a/b", "..", ".", ".hidden", "tab\there", "nul\x00", "é/ü", "\udcff", "x" * 10_000, "%2F", "a~b"]


class FlakyFileSystem(LocalFileSystem):
    """A local filesystem whose operations fail now and then, the way object stores do."""

    protocol = "flaky"
    fail_every = 0  # every n-th call of a wrapped operation fails (0: never)
    error: type[BaseException] | BaseException = ConnectionResetError
    calls = 0
    failures = 0
    root_marker = "/"

    def _maybe_fail(self) -> None:
        type(self).calls += 1
        if self.fail_every and type(self).calls % self.fail_every == 0:
            type(self).failures += 1
            error = self.error
            raise error if isinstance(error, BaseException) else error("connection reset by peer")

    def pipe_file(self, path, value, **kwargs):
        self._maybe_fail()
        return super().pipe_file(path, value, **kwargs)

    def mv(self, path1, path2, **kwargs):
        self._maybe_fail()
        return super().mv(path1, path2, **kwargs)

    def cat_file(self, path, start=None, end=None, **kwargs):
        self._maybe_fail()
        return super().cat_file(path, start, end, **kwargs)

    def find(self, path, **kwargs):
        self._maybe_fail()
        return super().find(path, **kwargs)


@pytest.fixture()
def flaky(monkeypatch: pytest.MonkeyPatch) -> type[FlakyFileSystem]:
    fsspec.register_implementation("flaky", FlakyFileSystem, clobber=True)
    for name, value in {"fail_every": 0, "error": ConnectionResetError, "calls": 0, "failures": 0}.items():
        monkeypatch.setattr(FlakyFileSystem, name, value)
    FlakyFileSystem.clear_instance_cache()
    return FlakyFileSystem


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_atomic_local_write_leaves_no_temporaries(tmp_path: Path) -> None:
    store = OutputStore(str(tmp_path / "out"))
    written = store.write_bytes("masks/v1/part-0.parquet", b"first")
    store.write_bytes("masks/v1/part-0.parquet", b"second version")
    assert store.read_bytes("masks/v1/part-0.parquet") == b"second version"
    assert written.size == 5 and len(written.sha256) == 64
    assert files_under(tmp_path / "out") == ["masks/v1/part-0.parquet"]
    local = tmp_path / "data.bin"
    local.write_bytes(b"x" * 3_000_000)
    put = store.put_file(str(local), "masks/v1/part-1.parquet")
    assert put.size == 3_000_000 and store.read_bytes("masks/v1/part-1.parquet") == local.read_bytes()


def test_failed_rename_leaves_neither_file_nor_temporary(tmp_path: Path, flaky: type[FlakyFileSystem]) -> None:
    flaky.fail_every, flaky.error = 1, PermissionError("read-only target")  # every operation fails for good
    store = OutputStore(f"flaky://{tmp_path}/out", retry=FAST)
    with pytest.raises(StorageError, match="write failed"):
        store.write_bytes("a/b.json", b"{}")
    assert flaky.failures == 1  # permanent: not retried
    assert files_under(tmp_path / "out") == []


def test_commit_marker_makes_a_video_visible(tmp_path: Path) -> None:
    store = OutputStore(str(tmp_path / "out"))
    files = [store.write_bytes(f"masks/v1/part-{i}.parquet", bytes([i]) * 10) for i in range(3)]
    assert store.committed() == {} and store.commit_record("v1") is None
    assert store.pending(["v1"]) == ["v1"]  # files without a marker are invisible (a crash mid-video)
    record = store.commit("v1", files, extra={"frames": 40})
    assert set(store.committed()) == {"v1"}
    marker = json.loads((tmp_path / "out" / COMMIT_DIR / "v1.json").read_text())
    assert [f["path"] for f in marker["files"]] == [f"masks/v1/part-{i}.parquet" for i in range(3)]
    assert marker["checksum"] == record.checksum and marker["extra"] == {"frames": 40}
    assert store.committed_files("v1") == [f"{tmp_path}/out/masks/v1/part-{i}.parquet" for i in range(3)]
    assert store.verify("v1")
    (tmp_path / "out" / "masks/v1/part-1.parquet").write_bytes(b"tampered!!")
    assert not store.verify("v1")
    with pytest.raises(ValueError, match="twice"):
        store.commit("v2", [files[0], files[0]])


def test_damaged_marker_is_an_error_naming_it(tmp_path: Path) -> None:
    store = OutputStore(str(tmp_path / "out"))
    store.commit("v1", [store.write_bytes("a.bin", b"a")])
    path = tmp_path / "out" / COMMIT_DIR / "v1.json"
    marker = json.loads(path.read_text())
    marker["files"][0]["size"] = 2
    path.write_text(json.dumps(marker))
    with pytest.raises(StorageError, match=r"v1\.json.*checksum"):
        store.committed()
    path.write_text("{not json")
    with pytest.raises(StorageError, match="malformed"):
        store.commit_record("v1")


def test_committed_keys_list_the_markers_without_reading_them(tmp_path: Path) -> None:
    store = OutputStore(str(tmp_path / "out"))
    assert store.committed_keys() == set()
    for video_id in ("v1", "a/b", "x" * 300):
        store.commit(video_id, [store.write_bytes(f"{video_key(video_id)}.bin", b"a")])
    (tmp_path / "out" / COMMIT_DIR / ".v9.json.tmp").write_text("{")  # an interrupted write
    (tmp_path / "out" / COMMIT_DIR / f"{video_key('v1')}.json").write_text("{not json")  # read: an error
    assert store.committed_keys() == {video_key(v) for v in ("v1", "a/b", "x" * 300)}


def test_interrupted_marker_write_is_ignored(tmp_path: Path) -> None:
    store = OutputStore(str(tmp_path / "out"))
    store.commit("done", [])
    (tmp_path / "out" / COMMIT_DIR / ".tmp-1234-v2.json").write_text('{"partial')
    assert set(store.committed()) == {"done"}


def test_resume_lists_uncommitted_ids_in_order_once(tmp_path: Path) -> None:
    store = OutputStore(str(tmp_path / "out"))
    for video_id in ("b", "../../x"):
        store.commit(video_id, [store.write_bytes(f"masks/{video_key(video_id)}/p.parquet", b"1")])
    assert store.pending(["a", "b", "c", "a", "../../x", "d"]) == ["a", "c", "d"]
    reopened = OutputStore(f"file://{tmp_path}/out")  # a fresh process, same root via another URI form
    assert set(reopened.committed()) == {"b", "../../x"}


def test_nasty_ids_stay_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "nest" / "out"
    store = OutputStore(str(root))
    for video_id in NASTY_IDS:
        key = video_key(video_id)
        store.commit(video_id, [store.write_bytes(f"masks/{key}/part-0.parquet", video_id.encode("utf-8", "surrogatepass"))])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nest"]
    assert sorted(p.name for p in (tmp_path / "nest").iterdir()) == ["out"]
    for path in root.rglob("*"):
        assert os.path.realpath(path).startswith(str(root) + os.sep)
    assert set(store.committed()) == set(NASTY_IDS)
    assert all(store.verify(video_id) for video_id in NASTY_IDS)


@pytest.mark.parametrize("relpath", ["../x", "/abs/x", "a//b", "a/./b", "a/../b", "a\\b", "s3://b/k", "", "a/\x01"])
def test_relative_paths_that_escape_are_rejected(tmp_path: Path, relpath: str) -> None:
    with pytest.raises(ValueError):
        check_relative(relpath)
    with pytest.raises(ValueError):
        OutputStore(str(tmp_path)).write_bytes(relpath, b"x")
    assert list(tmp_path.iterdir()) == []


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=300), st.text(min_size=1, max_size=300))
def test_video_keys_are_safe_and_unique(first: str, second: str) -> None:
    for video_id in (first, second):
        key = video_key(video_id)
        assert key == video_key(video_id)  # deterministic
        assert 1 <= len(key) <= 150 and key not in (".", "..") and not key.startswith(".")
        assert "/" not in key and "\\" not in key and all(32 < ord(c) < 127 for c in key)
        check_relative(f"masks/{key}/part-0.parquet")
        assert posixpath.normpath(f"/root/masks/{key}").startswith("/root/masks/")
    assert (video_key(first) == video_key(second)) == (first == second)


def test_long_ids_with_a_shared_prefix_get_distinct_keys() -> None:
    keys = {video_key("v" * 500 + suffix) for suffix in ("", "a", "b", "/", "\x00")}
    assert len(keys) == 5 and all(len(k) == 133 for k in keys)
    assert video_key("video_0001-a.mp4") == "video_0001-a.mp4"  # safe ids are kept as they are
    with pytest.raises(ValueError):
        video_key("")


def test_transient_errors_are_retried_through_a_flaky_filesystem(tmp_path: Path, flaky: type[FlakyFileSystem]) -> None:
    flaky.fail_every = 3
    store = OutputStore(f"flaky://{tmp_path}/out", retry=FAST)
    for i in range(10):
        video_id = f"video {i}"
        key = video_key(video_id)
        files = [store.write_bytes(f"masks/{key}/part-{j}.parquet", f"{i}-{j}".encode()) for j in range(2)]
        store.commit(video_id, files)
    assert set(store.committed()) == {f"video {i}" for i in range(10)}
    assert store.read_bytes(f"masks/{video_key('video 7')}/part-1.parquet") == b"7-1"
    assert store.pending([f"video {i}" for i in range(12)]) == ["video 10", "video 11"]
    assert flaky.failures >= 10
    flaky.fail_every, flaky.error = 1, OSError(errno.EBUSY, "SlowDown")  # a store that never recovers
    with pytest.raises(StorageError, match="SlowDown"):
        store.write_bytes("x.bin", b"x")


def test_retry_policy_backs_off_exponentially_and_stops_on_permanent_errors() -> None:
    delays: list[float] = []
    attempts = iter([TimeoutError(), ConnectionResetError(), OSError(errno.EBUSY, "busy"), None])

    def operation() -> str:
        error = next(attempts)
        if error:
            raise error
        return "ok"

    policy = RetryPolicy(attempts=5, initial_delay=0.5, max_delay=1.5, multiplier=2.0, jitter=0.0)
    assert with_retries(operation, "op", policy, sleep=delays.append) == "ok"
    assert delays == [0.5, 1.0, 1.5]
    calls = []

    def missing() -> None:
        calls.append(1)
        raise FileNotFoundError("gone")

    with pytest.raises(FileNotFoundError):
        with_retries(missing, "op", policy, sleep=delays.append)
    assert len(calls) == 1


def _client_error(code: str, status: int) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject"
    )


def test_is_transient_classification() -> None:
    translated = OSError(errno.EBUSY, "SlowDown")  # what s3fs raises for a 503
    translated.__cause__ = _client_error("SlowDown", 503)
    assert is_transient(translated)
    assert is_transient(_client_error("InternalError", 500))
    assert is_transient(botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"))
    assert is_transient(ConnectionResetError())
    assert not is_transient(_client_error("AccessDenied", 403))
    assert not is_transient(FileNotFoundError("missing"))
    assert not is_transient(ValueError("bad"))


def test_s3_commit_and_resume(s3) -> None:
    root = s3.uri("runs/r1")
    store = OutputStore(root, s3.storage_options, retry=FAST)
    for video_id in NASTY_IDS[:8]:
        key = video_key(video_id)
        files = [store.write_bytes(f"masks/{key}/part-0.parquet", video_id.encode("utf-8", "surrogatepass"))]
        if video_id != "a/b":
            store.commit(video_id, files)
    fresh = OutputStore(root, s3.storage_options)
    assert set(fresh.committed()) == set(NASTY_IDS[:8]) - {"a/b"}
    assert fresh.pending(NASTY_IDS[:8]) == ["a/b"]
    assert all(fresh.verify(v) for v in NASTY_IDS[:8] if v != "a/b")
    keys = s3.filesystem().find(f"{s3.bucket}")
    assert keys and all(k.startswith(f"{s3.bucket}/runs/r1/") for k in keys)
