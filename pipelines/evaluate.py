"""``vrseg evaluate``: score a prediction set against a benchmark's annotations and write the report.

The program reads top to bottom as the data flow:

1. read the annotations into the internal ``Dataset`` (masks stay lazy RLE / PNG references) and
   find the predictions: a labeling output (``<uri>/masks/`` Parquet, committed videos only), a
   Parquet folder, the PNG layout or a CodaLab zip (``open_prediction_store``);
2. put the dataset once in Ray's object store and make one work item per (video, expression) (or per
   grounding query, or per (video, slot) for Ref-DAVIS17's four-run protocol);
3. score the items on Ray Data with a fixed pool of scoring actors: each actor fetches the dataset and
   opens the prediction store once, then decodes one expression's truth and predicted masks inside
   the task, ``chunk_frames`` frames at a time, and returns only numbers (masks never pass through
   the driver);
4. summarise with the protocol of the format (``pipelines.metrics``), draw the worst expressions'
   overlays (a few frames each, read in the driver) and write ``report.json`` / ``report.html``.

Choices the issue leaves open:
- A predicted expression that lacks some frames has an empty mask on those frames (not an error:
  the labeling output omits nothing, and an evaluator must not reward a gap). A wholly absent
  expression scores 0 and is listed in ``missing`` (``pipelines.metrics``).
- Grounding predictions are JSON lines ``{"video", "query", "start", "end"}``; the first line of a
  query is its top-1 prediction (later lines of the same query are lower-ranked candidates and are
  ignored by R@1); a line whose video disagrees with the annotation's, an unknown query or an
  interval with start > end is an error naming the file and line.
- Scored rows travel back from the actors as JSON text, so Arrow never has to unify columns that are
  null in some blocks (``kind``, ``type_id``, ``empty_fraction``).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from actors.config import ConfigError, load_config
from actors.uri import join, redact
from pipelines import metrics
from pipelines.formats import (
    Dataset,
    Expression,
    FormatError,
    PredictionStore,
    VideoRecord,
    open_predictions,
    read_dataset,
)
from pipelines.formats.files import location
from pipelines.report import Failure, OverlayFrame, ReportError, build_report, worst_rows, write_report
from pipelines.storage import OutputStore, StorageError

REFVOS_FORMATS = ("mevis", "revos", "reasonvos", "refytvos", "refdavis17")
GROUNDING_FORMATS = ("charades-sta", "activitynet")
FORMATS = REFVOS_FORMATS + GROUNDING_FORMATS
LABEL_MASKS_DIR = "masks"


@dataclass
class RayConfig:
    """How the scoring runs on Ray."""

    num_cpus: int | None = None  # CPUs of the local instance started when none is running (None: all)
    concurrency: int = 2  # scoring actors
    chunk_frames: int = 64  # frames of one expression decoded at a time

    def __post_init__(self) -> None:
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ValueError(f"ray.num_cpus must be >= 1 or null, got {self.num_cpus}")
        if self.concurrency < 1:
            raise ValueError(f"ray.concurrency must be >= 1, got {self.concurrency}")
        if self.chunk_frames < 1:
            raise ValueError(f"ray.chunk_frames must be >= 1, got {self.chunk_frames}")


@dataclass
class ReportConfig:
    """What the HTML report shows."""

    worst_count: int = 20
    overlays: int = 6
    overlay_frames: int = 4

    def __post_init__(self) -> None:
        for name in ("worst_count", "overlays", "overlay_frames"):
            if getattr(self, name) < 0:
                raise ValueError(f"report.{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class EvalConfig:
    """``vrseg evaluate`` configuration (``configs/eval/default.yaml``)."""

    split: str | None = None
    ray: RayConfig = field(default_factory=RayConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    refdavis17_four_run: bool = True
    storage_options: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- inputs


class CommittedPredictions(PredictionStore):
    """A labeling output's predictions (``<output>/masks/`` Parquet) restricted to committed videos.

    ``vrseg label`` makes a video visible by writing its commit marker last (``pipelines.storage``);
    a video without a marker (a crash mid-video) has no predictions here, so it scores as missing.
    """

    def __init__(self, masks: PredictionStore, committed: set[str]) -> None:
        super().__init__(masks.uri, masks.dataset)
        self.masks, self.committed = masks, committed

    def expressions(self, video_id: str) -> set[str]:
        return self.masks.expressions(video_id) if video_id in self.committed else set()

    def mask(self, video_id: str, expr_id: str, frame: int | str) -> np.ndarray | None:
        return self.masks.mask(video_id, expr_id, frame) if video_id in self.committed else None


def open_prediction_store(uri: str, dataset: Dataset | None,
                          storage_options: Mapping[str, Any] | None = None) -> PredictionStore:
    """The predictions at ``uri``: a labeling output (``<uri>/masks/`` + commit markers), else whatever
    ``pipelines.formats.open_predictions`` recognises (PNG layout, Parquet folder, CodaLab zip)."""
    masks = location(join(uri, LABEL_MASKS_DIR), storage_options)
    if not uri.rstrip("/").endswith(".zip") and masks.fs.isdir(masks.path):
        committed = set(OutputStore(uri, storage_options).committed())
        return CommittedPredictions(open_predictions(masks.uri, dataset, storage_options, kind="parquet"), committed)
    return open_predictions(uri, dataset, storage_options)


def read_grounding_predictions(uri: str, dataset: Dataset,
                               storage_options: Mapping[str, Any] | None = None) -> dict[int, tuple[float, float]]:
    """Top-1 ``(start, end)`` per query id from JSON lines ``{"video", "query", "start", "end"}``."""
    loc = location(uri, storage_options)
    try:
        text = loc.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(loc.uri, f"not UTF-8 text: {exc}") from None
    videos = {moment.query_id: moment.video_id for moment in dataset.moments}
    top1: dict[int, tuple[float, float]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        key = f"line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FormatError(loc.uri, f"not valid JSON: {exc.msg}", None, key) from None
        if not isinstance(row, dict) or any(k not in row for k in ("video", "query", "start", "end")):
            raise FormatError(loc.uri, "expected an object with 'video', 'query', 'start', 'end'", None, key)
        video, query = row["video"], row["query"]
        if isinstance(query, bool) or not isinstance(query, int) or query not in videos:
            raise FormatError(loc.uri, f"'query' {query!r} is not a line index of the annotation file", video, key)
        if video != videos[query]:
            raise FormatError(loc.uri, f"query {query} belongs to video {videos[query]!r}", video, key)
        start, end = row["start"], row["end"]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in (start, end)):
            raise FormatError(loc.uri, f"'start'/'end' must be finite numbers, got {start!r} {end!r}", video, key)
        if start > end:
            raise FormatError(loc.uri, f"start {start} is after end {end}", video, key)
        top1.setdefault(query, (float(start), float(end)))
    return top1


# --------------------------------------------------------------------------- per-item scoring (pure)


def _chunks(items: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for begin in range(0, len(items), size):
        yield items[begin : begin + size]


def _predicted_stack(store: PredictionStore, record: VideoRecord, expr_id: str, frames: Sequence[int]) -> np.ndarray:
    empty = np.zeros((record.height, record.width), dtype=bool)
    masks = [store.mask(record.video_id, expr_id, f) for f in frames]
    return np.stack([empty if m is None else m for m in masks])


def _truth_stack(record: VideoRecord, expression: Expression, frames: Sequence[int]) -> np.ndarray:
    return np.stack([record.target_mask(expression, f) for f in frames])


def score_refvos_expression(record: VideoRecord, expression: Expression, store: PredictionStore,
                            chunk_frames: int = 64, worst_frames: int = 4) -> dict[str, Any]:
    """One expression's report row: ``ExpressionResult.to_dict()`` plus ``text``, and ``worst_frames``
    (the indices of its lowest-J frames, at most ``worst_frames``, for the overlays).

    Truth and prediction are decoded ``chunk_frames`` frames at a time over ``record.scored_frames``;
    J and F are the frame means of ``metrics.score_expression`` weighted by chunk length, which is the
    mean over all scored frames.
    """
    frames = record.scored_frames(expression)
    present = store.has_expression(record.video_id, expression.expr_id)
    results: list[metrics.ExpressionResult] = []
    frame_j: list[np.ndarray] = []
    for chunk in _chunks(frames, chunk_frames):
        truth = _truth_stack(record, expression, chunk)
        predicted = _predicted_stack(store, record, expression.expr_id, chunk) if present else None
        results.append(metrics.score_expression(
            record.video_id, expression.expr_id, predicted, truth, kind=expression.kind,
            type_id=expression.type_id, no_target=not expression.obj_ids,
        ))
        if predicted is not None:
            frame_j.append(metrics.jaccard_per_frame(predicted, truth))
    weights = np.array([r.num_frames for r in results], dtype=np.float64)
    combined = dataclasses.replace(
        results[0],
        J=float(np.dot(weights, [r.J for r in results]) / weights.sum()),
        F=float(np.dot(weights, [r.F for r in results]) / weights.sum()),
        num_frames=int(weights.sum()),
        empty_fraction=None if results[0].empty_fraction is None
        else float(np.dot(weights, [r.empty_fraction or 0.0 for r in results]) / weights.sum()),
    )
    worst: list[int] = []
    if frame_j:
        per_frame = np.concatenate(frame_j)
        worst = [int(frames[i]) for i in np.argsort(per_frame, kind="stable")[:worst_frames]]
    return {**combined.to_dict(), "text": expression.text, "worst_frames": sorted(worst)}


def score_davis_run(record: VideoRecord, slot: int, store: PredictionStore) -> list[dict[str, Any]]:
    """Ref-DAVIS17 protocol (b) for one video and one slot: rows of ``metrics.score_davis_slot``.

    The slot's expressions (one per object) give binary masks, used as probabilities 0/1. Whole-video
    stacks are built here: Ref-DAVIS17 videos are short (tens of frames at 480p).
    """
    expressions = [e for e in record.expressions if e.slot == slot]
    frames = list(range(record.num_frames))
    obj_ids = [e.obj_ids[0] for e in expressions]
    probabilities = [
        _predicted_stack(store, record, e.expr_id, frames).astype(np.float32)
        if store.has_expression(record.video_id, e.expr_id) else None
        for e in expressions
    ]
    truth = np.stack([_truth_stack(record, e, frames) for e in expressions])
    rows = metrics.score_davis_slot(record.video_id, slot, obj_ids, [e.expr_id for e in expressions],
                                    probabilities, truth)
    return [row.to_dict() for row in rows]


# --------------------------------------------------------------------------- Ray Data stages


class _RefVOSScorer:
    """Ray Data stage: fetch the dataset and open the prediction store once, then score items."""

    def __init__(self, dataset_ref: list[Any], predictions_uri: str, storage_options: dict[str, Any],
                 chunk_frames: int, worst_frames: int) -> None:
        import ray

        self.dataset: Dataset = ray.get(dataset_ref[0])
        self.store = open_prediction_store(predictions_uri, self.dataset, storage_options)
        self.chunk_frames, self.worst_frames = chunk_frames, worst_frames

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        record = self.dataset.videos[item["video"]]
        expression = record.expressions[item["position"]]
        row = score_refvos_expression(record, expression, self.store, self.chunk_frames, self.worst_frames)
        return {"order": item["order"], "row": json.dumps(row)}


class _DavisRunScorer:
    """Ray Data stage for Ref-DAVIS17's four-run protocol: one (video, slot) per item."""

    def __init__(self, dataset_ref: list[Any], predictions_uri: str, storage_options: dict[str, Any]) -> None:
        import ray

        self.dataset: Dataset = ray.get(dataset_ref[0])
        self.store = open_prediction_store(predictions_uri, self.dataset, storage_options)

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        rows = score_davis_run(self.dataset.videos[item["video"]], item["slot"], self.store)
        return {"order": item["order"], "row": json.dumps(rows)}


def _score_moment_item(item: dict[str, Any]) -> dict[str, Any]:
    predicted = None if item["pred_start"] is None else (item["pred_start"], item["pred_end"])
    result = metrics.score_moment(item["video"], item["query"], predicted, (item["start"], item["end"]))
    row = {
        "video": item["video"], "expr_id": str(item["query"]), "query": item["query"], "text": item["text"],
        "start": item["start"], "end": item["end"], "pred_start": item["pred_start"], "pred_end": item["pred_end"],
        "IoU": result.iou, "missing": result.missing,
    }
    return {"order": item["order"], "row": json.dumps(row)}


def _ensure_ray(num_cpus: int | None) -> None:
    """Connect to ``RAY_ADDRESS`` if set, else start a local instance; nothing when Ray is already up."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)


def _run_stage(items: list[dict[str, Any]], stage: Any, concurrency: int,
               constructor_kwargs: dict[str, Any] | None = None) -> list[Any]:
    """Map ``stage`` over ``items`` on Ray Data; the decoded ``row`` of each item, in item order."""
    import ray

    dataset = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 4 * concurrency)))
    if constructor_kwargs is None:
        mapped = dataset.map(stage)
    else:
        mapped = dataset.map(stage, fn_constructor_kwargs=constructor_kwargs,
                             compute=ray.data.ActorPoolStrategy(size=concurrency))
    rows = sorted(mapped.take_all(), key=lambda r: r["order"])
    return [json.loads(r["row"]) for r in rows]


# --------------------------------------------------------------------------- evaluation


def _result_of(row: Mapping[str, Any]) -> metrics.ExpressionResult:
    names = {f.name for f in dataclasses.fields(metrics.ExpressionResult)}
    return metrics.ExpressionResult(**{k: v for k, v in row.items() if k in names})


def _davis_result_of(row: Mapping[str, Any]) -> metrics.DavisObjectResult:
    names = {f.name for f in dataclasses.fields(metrics.DavisObjectResult)}
    return metrics.DavisObjectResult(**{k: v for k, v in row.items() if k in names})


def _read_frame(record: VideoRecord, frame_idx: int, storage_options: Mapping[str, Any] | None) -> np.ndarray | None:
    """The JPEG of a frame for the overlay background, or None when the dataset has no frame folder."""
    if record.frames_uri is None:
        return None
    loc = location(join(record.frames_uri, f"{record.frame_names[frame_idx]}.jpg"), storage_options)
    try:
        return np.asarray(Image.open(io.BytesIO(loc.fs.cat_file(loc.path))).convert("RGB"))
    except (FileNotFoundError, UnidentifiedImageError, OSError):
        return None


def _failures(report: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], dataset: Dataset, store: PredictionStore,
              config: EvalConfig, storage_options: Mapping[str, Any] | None) -> list[Failure]:
    """Overlays of the worst imperfect (and not missing) expressions, a few of their lowest-J frames each."""
    worst_frames = {(r["video"], r["expr_id"]): r.get("worst_frames", []) for r in rows}
    candidates = [r for r in worst_rows(report, len(rows)) if not r.get("missing") and r["J&F"] < 1.0]
    candidates = candidates[: config.report.overlays]
    failures = []
    for row in candidates:
        record = dataset.videos[row["video"]]
        expression = next(e for e in record.expressions if e.expr_id == row["expr_id"])
        frames = []
        for frame_idx in worst_frames[(row["video"], row["expr_id"])]:
            truth = record.target_mask(expression, frame_idx)
            predicted = store.mask(record.video_id, expression.expr_id, frame_idx)
            predicted = np.zeros_like(truth) if predicted is None else predicted
            frames.append(OverlayFrame(frame_idx, truth, predicted, _read_frame(record, frame_idx, storage_options),
                                       metrics.jaccard(predicted, truth)))
        failures.append(Failure(row["video"], row["expr_id"], expression.text, row["J&F"], frames))
    return failures


def _evaluate_refvos(format: str, dataset: Dataset, predictions_uri: str, options: dict[str, Any],
                     config: EvalConfig) -> tuple[dict[str, Any], list[Failure]]:
    import ray

    dataset_ref = ray.put(dataset)
    pairs = [(video_id, position) for video_id, record in dataset.videos.items()
             for position in range(len(record.expressions))]
    items = [{"order": order, "video": video_id, "position": position}
             for order, (video_id, position) in enumerate(pairs)]
    rows = _run_stage(items, _RefVOSScorer, config.ray.concurrency, {
        "dataset_ref": [dataset_ref], "predictions_uri": predictions_uri, "storage_options": options,
        "chunk_frames": config.ray.chunk_frames, "worst_frames": config.report.overlay_frames,
    })
    results = [_result_of(row) for row in rows]
    summary = metrics.revos_summary(results) if format == "revos" else metrics.refvos_summary(results)
    extra: dict[str, Any] = {}
    if format == "refdavis17" and config.refdavis17_four_run:
        runs = [(video_id, slot) for video_id, record in dataset.videos.items() if record.expressions
                for slot in range(len(metrics.DAVIS_SLOTS))]
        run_items = [{"order": order, "video": video_id, "slot": slot} for order, (video_id, slot) in enumerate(runs)]
        run_rows = [row for rows_of_item in _run_stage(run_items, _DavisRunScorer, config.ray.concurrency, {
            "dataset_ref": [dataset_ref], "predictions_uri": predictions_uri, "storage_options": options,
        }) for row in rows_of_item]
        four_run = metrics.refdavis_four_run_summary([_davis_result_of(r) for r in run_rows]).to_dict()
        extra["four_run"] = {k: four_run[k] for k in ("J", "F", "J&F", "num_expressions", "subsets")}
    report_rows = [{k: v for k, v in row.items() if k != "worst_frames"} for row in rows]
    head = summary.to_dict()
    report = build_report(format, "refvos", summary.scores, report_rows, head["missing"], head["subsets"], extra)
    store = open_prediction_store(predictions_uri, dataset, options)
    return report, _failures(report, rows, dataset, store, config, options)


def _evaluate_grounding(format: str, dataset: Dataset, predictions_uri: str, options: dict[str, Any],
                        config: EvalConfig) -> dict[str, Any]:
    predicted = read_grounding_predictions(predictions_uri, dataset, options)
    items = [
        {"order": index, "video": m.video_id, "query": m.query_id, "text": m.text, "start": m.start, "end": m.end,
         "pred_start": predicted[m.query_id][0] if m.query_id in predicted else None,
         "pred_end": predicted[m.query_id][1] if m.query_id in predicted else None}
        for index, m in enumerate(dataset.moments)
    ]
    rows = _run_stage(items, _score_moment_item, config.ray.concurrency)
    results = [metrics.GroundingResult(r["video"], r["query"], r["IoU"], r["missing"]) for r in rows]
    summary = metrics.grounding_summary(results)
    missing = [{"video": m["video"], "expr_id": str(m["query"]), "query": m["query"]} for m in summary.missing]
    return build_report(format, "grounding", summary.scores, rows, missing, summary.subsets)


def evaluate(format: str, annotations_uri: str, predictions_uri: str, out_uri: str,
             storage_options: Mapping[str, Any] | None = None, config: EvalConfig | None = None) -> dict[str, Any]:
    """Score ``predictions_uri`` against ``annotations_uri`` (a benchmark in ``format``), write
    ``report.json`` and ``report.html`` under ``out_uri``, and return the report.

    ``storage_options`` (else ``config.storage_options``, else the AWS environment) reach every URI.
    Mask predictions: a labeling output (``masks/`` Parquet of its committed videos), a Parquet folder,
    the PNG layout or a CodaLab zip. Grounding predictions: JSON lines. Uses the running Ray instance,
    else connects to ``RAY_ADDRESS``, else starts a local one (``config.ray.num_cpus``).
    """
    config = config or EvalConfig()
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; expected one of {list(FORMATS)}")
    options = dict(storage_options if storage_options is not None else config.storage_options)
    dataset = read_dataset(format, annotations_uri, options, config.split)
    if format in GROUNDING_FORMATS and not dataset.moments:
        raise FormatError(annotations_uri, "the annotations hold no queries to score")
    if format in REFVOS_FORMATS and not any(record.expressions for record in dataset.videos.values()):
        raise FormatError(annotations_uri, "the annotations hold no expressions to score")
    _ensure_ray(config.ray.num_cpus)
    if format in GROUNDING_FORMATS:
        report, failures = _evaluate_grounding(format, dataset, predictions_uri, options, config), []
    else:
        report, failures = _evaluate_refvos(format, dataset, predictions_uri, options, config)
    write_report(report, out_uri, failures, options, config.report.worst_count)
    return report


# --------------------------------------------------------------------------- command line


def _headline(report: Mapping[str, Any]) -> str:
    keys = ("J", "F", "J&F") if report["task"] == "refvos" else ("R@0.3", "R@0.5", "R@0.7", "mIoU")
    return ", ".join(f"{k} {100 * report[k]:.1f}" for k in keys)


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(EvalConfig, args.config, args.overrides)
        report = evaluate(args.format, args.annotations, args.predictions, args.out, config=config)
    except (ConfigError, FormatError, ReportError, StorageError, ValueError) as exc:
        print(f"vrseg evaluate: {redact(str(exc))}", file=sys.stderr)
        return 2
    print(
        f"vrseg evaluate: {report['format']} {_headline(report)} over {report['num_expressions']} "
        f"({len(report['missing'])} missing) -> {redact(join(args.out, 'report.html'))}"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="score predictions against a benchmark and write report.json / report.html",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--annotations", required=True, help="benchmark annotations (path, file://, s3://)")
    parser.add_argument("--predictions", required=True,
                        help="PNG layout, Parquet / labeling output, CodaLab zip, or grounding JSON lines")
    parser.add_argument("--out", required=True, help="where report.json and report.html go")
    parser.add_argument("--config", default=None, help="YAML (default: configs/eval/default.yaml's values)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. ray.concurrency=1")
    parser.set_defaults(func=run)
