"""The official scorer's number beside vrseg's: when it is added, what it holds, and how the report's
headline rows and summary line show it (hand-computed rows, no Ray)."""

from __future__ import annotations

import pytest

from pipelines import metrics, official_convention
from pipelines.report import build_report, headline_rows, headline_text, render_html


def _row(expr_id: str, j: float, f: float, missing: bool = False) -> metrics.ExpressionResult:
    return metrics.ExpressionResult("v", expr_id, j, f, num_frames=3, missing=missing)


def test_reasonvos_official_script_leaves_missing_expressions_out_of_its_mean():
    rows = [_row("1", 0.8, 0.6), _row("2", 0.4, 0.2), _row("3", 0.0, 0.0, missing=True)]
    ours = metrics.refvos_summary(rows).scores
    assert (ours["J"], ours["F"]) == (pytest.approx(0.4), pytest.approx(0.8 / 3))
    block = official_convention.reasonvos(rows, ours)
    assert block == {"J": pytest.approx(0.6), "F": pytest.approx(0.4), "J&F": pytest.approx(0.5),
                     "num_expressions": 2, "differs": True, "because": [
                         "1 expression(s) have no prediction: VideoLISA's eval_reason_vos.py leaves them out of its "
                         "mean, vrseg scores them 0"]}
    assert official_convention.reasonvos(rows[:2], metrics.refvos_summary(rows[:2]).scores) is None


def _davis(slot: int, obj_id: str, j: float, missing: bool = False) -> metrics.DavisObjectResult:
    return metrics.DavisObjectResult("bear", slot, obj_id, str(4 * (int(obj_id) - 1) + slot), j, j, missing)


def test_four_run_official_block_says_why_it_differs_and_only_then_is_shown():
    ours = [_davis(s, o, 1.0) for s in range(4) for o in ("1", "2")]
    official = [_davis(s, "1", 1.0) for s in range(4)]  # object 2 first appears later, above frame 0's ids
    block = official_convention.four_run(official, metrics.refdavis_four_run_summary(ours).scores,
                                         dropped=["bear:2"], unexpressed=[], missing=0)
    assert (block["J&F"], block["differs"], block["num_objects"]) == (1.0, False, 4)
    assert block["because"] == ["1 object(s) first appear after frame 0 with an id above frame 0's highest "
                                "(bear:2): davis2017-evaluation does not score them, vrseg does"]
    report = build_report("refdavis17", "refvos", {"J": 0.9, "F": 0.8, "J&F": 0.85}, [], extra={
        "four_run": {"J": 1.0, "F": 1.0, "J&F": 1.0, "official_convention": block}})
    assert [row.protocol for row in headline_rows(report)] == ["four-run (published)", "per expression"]

    ours[1] = _davis(0, "2", 0.0, missing=True)  # run 0: object 2's expression missing -> 0
    official = [_davis(s, o, 1.0) for s in range(4) for o in ("1", "2")]  # credited through another label
    vrseg = metrics.refdavis_four_run_summary(ours).scores
    assert vrseg["J"] == pytest.approx(7 / 8)
    block = official_convention.four_run(official, vrseg, dropped=[], unexpressed=["bear:3", "bear:4", "bear:5",
                                                                                   "bear:6"], missing=1)
    assert block["differs"] is True and block["because"] == [
        "4 object(s) of frame 0 have no expression (bear:3, bear:4, bear:5, ...): davis2017-evaluation scores them, "
        "vrseg leaves them out",
        "1 expression(s) have no prediction: vrseg scores their objects 0, davis2017-evaluation's matching may "
        "credit another expression's mask to them"]
    report = build_report("refdavis17", "refvos", {"J": 0.9, "F": 0.8, "J&F": 0.85}, [], extra={
        "four_run": {**vrseg, "official_convention": block}})
    assert headline_text(report) == (
        "four-run (published): J 87.5, F 87.5, J&F 87.5 | per expression: J 90.0, F 80.0, J&F 85.0 | "
        f"four-run, official convention: J 100.0, F 100.0, J&F 100.0 ({'; '.join(block['because'])})")
    page = render_html(report)
    assert "<tr><td>per expression</td><td class='headline'>90.0</td>" in page
    assert "<li>four-run, official convention: 1 expression(s) have no prediction" in page
    assert official_convention.four_run([], vrseg, [], [], 0) is None


def test_other_formats_show_one_headline_row_named_by_format():
    report = build_report("mevis", "refvos", {"J": 0.5, "F": 0.25, "J&F": 0.375}, [])
    assert headline_text(report) == "mevis: J 50.0, F 25.0, J&F 37.5"
