"""``vrseg report --labels URI``: a QA report of a labeling output without ground truth, and a review list.

Writes into ``--out`` (default: the labeling output root), atomically:

- ``review.jsonl``: the ``--review N`` lowest-scoring tracks, lowest first, one JSON object a line
  (``pipelines.label_review``: ``video``, ``expr_id``, ``expression``, ``confidence``, ``score``,
  ``score_kind``, ``reason``, ``reasons``), for a human queue;
- ``report.html``, one self-contained page (images are ``data:`` URIs, ``pipelines.html_page``): the counts
  (committed videos, expressions, frames, masks, no-target expressions, failure rows), the last run's
  throughput and per-stage seconds (``run.json``), the failure rows by kind, the histogram of the track
  confidence (or, when the run had no calibration, of the uncalibrated fallback score, labeled as such),
  per-source counts and scores, how many tracks each review reason applies to, the review list and the
  first ``strips`` doubtful tracks as overlay strips (``pipelines.label_strips``: mask painted on a few
  frames; masks only, with the reason, when the video cannot be found or read).

A ``--labels`` that does not exist or holds no committed video is one line on stderr naming it (exit status 2).
"""

from __future__ import annotations

import argparse
import html
import json
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from actors.config import load_config
from actors.uri import redact
from pipelines.command_line import run_command
from pipelines.html_page import BASE_STYLE, figure_base64, img_tag, new_figure, png_base64
from pipelines.label_output import LabelingOutput, read_labeling_output
from pipelines.label_review import (
    LOW_SCORE,
    REASONS,
    ScoreKind,
    Track,
    reasons,
    review_list,
    review_order,
    score_kind,
)
from pipelines.label_strips import Strip, track_strip
from pipelines.preflight import check_credentials
from pipelines.storage import OutputStore

REPORT_FILE = "report.html"
REVIEW_FILE = "review.jsonl"
_UNCALIBRATED = ("{missing} of {total} tracks have no <code>confidence</code> (the run that labeled them had no "
                 "calibration, <code>tracks.calibration</code>), so every track is ranked by the <b>uncalibrated</b> "
                 "fallback <code>mean_track_score</code> (SAM2's mean per-frame score over the frames where the object "
                 "is present; 0 for a no-target track): it orders tracks but is not a probability.")
_STYLE = BASE_STYLE + """
th { text-align: left; }
td.text { text-align: left; max-width: 40em; }
p.note { color: #a60; }
"""


@dataclass
class LabelReportConfig:
    """``vrseg report`` configuration (``--config`` YAML and ``key=value`` overrides): ``storage_options``
    reach ``--labels``, ``--manifest``, ``--out`` and the videos; ``strips`` doubtful tracks get overlay
    strips of ``strip_frames`` frames each."""

    storage_options: dict[str, Any] = field(default_factory=dict)
    strips: int = 6
    strip_frames: int = 4

    def __post_init__(self) -> None:
        if self.strips < 0 or self.strip_frames < 1:
            raise ValueError(f"strips must be >= 0 and strip_frames >= 1, got {self.strips}, {self.strip_frames}")


@dataclass(frozen=True)
class LabelReportSummary:
    """What ``write_label_report`` wrote: the two files' URIs, the review items and the score they rank by."""

    report: str
    review: str
    items: int
    score_kind: ScoreKind


# ---------------------------------------------------------------------------------------- sections
def _table(rows: Sequence[Sequence[Any]], head: Sequence[str] = ()) -> str:
    header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{f'<tr>{header}</tr>' if header else ''}{body}</table>"


def _cell(value: Any) -> str:  # noqa: ANN401 - any table cell
    if isinstance(value, float):
        return f"{value:.3f}"
    return "–" if value is None else str(value)


def _counts(output: LabelingOutput) -> str:
    rows = [
        ("videos committed", len(output.records)), ("expressions", len(output.tracks)),
        ("frames", output.frames), ("masks (frames x expressions)", output.masks),
        ("no-target expressions", sum(t.no_target for t in output.tracks)),
        ("failure rows", output.failure_rows),
    ]
    body = "".join(f"<tr><th>{name}</th><td class='headline'>{value}</td></tr>" for name, value in rows)
    missing = ""
    if output.without_tracks:
        missing = (f"<p class='note'>{len(output.without_tracks)} committed videos have no <code>tracks/</code> file "
                   "(labeled before tracks existed) and are left out of the scores.</p>")
    return f"<h2>Counts</h2><table>{body}</table>{missing}"


def _throughput(run: Mapping[str, Any] | None) -> str:
    if run is None:
        return "<h2>Throughput</h2><p class='note'>No <code>run.json</code> in this output.</p>"
    counts, wall = run.get("counts") or {}, float(run.get("wall_seconds") or 0.0)
    done, expressions, masks = (int(counts.get(k) or 0) for k in ("done", "expressions_done", "masks_written"))
    rows: list[tuple[str, Any]] = [
        ("wall seconds", wall), ("videos done", done), ("videos skipped (already committed)",
                                                         counts.get("skipped_committed")),
        ("failed videos", counts.get("failed"))]
    rows += [(f"{name} / s", count / wall if wall > 0 else None)
             for name, count in (("videos", done), ("expressions", expressions), ("masks", masks))]
    stages = sorted((run.get("stage_seconds") or {}).items())
    return ("<h2>Throughput (last run, <code>run.json</code>)</h2>" + _table(rows)
            + ("<p>Seconds per stage, summed over workers:</p>" + _table(stages, ("stage", "seconds")) if stages else ""))


def _failures(output: LabelingOutput) -> str:
    if not output.errors_file:
        return "<h2>Failures</h2><p class='note'>No <code>errors/errors.parquet</code> in this output.</p>"
    if not output.failures:
        return "<h2>Failures</h2><p>No failure rows in the last run.</p>"
    rows = [(f.kind, f.count, " | ".join(f.samples)) for f in output.failures]
    return f"<h2>Failures by kind ({output.failure_rows} rows, last run)</h2>" + _table(rows, ("kind", "rows", "first messages"))


def _histogram(scored: Sequence[tuple[float, Track]], kind: ScoreKind) -> str:
    tracked = [min(max(s, 0.0), 1.0) for s, t in scored if not t.no_target]
    empty = [min(max(s, 0.0), 1.0) for s, t in scored if t.no_target]
    figure = new_figure(5.0, 2.8)
    axis = figure.subplots()
    axis.hist([tracked, empty], bins=np.linspace(0.0, 1.0, 21), stacked=True, color=["#4472c4", "#c0504d"],
              label=["tracked", "no target"], edgecolor="white")
    axis.set_xlabel("confidence" if kind == "confidence" else "mean_track_score (uncalibrated)")
    axis.set_ylabel("tracks")
    axis.set_xlim(0.0, 1.0)
    axis.yaxis.get_major_locator().set_params(integer=True)
    axis.legend(loc="upper left", fontsize="small")
    title = "Track confidence" if kind == "confidence" else "Uncalibrated fallback score (no calibration)"
    missing = sum(t.confidence is None for _, t in scored)
    note = "" if kind == "confidence" else f"<p class='note'>{_UNCALIBRATED.format(missing=missing, total=len(scored))}</p>"
    return f"<h2>{title}</h2>{note}" + img_tag(title, figure_base64(figure))


def _per_source(output: LabelingOutput, scored: Sequence[tuple[float, Track]]) -> str:
    by_source: dict[str, list[tuple[float, Track]]] = {}
    for score, track in scored:
        by_source.setdefault(output.sources[track.video_id], []).append((score, track))
    videos = Counter(output.sources.values())
    rows = [(source, videos[source], len(items), sum(t.no_target for _, t in items),
             sum(s < LOW_SCORE for s, _ in items), statistics.median(s for s, _ in items))
            for source, items in sorted(by_source.items())]
    return ("<h2>Per source</h2><p>Source: the folder holding the video (from the labeling manifest), else the "
            "run's benchmark or video folder.</p>"
            + _table(rows, ("source", "videos", "expressions", "no target", f"score < {LOW_SCORE}", "median score")))


def _reason_counts(scored: Sequence[tuple[float, Track]]) -> str:
    counts = Counter(reason for score, track in scored for reason in reasons(track, score))
    rows = [(reason, counts.get(reason, 0)) for reason in REASONS]
    return "<h2>Tracks by review reason</h2>" + _table(rows, ("reason", "tracks"))


def _review_table(items: Sequence[Mapping[str, Any]]) -> str:
    rows = [(i["video"], i["expr_id"], i["expression"] or "", i["score"], ", ".join(i["reasons"])) for i in items]
    return _table(rows, ("video", "expr_id", "expression", "score", "reasons"))


def _strip_section(item: Mapping[str, Any], strip: Strip) -> str:
    frames = "".join(
        "<figure>" + img_tag(f"frame {f.frame_idx}", png_base64(f.panel))
        + f"<figcaption>frame {f.frame_idx}{'' if f.present else ' (absent)'}</figcaption></figure>"
        for f in strip.frames)
    note = f"<p class='note'>{html.escape(strip.note)}</p>" if strip.note else ""
    return (f"<div class='strip'><h3>{html.escape(item['video'])} / {html.escape(item['expr_id'])} — "
            f"{html.escape(item['score_kind'])} {item['score']:.3f} ({html.escape(', '.join(item['reasons']))})</h3>"
            f"<p class='text'>{html.escape(item['expression'] or '(text unknown)')}</p>{note}{frames}</div>")


def render_label_report(output: LabelingOutput, items: Sequence[Mapping[str, Any]],
                        strips: Sequence[Strip]) -> str:
    """The ``report.html`` page of ``output`` with the review ``items`` and the strips of the first of them."""
    title = f"vrseg labeling QA — {redact(output.uri)}"
    kind = score_kind(output.tracks)
    scored = review_order(output.tracks, kind)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             _counts(output), _throughput(output.run), _failures(output)]
    if scored:
        parts += [_histogram(scored, kind), _per_source(output, scored), _reason_counts(scored)]
    parts += [f"<h2>Review first: the {len(items)} lowest-scoring tracks</h2>", _review_table(items)]
    if strips:
        parts.append("<h2>Overlay strips (mask in magenta)</h2>")
        parts += [_strip_section(item, strip) for item, strip in zip(items, strips, strict=False)]
    parts.append("</body></html>")
    return "".join(parts)


# ---------------------------------------------------------------------------------------- writing
def review_jsonl(items: Sequence[Mapping[str, Any]]) -> bytes:
    """``items`` as JSON lines."""
    return "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items).encode("utf-8")


def write_label_report(labels_uri: str, out_uri: str | None = None, review: int = 100, manifest: str | None = None,
                       config: LabelReportConfig | None = None) -> LabelReportSummary:
    """Write ``report.html`` and ``review.jsonl`` of the labeling output ``labels_uri`` into ``out_uri``
    (default: ``labels_uri``); see the module docstring. ``FormatError`` naming ``labels_uri`` when it is not
    a labeling output with a committed video."""
    if review < 0:
        raise ValueError(f"--review must be >= 0, got {review}")
    config = config or LabelReportConfig()
    options = config.storage_options
    out_uri = out_uri or labels_uri
    check_credentials([u for u in (labels_uri, out_uri, manifest) if u], options)
    output = read_labeling_output(labels_uri, options, manifest)
    items = review_list(output.tracks, review)
    unplaced = ("no labeling manifest (run.json names none; give --manifest)" if output.manifest is None
                else f"video not in the labeling manifest {redact(output.manifest)}")
    strips = [track_strip(output.store, output.records[i["video"]], i["expr_id"], output.video_sources.get(i["video"]),
                          config.strip_frames, options, unplaced)
              for i in items[:config.strips]]
    out = OutputStore(out_uri, options)
    out.write_bytes(REVIEW_FILE, review_jsonl(items))
    out.write_bytes(REPORT_FILE, render_label_report(output, items, strips).encode("utf-8"))
    return LabelReportSummary(out.uri(REPORT_FILE), out.uri(REVIEW_FILE), len(items), score_kind(output.tracks))


# ---------------------------------------------------------------------------------------- command line
def run(args: argparse.Namespace) -> int:
    """The command (``pipelines.command_line.run_command``)."""

    def work() -> str:
        config = load_config(LabelReportConfig, args.config, args.overrides)
        summary = write_label_report(args.labels, args.out, args.review, args.manifest, config)
        ranked = "confidence" if summary.score_kind == "confidence" else "uncalibrated mean_track_score"
        return f"{redact(summary.report)}; {summary.items} tracks to review ({ranked}) in {redact(summary.review)}"

    return run_command("report", work)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("report", help="QA report and review list of a labeling output (no ground truth)",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("--labels", required=True, help="a vrseg label --output folder (path, file://, s3://)")
    parser.add_argument("--review", type=int, default=100, metavar="N", help="tracks in review.jsonl (default 100)")
    parser.add_argument("--out", default=None, help="folder for report.html and review.jsonl (default: --labels)")
    parser.add_argument("--manifest", default=None,
                        help="the labeling manifest (default: the one run.json names), for the videos under the strips")
    parser.add_argument("--config", default=None, help="YAML with storage_options, strips, strip_frames")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. strips=10 storage_options.anon=true")
    parser.set_defaults(func=run)
