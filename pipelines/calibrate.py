"""``vrseg calibrate``: fit a track calibration on a labeling output scored against its ground truth.

``vrseg calibrate --labels URI --annotations URI --format mevis --out calibration.json [--threshold 0.5]``

1. Reads the ``tracks/`` table of the labeling output's committed videos (``pipelines.formats.track_parquet``):
   each track's ``features`` (named by the file's ``vrseg.track_features`` metadata, which must be
   ``actors.track_confidence.FEATURE_NAMES``) and whether the engine found its object nowhere.
2. Scores every track whose (video, expression) the annotations hold with the evaluator's own
   per-expression scoring (``pipelines.evaluate.score_refvos_expression``) through the labeling output's
   prediction store, and once more as if its masks were empty (what a no-target decision would write).
3. Fits ``actors.track_calibration.TrackCalibration`` on "the track is good": J&F >= ``--threshold``;
   and, when the annotations have expressions both with and without a target, the ``NoTargetRule`` on
   "the expression has no target", its threshold fitted on the J&F gains of emptying each track, with the
   mean J&F of the target-bearing expressions allowed to fall by at most ``--max-jf-loss`` (see that
   module's docstring). Without both kinds there is no rule and the file's ``no_target`` is null.
4. Saves the JSON to ``--out``; its ``fit`` metadata names the labels, annotations and format it was fitted
   on, how many videos and tracks, and the good-track threshold.

Calibrate on an output labeled without a no-target rule: a track a rule decided was written empty while
its features describe the masks the engine produced, so its J&F would not be the J&F of those features
(such tracks are refused, recognised by ``no_target`` with a non-zero ``present_fraction`` feature).

Input problems (not a labeling output, no ``tracks/``, features named differently, no track matching an
expression of the annotations, only good or only bad tracks) stop the command with one line naming the
input (exit status 2, ``pipelines.command_line.run_command``). Locations are paths or fsspec URIs;
``storage_options`` (``--config`` YAML or ``key=value`` overrides) reach all of them.
"""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from actors import rle as rle_codec
from actors.config import load_config
from actors.track_calibration import NoTargetRule, TrackCalibration
from actors.track_confidence import FEATURE_NAMES
from actors.uri import redact
from pipelines.command_line import run_command
from pipelines.evaluate import REFVOS_FORMATS, score_refvos_expression
from pipelines.evaluate_inputs import open_prediction_store
from pipelines.export import committed_videos
from pipelines.formats import Dataset, Expression, FormatError, PredictionStore, VideoRecord, read_dataset
from pipelines.formats.prediction_memory import VideoMasksInMemory
from pipelines.formats.track_parquet import FEATURES_METADATA_KEY
from pipelines.label_writer import TRACKS_DIR
from pipelines.preflight import check_credentials
from pipelines.storage import CommitRecord, OutputStore

GOOD_THRESHOLD = 0.5  # a track is good when its J&F reaches this
MAX_JF_LOSS = 0.01  # what the no-target decisions may cost the target-bearing expressions' mean J&F


@dataclass
class CalibrateConfig:
    """``vrseg calibrate`` configuration (``--config`` YAML and ``key=value`` overrides): ``storage_options``
    reach ``--labels``, ``--annotations`` and ``--out``."""

    storage_options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ScoredTrack:
    """One track and its ground truth: ``row`` the evaluator's report row of its masks, ``empty_row`` that
    of empty masks instead, ``has_target`` (the expression names an object of the video),
    ``engine_no_target`` (the engine found the object on no frame)."""

    video_id: str
    expr_id: str
    features: tuple[float, ...]
    row: dict[str, Any]
    empty_row: dict[str, Any]
    has_target: bool
    engine_no_target: bool

    @property
    def jf(self) -> float:
        return float(self.row["J&F"])

    @property
    def empty_jf(self) -> float:
        return float(self.empty_row["J&F"])


@dataclass(frozen=True)
class LabeledTrack:
    """A ``tracks/`` row as calibration reads it."""

    features: tuple[float, ...]
    no_target: bool


def empty_masks(record: VideoRecord, expr_id: str) -> VideoMasksInMemory:
    """A prediction store holding an empty mask on every frame of ``record`` for ``expr_id``."""
    blank = rle_codec.encode(np.zeros((record.height, record.width), dtype=bool))
    return VideoMasksInMemory(record, {expr_id: [blank] * record.num_frames})


def score_track(record: VideoRecord, expression: Expression, store: PredictionStore, features: Sequence[float],
                engine_no_target: bool) -> ScoredTrack:
    """``ScoredTrack`` of ``expression``'s masks in ``store`` (the evaluator's per-expression scoring)."""
    row = score_refvos_expression(record, expression, store)
    empty_row = score_refvos_expression(record, expression, empty_masks(record, expression.expr_id))
    return ScoredTrack(record.video_id, expression.expr_id, tuple(float(v) for v in features), row, empty_row,
                       bool(expression.obj_ids), engine_no_target)


def fit_calibration(tracks: Sequence[ScoredTrack], threshold: float = GOOD_THRESHOLD,
                    max_jf_loss: float = MAX_JF_LOSS, metadata: Mapping[str, Any] | None = None) -> TrackCalibration:
    """The calibration of ``tracks`` (see the module docstring): confidence fitted on J&F >= ``threshold``,
    the no-target rule on the expressions without a target (None without both kinds). ``ValueError`` when
    the tracks are all good or all bad."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"--threshold must be in [0, 1], got {threshold}")
    features = np.array([t.features for t in tracks], dtype=np.float64).reshape(len(tracks), len(FEATURE_NAMES))
    good = np.array([t.jf >= threshold for t in tracks])
    has_target = np.array([t.has_target for t in tracks])
    info = {**(metadata or {}), "tracks": len(tracks), "label": f"J&F >= {threshold}"}
    calibration = TrackCalibration.fit(features, good, FEATURE_NAMES, metadata=info)
    if has_target.all() or not has_target.any():
        return calibration
    gains = np.array([t.empty_jf - t.jf for t in tracks])
    rule = NoTargetRule.fit(features, has_target, gains, FEATURE_NAMES, max_jf_loss,
                            metadata={**(metadata or {}), "label": "the expression has no target"})
    return calibration.with_no_target(rule)


def read_tracks(store: OutputStore, records: Sequence[CommitRecord]) -> dict[tuple[str, str], LabeledTrack]:
    """(video_id, expr_id) -> ``LabeledTrack`` of the committed videos' ``tracks/`` files; ``FormatError``
    naming the file when one is unreadable, names other features, or holds a track a no-target rule
    emptied, and naming the output when no video has a tracks file."""
    tracks: dict[tuple[str, str], LabeledTrack] = {}
    present = FEATURE_NAMES.index("present_fraction")
    paths = [f.path for record in records for f in record.files if f.path.startswith(f"{TRACKS_DIR}/")]
    if not paths:
        raise FormatError(redact(store.root), f"no committed video has a {TRACKS_DIR}/ file (labeled before "
                          "tracks were written?): nothing to calibrate on")
    for path in paths:
        uri = redact(store.uri(path))
        try:
            table = pq.read_table(io.BytesIO(store.read_bytes(path)), columns=["video_id", "expr_id", "no_target",
                                                                               "features"])
        except (OSError, pa.ArrowException, KeyError) as exc:
            raise FormatError(uri, f"not a readable tracks Parquet file: {exc}") from None
        names = json.loads((table.schema.metadata or {}).get(FEATURES_METADATA_KEY, b"null"))
        if names != list(FEATURE_NAMES):
            raise FormatError(uri, f"tracks with features {names}, calibration fits {list(FEATURE_NAMES)}")
        for row in table.to_pylist():
            if row["no_target"] and row["features"][present] > 0:
                raise FormatError(uri, f"track {row['expr_id']!r} of video {row['video_id']!r} was emptied by a "
                                  "no-target rule: calibrate on an output labeled without one")
            tracks[(row["video_id"], row["expr_id"])] = LabeledTrack(tuple(row["features"]), row["no_target"])
    return tracks


@dataclass(frozen=True)
class CalibrationSummary:
    out: str
    tracks: int
    good: int
    no_target_rule: bool


def calibrate(labels_uri: str, annotations_uri: str, fmt: str, out_uri: str, threshold: float = GOOD_THRESHOLD,
              max_jf_loss: float = MAX_JF_LOSS, storage_options: Mapping[str, Any] | None = None,
              split: str | None = None) -> CalibrationSummary:
    """Fit and save the calibration of ``labels_uri``'s tracks against ``annotations_uri`` (see the module
    docstring)."""
    if fmt not in REFVOS_FORMATS:
        raise ValueError(f"unknown format {fmt!r}; calibration scores video masks: one of {list(REFVOS_FORMATS)}")
    check_credentials([labels_uri, annotations_uri, out_uri], storage_options or {})
    store, records = committed_videos(labels_uri, storage_options)
    tracks = read_tracks(store, records)
    dataset: Dataset = read_dataset(fmt, annotations_uri, storage_options, split)
    predictions = open_prediction_store(labels_uri, dataset, storage_options)
    scored = [score_track(record, expression, predictions, tracks[key].features, tracks[key].no_target)
              for record in dataset.videos.values() for expression in record.expressions
              if (key := (record.video_id, expression.expr_id)) in tracks]
    expressions = sum(len(r.expressions) for r in dataset.videos.values())
    if not scored:
        raise FormatError(redact(labels_uri), f"none of its {len(tracks)} tracks matches one of the {expressions} "
                          f"expressions of {redact(annotations_uri)} ({fmt})")
    metadata = {"labels": redact(labels_uri), "annotations": redact(annotations_uri), "format": fmt,
                "videos": len({t.video_id for t in scored}), "expressions_without_track": expressions - len(scored)}
    try:
        calibration = fit_calibration(scored, threshold, max_jf_loss, metadata)
    except ValueError as exc:
        raise FormatError(redact(labels_uri), f"cannot fit on its {len(scored)} tracks scored against "
                          f"{redact(annotations_uri)}: {exc}") from None
    calibration.save(out_uri, storage_options)
    good = sum(t.jf >= threshold for t in scored)
    return CalibrationSummary(out_uri, len(scored), good, calibration.no_target is not None)


# ---------------------------------------------------------------------------------------- command line
def run(args: argparse.Namespace) -> int:
    """The command (``pipelines.command_line.run_command``)."""

    def work() -> str:
        config = load_config(CalibrateConfig, args.config, args.overrides)
        summary = calibrate(args.labels, args.annotations, args.format, args.out, args.threshold,
                            args.max_jf_loss, config.storage_options, args.split)
        rule = "with" if summary.no_target_rule else "without"
        return (f"fitted on {summary.tracks} tracks ({summary.good} with J&F >= {args.threshold}), {rule} a "
                f"no-target rule -> {redact(summary.out)}")

    return run_command("calibrate", work)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("calibrate", help="fit the track confidence and no-target calibration",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("--labels", required=True, help="a vrseg label --output folder (path, file://, s3://)")
    parser.add_argument("--annotations", required=True, help="its ground truth, in --format's layout")
    parser.add_argument("--format", required=True, choices=REFVOS_FORMATS)
    parser.add_argument("--split", default=None, help="the annotations' split (revos, refytvos, refdavis17)")
    parser.add_argument("--out", required=True, help="the calibration JSON to write (path, file://, s3://)")
    parser.add_argument("--threshold", type=float, default=GOOD_THRESHOLD, help="a track is good when J&F >= this")
    parser.add_argument("--max-jf-loss", type=float, default=MAX_JF_LOSS,
                        help="how much the no-target decisions may lower the target expressions' mean J&F")
    parser.add_argument("--config", default=None, help="YAML with storage_options (default: none)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. storage_options.anon=true")
    parser.set_defaults(func=run)
