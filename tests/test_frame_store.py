"""The decode-once frame store and the mask spool on real encoded videos (decord) and real files."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from actors.decode import DecoderConfig, VideoDecoder
from actors.frame_store import StoreFile, SweptFrames, frame_store, random_access_fallback
from actors.mask_spool import MaskSpool
from actors.scratch import remove_orphans

FRAMES, HEIGHT, WIDTH = 90, 48, 64


@pytest.fixture(scope="module")
def long_gop_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """90 frames of moving bars with one keyframe (x264 keyint 250): every random access decodes from 0."""
    path = tmp_path_factory.mktemp("store") / "long_gop.mp4"
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 60, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(25), options={"crf": "18", "sc_threshold": "0"})
        stream.height, stream.width, stream.pix_fmt = HEIGHT, WIDTH, "yuv420p"
        stream.codec_context.gop_size = 250
        for t in range(FRAMES):
            frame = noise.copy()
            frame[:, (t * 3) % WIDTH : (t * 3) % WIDTH + 6] = (250, 40 + t, 30)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def test_swept_frames_equal_random_access_and_decode_each_frame_once(long_gop_video: Path, tmp_path: Path) -> None:
    size = (40, 52)
    with VideoDecoder(str(long_gop_video)) as reference:
        assert reference.keyframes == [0]
        expected = reference.get(np.arange(FRAMES), size)
    file = StoreFile(str(tmp_path))
    with VideoDecoder(str(long_gop_video)) as decoder, frame_store(decoder, size, file) as store:
        assert isinstance(store, SweptFrames)
        np.testing.assert_array_equal(store.get([70, 3, 70, 0], size), expected[[70, 3, 70, 0]])
        backward = list(store.stream(89, "backward", size, 16))
        assert [len(c.indices) for c in backward] == [16] * 5 + [10]
        np.testing.assert_array_equal(np.concatenate([c.indices for c in backward]), np.arange(89, -1, -1))
        np.testing.assert_array_equal(np.concatenate([c.frames for c in backward]), expected[::-1])
        forward = list(store.stream(30, "forward", None, 25, stop=60))
        np.testing.assert_array_equal(np.concatenate([c.indices for c in forward]), np.arange(30, 61))
        np.testing.assert_array_equal(np.concatenate([c.frames for c in forward]), expected[30:61])
        assert forward[0].frames.flags.writeable
        # one codec decode per frame for all of that, where random access alone decoded from frame 0 each time
        assert decoder.counters.codec.tolist() == [1] * FRAMES
        with pytest.raises(ValueError, match=r"stored at \(40, 52\)"):
            store.get([0], (48, 64))
        with pytest.raises(IndexError, match="cannot stream forward from 50 to 10"):
            store.stream(50, "forward", size, 8, stop=10)
        with pytest.raises(IndexError, match=r"in \[0, 90\)"):
            store.get([90], size)
    # the worker's file is overwritten in place by the next video, and deleted when the worker closes it
    assert [p.name for p in tmp_path.iterdir()] == [Path(file.path).name]
    with VideoDecoder(str(long_gop_video)) as decoder, frame_store(decoder, (20, 26), file) as store:
        np.testing.assert_array_equal(store.get([5]), decoder.get([5], (20, 26)))
    assert Path(file.path).stat().st_size == FRAMES * 40 * 52 * 3  # the larger video's frames
    file.close()
    assert list(tmp_path.iterdir()) == []
    with VideoDecoder(str(long_gop_video), config=DecoderConfig(scratch_dir=str(tmp_path))) as decoder:
        with frame_store(decoder, size) as store:  # no worker file: a file of its own, deleted after
            assert len(list(tmp_path.glob("vrseg-sweep-*"))) == 1 and store.get([1]).shape == (1, 40, 52, 3)
        assert list(tmp_path.glob("vrseg-sweep-*")) == []


def test_store_file_closes_after_its_directory_was_removed(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    file = StoreFile(str(scratch))
    os.write(file.fd, b"frames")
    shutil.rmtree(scratch)  # e.g. a temporary directory cleaned up before the worker's file at exit
    file.close()
    file.close()


def test_store_over_budget_falls_back_to_the_decoder_and_says_so(long_gop_video: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    size = (40, 52)
    budget = FRAMES * 40 * 52 * 3 - 1
    with VideoDecoder(str(long_gop_video), config=DecoderConfig(max_store_bytes=budget)) as decoder:
        with caplog.at_level(logging.WARNING, logger="actors.frame_store"), frame_store(decoder, size) as store:
            assert store is decoder and random_access_fallback(store)
            store.get([10], size)
        assert int(decoder.counters.codec.sum()) == 11  # random access: decoded from the keyframe
    assert [r.getMessage() for r in caplog.records] == [
        f"{long_gop_video}: {FRAMES} frames at 52x40 need {budget + 1} bytes of frame store, above "
        f"decoder.max_store_bytes {budget}: read by random access instead (frames may be decoded several times)"]
    with VideoDecoder(str(long_gop_video)) as decoder, frame_store(decoder, size) as store:
        assert not random_access_fallback(store)


def test_mask_spool_returns_masks_sorted_whatever_the_arrival_order(tmp_path: Path) -> None:
    arrivals = [(1, 2, "c12", 0.5, True), (0, 1, "a1", 0.25, False), (1, 0, "c10", 0.75, True),
                (0, 0, "a0", 1.0, True), (1, 1, "c11", 0.125, False), (0, 2, "a2-old", 0.0, False),
                (0, 2, "a2", 0.5, True)]
    with MaskSpool(2, 3, str(tmp_path)) as spool:
        for expression, frame, counts, score, present in arrivals[:-1]:
            spool.put(expression, frame, counts, score, present)
        assert spool.missing(0) == [] and spool.missing(1) == []
        spool.put(*arrivals[-1])
        rows = [(m.expression, m.frame, m.counts, m.score, m.present) for m in spool.rows()]
        assert rows == [(0, 0, "a0", 1.0, True), (0, 1, "a1", 0.25, False), (0, 2, "a2", 0.5, True),
                        (1, 0, "c10", 0.75, True), (1, 1, "c11", 0.125, False), (1, 2, "c12", 0.5, True)]
        assert [m.counts for m in spool.rows(1)] == ["c10", "c11", "c12"]
        np.testing.assert_array_equal(spool.scores(0), np.array([1.0, 0.25, 0.5], dtype=np.float32))
        np.testing.assert_array_equal(spool.present(1), [True, False, True])
    assert list(tmp_path.iterdir()) == []


def test_mask_spool_names_missing_frames(tmp_path: Path) -> None:
    with MaskSpool(1, 4, str(tmp_path)) as spool:
        spool.put(0, 1, "x", 1.0, True)
        assert spool.missing(0) == [0, 2, 3]
        with pytest.raises(RuntimeError, match=r"expression 0 has no mask at frames \[0, 2, 3\]"):
            list(spool.rows())


def test_remove_orphans_deletes_only_what_dead_workers_left(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan_file = tmp_path / f"vrseg-sweep-{dead.pid}-abc.rgb"
    orphan_dir = tmp_path / f"vrseg-decode-{dead.pid}-xyz"
    orphan_file.write_bytes(b"frames")
    (orphan_dir / "video").parent.mkdir()
    (orphan_dir / "video").write_bytes(b"mp4")
    with MaskSpool(1, 2, str(tmp_path)):  # this live process's scratch entry
        mine = list(tmp_path.glob(f"vrseg-masks-{os.getpid()}-*"))
        unrelated = tmp_path / "vrseg-notes.txt"
        unrelated.write_text("not a scratch entry")
        removed = remove_orphans(str(tmp_path))
        assert sorted(removed) == sorted([str(orphan_file), str(orphan_dir)])
        assert len(mine) == 1 and mine[0].exists() and unrelated.exists()
        assert not orphan_file.exists() and not orphan_dir.exists()
