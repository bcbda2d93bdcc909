"""``vrseg report --labels``: a labeling output written through the labeler's own writers (masks, tracks, commit
markers, the run's ``ErrorLog`` and ``run.json``), a real mp4 named by the run's manifest, then the QA report and
the review list checked for their values: order, scores and reasons of hand-made tracks (a no-target one among
them), counts matching the output, a page with nothing outside it, frames of the video under the strips, and a
bad ``--labels`` refused with exit status 2."""

from __future__ import annotations

import argparse
import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from label_outputs import box_masks, write_video
from PIL import Image

from actors.track_calibration import TrackCalibration
from actors.track_confidence import FEATURE_NAMES
from pipelines.cli import SUBCOMMAND_MODULES
from pipelines.error_log import ErrorLog
from pipelines.label_report import REPORT_FILE, REVIEW_FILE, LabelReportConfig, register, write_label_report
from pipelines.storage import RUN_RECORD, OutputStore
from pipelines.video_io import write_mp4

FRAMES, HEIGHT, WIDTH = 6, 24, 32
VIDEO_RGB = (200, 180, 20)
ALL = dict.fromkeys(range(FRAMES), (4, 4, 12, 12))
# video id -> {expr_id: (text, masks, per-frame scores)}; "clip" is in the manifest (a real mp4), "b/flaky" is not.
VIDEOS = {
    "clip": {
        "good": ("the steady box", box_masks(FRAMES, HEIGHT, WIDTH, ALL), [0.9] * FRAMES),
        "gone": ("the cat that never comes", np.zeros((FRAMES, HEIGHT, WIDTH), dtype=bool), [0.2] * FRAMES),
    },
    "b/flaky": {
        "drops": ("the box that leaves", box_masks(FRAMES, HEIGHT, WIDTH, {0: (4, 4, 12, 12), 1: (4, 4, 12, 12)}),
                  [0.8] * FRAMES),
        "wobbly": ("the box that swells", box_masks(FRAMES, HEIGHT, WIDTH, {
            t: (0, 0, 1, 1) if t < FRAMES - 1 else (0, 0, HEIGHT, WIDTH) for t in range(FRAMES)}), [0.3] * FRAMES),
        "tie": ("the other steady box", box_masks(FRAMES, HEIGHT, WIDTH, ALL), [0.9] * FRAMES),
    },
}
# the review order by mean_track_score: 0.0 (no target), 0.3, 0.8, then 0.9 twice (tie: video id "b/flaky" first)
EXPECTED = [
    ("clip", "gone", 0.0, ["no_target", "low_confidence"]),
    ("b/flaky", "wobbly", 0.3, ["low_confidence", "unstable_area"]),
    ("b/flaky", "drops", 0.8, ["track_drops"]),
    ("b/flaky", "tie", 0.9, ["lowest_score"]),
]
ERRORS = [{"video_id": "broken", "expr_id": None, "stage": "decode", "kind": "not_video", "message": "not a video"},
          {"video_id": "m", "expr_id": "7", "stage": "input", "kind": "empty_expression", "message": "empty text"}]
# confidence = sigmoid(10 * mean_track_score - 5): the same order as the fallback
CALIBRATION = TrackCalibration(FEATURE_NAMES, tuple(10.0 if n == "track_mean" else 0.0 for n in FEATURE_NAMES), -5.0)


def vrseg(argv: list[str]) -> int:
    """``vrseg ARGV`` with only the report subcommand registered (the whole CLI imports Ray, torch and the models)."""
    parser = argparse.ArgumentParser(prog="vrseg")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def write_run_record(output: str, manifest: str) -> None:
    """``run.json`` as ``vrseg label`` writes it (``run_record``), naming the manifest."""
    from pipelines.label import LabelRun, run_record
    from pipelines.label_config import load_label_config

    config, model = load_label_config("configs/label/tiny.yaml", [])
    result = LabelRun(total=3, done=2, failed=1, expressions_done=5, frames_done=30, error_rows=2,
                      stage_seconds={"propagate": 4.0, "decode": 1.0}, wall_seconds=10.0)
    record = run_record(result, {"manifest": manifest}, output, config, model, ["vrseg", "label"])
    OutputStore(output).write_bytes(RUN_RECORD, json.dumps(record).encode())


def make_output(root: Path, calibration: TrackCalibration | None = None) -> str:
    """The labeling output of ``VIDEOS`` (with ``calibration``), its error rows, run record and manifest."""
    output = str(root / "labels")
    for video_id, expressions in VIDEOS.items():
        write_video(output, video_id, [f"{t:05d}" for t in range(FRAMES)],
                    {e: (text, masks) for e, (text, masks, _) in expressions.items()},
                    scores={e: scores for e, (_, _, scores) in expressions.items()}, calibration=calibration)
    errors = ErrorLog(output, None)
    errors.add(ERRORS)
    errors.close()
    video = str(root / "clip.mp4")
    write_mp4((np.full((HEIGHT, WIDTH, 3), VIDEO_RGB, dtype=np.uint8) for _ in range(FRAMES)), video, 10.0)
    manifest = root / "manifest.jsonl"
    manifest.write_text(json.dumps({"video_id": "clip", "video_uri": video, "expressions": [
        {"expr_id": e, "text": text} for e, (text, _, _) in VIDEOS["clip"].items()]}) + "\n")
    write_run_record(output, str(manifest))
    return output


@pytest.fixture(scope="module")
def labels(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_output(tmp_path_factory.mktemp("uncalibrated"))


def review_lines(folder: str) -> list[dict]:
    return [json.loads(line) for line in (Path(folder) / REVIEW_FILE).read_text().splitlines()]


def test_report_is_a_vrseg_subcommand():
    assert "pipelines.label_report" in SUBCOMMAND_MODULES


def test_review_list_is_the_lowest_tracks_first_with_their_reasons(labels, capsys):
    assert vrseg(["report", "--labels", labels, "--review", "4"]) == 0
    assert "4 tracks to review (uncalibrated mean_track_score)" in capsys.readouterr().out

    lines = review_lines(labels)
    assert len(lines) == 4
    assert [(i["video"], i["expr_id"], i["reasons"]) for i in lines] == [(v, e, r) for v, e, _, r in EXPECTED]
    assert [i["score"] for i in lines] == pytest.approx([s for _, _, s, _ in EXPECTED])
    assert [i["reason"] for i in lines] == ["no_target", "low_confidence", "track_drops", "lowest_score"]
    assert {i["score_kind"] for i in lines} == {"mean_track_score"}
    assert all(i["confidence"] is None for i in lines)
    assert lines[0]["expression"] == "the cat that never comes"


def test_report_page_is_self_contained_and_counts_the_output(labels):
    write_label_report(labels, review=3)
    page = (Path(labels) / REPORT_FILE).read_text()

    links = re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]*)['"]""", page)
    assert links and all(link.startswith("data:") for link in links)
    counts = dict(re.findall(r"<tr><th>([^<]+)</th><td class='headline'>(\d+)</td></tr>", page))
    assert counts == {"videos committed": "2", "expressions": "5", "frames": "12",
                      "masks (frames x expressions)": "30", "no-target expressions": "1", "failure rows": "2"}
    assert "<td>not_video</td><td>1</td><td>not a video</td>" in page
    assert "<td>empty_expression</td><td>1</td>" in page
    assert "<td>videos / s</td><td>0.200</td>" in page and "<td>propagate</td><td>4.000</td>" in page
    assert "Uncalibrated fallback score" in page and "5 of 5 tracks have no <code>confidence</code>" in page
    manifest = json.loads((Path(labels) / RUN_RECORD).read_text())["inputs"]["manifest"]
    # b/flaky is not in the manifest
    assert f"video location unknown (video not in the labeling manifest {manifest}): masks only" in page
    assert len(review_lines(labels)) == 3


def strip_images(page: str, video: str, expr_id: str) -> list[np.ndarray]:
    """The panels of the strip of (video, expr_id) in ``page``."""
    section = page.split(f"<h3>{video} / {expr_id} — ")[1].split("</div>")[0]
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(data))))
            for data in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", section)]


def test_strips_paint_masks_on_the_manifests_video(labels):
    write_label_report(labels, review=4)
    page = (Path(labels) / REPORT_FILE).read_text()

    gone = strip_images(page, "clip", "gone")  # no target: every panel is the video frame, nothing painted
    assert len(gone) == 4  # strip_frames: frames 0, 2, 3, 5
    for panel in gone:
        assert np.abs(panel.reshape(-1, 3).mean(axis=0) - VIDEO_RGB).max() < 12
    assert "frame 5 (absent)" in page.split("<h3>clip / gone")[1]
    drops = strip_images(page, "b/flaky", "drops")[0]  # frame 0, masks only: grey with the box painted
    scale = drops.shape[0] // HEIGHT
    assert tuple(drops[0, 0]) == (110, 110, 110)
    assert tuple(drops[6 * scale, 6 * scale]) != (110, 110, 110)


def test_calibrated_confidence_ranks_the_review_and_the_histogram(tmp_path):
    output = make_output(tmp_path, CALIBRATION)
    out = str(tmp_path / "qa")
    summary = write_label_report(output, out, review=5)

    assert summary.score_kind == "confidence" and summary.items == 5
    lines = review_lines(out)
    expected = [1 / (1 + np.exp(-(10 * s - 5))) for s in (0.0, 0.3, 0.8, 0.9, 0.9)]
    assert [i["confidence"] for i in lines] == pytest.approx(expected)
    assert [i["score"] for i in lines] == [i["confidence"] for i in lines]
    assert [(i["video"], i["expr_id"]) for i in lines] == [(v, e) for v, e, _, _ in EXPECTED] + [("clip", "good")]
    assert lines[2]["reasons"] == ["track_drops"]  # confidence 0.95: no longer low
    page = (Path(out) / REPORT_FILE).read_text()
    assert "Track confidence" in page and "Uncalibrated" not in page
    assert not (Path(output) / REPORT_FILE).exists()


def test_a_bad_labels_uri_is_one_line_naming_it_with_status_2(tmp_path, capsys):
    missing = str(tmp_path / "nowhere")
    assert vrseg(["report", "--labels", missing]) == 2
    error = capsys.readouterr().err
    assert error.startswith("vrseg report: ") and missing in error and "no such labeling output" in error

    uncommitted = str(tmp_path / "crashed")
    write_video(uncommitted, "v", ["00000"], {"0": ("half written", np.ones((1, 4, 4), dtype=bool))}, commit=False)
    assert vrseg(["report", "--labels", uncommitted]) == 2
    error = capsys.readouterr().err
    assert uncommitted in error and "no commit markers" in error and len(error.splitlines()) == 1
    assert not (Path(uncommitted) / REPORT_FILE).exists()


def test_label_with_report_writes_it_into_the_output_or_says_why_not(tmp_path):
    from pipelines.label import register as register_label
    from pipelines.label import report_line

    parser = argparse.ArgumentParser(prog="vrseg")
    register_label(parser.add_subparsers(dest="command", required=True))
    assert parser.parse_args(["label", "--manifest", "m.jsonl", "--output", "out", "--report"]).report

    output = make_output(tmp_path)
    assert report_line(output, {}) == (f"vrseg label: QA report {output}/{REPORT_FILE}, review list "
                                       f"{output}/{REVIEW_FILE}")
    assert len(review_lines(output)) == 5  # vrseg report's default N (100) keeps every track
    empty = tmp_path / "nothing committed"
    empty.mkdir()
    assert report_line(str(empty), {}).startswith(f"vrseg label: no QA report: file {empty}: not a labeling output")


def test_an_output_without_run_record_errors_or_manifest_says_so(tmp_path):
    output = str(tmp_path / "bare")
    write_video(output, "solo", ["00000", "00001", "00002"], {"0": ("a box", box_masks(3, 8, 8, {0: (1, 1, 4, 4)}))})
    write_label_report(output, review=1)
    page = (Path(output) / REPORT_FILE).read_text()

    assert "No <code>run.json</code> in this output." in page
    assert "No <code>errors/errors.parquet</code> in this output." in page
    assert "video location unknown (no labeling manifest (run.json names none; give --manifest)): masks only" in page
    assert [(i["video"], i["reasons"]) for i in review_lines(output)] == [("solo", ["track_drops"])]


def test_report_of_an_output_in_s3(tmp_path, s3, capsys):
    local = make_output(tmp_path)
    s3.filesystem().put(local, s3.uri("runs", "labels").removeprefix("s3://"), recursive=True)
    labels = s3.uri("runs", "labels")

    summary = write_label_report(labels, review=2, config=LabelReportConfig(storage_options=s3.storage_options))
    fs = s3.filesystem()
    assert summary.report == f"{labels}/{REPORT_FILE}" and fs.exists(summary.report.removeprefix("s3://"))
    lines = [json.loads(line) for line in fs.cat(summary.review.removeprefix("s3://")).decode().splitlines()]
    assert [(i["video"], i["expr_id"]) for i in lines] == [(v, e) for v, e, _, _ in EXPECTED[:2]]

    capsys.readouterr()
    assert vrseg(["report", "--labels", s3.uri("runs", "nothing")]) == 2
    assert f"file {s3.uri('runs', 'nothing')}: no such labeling output" in capsys.readouterr().err
