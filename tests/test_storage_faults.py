"""Storage faults (issue 5 "Reliability"): with ~10% of object-store requests failing through the fault
proxy (503 SlowDown, connection reset, truncated replies, timeouts), ``OutputStore`` writes, commits and
reads and ``VideoDecoder`` fetches succeed with every byte intact; and each fault kind reaches the client
as an error that ``is_transient`` retries.

Everything is real: moto's S3 server, the proxy's sockets, s3fs/aiobotocore, decord on H.264 videos.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import random

import numpy as np
import pytest
import s3fs
from fault_proxy import FAULT_KINDS, FaultPlan, FaultProxy, FaultyS3, faulty_s3, proxy_storage_options

from actors.decode import DecodeError, VideoDecoder
from pipelines.storage import OutputStore, RetryPolicy, StorageError, WrittenFile, is_transient
from pipelines.video_io import write_mp4

__all__ = ["faulty_s3"]  # the fixture, imported for pytest

QUICK = RetryPolicy(attempts=8, initial_delay=0.02, max_delay=0.2)


def _blob(rng: random.Random, size: int) -> bytes:
    return rng.randbytes(size)


def _direct_store(faulty: FaultyS3, root: str) -> OutputStore:
    """The same output root, read without faults (for checking what the faulty endpoint left behind)."""
    return OutputStore(faulty.uri(root), faulty.direct.storage_options)


def _write_corpus(store: OutputStore, rng: random.Random, videos: int, files_per_video: int) -> dict[str, bytes]:
    """Write ``files_per_video`` files of 1-200 KB for each video and commit it; ``relpath -> bytes``."""
    written: dict[str, bytes] = {}
    for v in range(videos):
        video_id = f"clips/video {v}"
        files: list[WrittenFile] = []
        for f in range(files_per_video):
            relpath = f"masks/{v:03d}/part-{f}.parquet"
            data = _blob(rng, rng.randint(1_000, 200_000))
            written_file = store.write_bytes(relpath, data)
            assert written_file == WrittenFile(relpath, len(data), hashlib.sha256(data).hexdigest())
            files.append(written_file)
            written[relpath] = data
        store.commit(video_id, files, extra={"frames": v})
    return written


def _assert_intact(store: OutputStore, written: dict[str, bytes], videos: int) -> None:
    committed = store.committed()
    assert sorted(committed) == sorted(f"clips/video {v}" for v in range(videos))
    for video_id, record in committed.items():
        assert record.extra == {"frames": int(video_id.rsplit(" ", 1)[1])}
        assert store.verify(video_id)
    for relpath, data in written.items():
        assert hashlib.sha256(store.read_bytes(relpath)).hexdigest() == hashlib.sha256(data).hexdigest()


def test_output_store_through_faults_loses_nothing(faulty_s3: FaultyS3) -> None:
    """All retry layers on (botocore standard mode, s3fs, OutputStore): 10 videos of 3 files written,
    committed, listed, verified and read back through the faulty endpoint; checked again without faults."""
    rng = random.Random(5)
    store = OutputStore(faulty_s3.uri("run"), faulty_s3.storage_options, retry=QUICK)
    written = _write_corpus(store, rng, videos=10, files_per_video=3)
    for v in range(10, 13):  # files of videos that never get a marker (a crash mid-video): not visible
        store.write_bytes(f"masks/{v:03d}/part-0.parquet", _blob(rng, 5_000))
    _assert_intact(store, written, videos=10)
    ids = [f"clips/video {v}" for v in range(13)]
    assert store.pending(ids) == ids[10:]

    stats = faulty_s3.proxy.stats()
    assert stats.total_faults > 0 and stats.requests > stats.forwarded
    _assert_intact(_direct_store(faulty_s3, "run"), written, videos=10)


def test_output_store_retries_alone_recover(faulty_s3: FaultyS3, monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    """botocore and s3fs retries off: every fault reaches ``OutputStore``, whose own backoff must absorb it
    (this fails if ``is_transient`` misclassifies any fault kind as permanent)."""
    monkeypatch.setattr(s3fs.S3FileSystem, "retries", 1)
    options = proxy_storage_options(faulty_s3.endpoint_url, faulty_s3.storage_options["key"],
                                    faulty_s3.storage_options["secret"], botocore_retries=0)
    s3fs.S3FileSystem.clear_instance_cache()
    rng = random.Random(7)
    store = OutputStore(faulty_s3.uri("alone"), options, retry=QUICK)
    with caplog.at_level(logging.WARNING, logger="actors.retry"):
        written = _write_corpus(store, rng, videos=8, files_per_video=3)
        _assert_intact(store, written, videos=8)
    retries = [r for r in caplog.records if r.name == "actors.retry" and "transient error" in r.getMessage()]
    stats = faulty_s3.proxy.stats()
    assert stats.total_faults > 0
    assert 0 < len(retries) <= stats.total_faults  # every retry answered an injected fault
    _assert_intact(_direct_store(faulty_s3, "alone"), written, videos=8)


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_each_fault_kind_is_a_transient_error(s3, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every request failed with one kind, all lower retries off: the error s3fs raises for a write, a
    read and a stat is transient, and only ``truncate`` (which forwards before breaking the reply) lets a
    write through."""
    monkeypatch.setattr(s3fs.S3FileSystem, "retries", 1)
    s3.filesystem().pipe_file(s3.uri("out/existing.bin"), b"old" * 1000)
    plan = FaultPlan(rate=1.0, weights={kind: 1.0}, hold_seconds=1.0)
    with FaultProxy(s3.endpoint_url, plan) as proxy:
        options = proxy_storage_options(proxy.url, s3.storage_options["key"], s3.storage_options["secret"],
                                        read_timeout=0.4, botocore_retries=0)
        fs = s3fs.S3FileSystem(**options, skip_instance_cache=True)
        operations = {
            "write": lambda: fs.pipe_file(s3.uri("out/new.bin"), b"new" * 1000),
            "read": lambda: fs.cat_file(s3.uri("out/existing.bin")),
            "stat": lambda: fs.info(s3.uri("out/existing.bin")),
        }
        for name, operation in operations.items():
            with pytest.raises(Exception) as caught:  # noqa: B017, PT011 - the type depends on the layer
                operation()
            assert is_transient(caught.value), f"{kind} on {name}: {caught.value!r} is not transient"
        stats = proxy.stats()
    assert stats.faults == {kind: stats.requests} and stats.requests >= 3
    assert stats.forwarded == (stats.requests if kind == "truncate" else 0)
    direct = s3.filesystem()
    assert direct.exists(s3.uri("out/new.bin")) == (kind == "truncate")
    assert direct.cat_file(s3.uri("out/existing.bin")) == b"old" * 1000


@pytest.mark.parametrize("kind", ["slowdown", "timeout", "reset", "truncate"])
def test_faults_outlasting_every_retry_surface_as_the_callers_errors(s3, kind: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """When a fault outlasts all retries, ``OutputStore`` raises ``StorageError`` naming the URI and
    ``VideoDecoder`` raises ``DecodeError`` of kind ``io`` (what the label pipeline turns into error rows)."""
    monkeypatch.setattr(s3fs.S3FileSystem, "retries", 1)
    uri = s3.uri("videos/v.mp4")
    write_mp4(iter(_frames(3, 32, 32, 0)), uri, fps=5, storage_options=s3.storage_options)
    with FaultProxy(s3.endpoint_url, FaultPlan(rate=1.0, weights={kind: 1.0}, hold_seconds=1.0)) as proxy:
        options = proxy_storage_options(proxy.url, s3.storage_options["key"], s3.storage_options["secret"],
                                        read_timeout=0.4, botocore_retries=0)
        s3fs.S3FileSystem.clear_instance_cache()
        with pytest.raises(DecodeError) as decode_error:
            VideoDecoder(uri, options)
        assert decode_error.value.kind == "io"
        store = OutputStore(s3.uri("out"), options, retry=RetryPolicy(attempts=2, initial_delay=0.0, max_delay=0.0))
        with pytest.raises(StorageError, match="write failed") as storage_error:
            store.write_bytes("a.bin", b"x")
        assert is_transient(storage_error.value)


def test_fault_decisions_follow_the_seed(s3, monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests sent one at a time meet the same faults under the same seed, other faults under another."""
    monkeypatch.setattr(s3fs.S3FileSystem, "retries", 1)

    def failed_keys(seed: int) -> list[int]:
        with FaultProxy(s3.endpoint_url, FaultPlan(rate=0.3, seed=seed, weights={"slowdown": 1.0})) as proxy:
            # slowdown replies at once: no short timeout is needed, and none may fire on a loaded machine
            fs = s3fs.S3FileSystem(**proxy_storage_options(proxy.url, "k", "s", read_timeout=60.0,
                                                           botocore_retries=0), skip_instance_cache=True)
            failed = []
            for i in range(24):
                try:
                    fs.pipe_file(s3.uri(f"seeded/{i}"), b"x")
                except OSError:
                    failed.append(i)
            stats = proxy.stats()
        assert (stats.requests, stats.faults) == (24, {"slowdown": len(failed)})
        return failed

    first, again, other = failed_keys(1), failed_keys(1), failed_keys(2)
    assert first == again and 2 <= len(first) <= 14
    assert first != other


def _frames(count: int, height: int, width: int, seed: int) -> np.ndarray:
    """Frames with texture (so the mp4 spans many 64 KB reads) and a per-frame brightness ramp."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return np.stack([(base.astype(np.int32) + 7 * i).clip(0, 255).astype(np.uint8) for i in range(count)])


def test_video_decoder_fetches_through_faults(faulty_s3: FaultyS3) -> None:
    """Four videos written straight to moto, each fetched and decoded 10 times through the faulty
    endpoint: the same bytes and the same frames as without faults every time."""
    direct = faulty_s3.direct
    videos = {}
    for i, (count, height, width) in enumerate([(12, 48, 64), (30, 96, 128), (1, 33, 47), (20, 240, 320)]):
        uri = faulty_s3.uri(f"videos/clip {i}.mp4")
        encoded = write_mp4(iter(_frames(count, height, width, i)), uri, fps=10, storage_options=direct.storage_options)
        with VideoDecoder(uri, direct.storage_options) as reference:
            videos[uri] = (encoded, reference.get(np.arange(reference.num_frames)))
    assert max(v[0].num_bytes for v in videos.values()) > 2 * 65536  # s3fs reads bodies in 64 KB blocks

    for _ in range(10):
        for uri, (encoded, expected) in videos.items():
            with VideoDecoder(uri, faulty_s3.storage_options) as decoder:
                assert decoder.counters.bytes_fetched == encoded.num_bytes
                assert (decoder.num_frames, decoder.height, decoder.width) == (
                    encoded.num_frames, encoded.encoded_height, encoded.encoded_width
                )
                np.testing.assert_array_equal(decoder.get(np.arange(decoder.num_frames)), expected)
    stats = faulty_s3.proxy.stats()
    assert stats.faults_by_method.get("GET", 0) > 0 and stats.faults_by_method.get("HEAD", 0) > 0


def test_broken_video_bodies_are_resumed(faulty_s3: FaultyS3) -> None:
    """A quarter of the GETs cut mid-body: the fetch resumes with ranged GETs; same size, same frames."""
    uri = faulty_s3.uri("videos/long.mp4")
    direct = faulty_s3.direct.storage_options
    encoded = write_mp4(iter(_frames(24, 240, 320, 9)), uri, fps=10, storage_options=direct)
    with VideoDecoder(uri, direct) as reference:
        expected = reference.get(np.arange(reference.num_frames))
    plan = FaultPlan(rate=0.25, seed=3, weights={"truncate": 1.0}, methods=frozenset({"GET"}))
    with FaultProxy(faulty_s3.direct.endpoint_url, plan) as proxy:
        options = proxy_storage_options(proxy.url, faulty_s3.storage_options["key"], faulty_s3.storage_options["secret"])
        s3fs.S3FileSystem.clear_instance_cache()
        for _ in range(8):
            with VideoDecoder(uri, options) as decoder:
                assert decoder.counters.bytes_fetched == encoded.num_bytes
                np.testing.assert_array_equal(decoder.get(np.arange(decoder.num_frames)), expected)
        stats = proxy.stats()
    assert stats.faults.get("truncate", 0) > 0
    assert stats.requests_by_method["GET"] == 8 + stats.faults["truncate"]  # one ranged GET per broken body


def test_proxy_stops_by_itself_and_closes_its_connections(s3) -> None:
    """After ``lifetime_seconds`` the proxy is gone: kept-alive connections are closed, new ones refused."""
    proxy = FaultProxy(s3.endpoint_url, FaultPlan(rate=0.0, lifetime_seconds=1.0)).start()
    host, port = proxy.url.removeprefix("http://").split(":")
    kept = http.client.HTTPConnection(host, int(port), timeout=5)
    kept.request("GET", f"/{s3.bucket}?list-type=2")
    assert kept.getresponse().read().startswith(b"<?xml")
    assert proxy.wait_stopped(timeout=120) and proxy.stats().expired
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        kept.request("GET", f"/{s3.bucket}?list-type=2")
        kept.getresponse().read()
    with pytest.raises(ConnectionRefusedError):
        http.client.HTTPConnection(host, int(port), timeout=5).request("GET", "/")


def test_fixture_reaches_the_proxy_through_config_overrides_and_the_environment(faulty_s3: FaultyS3) -> None:
    """What the label pipeline's end-to-end fault test uses: ``config_overrides()`` rebuild the non-secret
    storage options, and code that relies on the AWS variables alone goes through the proxy too."""
    from omegaconf import OmegaConf

    from actors.uri import filesystem_for

    rebuilt = OmegaConf.to_container(OmegaConf.from_dotlist(faulty_s3.config_overrides()))["storage_options"]
    assert rebuilt == {k: v for k, v in faulty_s3.storage_options.items() if k not in ("key", "secret")}
    assert all(os.environ[k] == v for k, v in faulty_s3.environment().items())
    fs, path = filesystem_for(faulty_s3.uri("env/only.bin"))  # no storage_options: the environment's
    before = faulty_s3.proxy.stats().requests
    fs.pipe_file(path, b"through the proxy")
    assert faulty_s3.proxy.stats().requests > before
    assert faulty_s3.direct.filesystem().cat_file(faulty_s3.uri("env/only.bin")) == b"through the proxy"
