"""Charades-STA (write + read back, local and S3) and ActivityNet Captions, with every malformed input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.formats.model import FormatError, Moment
from pipelines.formats.moments import read_activitynet, read_charades_sta, write_charades_sta

MOMENTS = [
    Moment(0, "3MSZA", "person turn a light on.", 24.3, 30.4),
    Moment(1, "3MSZA", "person opens the door", 0.0, 6.9),
    Moment(2, "AO8RW", "a person is putting a book on a shelf", 1 / 3, 7.123456789),
]


def test_charades_round_trip_local(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "charades_sta_test.txt"
    write_charades_sta(MOMENTS, str(target))
    assert target.read_text().splitlines()[0] == "3MSZA 24.3 30.4##person turn a light on."
    dataset = read_charades_sta(str(target))
    assert dataset.format == "charades-sta"
    assert dataset.moments == MOMENTS  # exact floats, ids = line indices


def test_charades_round_trip_s3(s3) -> None:
    write_charades_sta(MOMENTS, s3.uri("sta/test.txt"), s3.storage_options)
    assert read_charades_sta(s3.uri("sta/test.txt"), s3.storage_options).moments == MOMENTS


def test_charades_writer_rejects_unwritable_moments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="moment 0 has query_id 4"):
        write_charades_sta([Moment(4, "v", "x", 0, 1)], str(tmp_path / "a.txt"))
    with pytest.raises(ValueError, match="video id 'a b' cannot be written"):
        write_charades_sta([Moment(0, "a b", "x", 0, 1)], str(tmp_path / "b.txt"))
    with pytest.raises(ValueError, match="sentence contains a line break"):
        write_charades_sta([Moment(0, "v", "x\ny", 0, 1)], str(tmp_path / "c.txt"))


@pytest.mark.parametrize(("line", "video", "message"), [
    ("3MSZA 24.3 30.4 person turns", "3MSZA", "expected '<video> <start> <end>##<sentence>'"),
    ("3MSZA 24.3##person turns", "3MSZA", "expected '<video> <start> <end>##<sentence>'"),
    ("3MSZA 24.3 abc##person turns", "3MSZA", "start/end must be numbers, got '24.3' 'abc'"),
    ("3MSZA 30.0 20.0##person turns", "3MSZA", "need 0 <= start <= end, got start 30.0 end 20.0"),
    ("", None, "expected '<video> <start> <end>##<sentence>'"),
])
def test_charades_malformed_line(tmp_path: Path, line: str, video: str | None, message: str) -> None:
    path = tmp_path / "sta.txt"
    path.write_text(f"AO8RW 0.0 6.9##ok\n{line}\nAO8RW 1 2##ok\n\n")
    with pytest.raises(FormatError) as info:
        read_charades_sta(str(path))
    assert (info.value.file, info.value.video, info.value.key) == (str(path), video, "line 2")
    assert message in str(info.value) and "key 'line 2'" in str(info.value)


def test_charades_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match=f"file {tmp_path}/none.txt: file not found"):
        read_charades_sta(str(tmp_path / "none.txt"))


ANET = {
    "v_QOlSCBRmfWY": {"duration": 82.73, "timestamps": [[0.83, 19.86], [17.37, 60.81]],
                      "sentences": ["  A young woman is seen standing in a room. ", "She then begins to dance."]},
    "v_ehGHCYKzyZ8": {"duration": 61.72, "timestamps": [[0, 61.72]], "sentences": ["A man plays a guitar."]},
}


def test_activitynet_reads_moments_in_file_order(tmp_path: Path) -> None:
    path = tmp_path / "val_1.json"
    path.write_text(json.dumps(ANET))
    dataset = read_activitynet(str(path))
    assert dataset.format == "activitynet"
    assert dataset.moments == [
        Moment(0, "v_QOlSCBRmfWY", "A young woman is seen standing in a room.", 0.83, 19.86, 82.73),
        Moment(1, "v_QOlSCBRmfWY", "She then begins to dance.", 17.37, 60.81, 82.73),
        Moment(2, "v_ehGHCYKzyZ8", "A man plays a guitar.", 0.0, 61.72, 61.72),
    ]


@pytest.mark.parametrize(("change", "key", "message"), [
    (lambda v: v.pop("duration"), "duration", "video has no 'duration'"),
    (lambda v: v.pop("sentences"), "sentences", "video has no 'sentences'"),
    (lambda v: v["sentences"].pop(), "timestamps", "2 timestamps for 1 sentences"),
    (lambda v: v["timestamps"].__setitem__(1, [3.0]), "timestamps[1]", "expected [start, end] in seconds"),
    (lambda v: v["timestamps"].__setitem__(0, [9.0, 2.0]), "timestamps[0]", "need 0 <= start <= end"),
    (lambda v: v["sentences"].__setitem__(0, 5), "sentences[0]", "expected str, got int"),
    (lambda v: v.update(duration="long"), "duration", "expected int/float, got str"),
])
def test_activitynet_malformed(tmp_path: Path, change, key: str, message: str) -> None:
    data = json.loads(json.dumps(ANET))
    change(data["v_QOlSCBRmfWY"])
    path = tmp_path / "val.json"
    path.write_text(json.dumps(data))
    with pytest.raises(FormatError) as info:
        read_activitynet(str(path))
    assert (info.value.file, info.value.video, info.value.key) == (str(path), "v_QOlSCBRmfWY", key)
    assert message in str(info.value)


def test_activitynet_bad_json(tmp_path: Path) -> None:
    path = tmp_path / "val.json"
    path.write_text('{"v_x": {"duration": 1,}}')
    with pytest.raises(FormatError, match=r"file .*val.json: not valid JSON \(line 1, column 24\)"):
        read_activitynet(str(path))
