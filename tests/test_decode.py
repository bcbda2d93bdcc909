"""VideoDecoder on real H.264 videos encoded by the test (PyAV), read locally and from moto S3."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import av
import decord
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from actors.decode import (
    DecodeError,
    DecoderConfig,
    VideoDecoder,
    fit_within,
    uniform_indices,
)
from pipelines.video_io import write_mp4

HEIGHT, WIDTH = 48, 64


def make_frames(count: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """Smooth frames that differ per frame: a horizontal ramp, a brightness set by the index, a moving bar."""
    frames = np.zeros((count, height, width, 3), dtype=np.uint8)
    ramp = (np.arange(width) * 255 // max(1, width - 1)).astype(np.uint8)
    for i in range(count):
        frames[i, ..., 0] = (20 + 5 * i) % 256
        frames[i, ..., 2] = ramp[None, :]
        bar = (4 * i) % max(2, width - 8) // 2 * 2  # even: edges on the 2x2 chroma grid
        frames[i, :, bar : bar + 8, 1] = 200
    return frames


def encode(path: Path, frames: np.ndarray, gop: int = 250, pix_fmt: str = "yuv420p", faststart: bool = False) -> Path:
    """H.264 mp4 with keyframes every ``gop`` frames (scene-cut keyframes off, no B-frames)."""
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), mode="w", format="mp4", options=options) as container:
        stream = container.add_stream(
            "libx264", rate=25, options={"crf": "16", "preset": "veryfast", "sc_threshold": "0", "bf": "0"}
        )
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        stream.codec_context.gop_size = gop
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def resized(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.stack([np.asarray(Image.fromarray(f).resize((size[1], size[0]), Image.BILINEAR)) for f in frames])


def nearest_source(decoded: np.ndarray, sources: np.ndarray) -> list[int]:
    """For each decoded frame, the index of the source frame it is closest to."""
    diff = decoded[:, None].astype(np.int32) - sources[None].astype(np.int32)
    return np.argmin((diff**2).mean(axis=(2, 3, 4)), axis=1).tolist()


@pytest.fixture(scope="module")
def source() -> np.ndarray:
    return make_frames(40)


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory, source: np.ndarray) -> Path:
    """40 frames, keyframes every 8."""
    return encode(tmp_path_factory.mktemp("v") / "gop8.mp4", source, gop=8)


def test_local_video_properties_and_pixels(video: Path, source: np.ndarray) -> None:
    with VideoDecoder(str(video)) as decoder:
        assert (decoder.num_frames, decoder.height, decoder.width) == (40, HEIGHT, WIDTH)
        assert decoder.fps == pytest.approx(25.0)
        assert decoder.keyframes == [0, 8, 16, 24, 32]
        frames = decoder.get(np.arange(40))
    assert frames.shape == (40, HEIGHT, WIDTH, 3) and frames.dtype == np.uint8
    assert min(psnr(frames[i], source[i]) for i in range(40)) > 30
    assert nearest_source(frames, source) == list(range(40))


def test_get_any_order_with_repeats_and_resize(video: Path, source: np.ndarray) -> None:
    order = [30, 3, 3, 17, 0, 39]
    with VideoDecoder(f"file://{video}") as decoder:
        frames = decoder.get(order, (24, 32))
        assert decoder.counters.delivered[[3, 30, 17, 0, 39]].tolist() == [1, 1, 1, 1, 1]  # repeats decoded once
    assert frames.shape == (6, 24, 32, 3)
    assert nearest_source(frames, resized(source, (24, 32))) == order
    assert min(psnr(f, s) for f, s in zip(frames, resized(source[order], (24, 32)), strict=True)) > 25


def test_uniform_low_resolution_set(video: Path, source: np.ndarray) -> None:
    with VideoDecoder(str(video)) as decoder:
        chunk = decoder.uniform(8, (12, 16))
    assert chunk.indices.tolist() == [2, 7, 12, 17, 22, 27, 32, 37]
    assert chunk.frames.shape == (8, 12, 16, 3)
    assert nearest_source(chunk.frames, resized(source, (12, 16))) == chunk.indices.tolist()


@pytest.mark.parametrize("chunk_size", [5, 8, 16])
def test_streams_forward_and_backward(video: Path, chunk_size: int) -> None:
    bare = decord.VideoReader(str(video), width=32, height=24).get_batch(list(range(40))).asnumpy()
    with VideoDecoder(str(video)) as decoder:
        forward = list(decoder.stream(20, "forward", (24, 32), chunk_size))
        backward = list(decoder.stream(19, "backward", (24, 32), chunk_size))
        counters = decoder.counters
        forward_order = np.concatenate([c.indices for c in forward]).tolist()
        backward_order = np.concatenate([c.indices for c in backward]).tolist()
        assert forward_order == list(range(20, 40))
        assert backward_order == list(range(19, -1, -1))
        for chunk in forward + backward:
            assert 1 <= len(chunk.indices) <= chunk_size
            assert np.array_equal(chunk.frames, bare[chunk.indices])
        # each frame decoded once by the two streams, whatever the GOP vs chunk size, except that the
        # forward stream starts by decoding from keyframe 16 up to its first frame 20
        assert counters.codec.tolist() == [1] * 16 + [2] * 4 + [1] * 20
        assert counters.delivered.tolist() == [1] * 40
        # chunk 5 < GOP 8: chunk 19..16 ends on keyframe 16, the GOPs 8..15 and 0..7 go through the spill
        assert counters.spilled_frames == (0 if chunk_size >= 8 else 16)


def test_backward_stream_with_tiny_spill_budget_decodes_again_but_stays_correct(tmp_path: Path) -> None:
    frames = make_frames(24)
    path = encode(tmp_path / "onegop.mp4", frames, gop=250)
    config = DecoderConfig(max_spill_bytes=1)  # spill windows of one chunk
    with VideoDecoder(str(path), config=config) as decoder:
        assert decoder.keyframes == [0]
        chunks = list(decoder.stream(23, "backward", None, 6))
        assert [c.indices.tolist()[0] for c in chunks] == [23, 17, 11, 5]
        assert nearest_source(np.concatenate([c.frames for c in chunks]), frames) == list(range(23, -1, -1))
        # windows [18,24), [12,18), [6,12), [0,6) each decode from keyframe 0
        assert decoder.counters.codec.tolist() == [4] * 6 + [3] * 6 + [2] * 6 + [1] * 6


def test_codec_count_follows_decord_seek_rule(video: Path) -> None:
    with VideoDecoder(str(video)) as decoder:
        decoder.get([11], (24, 32))  # seek to keyframe 8, decode 8..11
        decoder.get([13], (24, 32))  # same GOP, ahead: decode 12..13
        decoder.get([10], (24, 32))  # behind: back to keyframe 8, decode 8..10
        decoder.get([30], (24, 32))  # later GOP: keyframe 24, decode 24..30
        expected = np.zeros(40, dtype=int)
        expected[8:12] += 1
        expected[12:14] += 1
        expected[8:11] += 1
        expected[24:31] += 1
        assert decoder.counters.codec.tolist() == expected.tolist()
        assert decoder.counters.summary()["codec_frames"] == int(expected.sum())


def test_from_s3(s3, source: np.ndarray) -> None:
    uri = s3.uri("videos/clip one.mp4")
    write_mp4(iter(source[:12]), uri, fps=10, storage_options=s3.storage_options)
    with VideoDecoder(uri, s3.storage_options) as decoder:
        scratch = decoder._scratch
        assert os.path.exists(os.path.join(scratch, "video"))
        assert (decoder.num_frames, decoder.height, decoder.width) == (12, HEIGHT, WIDTH)
        assert decoder.fps == pytest.approx(10.0)
        assert decoder.counters.bytes_fetched == s3.filesystem().size(uri)
        frames = decoder.get([11, 0, 5])
    assert not os.path.exists(scratch)
    assert nearest_source(frames, source[:12]) == [11, 0, 5]
    assert min(psnr(f, s) for f, s in zip(frames, source[[11, 0, 5]], strict=True)) > 30


def test_one_frame_video_is_allowed(tmp_path: Path) -> None:
    frames = make_frames(1)
    with VideoDecoder(str(encode(tmp_path / "one.mp4", frames))) as decoder:
        assert decoder.num_frames == 1
        assert decoder.uniform(16, (24, 32)).indices.tolist() == [0]
        assert [c.indices.tolist() for c in decoder.stream(0, "backward", None, 4)] == [[0]]
        assert psnr(decoder.get([0])[0], frames[0]) > 30


def test_odd_dimensions_and_odd_output_size(tmp_path: Path) -> None:
    frames = make_frames(6, 47, 63)
    path = encode(tmp_path / "odd.mp4", frames, pix_fmt="yuv444p")
    with VideoDecoder(str(path)) as decoder:
        assert (decoder.height, decoder.width) == (47, 63)
        native = decoder.get([0, 5])
        small = decoder.get([5], (17, 33))
    assert native.shape == (2, 47, 63, 3) and small.shape == (1, 17, 33, 3)
    assert psnr(native[1], frames[5]) > 30


def test_large_resolution_is_downscaled_while_decoding(tmp_path: Path) -> None:
    frames = make_frames(2, 1080, 1920)
    path = encode(tmp_path / "big.mp4", frames)
    with VideoDecoder(str(path), config=DecoderConfig(max_side=480)) as decoder:
        assert (decoder.height, decoder.width) == (1080, 1920)
        out = decoder.get([0, 1])
    assert out.shape == (2, 270, 480, 3)
    assert psnr(out[1], resized(frames[1:], (270, 480))[0]) > 25


def _expect(kind: str, uri: str, storage_options: dict | None = None) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        VideoDecoder(uri, storage_options)
    assert info.value.kind == kind, str(info.value)
    assert info.value.uri == uri
    return info.value


def test_error_kinds_local(tmp_path: Path, video: Path) -> None:
    _expect("missing", str(tmp_path / "nope.mp4"))
    (tmp_path / "zero.mp4").write_bytes(b"")
    _expect("empty", str(tmp_path / "zero.mp4"))
    (tmp_path / "text.mp4").write_bytes(b"this is not a video at all\n" * 50)
    _expect("not_video", str(tmp_path / "text.mp4"))
    _expect("not_video", str(tmp_path))  # a directory

    data = video.read_bytes()  # index (moov) at the end: cut before it
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    _expect("truncated", str(tmp_path / "cut.mp4"))

    fast = encode(tmp_path / "fast.mp4", make_frames(40), gop=8, faststart=True).read_bytes()
    moov, mdat = fast.find(b"moov"), fast.find(b"mdat")
    assert 0 < moov < mdat  # index first, then the packets
    (tmp_path / "cut_fast.mp4").write_bytes(fast[: (mdat + len(fast)) // 2])
    _expect("truncated", str(tmp_path / "cut_fast.mp4"))

    garbage = bytearray(fast)
    rng = np.random.default_rng(0)
    garbage[mdat + 8 :] = rng.integers(0, 256, len(fast) - mdat - 8, dtype=np.uint8).tobytes()
    (tmp_path / "garbage.mp4").write_bytes(bytes(garbage))
    _expect("no_frames", str(tmp_path / "garbage.mp4"))

    audio = tmp_path / "audio.m4a"
    with av.open(str(audio), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    assert "no video stream" in str(_expect("not_video", str(audio)))


def test_error_kinds_s3(s3) -> None:
    _expect("missing", s3.uri("no/such.mp4"), s3.storage_options)
    _expect("unreadable", "s3://bucket-that-does-not-exist/x.mp4", s3.storage_options)
    s3.filesystem().pipe_file(s3.uri("zero.mp4"), b"")
    _expect("empty", s3.uri("zero.mp4"), s3.storage_options)
    s3.filesystem().pipe_file(s3.uri("junk.mp4"), b"\x00\x01junk" * 100)
    _expect("not_video", s3.uri("junk.mp4"), s3.storage_options)


def test_decode_error_survives_pickling_and_hides_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sekrit-value")
    error = DecodeError("s3://b/sekrit-value.mp4", "truncated", "cut short")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.uri, copy.kind, copy.message) == ("s3://b/***.mp4", "truncated", "cut short")
    assert "sekrit" not in str(copy)
    with pytest.raises(ValueError):
        DecodeError("x", "bogus", "m")  # type: ignore[arg-type]


def test_bad_requests(video: Path) -> None:
    with VideoDecoder(str(video)) as decoder:
        with pytest.raises(IndexError, match="40"):
            decoder.get([0, 40])
        with pytest.raises(ValueError):
            decoder.get([])
        with pytest.raises(ValueError):
            decoder.get([0], (0, 10))
        with pytest.raises(ValueError):
            list(decoder.stream(0, "forward", None, DecoderConfig().max_chunk_frames + 1))
        with pytest.raises(ValueError):
            list(decoder.stream(5, "backward", None, 4, stop=9))
        with pytest.raises(ValueError):
            list(decoder.stream(5, "sideways", None, 4))  # type: ignore[arg-type]


@given(st.integers(1, 5000), st.integers(1, 300))
def test_uniform_indices_are_sorted_distinct_and_in_range(num_frames: int, count: int) -> None:
    indices = uniform_indices(num_frames, count)
    assert len(indices) == min(num_frames, count)
    assert np.all(np.diff(indices) > 0) and indices[0] >= 0 and indices[-1] < num_frames


def test_fit_within() -> None:
    assert fit_within(1080, 1920, 480) == (270, 480)
    assert fit_within(47, 63, 2048) == (47, 63)
    assert fit_within(1, 5000, 100) == (1, 100)
