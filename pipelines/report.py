"""Evaluation reports: ``report.json`` (scores as fractions) and ``report.html`` (for a person to read).

Pure given the scores: ``build_report`` assembles the JSON document from the headline scores, the
per-expression rows, the missing predictions and the subsets; ``render_html`` turns it into one
self-contained page (headline table x100 as the papers print it, score histograms, per-subset bars,
the worst expressions with mask overlays of truth vs prediction, and for a labeling output's RefVOS
predictions MomentSeg Table 13's BAP diagnostics or why there are none); ``write_report`` stores both under
an fsspec URI. Plots and overlays are embedded as base64 PNG with ``pipelines.html_page`` (shared with
the labeling QA report), so the page needs nothing beside it.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from actors.uri import filesystem_for, join
from pipelines.html_page import (
    BASE_STYLE,
    background,
    enlarge,
    figure_base64,
    img_tag,
    new_figure,
    png_base64,
    tint,
)

Task = Literal["refvos", "grounding", "image"]

HEADLINE_KEYS: dict[str, tuple[str, ...]] = {
    "refvos": ("J", "F", "J&F"),
    "grounding": ("R@0.3", "R@0.5", "R@0.7", "mIoU"),
    "image": ("cIoU", "gIoU"),
}
# The per-expression score the histograms show and the worst-first ordering uses.
PRIMARY_SCORE: dict[str, str] = {"refvos": "J&F", "grounding": "IoU", "image": "IoU"}
# The key naming what an expression belongs to in rows and in ``missing``.
ITEM_KEY: dict[str, str] = {"refvos": "video", "grounding": "video", "image": "image"}

_TRUTH_RGB = np.array([40, 200, 80], dtype=np.float32)
_PREDICTION_RGB = np.array([230, 40, 200], dtype=np.float32)


class ReportError(ValueError):
    """A report input is inconsistent (score outside [0, 1], unknown task, missing headline key)."""


@dataclass(frozen=True)
class OverlayFrame:
    """One frame of a failure: the truth and predicted masks, and the video frame when available."""

    frame_idx: int
    truth: np.ndarray  # (H, W) bool
    prediction: np.ndarray  # (H, W) bool
    image: np.ndarray | None = None  # (H, W, 3) uint8
    J: float | None = None


@dataclass(frozen=True)
class Failure:
    """A low-scoring expression shown with overlays of a few of its frames (``video``: or image)."""

    video: str
    expr_id: str
    text: str
    score: float
    frames: Sequence[OverlayFrame]


def _check_fraction(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise ReportError(f"{where}: score must be a number, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ReportError(f"{where}: score {value!r} is not a fraction in [0, 1]")
    return value


def _check_scores(scores: Mapping[str, Any], keys: Sequence[str], where: str) -> dict[str, float]:
    return {key: _check_fraction(scores[key], f"{where} {key!r}") for key in keys if key in scores}


def build_report(
    format: str,
    task: Task,
    headline: Mapping[str, float],
    per_expression: Sequence[Mapping[str, Any]],
    missing: Sequence[Mapping[str, Any]] = (),
    subsets: Mapping[str, Mapping[str, Any]] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``report.json`` document.

    ``headline`` must hold the task's headline keys (``J``, ``F``, ``J&F``; ``R@0.3``, ``R@0.5``,
    ``R@0.7``, ``mIoU``; or ``cIoU``, ``gIoU``) as fractions; ``per_expression`` rows carry ``video``
    (``image`` for images), ``expr_id`` and their scores (checked to be fractions); ``missing`` lists
    the (video, expr_id) whose prediction was absent (they are also in ``per_expression`` with score
    0); ``subsets`` maps a subset name to its scores and ``num_expressions``; ``extra`` holds
    protocol-specific sections (Ref-DAVIS17's ``four_run`` scores, an ``official_convention`` block),
    kept as given after checking its numbers are finite.
    """
    if task not in HEADLINE_KEYS:
        raise ReportError(f"unknown task {task!r}; expected one of {sorted(HEADLINE_KEYS)}")
    keys = HEADLINE_KEYS[task]
    absent = [key for key in keys if key not in headline]
    if absent:
        raise ReportError(f"headline scores lack {absent} for task {task!r}")
    report: dict[str, Any] = {"format": format, "task": task}
    report.update(_check_scores(headline, keys, "headline"))
    report["num_expressions"] = len(per_expression)
    report["missing"] = [dict(item) for item in missing]
    report["subsets"] = {}
    for name, scores in (subsets or {}).items():
        checked: dict[str, Any] = _check_scores(scores, keys, f"subset {name!r}")
        checked.update({k: v for k, v in scores.items() if k not in keys})
        report["subsets"][name] = checked
    rows = []
    item = ITEM_KEY[task]
    for index, row in enumerate(per_expression):
        if item not in row or "expr_id" not in row:
            raise ReportError(f"per_expression row {index} lacks {item!r} or 'expr_id': {dict(row)!r:.200}")
        score_keys = [k for k in ("J", "F", "J&F", "IoU") if k in row and row[k] is not None]
        checked_row = dict(row)
        checked_row.update(_check_scores(row, score_keys, f"expression {row[item]}/{row['expr_id']}"))
        rows.append(checked_row)
    report["per_expression"] = rows
    if extra:
        _check_finite(extra, "extra")
        report.update({key: value for key, value in extra.items() if key not in report})
    return report


def _check_finite(value: Any, where: str) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            _check_finite(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_finite(item, f"{where}[{index}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ReportError(f"{where}: {value!r} is not finite (JSON cannot hold it)")


def worst_rows(report: Mapping[str, Any], count: int) -> list[dict[str, Any]]:
    """The ``count`` lowest-scoring per-expression rows (ties broken by video or image, then expr_id)."""
    key, item = PRIMARY_SCORE[report["task"]], ITEM_KEY[report["task"]]
    scored = [row for row in report["per_expression"] if row.get(key) is not None]
    return sorted(scored, key=lambda r: (r[key], str(r[item]), str(r["expr_id"])))[:count]


@dataclass(frozen=True)
class HeadlineRow:
    """One protocol's headline numbers, and why they differ from vrseg's where that needs saying."""

    protocol: str
    scores: Mapping[str, Any]
    because: Sequence[str] = ()


def headline_rows(report: Mapping[str, Any]) -> list[HeadlineRow]:
    """The headline numbers in the order a reader compares them: the protocol papers publish first.

    Ref-DAVIS17: the four-run protocol (davis2017-evaluation over ReferFormer's merged runs, what
    papers print), then vrseg's per-expression protocol. An ``official_convention`` block whose numbers
    differ from vrseg's (its ``differs``) adds a row with the reasons it gives.
    """
    four_run = report.get("four_run")
    if four_run is not None:
        rows = [HeadlineRow("four-run (published)", four_run), HeadlineRow("per expression", report)]
        official = four_run.get("official_convention")
        name = "four-run, official convention"
    else:
        rows = [HeadlineRow(report["format"], report)]
        official = report.get("official_convention")
        name = "official convention"
    if official is not None and official.get("differs"):
        rows.append(HeadlineRow(name, official, official.get("because", ())))
    return rows


def headline_text(report: Mapping[str, Any]) -> str:
    """The headline rows on one line, scores x100 as the papers print them."""
    keys = HEADLINE_KEYS[report["task"]]
    parts = []
    for row in headline_rows(report):
        scores = ", ".join(f"{k} {100 * row.scores[k]:.1f}" for k in keys if k in row.scores)
        because = f" ({'; '.join(row.because)})" if row.because else ""
        parts.append(f"{row.protocol}: {scores}{because}")
    return " | ".join(parts)


def overlay_panels(frame: OverlayFrame) -> np.ndarray:
    """(H', 2W'+gap, 3) uint8: truth tinted green on the left, prediction tinted magenta on the right.

    Without a video frame the background is mid grey. Small frames are enlarged (nearest neighbour)
    to at least 160 pixels high so one-pixel errors stay visible.
    """
    truth = np.asarray(frame.truth, dtype=bool)
    prediction = np.asarray(frame.prediction, dtype=bool)
    if truth.shape != prediction.shape or truth.ndim != 2:
        raise ReportError(
            f"frame {frame.frame_idx}: truth {truth.shape} and prediction {prediction.shape} must be equal (H, W)"
        )
    height, width = truth.shape
    base = background(frame.image, height, width)
    gap = np.full((height, max(2, width // 40), 3), 255, dtype=np.uint8)
    return enlarge(np.concatenate([tint(base, truth, _TRUTH_RGB), gap, tint(base, prediction, _PREDICTION_RGB)],
                                  axis=1))


def _histograms(report: Mapping[str, Any]) -> str:
    task = report["task"]
    keys = ("J", "F", "J&F") if task == "refvos" else ("IoU",)
    rows = report["per_expression"]
    figure = new_figure(3.2 * len(keys), 2.6)
    axes = figure.subplots(1, len(keys), squeeze=False)[0]
    bins = np.linspace(0.0, 100.0, 21)
    for axis, key in zip(axes, keys, strict=True):
        values = [100.0 * row[key] for row in rows if row.get(key) is not None]
        axis.hist(values, bins=bins, color="#4472c4", edgecolor="white")
        axis.set_title(f"{key} per {'query' if task == 'grounding' else 'expression'}")
        axis.set_xlabel(f"{key} (x100)")
        axis.set_xlim(0, 100)
        axis.yaxis.get_major_locator().set_params(integer=True)
    axes[0].set_ylabel("count")
    return figure_base64(figure)


def _subset_bars(report: Mapping[str, Any]) -> str | None:
    keys = HEADLINE_KEYS[report["task"]]
    subsets = {name: scores for name, scores in report["subsets"].items() if all(k in scores for k in keys)}
    if not subsets:
        return None
    names = list(subsets)
    figure = new_figure(max(4.0, 1.1 * len(names) + 2.0), 3.0)
    axis = figure.subplots()
    width = 0.8 / len(keys)
    positions = np.arange(len(names))
    for offset, key in enumerate(keys):
        values = [100.0 * subsets[name][key] for name in names]
        axis.bar(positions + (offset - (len(keys) - 1) / 2) * width, values, width, label=key)
    axis.set_xticks(positions, names, rotation=20, ha="right")
    axis.set_ylim(0, 100)
    axis.set_ylabel("score (x100)")
    axis.legend(loc="upper right", fontsize="small")
    return figure_base64(figure)


def _x100(value: Any) -> str:
    return f"{100.0 * value:.1f}" if isinstance(value, int | float) else "–"


def _headline_table(report: Mapping[str, Any]) -> str:
    """One row per ``headline_rows`` entry, named by protocol; the reasons an official-convention
    number differs follow the table."""
    keys = HEADLINE_KEYS[report["task"]]
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body, notes = [], []
    for row in headline_rows(report):
        cells = "".join(f"<td class='headline'>{_x100(row.scores.get(k))}</td>" for k in keys)
        body.append(f"<tr><td>{html.escape(row.protocol)}</td>{cells}</tr>")
        notes += [f"<li>{html.escape(row.protocol)}: {html.escape(reason)}</li>" for reason in row.because]
    table = (
        f"<table><tr><th>{html.escape(report['format'])}</th>{head}</tr>{''.join(body)}</table>"
        f"<p>{report['num_expressions']} expressions, {len(report['missing'])} missing</p>"
    )
    return table + (f"<ul class='because'>{''.join(notes)}</ul>" if notes else "")


def _subset_table(report: Mapping[str, Any]) -> str:
    keys = HEADLINE_KEYS[report["task"]]
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join(
        f"<tr><td>{html.escape(name)}</td>"
        + "".join(f"<td>{_x100(scores.get(k))}</td>" for k in keys)
        + f"<td>{scores.get('num_expressions', scores.get('num_objects', ''))}</td>"
        + f"<td>{html.escape(_other_scores(scores, keys))}</td></tr>"
        for name, scores in report["subsets"].items()
    )
    return f"<table><tr><th>subset</th>{head}<th>count</th><th>other (x100)</th></tr>{body}</table>"


def _other_scores(scores: Mapping[str, Any], keys: Sequence[str]) -> str:
    """Fractions a subset holds beside the headline keys (e.g. ReVOS no-target ``empty_fraction``)."""
    return ", ".join(
        f"{name} {_x100(value)}" for name, value in scores.items()
        if name not in keys and not name.startswith("num_") and isinstance(value, float)
    )


def _bap_section(report: Mapping[str, Any]) -> str:
    """MomentSeg Table 13 as the paper lays it out (x100), with its denominators and notes
    (``pipelines.bap_diagnostics``); the reason when the predictions carry no tracks; nothing for other tasks."""
    title = "<h2>BAP diagnostics (MomentSeg Table 13, x100)</h2>"
    if "bap_diagnostics_absent" in report:
        return f"{title}<p>Not computed: {html.escape(str(report['bap_diagnostics_absent']))}.</p>"
    block = report.get("bap_diagnostics")
    if block is None:
        return ""
    anchor = f"{_x100(block['anchor_miou_without_update'])} → {_x100(block['anchor_miou_with_update'])}"
    left_out = block["left_out"]
    counts = (
        f"<p>{block['num_expressions']} expressions with a track ({block['num_anchor_frames']} anchor frames with "
        f"ground truth), {block['num_reseed_frames']} re-seeded frames, {block['num_low_iou_reseed_frames']} of "
        f"them below IoU 0.3 before updating, {block['num_corrected']} lifted above 0.7; left out: "
        f"{left_out['no_track']} without a track, {left_out['no_target']} without a target.</p>"
    )
    notes = "".join(f"<li>{html.escape(note)}</li>" for note in block["notes"])
    return (
        f"{title}<table><tr><th>Initial Shot Ratio</th><th>Initial mIoU</th>"
        "<th>Anchor mIoU (w/o → w/ updating)</th><th>Correction Ratio</th></tr>"
        f"<tr><td>{_x100(block['initial_shot_ratio'])}</td><td>{_x100(block['initial_miou'])}</td>"
        f"<td>{anchor}</td><td>{_x100(block['correction_ratio'])}</td></tr></table>{counts}"
        + (f"<ul class='because'>{notes}</ul>" if notes else "")
    )


_WORST_COLUMNS: dict[str, tuple[str, ...]] = {
    "refvos": ("video", "expr_id", "text", "J", "F", "J&F"),
    "grounding": ("video", "expr_id", "text", "start", "end", "pred_start", "pred_end", "IoU"),
    "image": ("image", "expr_id", "text", "IoU"),
}


def _worst_table(report: Mapping[str, Any], count: int) -> str:
    columns = _WORST_COLUMNS[report["task"]]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for row in worst_rows(report, count):
        cells = []
        for column in columns:
            value = row.get(column)
            if column in ("J", "F", "J&F", "IoU"):
                cells.append(f"<td>{_x100(value)}</td>")
            elif isinstance(value, float):
                cells.append(f"<td>{value:.2f}</td>")
            else:
                cells.append(f"<td>{html.escape('' if value is None else str(value))}</td>")
        missing = " class='missing'" if row.get("missing") else ""
        body.append(f"<tr{missing}>{''.join(cells)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _failure_section(failure: Failure, score_name: str) -> str:
    frames = "".join(
        "<figure>" + img_tag(f"frame {f.frame_idx}", png_base64(overlay_panels(f)))
        + f"<figcaption>frame {f.frame_idx}" + (f" · J {_x100(f.J)}" if f.J is not None else "") + "</figcaption>"
        "</figure>"
        for f in failure.frames
    )
    return (
        f"<div class='failure'><h3>{html.escape(failure.video)} / {html.escape(failure.expr_id)}"
        f" — {html.escape(score_name)} {_x100(failure.score)}</h3><p class='text'>{html.escape(failure.text)}</p>{frames}</div>"
    )


_STYLE = BASE_STYLE + """
tr.missing td { color: #b00; }
ul.because { color: #555; }
"""


def render_html(report: Mapping[str, Any], failures: Sequence[Failure] = (), worst_count: int = 20) -> str:
    """The self-contained ``report.html`` page for ``report`` (as built by ``build_report``)."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>vrseg evaluation — {html.escape(report['format'])}</title><style>{_STYLE}</style></head><body>",
        f"<h1>vrseg evaluation — {html.escape(report['format'])}</h1>",
        "<h2>Headline (x100)</h2>",
        _headline_table(report),
        "<h2>Score histograms</h2>",
        img_tag("score histograms", _histograms(report)),
    ]
    if report["subsets"]:
        parts += ["<h2>Subsets (x100)</h2>", _subset_table(report)]
        bars = _subset_bars(report)
        if bars is not None:
            parts.append(img_tag("per-subset scores", bars))
    if report["missing"]:
        item = ITEM_KEY[report["task"]]
        listed = "".join(
            f"<li>{html.escape(str(m.get(item)))} / {html.escape(str(m.get('expr_id')))}</li>" for m in report["missing"]
        )
        parts += [f"<h2>Missing predictions ({len(report['missing'])}, scored 0)</h2><ul>{listed}</ul>"]
    parts.append(_bap_section(report))
    parts += [f"<h2>Worst {min(worst_count, len(report['per_expression']))}</h2>", _worst_table(report, worst_count)]
    if failures:
        parts += [
            "<h2>Failures: truth vs prediction</h2>",
            "<p class='legend'><span style='background:#28c850'>truth (left)</span>"
            "<span style='background:#e628c8'>prediction (right)</span></p>",
            *(_failure_section(failure, PRIMARY_SCORE[report["task"]]) for failure in failures),
        ]
    parts.append("</body></html>")
    return "".join(parts)


def write_report(
    report: Mapping[str, Any],
    out_uri: str,
    failures: Sequence[Failure] = (),
    storage_options: Mapping[str, Any] | None = None,
    worst_count: int = 20,
) -> dict[str, str]:
    """Write ``report.json`` and ``report.html`` under ``out_uri``; returns their URIs by name."""
    fs, root = filesystem_for(out_uri, storage_options)
    fs.makedirs(root, exist_ok=True)
    documents = {
        "report.json": json.dumps(report, indent=2, allow_nan=False).encode("utf-8"),
        "report.html": render_html(report, failures, worst_count).encode("utf-8"),
    }
    written = {}
    for name, payload in documents.items():
        fs.pipe_file(join(root, name), payload)
        written[name] = join(out_uri, name)
    return written
