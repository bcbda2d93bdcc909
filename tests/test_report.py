"""report.json / report.html from score rows: structure, validation, HTML content, overlays, URIs."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from pipelines.report import (
    Failure,
    OverlayFrame,
    ReportError,
    build_report,
    overlay_panels,
    render_html,
    worst_rows,
    write_report,
)


def _refvos_report() -> dict:
    rows = [
        {"video": "v0", "expr_id": "0", "text": "the red square", "kind": "static", "J": 0.9, "F": 0.8, "J&F": 0.85},
        {"video": "v0", "expr_id": "1", "text": "the <b>circle</b> moving left", "kind": "motion",
         "J": 0.5, "F": 0.3, "J&F": 0.4},
        {"video": "v1", "expr_id": "0", "text": "the shape that appears last", "kind": "temporal",
         "J": 0.0, "F": 0.0, "J&F": 0.0, "missing": True},
    ]
    return build_report(
        "mevis",
        "refvos",
        {"J": 0.4666, "F": 0.3666, "J&F": 0.4166},
        rows,
        missing=[{"video": "v1", "expr_id": "0"}],
        subsets={"static": {"J": 0.9, "F": 0.8, "J&F": 0.85, "num_expressions": 1},
                 "motion": {"J": 0.5, "F": 0.3, "J&F": 0.4, "num_expressions": 1}},
    )


def test_build_report_holds_the_issue_keys():
    report = _refvos_report()
    assert report["J"] == pytest.approx(0.4666) and report["F"] == pytest.approx(0.3666)
    assert report["J&F"] == pytest.approx(0.4166)
    assert report["num_expressions"] == 3
    assert report["missing"] == [{"video": "v1", "expr_id": "0"}]
    assert set(report["subsets"]) == {"static", "motion"}
    assert report["subsets"]["motion"]["num_expressions"] == 1
    assert [r["expr_id"] for r in report["per_expression"]] == ["0", "1", "0"]
    json.dumps(report, allow_nan=False)


@pytest.mark.parametrize(
    ("headline", "message"),
    [
        ({"J": 0.5, "F": 0.5}, "lack"),
        ({"J": 50.0, "F": 0.5, "J&F": 0.5}, "not a fraction"),
        ({"J": float("nan"), "F": 0.5, "J&F": 0.5}, "not a fraction"),
        ({"J": "0.5", "F": 0.5, "J&F": 0.5}, "must be a number"),
    ],
)
def test_build_report_rejects_bad_headlines(headline, message):
    with pytest.raises(ReportError, match=message):
        build_report("mevis", "refvos", headline, [])


def test_build_report_rejects_bad_rows_and_tasks():
    with pytest.raises(ReportError, match="v0/3.*'J'.*fraction"):
        build_report("mevis", "refvos", {"J": 0.1, "F": 0.1, "J&F": 0.1},
                     [{"video": "v0", "expr_id": "3", "J": 1.5, "F": 0.1}])
    with pytest.raises(ReportError, match="lacks 'video'"):
        build_report("mevis", "refvos", {"J": 0.1, "F": 0.1, "J&F": 0.1}, [{"J": 0.1}])
    with pytest.raises(ReportError, match="unknown task"):
        build_report("mevis", "segmentation", {}, [])
    with pytest.raises(ReportError, match="not finite"):
        build_report("refdavis17", "refvos", {"J": 0.1, "F": 0.1, "J&F": 0.1}, [],
                     extra={"four_run": {"J": float("inf")}})


def test_worst_rows_orders_by_primary_score():
    report = _refvos_report()
    assert [(r["video"], r["expr_id"]) for r in worst_rows(report, 2)] == [("v1", "0"), ("v0", "1")]


def test_overlay_panels_tint_truth_left_prediction_right():
    truth = np.zeros((4, 6), dtype=bool)
    truth[1, 1] = True
    prediction = np.zeros((4, 6), dtype=bool)
    prediction[2, 4] = True
    panels = overlay_panels(OverlayFrame(0, truth, prediction))
    scale = 40  # ceil(160 / 4)
    gap = 2
    assert panels.shape == (4 * scale, (6 + gap + 6) * scale, 3)
    left = panels[::scale, : 6 * scale : scale]
    right = panels[::scale, (6 + gap) * scale :: scale]
    grey = np.array([110, 110, 110])
    assert (left[1, 1] != grey).any() and left[1, 1, 1] > left[1, 1, 0]  # green tint
    assert (left[2, 4] == grey).all()
    assert (right[2, 4] != grey).any() and right[2, 4, 0] > right[2, 4, 1]  # magenta tint
    assert (right[1, 1] == grey).all()
    with pytest.raises(ReportError, match="must be equal"):
        overlay_panels(OverlayFrame(3, truth, prediction[:, :5]))


def test_overlay_panels_use_the_video_frame_as_background():
    image = np.zeros((200, 300, 3), dtype=np.uint8)
    image[..., 2] = 255
    mask = np.zeros((200, 300), dtype=bool)
    panels = overlay_panels(OverlayFrame(0, mask, mask, image=image))
    assert panels.shape == (200, 300 + 7 + 300, 3)
    assert (panels[:, :300] == [0, 0, 255]).all()


def test_render_html_shows_headline_x100_escapes_text_and_embeds_overlays():
    report = _refvos_report()
    truth = np.zeros((8, 8), dtype=bool)
    truth[2:6, 2:6] = True
    failure = Failure("v0", "1", "the <b>circle</b> moving left", 0.4,
                      [OverlayFrame(3, truth, np.roll(truth, 2, axis=1), J=0.33)])
    page = render_html(report, [failure])
    assert "<td class='headline'>46.7</td>" in page
    assert "<td class='headline'>36.7</td>" in page
    assert "<td class='headline'>41.7</td>" in page
    assert "the &lt;b&gt;circle&lt;/b&gt; moving left" in page and "<b>circle</b>" not in page
    assert "Missing predictions (1, scored 0)" in page
    images = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    assert len(images) == 3  # histograms, subset bars, one overlay frame
    overlay = np.asarray(Image.open(io.BytesIO(base64.b64decode(images[2]))))
    assert overlay.shape == (8 * 20, (8 + 2 + 8) * 20, 3)
    assert "frame 3 · J 33.0" in page


def test_grounding_report_and_html():
    rows = [
        {"video": "AB12", "expr_id": "0", "query": 0, "text": "person opens a door", "start": 1.0, "end": 5.0,
         "pred_start": 1.0, "pred_end": 5.0, "IoU": 1.0},
        {"video": "AB12", "expr_id": "1", "query": 1, "text": "person sits", "start": 2.0, "end": 4.0,
         "pred_start": 10.0, "pred_end": 12.0, "IoU": 0.0},
    ]
    report = build_report("charades-sta", "grounding", {"R@0.3": 0.5, "R@0.5": 0.5, "R@0.7": 0.5, "mIoU": 0.5}, rows)
    assert set(report) >= {"R@0.3", "R@0.5", "R@0.7", "mIoU", "num_expressions", "missing", "subsets"}
    page = render_html(report)
    assert page.count("<td class='headline'>50.0</td>") == 4
    assert "person sits" in page and "Subsets" not in page


def test_write_report_to_local_path(tmp_path):
    report = _refvos_report()
    written = write_report(report, str(tmp_path / "out"))
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == report
    assert "41.7" in (tmp_path / "out" / "report.html").read_text()
    assert written["report.json"].endswith("out/report.json")


def test_write_report_to_s3(s3):
    report = _refvos_report()
    write_report(report, s3.uri("runs/eval1"), storage_options=s3.storage_options)
    fs = s3.filesystem()
    assert json.loads(fs.cat_file(f"{s3.bucket}/runs/eval1/report.json")) == report
    assert b"41.7" in fs.cat_file(f"{s3.bucket}/runs/eval1/report.html")


def test_subsets_without_headline_scores_are_tabled_but_not_plotted():
    report = build_report(
        "revos", "refvos", {"J": 0.5, "F": 0.5, "J&F": 0.5},
        [{"video": "v", "expr_id": "0", "J": 0.5, "F": 0.5, "J&F": 0.5}],
        subsets={"referring": {"J": 0.5, "F": 0.5, "J&F": 0.5, "num_expressions": 1},
                 "no_target": {"empty_fraction": 0.25, "num_expressions": 2}},
    )
    page = render_html(report)
    assert "<td>no_target</td><td>–</td><td>–</td><td>–</td><td>2</td><td>empty_fraction 25.0</td>" in page
    assert len(re.findall(r"src='data:image/png;base64,", page)) == 2  # histograms + bars of "referring"
    only_no_target = build_report("revos", "refvos", {"J": 0.5, "F": 0.5, "J&F": 0.5}, [],
                                  subsets={"no_target": {"empty_fraction": 1.0, "num_expressions": 1}})
    page = render_html(only_no_target)
    assert "empty_fraction 100.0" in page and "per-subset scores" not in page
