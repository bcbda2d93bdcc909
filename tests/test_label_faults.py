"""``vrseg label`` end to end under storage faults and on bad videos not covered by ``test_label.py``
(issue 5 "Reliability"): real Ray, real moto S3 (behind the fault-injecting proxy), the tiny model.

- Storage faults: the whole run (manifest, videos, outputs) goes through ``tests/fault_proxy.py`` failing
  ~10% of requests: nothing fails, nothing is lost or doubled, the masks equal the fault-free reference
  (the single-process engine's masks, which ``test_label.py`` shows a fault-free run reproduces).
- Bad videos in one run next to good ones: 0 decodable frames (an mp4 whose packets are zeros or
  garbage), a 4000x3000 video (3 frames) and a truly odd-sized 63x47 video (H.264 High 4:4:4, which has
  no chroma subsampling and so accepts odd sizes; the yuv420p padding of ``write_mp4`` is covered by
  ``test_label.py``'s ``one_frame``). Each ends as correct outputs or one clear error row; the good
  videos' masks are unchanged.
"""

from __future__ import annotations

import io
import struct
import threading
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest
from fault_proxy import FaultyS3, faulty_s3
from label_corpus import (
    engine_masks,
    engine_masks_of,
    label_config,
    read_masks,
    upload_corpus,
    write_manifest,
)
from label_runs import assert_every_expression_once

from actors import rle as rle_codec
from pipelines.label import ERRORS_FILE, InputSpec, label
from pipelines.storage import OutputStore
from pipelines.video_io import write_mp4

__all__ = ["faulty_s3"]  # the fixture, imported for pytest

pytestmark = pytest.mark.e2e

HUGE = (3000, 4000)  # height, width
ODD = (47, 63)
PEAK_RSS_LIMIT = 2 << 30  # bytes, any one Ray process of the run (the model workers hold torch + the tiny model)


# ---------------------------------------------------------------------------------------- storage faults
@pytest.mark.parametrize("faulty_s3", [{"rate": 0.1, "seed": 11}], indirect=True)
def test_label_through_a_faulty_object_store_loses_nothing(faulty_s3: FaultyS3, ray_local: None) -> None:
    """Manifest, videos and outputs all on S3 behind the proxy (the actors get its ``storage_options``
    through the label config): every video done, every (video, expression) once, masks as without faults."""
    direct = faulty_s3.direct
    rows = upload_corpus(direct)
    manifest, output = write_manifest(direct, rows), faulty_s3.uri("out")
    config, model = label_config(faulty_s3)
    assert config.storage_options["client_kwargs"]["endpoint_url"] == faulty_s3.proxy.url

    result = label(InputSpec(manifest=manifest), output, config, model, progress=False)

    stats = faulty_s3.proxy.stats()
    assert (result.done, result.failed, result.errors) == (len(rows), 0, [])
    assert stats.total_faults > 0, stats
    # the writer actors went through the proxy: one masks file, one tracks file and one marker per video, plus the
    # driver's errors.parquet and run.json (a PUT the proxy failed before forwarding is sent again)
    assert stats.requests_by_method.get("PUT", 0) >= 3 * len(rows) + 2, stats
    store = OutputStore(output, direct.storage_options)
    assert sorted(store.committed()) == sorted(r["video_id"] for r in rows)
    assert pq.read_table(io.BytesIO(store.read_bytes(ERRORS_FILE))).num_rows == 0
    assert_every_expression_once(direct, output)  # the fault-free reference: the engine in one process


# ---------------------------------------------------------------------------------------- bad videos
def _mp4_boxes(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    """Top-level ISO BMFF boxes of ``data``: (type, payload start, payload end)."""
    offset = 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", data[offset + 8 : offset + 16])[0], 16
        elif size == 0:
            size = len(data) - offset
        yield kind, offset + header, offset + size
        offset += size


def _without_decodable_frames(good: bytes, fill: str) -> bytes:
    """``good`` with every byte of its coded frames (the ``mdat`` payload) replaced by zeros or seeded noise:
    the container, its index and the codec parameters (in ``moov``) are intact, no frame decodes."""
    data = bytearray(good)
    (start, end), = [(s, e) for kind, s, e in _mp4_boxes(good) if kind == b"mdat"]
    noise = np.random.default_rng(3).integers(0, 256, end - start, dtype=np.uint8).tobytes()
    data[start:end] = bytes(end - start) if fill == "zeros" else noise
    return bytes(data)


def _box_frames(count: int, height: int, width: int) -> Iterator[np.ndarray]:
    """Frames with a red box moving right on a dark background (so tracking has something to follow)."""
    for i in range(count):
        frame = np.full((height, width, 3), 40, np.uint8)
        top, left = height // 4, width // 5 + i * max(1, width // 40)
        frame[top : top + height // 2, left : left + width // 3] = (210, 40, 40)
        yield frame


def _odd_sized_mp4(path: Path, count: int, height: int, width: int) -> None:
    """H.264 High 4:4:4 (``yuv444p``): full-resolution chroma, so the coded size is the odd size itself."""
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(8), options={"crf": "18", "preset": "veryfast"})
        stream.height, stream.width, stream.pix_fmt = height, width, "yuv444p"
        for frame in _box_frames(count, height, width):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    with av.open(str(path)) as check:
        context = check.streams.video[0].codec_context
        assert (context.height, context.width, context.pix_fmt) == (height, width, "yuv444p")


class PeakRSS:
    """The peak resident set (``VmHWM``) of each of this process' descendants (the Ray workers, which
    do the decoding), sampled every ``interval`` seconds while the ``with`` block runs."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.peaks: dict[tuple[int, str], int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _sample(self) -> None:
        for process in psutil.Process().children(recursive=True):
            try:
                status = Path(f"/proc/{process.pid}/status").read_text()
                name = " ".join(process.cmdline())[:80]
            except (OSError, psutil.Error):
                continue
            kib = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)
            self.peaks[(process.pid, name)] = max(self.peaks.get((process.pid, name), 0), kib * 1024)

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> PeakRSS:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def largest(self, count: int) -> list[tuple[int, str]]:
        """The ``count`` largest peaks, largest first: (bytes, command line)."""
        return sorted(((peak, name) for (_, name), peak in self.peaks.items()), reverse=True)[:count]


def _stored_sizes(store: OutputStore, video_id: str) -> set[tuple[int, int]]:
    """The (height, width) columns of a committed video's masks file."""
    record = store.commit_record(video_id)
    assert record is not None, f"{video_id} is not committed"
    (path,) = [f.path for f in record.files if f.path.startswith("masks/")]
    table = pq.read_table(io.BytesIO(store.read_bytes(path)), columns=["height", "width"]).to_pydict()
    return set(zip(table["height"], table["width"], strict=True))


def test_undecodable_huge_and_odd_sized_videos_next_to_good_ones(s3, ray_local: None, tmp_path: Path,  # noqa: ANN001
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    rows = upload_corpus(s3)[:2]
    fs = s3.filesystem()
    good = tmp_path / "good.mp4"
    write_mp4(_box_frames(6, 48, 64), str(good), 8.0)
    for fill in ("zeros", "noise"):
        fs.pipe(s3.uri(f"bad/{fill}.mp4").removeprefix("s3://"), _without_decodable_frames(good.read_bytes(), fill))
    huge = write_mp4(_box_frames(3, *HUGE), str(tmp_path / "huge.mp4"), 8.0, preset="ultrafast")
    assert (huge.encoded_height, huge.encoded_width) == HUGE
    _odd_sized_mp4(tmp_path / "odd.mp4", 5, *ODD)
    for name in ("huge", "odd"):
        fs.put_file(str(tmp_path / f"{name}.mp4"), s3.uri(f"bad/{name}.mp4").removeprefix("s3://"))
    expressions = [{"expr_id": "box", "text": "the red box"}, {"expr_id": "bg", "text": "the dark background"}]
    bad = [{"video_id": name, "video_uri": s3.uri(f"bad/{name}.mp4"), "expressions": expressions}
           for name in ("zeros", "noise", "huge", "odd")]
    manifest, output = write_manifest(s3, [rows[0], *bad, rows[1]]), s3.uri("out")
    config, model = label_config(s3)

    with PeakRSS() as memory:
        result = label(InputSpec(manifest=manifest), output, config, model, progress=False)

    # the undecodable videos: one error row each, naming the decode stage, the kind and the video's URI
    assert (result.done, result.failed) == (4, 2)
    errors = {e["video_id"]: e for e in result.errors}
    assert sorted(errors) == ["noise", "zeros"] and len(result.errors) == 2
    for name, error in errors.items():
        assert (error["expr_id"], error["stage"], error["kind"]) == (None, "decode", "no_frames"), error
        assert s3.uri(f"bad/{name}.mp4") in error["message"] and "no decodable frames" in error["message"], error

    # every video decoded: its masks exactly as the engine labels it alone in this process, one per frame, at
    # the video's own size (the stored RLE counts, height and width columns and commit record agree)
    masks = read_masks(s3, output)
    reference = {k: v for k, v in engine_masks().items() if k[0] in (rows[0]["video_id"], rows[1]["video_id"])}
    reference |= engine_masks_of([(name, tmp_path / f"{name}.mp4", expressions) for name in ("huge", "odd")])
    assert set(masks) == set(reference)
    for key, counts in reference.items():
        assert masks[key] == list(enumerate(counts)), key
    store = OutputStore(output, s3.storage_options)
    for video_id, (height, width), num_frames in (("huge", HUGE, 3), ("odd", ODD, 5)):
        extra = store.commit_record(video_id).extra
        assert (extra["num_frames"], extra["height"], extra["width"]) == (num_frames, height, width)
        assert _stored_sizes(store, video_id) == {(height, width)}
        for expression in expressions:
            (_, counts), *_ = masks[(video_id, expression["expr_id"])]
            assert rle_codec.decode({"size": [height, width], "counts": counts}, (height, width)).shape == (height, width)

    # the 4000x3000 video is decoded at the small sizes the stages ask for, never whole at full size
    largest = memory.largest(3)
    with capsys.disabled():
        print("\npeak RSS of the run's largest Ray processes:",
              "; ".join(f"{peak / 2**20:.0f} MiB {name[:50]}" for peak, name in largest))
    assert largest[0][0] < PEAK_RSS_LIMIT, largest
