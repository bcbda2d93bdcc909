"""``vrseg evaluate``: score a prediction set against a benchmark's annotations and write the report.

The program reads top to bottom as the data flow:

1. read the annotations into the internal ``Dataset`` (masks stay lazy RLE / PNG / polygon
   references; images are one-frame videos), check they hold something to score, and open the
   predictions (``pipelines.evaluate_inputs``), which must match at least one expression;
2. put the dataset once in Ray's object store and make one work item per (video, expression) (or per
   grounding query, or per (video, annotator run) for Ref-DAVIS17's four-run protocol);
3. score the items on Ray Data with a fixed pool of scoring actors: each actor fetches the dataset and
   opens the prediction store once, then scores one item inside the task
   (``pipelines.evaluate_scoring``: truth and predicted masks decoded ``chunk_frames`` frames at a
   time) and returns only numbers (masks never pass through the driver). A malformed input met in a
   worker comes back as the same one-line message the driver would print;
4. summarise with the protocol of the format (``pipelines.metrics``), add the official scorer's
   number where it counts differently (``pipelines.official_convention``), draw the worst
   expressions' overlays (a few frames each, read in the driver) and write ``report.json`` /
   ``report.html``; the summary line names each headline protocol (Ref-DAVIS17: four-run first).

RefVOS predictions that are a labeling output with ``tracks/`` also get MomentSeg Table 13's BAP
diagnostics (``pipelines.bap_diagnostics``): the driver reads the tracks, each scoring actor measures
its expression's anchor and re-seeded frames beside its J and F, and the driver sums them into
``bap_diagnostics``; without tracks the report has ``bap_diagnostics_absent`` (the reason) instead.

Choices the issue leaves open:
- A predicted expression that lacks some frames has an empty mask on those frames (not an error:
  the labeling output omits nothing, and an evaluator must not reward a gap). A wholly absent
  expression scores 0 and is listed in ``missing`` (``pipelines.metrics``).
- Scored rows travel back from the actors as JSON text, so Arrow never has to unify columns that are
  null in some blocks (``kind``, ``type_id``, ``empty_fraction``).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from actors.config import ConfigError, load_config
from actors.uri import join, redact
from pipelines import bap_diagnostics, metrics, official_convention
from pipelines.evaluate_inputs import (
    open_prediction_store,
    read_grounding_predictions,
    read_label_tracks,
    require_scorable,
    require_some_prediction,
)
from pipelines.evaluate_scoring import (
    measure_bap_expression,
    score_davis_run,
    score_image_expression,
    score_refvos_expression,
)
from pipelines.formats import Dataset, FormatError, PredictionStore, VideoRecord, read_dataset
from pipelines.formats.files import location
from pipelines.report import (
    ITEM_KEY,
    PRIMARY_SCORE,
    Failure,
    OverlayFrame,
    ReportError,
    build_report,
    headline_text,
    worst_rows,
    write_report,
)
from pipelines.storage import StorageError

REFVOS_FORMATS = ("mevis", "revos", "reasonvos", "refytvos", "refdavis17")
GROUNDING_FORMATS = ("charades-sta", "activitynet")
IMAGE_FORMATS = ("refcoco", "reasonseg")
FORMATS = REFVOS_FORMATS + GROUNDING_FORMATS + IMAGE_FORMATS


class InputError(ValueError):
    """A malformed input met inside a scoring worker; its message is the worker's ``FormatError``'s."""


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


# --------------------------------------------------------------------------- Ray Data stages


def _scored(order: int, produce: Callable[[], Any]) -> dict[str, Any]:
    """An item's output row: its JSON ``row``, or the ``error`` of a malformed input met while scoring it."""
    try:
        return {"order": order, "row": json.dumps(produce()), "error": ""}
    except FormatError as exc:
        return {"order": order, "row": "null", "error": str(exc)}


class _MaskScorer:
    """Ray Data stage: fetch the dataset and open the prediction store once, then score items.

    ``kind`` is ``expression`` (a RefVOS expression), ``image`` (an image expression) or ``davis_run``
    (one video and annotator run of Ref-DAVIS17's four-run protocol).
    """

    def __init__(self, dataset_ref: list[Any], predictions_uri: str, storage_options: dict[str, Any], kind: str,
                 chunk_frames: int = 64, worst_frames: int = 4) -> None:
        import ray

        self.dataset: Dataset = ray.get(dataset_ref[0])
        self.store = open_prediction_store(predictions_uri, self.dataset, storage_options)
        self.kind, self.chunk_frames, self.worst_frames = kind, chunk_frames, worst_frames

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        return _scored(item["order"], lambda: self._score(self.dataset.videos[item["video"]], item))

    def _score(self, record: VideoRecord, item: dict[str, Any]) -> Any:
        if self.kind == "davis_run":
            return score_davis_run(record, item["slot"], self.store)
        expression = record.expressions[item["position"]]
        if self.kind == "image":
            return score_image_expression(record, expression, self.store)
        row = score_refvos_expression(record, expression, self.store, self.chunk_frames, self.worst_frames)
        if item.get("track"):
            row["bap"] = measure_bap_expression(record, expression, self.store, json.loads(item["track"]))
        return row


def _score_moment_item(item: dict[str, Any]) -> dict[str, Any]:
    def produce() -> dict[str, Any]:
        predicted = None if item["pred_start"] is None else (item["pred_start"], item["pred_end"])
        result = metrics.score_moment(item["video"], item["query"], predicted, (item["start"], item["end"]))
        return {
            "video": item["video"], "expr_id": str(item["query"]), "query": item["query"], "text": item["text"],
            "start": item["start"], "end": item["end"], "pred_start": item["pred_start"],
            "pred_end": item["pred_end"], "IoU": result.iou, "missing": result.missing,
        }

    return _scored(item["order"], produce)


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
    """Map ``stage`` over ``items`` on Ray Data; the decoded ``row`` of each item, in item order.

    A malformed input met by a worker raises ``InputError`` here with the worker's message (the first
    such item in item order), so it reads as it would had the driver met it.
    """
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = False
    dataset = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 4 * concurrency)))
    if constructor_kwargs is None:
        mapped = dataset.map(stage)
    else:
        mapped = dataset.map(stage, fn_constructor_kwargs=constructor_kwargs,
                             compute=ray.data.ActorPoolStrategy(size=concurrency))
    rows = sorted(mapped.take_all(), key=lambda r: r["order"])
    errors = [r["error"] for r in rows if r["error"]]
    if errors:
        raise InputError(errors[0])
    return [json.loads(r["row"]) for r in rows]


def _score_masks(dataset_ref: Any, items: list[dict[str, Any]], kind: str, predictions_uri: str,
                 options: dict[str, Any], config: EvalConfig) -> list[Any]:
    return _run_stage(items, _MaskScorer, config.ray.concurrency, {
        "dataset_ref": [dataset_ref], "predictions_uri": predictions_uri, "storage_options": options, "kind": kind,
        "chunk_frames": config.ray.chunk_frames, "worst_frames": config.report.overlay_frames,
    })


# --------------------------------------------------------------------------- evaluation


def _expression_items(dataset: Dataset) -> list[dict[str, Any]]:
    pairs = [(video_id, position) for video_id, record in dataset.videos.items()
             for position in range(len(record.expressions))]
    return [{"order": order, "video": video_id, "position": position}
            for order, (video_id, position) in enumerate(pairs)]


def _with_tracks(dataset: Dataset, items: list[dict[str, Any]],
                 tracks: Mapping[tuple[str, str], Mapping[str, Any]]) -> tuple[list[dict[str, Any]], int, int]:
    """``items`` with each expression's track as JSON (``track``; empty when it has none or refers to no
    target), and how many expressions lack a track and how many refer to no target."""
    out, no_track, no_target = [], 0, 0
    for item in items:
        expression = dataset.videos[item["video"]].expressions[item["position"]]
        track = tracks.get((item["video"], expression.expr_id))
        no_target += not expression.obj_ids
        no_track += bool(expression.obj_ids) and track is None
        out.append({**item, "track": json.dumps(track) if track is not None and expression.obj_ids else ""})
    return out, no_track, no_target


def _bap_block(rows: Sequence[Mapping[str, Any]], reason: str | None, no_track: int,
               no_target: int) -> dict[str, Any]:
    """The report's ``bap_diagnostics`` from the rows' measurements, or ``bap_diagnostics_absent``: why not."""
    measures = [bap_diagnostics.ExpressionMeasures.from_dict(r["bap"]) for r in rows if r.get("bap")]
    if reason is None and not measures:
        reason = "no evaluated expression that refers to a target has a track in the labeling output"
    if reason is not None:
        return {"bap_diagnostics_absent": reason}
    return {"bap_diagnostics": bap_diagnostics.summarize(measures, no_track, no_target)}


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
    item, score = ITEM_KEY[report["task"]], PRIMARY_SCORE[report["task"]]
    worst_frames = {(r[item], r["expr_id"]): r.get("worst_frames", []) for r in rows}
    candidates = [r for r in worst_rows(report, len(rows)) if not r.get("missing") and r[score] < 1.0]
    candidates = candidates[: config.report.overlays]
    failures = []
    for row in candidates:
        record = dataset.videos[row[item]]
        expression = next(e for e in record.expressions if e.expr_id == row["expr_id"])
        frames = []
        for frame_idx in worst_frames[(row[item], row["expr_id"])]:
            truth = record.target_mask(expression, frame_idx)
            predicted = store.mask(record.video_id, expression.expr_id, frame_idx)
            predicted = np.zeros_like(truth) if predicted is None else predicted
            frames.append(OverlayFrame(frame_idx, truth, predicted, _read_frame(record, frame_idx, storage_options),
                                       metrics.jaccard(predicted, truth, record.void_mask(frame_idx))))
        failures.append(Failure(row[item], row["expr_id"], expression.text, row[score], frames))
    return failures


def _four_run(dataset: Dataset, dataset_ref: Any, predictions_uri: str, options: dict[str, Any],
              config: EvalConfig) -> dict[str, Any]:
    """Ref-DAVIS17 protocol (b): vrseg's scores, and davis2017-evaluation's where they differ."""
    runs = [(video_id, slot) for video_id, record in dataset.videos.items() if record.expressions
            for slot in range(len(metrics.DAVIS_SLOTS))]
    items = [{"order": order, "video": video_id, "slot": slot} for order, (video_id, slot) in enumerate(runs)]
    outputs = _score_masks(dataset_ref, items, "davis_run", predictions_uri, options, config)
    summary = metrics.refdavis_four_run_summary([_davis_result_of(r) for out in outputs for r in out["rows"]])
    head = summary.to_dict()
    block = {k: head[k] for k in ("J", "F", "J&F", "num_expressions", "subsets")}
    first_runs = [(item["video"], out) for item, out in zip(items, outputs, strict=True) if item["slot"] == 0]
    official = official_convention.four_run(
        [_davis_result_of(r) for out in outputs for r in out["official"]], summary.scores,
        dropped=[f"{video}:{obj}" for video, out in first_runs for obj in out["dropped"]],
        unexpressed=[f"{video}:{obj}" for video, out in first_runs for obj in out["unexpressed"]],
        missing=len(summary.missing),
    )
    if official is not None:
        block["official_convention"] = official
    return block


def _evaluate_refvos(format: str, dataset: Dataset, store: PredictionStore, predictions_uri: str,
                     options: dict[str, Any], config: EvalConfig) -> tuple[dict[str, Any], list[Failure]]:
    import ray

    dataset_ref = ray.put(dataset)
    tracks, no_tracks_reason = read_label_tracks(predictions_uri, options)
    items, no_track, no_target = _with_tracks(dataset, _expression_items(dataset), tracks)
    rows = _score_masks(dataset_ref, items, "expression", predictions_uri, options, config)
    results = [_result_of(row) for row in rows]
    summary = metrics.revos_summary(results) if format == "revos" else metrics.refvos_summary(results)
    extra: dict[str, Any] = _bap_block(rows, no_tracks_reason, no_track, no_target)
    if format == "refdavis17" and config.refdavis17_four_run:
        extra["four_run"] = _four_run(dataset, dataset_ref, predictions_uri, options, config)
    if format == "reasonvos":
        official = official_convention.reasonvos(results, summary.scores)
        if official is not None:
            extra["official_convention"] = official
    report_rows = [{k: v for k, v in row.items() if k not in ("worst_frames", "bap")} for row in rows]
    head = summary.to_dict()
    report = build_report(format, "refvos", summary.scores, report_rows, head["missing"], head["subsets"], extra)
    return report, _failures(report, rows, dataset, store, config, options)


def _evaluate_images(format: str, dataset: Dataset, store: PredictionStore, predictions_uri: str,
                     options: dict[str, Any], config: EvalConfig) -> tuple[dict[str, Any], list[Failure]]:
    import ray

    rows = _score_masks(ray.put(dataset), _expression_items(dataset), "image", predictions_uri, options, config)
    results = [metrics.ImageResult(r["image"], r["expr_id"], r["intersection"], r["union"], r["IoU"], r["missing"],
                                   r["kind"]) for r in rows]
    summary = metrics.image_summary(results)
    report_rows = [{k: v for k, v in row.items() if k != "worst_frames"} for row in rows]
    report = build_report(format, "image", summary.scores, report_rows, summary.missing, summary.subsets)
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
    the PNG layout, a CodaLab zip or ReferFormer's merged-palette runs. Grounding predictions: JSON
    lines. Inputs are checked on the driver before Ray starts. Uses the running Ray instance, else
    connects to ``RAY_ADDRESS``, else starts a local one (``config.ray.num_cpus``).
    """
    config = config or EvalConfig()
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; expected one of {list(FORMATS)}")
    options = dict(storage_options if storage_options is not None else config.storage_options)
    dataset = read_dataset(format, annotations_uri, options, config.split)
    require_scorable(dataset, annotations_uri, grounding=format in GROUNDING_FORMATS)
    if format in GROUNDING_FORMATS:
        _ensure_ray(config.ray.num_cpus)
        report, failures = _evaluate_grounding(format, dataset, predictions_uri, options, config), []
    else:
        store = open_prediction_store(predictions_uri, dataset, options)
        require_some_prediction(dataset, store)
        _ensure_ray(config.ray.num_cpus)
        evaluate_masks = _evaluate_images if format in IMAGE_FORMATS else _evaluate_refvos
        report, failures = evaluate_masks(format, dataset, store, predictions_uri, options, config)
    write_report(report, out_uri, failures, options, config.report.worst_count)
    return report


# --------------------------------------------------------------------------- command line


def run(args: argparse.Namespace) -> int:
    """The command: its summary line on stdout, or one error line on stderr and status 2 (Ray Data's
    progress and execution logs are turned down to errors, so stderr carries the command's own)."""
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    try:
        config = load_config(EvalConfig, args.config, args.overrides)
        report = evaluate(args.format, args.annotations, args.predictions, args.out, config=config)
    except (ConfigError, FormatError, ReportError, StorageError, ValueError) as exc:
        print(f"vrseg evaluate: {redact(str(exc))}", file=sys.stderr)
        return 2
    print(
        f"vrseg evaluate: {headline_text(report)} over {report['num_expressions']} "
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
                        help="PNG layout, Parquet / labeling output, CodaLab zip, ReferFormer's anno_<slot>/ runs, "
                             "or grounding JSON lines")
    parser.add_argument("--out", required=True, help="where report.json and report.html go")
    parser.add_argument("--config", default=None, help="YAML (default: configs/eval/default.yaml's values)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. ray.concurrency=1")
    parser.set_defaults(func=run)
