"""A poison video: one whose processing kills its worker every time (here: a real memory limit that an
8192 x 8192 video exceeds while being decoded) is tried ``max_attempts`` times, then becomes an error row
``worker_died``; every other video is labeled, exactly once (real Ray, real moto S3, real decord)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from label_corpus import engine_masks, label_config, read_masks, upload_corpus, write_manifest

from pipelines.attempts import WORKER_DIED, AttemptLedger
from pipelines.label import InputSpec, label
from pipelines.video_io import write_mp4

pytestmark = pytest.mark.e2e

POISON = (8192, 8192)  # height, width: decoding it takes ~300 MB above a decode actor's usual peak
DECODE_MEMORY_LIMIT = 400 << 20  # bytes: above a decode actor's peak on the corpus, below the poison video's


def _flat_frames(count: int, height: int, width: int) -> Iterator[np.ndarray]:
    for i in range(count):
        yield np.full((height, width, 3), 40 + 20 * i, np.uint8)


def test_a_video_that_kills_its_worker_becomes_an_error_row_after_max_attempts(s3, ray_local,  # noqa: ANN001
                                                                                tmp_path: Path) -> None:
    rows = upload_corpus(s3)[:2]
    write_mp4(_flat_frames(2, *POISON), str(tmp_path / "poison.mp4"), 8.0, preset="ultrafast")
    s3.filesystem().put_file(str(tmp_path / "poison.mp4"), s3.uri("bad/poison.mp4").removeprefix("s3://"))
    poison = {"video_id": "poison", "video_uri": s3.uri("bad/poison.mp4"),
              "expressions": [{"expr_id": "0", "text": "the grey frame"}]}
    manifest, output = write_manifest(s3, [rows[0], poison, rows[1]]), s3.uri("out")
    config, model = label_config(s3, [f"pools.decode.max_memory_bytes={DECODE_MEMORY_LIMIT}", "max_attempts=2"])

    result = label(InputSpec(manifest=manifest), output, config, model, progress=False)

    assert (result.done, result.failed) == (2, 1)
    (error,) = result.errors
    assert (error["video_id"], error["expr_id"], error["stage"], error["kind"]) == ("poison", None, "decode",
                                                                                   WORKER_DIED)
    assert error["message"].startswith("the decode worker died 2 times processing this video (max_attempts=2)")
    masks, reference = read_masks(s3, output), engine_masks()
    expected = {k: v for k, v in reference.items() if k[0] in (rows[0]["video_id"], rows[1]["video_id"])}
    assert set(masks) == set(expected)
    for key, counts in expected.items():
        assert masks[key] == list(enumerate(counts)), key


def test_ledger_counts_only_attempts_that_never_ended() -> None:
    ledger = AttemptLedger()
    assert [ledger.begin("decode/a"), ledger.begin("decode/a"), ledger.begin("mllm/a")] == [0, 1, 0]
    ledger.end("mllm/a")
    assert (ledger.begin("decode/a"), ledger.begin("mllm/a")) == (2, 0)
    ledger.end("decode/a")
    ledger.end("mllm/a")
    assert ledger.open == {}
