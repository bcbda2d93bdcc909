"""The decoded-frame cache of the training-sample builder: LRU accounting of ``DecodedFrameCache``, and real
rows (real mp4s through decord, real JPEG folders through PIL) built with the cache on and off, compared byte
for byte."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
from train_corpus import tiny_config, write_train_corpus

from actors.config import ConfigError
from actors.decode import Size
from pipelines import train_data
from pipelines.frame_cache import CacheStats, DecodedFrameCache
from pipelines.train_config import SampleConfig, TrainConfig, load_train_config
from pipelines.train_data import SampleBuilder, read_catalog


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_train_corpus(tmp_path_factory.mktemp("corpus"))


class CountingDecoder(train_data.VideoDecoder):
    """The real decoder, recording every ``get`` (video file name, output size, indices) in ``calls``."""

    calls: list[tuple[str, Size, tuple[int, ...]]] = []

    def get(self, indices: Any, size: Size | None = None) -> np.ndarray:  # noqa: ANN401 - as VideoDecoder.get
        assert size is not None
        CountingDecoder.calls.append((Path(self.uri).stem, (int(size[0]), int(size[1])),
                                      tuple(int(i) for i in indices)))
        return super().get(indices, size)


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Size, tuple[int, ...]]]:
    CountingDecoder.calls = []
    monkeypatch.setattr(train_data, "VideoDecoder", CountingDecoder)
    return CountingDecoder.calls


CACHE_ON = "data.frame_cache_mb=64"  # the cache is off by default; the tiny corpus fits in 64 MiB


def _rows(config: TrainConfig, indices: range, objective: str = "joint",
          cache: DecodedFrameCache | None = None) -> tuple[list[dict[str, Any]], SampleBuilder]:
    builder = SampleBuilder([ray.put(read_catalog(config))], config.data, seed=7, objective=objective)
    if cache is not None:
        builder.cache = cache
    return [builder({"index": i}) for i in indices], builder


def _assert_same_rows(cached: list[dict[str, Any]], plain: list[dict[str, Any]]) -> None:
    assert len(cached) == len(plain)
    for a, b in zip(cached, plain, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            x, y = np.asarray(a[key]), np.asarray(b[key])
            assert x.dtype == y.dtype and x.shape == y.shape, (a["index"], key)
            assert x.tobytes() == y.tobytes(), (a["index"], key)


def _frame_keys(row: dict[str, Any]) -> list[tuple[str, str, Size]]:
    """The (source, video, size) pairs a joint or clip row read frames at."""
    arrays = {"refvos": ("lowres", "key_frames"), "tsg": ("lowres",), "clip": ("clip_frames",)}[row["task"]]
    return [(row["source"], row["video_id"], tuple(row[a].shape[1:3])) for a in arrays]


# ------------------------------------------------------------------------------------------ the cache alone
def _entry(value: int, nbytes: int) -> np.ndarray:
    return np.full(nbytes, value, dtype=np.uint8)


def test_lru_keeps_the_budget_and_evicts_the_least_recently_used() -> None:
    cache = DecodedFrameCache(budget_bytes=300)
    decoded: list[str] = []

    def fetch(video: str, nbytes: int = 100) -> np.ndarray | None:
        def decode() -> np.ndarray:
            decoded.append(video)
            return _entry(ord(video[0]), nbytes)
        frames = cache.fetch(("src", video, (1, 1)), nbytes, decode)
        assert cache.stats().bytes_held <= 300
        return frames

    for video in ("a", "b", "c", "a"):  # a is now the most recently used, b the least
        fetch(video)
    assert decoded == ["a", "b", "c"]
    assert cache.stats() == CacheStats(hits=1, misses=3, evictions=0, oversize=0, entries=3, bytes_held=300)
    fetch("d")  # evicts b
    assert cache.stats() == CacheStats(hits=1, misses=4, evictions=1, oversize=0, entries=3, bytes_held=300)
    frames = fetch("b")  # decoded again, evicting c
    assert decoded == ["a", "b", "c", "d", "b"] and frames is not None and frames[0] == ord("b")
    assert not frames.flags.writeable
    fetch("a"), fetch("d"), fetch("b")
    assert decoded == ["a", "b", "c", "d", "b"]
    fetch("e", 250)  # a 250-byte entry evicts all three 100-byte ones (b, after d and c before)
    assert cache.stats() == CacheStats(hits=4, misses=6, evictions=5, oversize=0, entries=1, bytes_held=250)


def test_an_entry_larger_than_the_budget_is_neither_decoded_nor_evicts_anything() -> None:
    cache = DecodedFrameCache(budget_bytes=300)
    assert cache.fetch(("src", "a", (1, 1)), 200, lambda: _entry(1, 200)) is not None
    for _ in range(3):
        assert cache.fetch(("src", "long", (1, 1)), 301, lambda: pytest.fail("decoded an oversize entry")) is None
    assert cache.stats() == CacheStats(hits=0, misses=1, evictions=0, oversize=3, entries=1, bytes_held=200)
    with pytest.raises(ValueError, match=r"decoded 50 bytes of uint8, 60 bytes of uint8 announced"):
        cache.fetch(("src", "b", (1, 1)), 60, lambda: _entry(1, 50))
    with pytest.raises(ValueError, match="at least 1 byte"):
        DecodedFrameCache(0)


def test_frame_cache_mb_is_validated() -> None:
    assert SampleConfig().frame_cache_mb == 0  # off unless a config sizes it to its corpus
    assert SampleConfig(frame_cache_mb=0).frame_cache_mb == 0
    for bad in (-1, 1.5, True, "64"):
        with pytest.raises(ValueError, match=r"data.frame_cache_mb must be an int >= 0 .*got " + repr(bad)):
            SampleConfig(frame_cache_mb=bad)  # type: ignore[arg-type]


def test_frame_cache_mb_errors_name_the_key_in_a_config_file(corpus: Path) -> None:
    with pytest.raises(ConfigError, match="frame_cache_mb"):
        tiny_config(corpus, "data.frame_cache_mb=-5")
    assert tiny_config(corpus, "data.frame_cache_mb=0").data.frame_cache_mb == 0


# ------------------------------------------------------------------------------------------ real rows
@pytest.mark.parametrize("overrides", [
    (),  # the tiny config: low-res 42x56, key frames at the video's 48x64
    ("data.keyframe_size=[40,40]", "data.lowres_size=[9,12]"),  # odd sizes; 12 px is decord's workaround width
    ("sources.procedural_refvos.videos_uri=null",),  # RefVOS frames from the JPEG folders (PIL)
], ids=["mp4", "odd_sizes", "jpeg"])
def test_rows_with_the_cache_are_the_rows_without_it(corpus: Path, ray_local: None, overrides: tuple[str, ...]) -> None:
    cached, builder = _rows(tiny_config(corpus, *overrides, CACHE_ON), range(48))
    plain, off = _rows(tiny_config(corpus, *overrides, "data.frame_cache_mb=0"), range(48))
    assert off.cache is None and builder.cache is not None
    assert {row["task"] for row in cached} == {"refvos", "tsg"}
    assert builder.cache.stats().hits > 40  # most rows came from the cache
    _assert_same_rows(cached, plain)


def test_clips_with_the_cache_are_the_clips_without_it(corpus: Path, ray_local: None) -> None:
    def config(*extra: str) -> TrainConfig:
        return load_train_config("configs/train/tiny_sam2.yaml", [
            f"data_root={corpus}", "data.clip_objects=2", "data.clip_frames=5", "data.clip_cond_frames=2", CACHE_ON,
            *extra])

    cached, builder = _rows(config(), range(32), "sam2_tracking")
    plain, _ = _rows(config("data.frame_cache_mb=0"), range(32), "sam2_tracking")
    assert {row["task"] for row in cached} == {"clip"}
    assert builder.cache is not None and builder.cache.stats().misses == 3  # 3 videos at one size
    _assert_same_rows(cached, plain)


def test_each_video_is_decoded_once_per_size(corpus: Path, ray_local: None,
                                             counting: list[tuple[str, Size, tuple[int, ...]]]) -> None:
    rows, builder = _rows(tiny_config(corpus, CACHE_ON), range(40))
    reads = [key for row in rows for key in _frame_keys(row)]
    distinct = set(reads)
    assert builder.cache is not None
    stats = builder.cache.stats()
    assert (stats.misses, stats.hits, stats.evictions, stats.oversize) == (len(distinct), len(reads) - len(distinct), 0, 0)
    assert stats.entries == len(distinct)
    assert stats.bytes_held == sum(16 * h * w * 3 for _, _, (h, w) in distinct)
    # the decoder saw each (video, size) of a source once: every frame, once each (the two sources share files)
    frames = Counter((video, size) for video, size, indices in counting for _ in indices)
    per_file = Counter((video, size) for _, video, size in distinct)
    assert frames == Counter({key: 16 * sources for key, sources in per_file.items()})


def test_a_small_budget_evicts_and_decodes_again_and_oversize_videos_bypass(
        corpus: Path, ray_local: None, counting: list[tuple[str, Size, tuple[int, ...]]]) -> None:
    config = tiny_config(corpus, "data.frame_cache_mb=0")
    plain, _ = _rows(config, range(40))
    entry = 16 * 48 * 64 * 3  # one video at the key-frame size, the largest entry
    budget = 2 * entry
    small = DecodedFrameCache(budget)
    held: list[int] = []
    original = small.fetch

    def watched(*args: Any) -> np.ndarray | None:  # noqa: ANN401 - DecodedFrameCache.fetch's arguments
        frames = original(*args)
        held.append(small.stats().bytes_held)
        return frames

    small.fetch = watched  # type: ignore[method-assign]
    counting.clear()
    rows, _ = _rows(tiny_config(corpus, CACHE_ON), range(40), cache=small)
    _assert_same_rows(rows, plain)
    stats = small.stats()
    distinct = {key for row in rows for key in _frame_keys(row)}
    assert max(held) <= budget and stats.bytes_held <= budget
    assert stats.evictions > 0 and stats.misses > len(distinct)  # evicted videos were decoded again
    assert stats.misses == stats.entries + stats.evictions
    full_decodes = Counter((video, size) for video, size, indices in counting if indices[0] == 0 and len(indices) == 16)
    assert sum(full_decodes.values()) == stats.misses and max(full_decodes.values()) > 1

    # a budget below a key-frame entry: key frames go to the decoder by random access, never held, evicting nothing
    tiny = DecodedFrameCache(entry - 1)
    counting.clear()
    rows, _ = _rows(tiny_config(corpus, CACHE_ON), range(12), cache=tiny)
    _assert_same_rows(rows, plain[:12])
    refvos = sum(row["task"] == "refvos" for row in rows)
    stats = tiny.stats()
    assert refvos > 0 and stats.oversize == refvos and stats.bytes_held <= entry - 1
    assert [len(indices) for _, size, indices in counting if size == (48, 64)] == [2] * refvos
    assert stats.misses == stats.entries + stats.evictions  # the evictions are low-res entries making room
