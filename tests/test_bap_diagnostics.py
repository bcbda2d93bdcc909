"""MomentSeg Table 13 diagnostics (``pipelines.bap_diagnostics``): the pure figures on hand-made masks whose IoUs
are known, the report's table and its absence with a reason, and one video labeled by ``vrseg label`` with the
tiny config and evaluated by ``vrseg evaluate``: the figures are fractions, and the pre-update masks in ``tracks/``
have the video's size and one entry per re-seeded frame."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from actors import rle as rle_codec
from actors.config import load_config
from pipelines.bap_diagnostics import (
    SUMMARY_KEYS,
    DiagnosticsError,
    ExpressionMeasures,
    ReseedIoU,
    correction_ratio,
    measure_expression,
    summarize,
)
from pipelines.evaluate import EvalConfig, RayConfig, ReportConfig, evaluate
from pipelines.formats.rle_layout import read_mevis
from pipelines.label import InputSpec, label
from pipelines.label_config import load_label_config
from pipelines.report import build_report, render_html
from pipelines.storage import OutputStore
from pipelines.synthetic_cli import SynthConfig, write_corpus

H, W = 10, 10


def rows(first: int, last: int) -> np.ndarray:
    """A 10x10 mask whose rows ``first`` .. ``last - 1`` are set (10 pixels a row: IoUs are ratios of rows)."""
    mask = np.zeros((H, W), dtype=bool)
    mask[first:last] = True
    return mask


EMPTY = np.zeros((H, W), dtype=bool)
TRUTH = rows(0, 10)


def test_one_expression_measures_its_anchor_and_each_reseed():
    measured = measure_expression(4, (rows(0, 5), TRUTH, None), [
        (6, rows(0, 2), rows(0, 8), TRUTH, None),  # IoU 0.2 -> 0.8: corrected
        (9, rows(0, 1), rows(0, 6), TRUTH, None),  # IoU 0.1 -> 0.6: low, not corrected
    ])
    assert measured == ExpressionMeasures(4, True, 0.5, (ReseedIoU(6, 0.2, 0.8), ReseedIoU(9, 0.1, 0.6)))
    assert ExpressionMeasures.from_dict(measured.to_dict()) == measured


def test_anchor_without_target_and_void_pixels():
    # the target is absent on the anchor frame: no shot; an empty prediction there is right (IoU 1), a mask is not
    assert measure_expression(0, (EMPTY, EMPTY, None), []).anchor_has_target is False
    assert measure_expression(0, (EMPTY, EMPTY, None), []).anchor_iou == 1.0
    assert measure_expression(0, (rows(0, 3), EMPTY, None), []).anchor_iou == 0.0
    # void rows 5-9 are left out: 5 of the 5 remaining rows agree
    assert measure_expression(0, (rows(0, 5), TRUTH, rows(5, 10)), []).anchor_iou == 1.0
    unannotated = measure_expression(3, None, None)
    assert (unannotated.anchor_has_target, unannotated.anchor_iou, unannotated.reseeds) == (None, None, None)


def test_correction_ratio_counts_low_frames_lifted_above_0_7():
    before = [0.2, 0.1, 0.29, 0.3, 0.9]
    after = [0.8, 0.6, 0.71, 0.95, 0.2]
    # low (< 0.3): 0.2, 0.1, 0.29 (0.3 is not below 0.3); lifted (> 0.7): 0.8 and 0.71, not 0.6
    assert correction_ratio(before, after) == (2 / 3, 2, 3)
    assert correction_ratio([0.5, 0.3], [0.9, 0.9]) == (None, 0, 0)  # nothing to correct: no ratio, not 0
    assert correction_ratio([0.1], [0.7]) == (0.0, 0, 1)  # exactly 0.7 is not above it
    with pytest.raises(DiagnosticsError, match="2 IoUs before updating but 1 after"):
        correction_ratio([0.1, 0.2], [0.9])


def test_summary_pools_reseed_frames_and_averages_anchors_over_expressions():
    measures = [
        measure_expression(4, (rows(0, 5), TRUTH, None), [
            (6, rows(0, 2), rows(0, 8), TRUTH, None),  # 0.2 -> 0.8, corrected
            (9, rows(0, 1), rows(0, 6), TRUTH, None),  # 0.1 -> 0.6, not corrected
        ]),
        measure_expression(2, (rows(3, 5), EMPTY, None), [
            (5, rows(0, 9), TRUTH, TRUTH, None),  # 0.9 -> 1.0, not low
        ]),
        measure_expression(7, None, []),  # anchor frame without ground truth, nothing re-seeded
    ]
    summary = summarize(measures, no_track=2, no_target=1)
    assert summary["initial_shot_ratio"] == pytest.approx(0.5)  # 1 of the 2 annotated anchors shows the target
    assert summary["initial_miou"] == pytest.approx((0.5 + 0.0) / 2)
    assert summary["anchor_miou_without_update"] == pytest.approx((0.2 + 0.1 + 0.9) / 3)
    assert summary["anchor_miou_with_update"] == pytest.approx((0.8 + 0.6 + 1.0) / 3)
    assert summary["correction_ratio"] == pytest.approx(0.5)
    assert {k: summary[k] for k in ("num_expressions", "num_anchor_frames", "num_reseed_frames",
                                    "num_low_iou_reseed_frames", "num_corrected", "left_out")} == {
        "num_expressions": 3, "num_anchor_frames": 2, "num_reseed_frames": 3, "num_low_iou_reseed_frames": 2,
        "num_corrected": 1, "left_out": {"no_track": 2, "no_target": 1}}
    assert summary["notes"] == ["1 anchor frames have no ground truth and are left out"]


def test_figures_without_a_denominator_are_none_with_a_note():
    no_reseeds = summarize([measure_expression(0, (TRUTH, TRUTH, None), [])])
    assert no_reseeds["initial_miou"] == 1.0 and no_reseeds["anchor_miou_without_update"] is None
    assert no_reseeds["correction_ratio"] is None
    assert any("re-seeded" in note for note in no_reseeds["notes"])
    old_tracks = summarize([measure_expression(0, (TRUTH, TRUTH, None), None)])
    assert old_tracks["anchor_miou_with_update"] is None
    assert old_tracks["notes"] == ["1 tracks have no pre-update masks (labeled before they were recorded)"]
    all_good = summarize([measure_expression(0, (TRUTH, TRUTH, None), [(1, TRUTH, TRUTH, TRUTH, None)])])
    assert all_good["anchor_miou_without_update"] == 1.0 and all_good["correction_ratio"] is None
    assert all_good["notes"] == ["no re-seeded frame had IoU < 0.3 before updating: no Correction Ratio"]


def test_masks_of_different_sizes_are_refused_naming_the_frame():
    with pytest.raises(DiagnosticsError, match=r"re-seeded frame 6 \(before updating\): predicted mask \(5, 5\)"):
        measure_expression(0, None, [(6, np.zeros((5, 5), dtype=bool), TRUTH, TRUTH, None)])


def test_report_shows_the_table_or_why_it_is_absent():
    head = {"J": 0.5, "F": 0.5, "J&F": 0.5}
    row = [{"video": "v", "expr_id": "0", "J": 0.5, "F": 0.5, "J&F": 0.5}]
    summary = summarize([measure_expression(4, (rows(0, 5), TRUTH, None), [(6, rows(0, 2), rows(0, 8), TRUTH, None)])])
    page = render_html(build_report("mevis", "refvos", head, row, extra={"bap_diagnostics": summary}))
    assert "BAP diagnostics (MomentSeg Table 13, x100)" in page
    assert "<td>100.0</td><td>50.0</td><td>20.0 → 80.0</td><td>100.0</td>" in page
    reason = "the predictions are not a vrseg labeling output"
    absent = build_report("mevis", "refvos", head, row, extra={"bap_diagnostics_absent": reason})
    assert "bap_diagnostics" not in absent
    assert f"<p>Not computed: {reason}.</p>" in render_html(absent)


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def labeled(tmp_path_factory: pytest.TempPathFactory, ray_local: None) -> dict:
    """One procedural video (MeViS annotations, mp4, manifest) labeled by ``vrseg label`` with the tiny config
    (BAP, 4 key frames), then evaluated by ``vrseg evaluate``."""
    root = tmp_path_factory.mktemp("bap")
    synth = load_config(SynthConfig, "configs/synth/tiny.yaml", [
        "num_videos=1", "text.per_kind=1", "text.no_target=1", "output.layouts=[mp4,mevis,manifest]"])
    write_corpus(synth, str(root / "corpus"))
    config, model = load_label_config("configs/label/tiny.yaml")
    output = str(root / "labels")
    result = label(InputSpec(manifest=str(root / "corpus" / "manifest.jsonl")), output, config, model,
                   progress=False)
    assert (result.done, result.failed) == (1, 0)
    report = evaluate("mevis", str(root / "corpus"), output, str(root / "report"),
                      config=EvalConfig(ray=RayConfig(concurrency=1), report=ReportConfig(overlays=0)))
    return {"root": root, "output": output, "report": report}


def test_labeling_then_evaluating_reports_table13_as_fractions(labeled):
    report = labeled["report"]
    block = report["bap_diagnostics"]
    for key in SUMMARY_KEYS:
        assert block[key] is not None and 0.0 <= block[key] <= 1.0, (key, block)
    dataset = read_mevis(str(labeled["root"] / "corpus"))
    expressions = [e for record in dataset.videos.values() for e in record.expressions]
    with_target = sum(bool(e.obj_ids) for e in expressions)
    assert block["num_expressions"] == with_target and block["left_out"] == {
        "no_track": 0, "no_target": len(expressions) - with_target}
    assert block["num_reseed_frames"] > 0  # BAP re-seeds the key frames besides the anchor
    assert all("bap" not in row for row in report["per_expression"])
    assert "Anchor mIoU (w/o → w/ updating)" in (labeled["root"] / "report" / "report.html").read_text()


def test_pre_update_masks_in_tracks_match_the_reseeds_and_the_frame_size(labeled):
    store = OutputStore(labeled["output"])
    (record,) = store.committed().values()
    height, width = record.extra["height"], record.extra["width"]
    (path,) = [f.path for f in record.files if f.path.startswith("tracks/")]
    tracks = pq.read_table(io.BytesIO(store.read_bytes(path))).to_pylist()
    assert tracks and any(t["reseed_frames"] for t in tracks)
    for track in tracks:
        assert len(track["pre_update_rles"]) == len(track["reseed_frames"])
        assert set(track["reseed_frames"]) <= set(track["key_frames"]) - {track["anchor_frame"]}
        for rle in track["pre_update_rles"]:
            assert rle_codec.decode(rle, (height, width)).shape == (height, width)


def test_predictions_without_tracks_have_no_diagnostics_and_say_why(labeled, tmp_path: Path):
    from pipelines.formats.prediction_png import write_png_predictions
    from pipelines.formats.prediction_store import PredictedMask

    dataset = read_mevis(str(labeled["root"] / "corpus"))
    record = next(iter(dataset.videos.values()))
    expression = record.expressions[0]
    write_png_predictions([PredictedMask(record.video_id, expression.expr_id, f, record.frame_names[f],
                                         record.target_mask(expression, f)) for f in range(record.num_frames)],
                          str(tmp_path / "png"))
    report = evaluate("mevis", str(labeled["root"] / "corpus"), str(tmp_path / "png"), str(tmp_path / "report"),
                      config=EvalConfig(ray=RayConfig(concurrency=1), report=ReportConfig(overlays=0)))
    assert "bap_diagnostics" not in report
    assert report["bap_diagnostics_absent"].startswith("the predictions are not a vrseg labeling output")
    assert "Not computed: the predictions are not a vrseg labeling output" in (
        tmp_path / "report" / "report.html").read_text()
