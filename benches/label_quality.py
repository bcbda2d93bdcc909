"""E2: label quality: how well track confidence ranks and calibrates, and what the no-target decisions do.

Two procedural splits are generated with ``benches/evidence.py``'s split machinery (``split_config``,
``cached_split``, ``read_split``: the same synth overrides and cache, so the held-out split is the one
``evidence.py`` measures): a calibration split (``--calibration-seed`` 600, ``--calibration-videos``,
default ``--videos``) and a held-out split (``--seed`` 1000, ``--videos`` 32). No training corpus uses
either seed (training: 0-2, validation: 500).

Both are labeled in this process with the model and engine settings of ``--config`` (default
``configs/label/default.yaml``) on ``VideoLabeler``, as ``evidence.py`` does; each track's features are
computed as the labeling writer computes them (``actors.track_confidence``: the ``[FIND]`` probabilities at
the low-res frames, rounded as the commit marker stores them, the key-frame S^p, and the statistics of the
per-frame scores, presence and mask areas). Every expression is scored with the evaluator's per-expression
scoring (``pipelines.evaluate.score_refvos_expression``), as labeled and with empty masks instead.

The calibration is fitted on the calibration split by ``pipelines.calibrate.fit_calibration`` (what
``vrseg calibrate`` fits: confidence on J&F >= ``--threshold`` 0.5, the no-target rule with
``--max-jf-loss`` 0.01); ``--save-calibration PATH`` writes it, ready for ``tracks.calibration``. On the
held-out split, the calibration is applied as the writer applies it (``TrackCalibration.assess``: a track
decided no-target is written empty and gets the rule's probability as its confidence), and reported:

- AUROC of the written confidence for "the written track's J&F >= 0.5" (``metrics.auroc``) and its expected
  calibration error over 10 bins (``metrics.expected_calibration_error``); the same for the confidence
  model alone on the tracks as labeled (no decisions);
- no-target accuracy, ReVOS protocol (``metrics.no_target_accuracy``: the mean fraction of frames predicted
  empty over the no-target expressions, ``revos_summary``'s ``no_target`` subset), with and without the
  decisions;
- mean J&F of the target-bearing expressions with and without the decisions, and the difference.

Targets (issue 17): AUROC >= 0.85; no-target accuracy >= 0.8 with the target-bearing J&F not lower by more
than 0.02 than without the decisions. ``ratio`` = AUROC of the written confidence over the AUROC of the
uncalibrated score ``vrseg report`` falls back to (the mean tracking score over present frames, 0 for a
track present nowhere) on the same held-out split labeled without a calibration.

Usage: ``python benches/label_quality.py [--config configs/label/default.yaml] [--videos 32]
[--save-calibration out/tracks.json]`` (smoke run: ``--config configs/label/tiny.yaml --videos 2``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import load_average, print_result
from evidence import Split, cached_split, expression_result, read_split, resolve, rounded, split_config

from actors.config import ConfigError
from actors.decode import VideoDecoder, uniform_indices
from actors.engine import ExpressionLabels, ExpressionQuery, VideoLabeler
from actors.grounding import CURVE_DECIMALS, find_probabilities
from actors.mllm import load_inference_model
from actors.model.segmllm import SegModel
from actors.rle import area
from actors.track_calibration import TrackCalibration
from actors.track_confidence import FEATURE_NAMES, track_features, track_stats
from pipelines import metrics
from pipelines.calibrate import MAX_JF_LOSS, ScoredTrack, fit_calibration, score_track
from pipelines.formats.prediction_memory import VideoMasksInMemory
from pipelines.label_config import LabelConfig, load_label_config

TARGET_AUROC, TARGET_NO_TARGET, MAX_TARGET_JF_DROP = 0.85, 0.8, 0.02
ECE_BINS = 10
TRACK_MEAN = FEATURE_NAMES.index("track_mean")


# --------------------------------------------------------------------------------------- labeling
def engine_features(labels: ExpressionLabels, lowres_frames: int, height: int, width: int) -> np.ndarray:
    """The track features the labeling writer computes for one expression of ``VideoLabeler``'s output."""
    num_frames = len(labels.rles)
    find_frames = uniform_indices(num_frames, min(lowres_frames, num_frames))
    find_scores = np.round(find_probabilities(labels.relevance[find_frames]), CURVE_DECIMALS)
    areas = np.array([area(rle) for rle in labels.rles], dtype=np.float64) / (height * width)
    return track_features(find_scores, labels.key_scores, track_stats(labels.scores, labels.present, areas))


def label_split(network: SegModel, config: LabelConfig, split: Split, name: str) -> list[ScoredTrack]:
    """Every expression of ``split`` labeled with ``config``'s engine and scored, as labeled and emptied."""
    start = time.perf_counter()
    labeler = VideoLabeler(network.mllm, network.sam2, config.engine)
    decoder, tracks = config.decoder_config(), []
    for video in split.videos:
        record = video.record
        with VideoDecoder(str(video.path), None, decoder) as source:
            labels = labeler.label(source, [ExpressionQuery(e.expr_id, e.text) for e in record.expressions])
        store = VideoMasksInMemory(record, {e.expr_id: e.rles for e in labels.expressions})
        for expression, out in zip(record.expressions, labels.expressions, strict=True):
            features = engine_features(out, config.engine.lowres_frames, labels.height, labels.width)
            tracks.append(score_track(record, expression, store, features, not bool(out.present.any())))
    print(f"  {name}: labeled and scored {len(tracks)} expressions of {len(split.videos)} videos in "
          f"{time.perf_counter() - start:.1f}s", flush=True)
    return tracks


# --------------------------------------------------------------------------------------- figures
def safe_auroc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """AUROC, or None when one class is absent."""
    return metrics.auroc(scores, labels) if 0 < sum(labels) < len(labels) else None


def mean_or_none(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


@dataclass(frozen=True)
class Written:
    """What the writer would write for one held-out track with the calibration: confidence, decision, row."""

    confidence: float
    decided: bool
    row: dict[str, Any]


def written(track: ScoredTrack, calibration: TrackCalibration) -> Written:
    """``TrackCalibration.assess`` as the labeling writer applies it: a decided track is written empty."""
    confidence, no_target = calibration.assess(np.array(track.features), track.engine_no_target)
    decided = no_target and not track.engine_no_target
    return Written(confidence, decided, track.empty_row if decided else track.row)


def quality_figures(tracks: Sequence[ScoredTrack], calibration: TrackCalibration, threshold: float) -> dict[str, Any]:
    """The held-out figures of the module docstring."""
    out = [written(t, calibration) for t in tracks]
    good_written = [w.row["J&F"] >= threshold for w in out]
    good_labeled = [t.jf >= threshold for t in tracks]
    confidence = [w.confidence for w in out]
    plain = calibration.predict(np.array([t.features for t in tracks])).tolist()
    raw = [t.features[TRACK_MEAN] for t in tracks]
    targets = [i for i, t in enumerate(tracks) if t.has_target]
    jf_with = mean_or_none([out[i].row["J&F"] for i in targets])
    jf_without = mean_or_none([tracks[i].jf for i in targets])
    return {
        "tracks": len(tracks), "good_written": int(sum(good_written)), "good_labeled": int(sum(good_labeled)),
        "auroc": safe_auroc(confidence, good_written),
        "ece": metrics.expected_calibration_error(confidence, good_written, ECE_BINS),
        "auroc_no_decisions": safe_auroc(plain, good_labeled),
        "ece_no_decisions": metrics.expected_calibration_error(plain, good_labeled, ECE_BINS),
        "auroc_raw_mean_track_score": safe_auroc(raw, good_labeled),
        "no_target_expressions": len(tracks) - len(targets),
        "decided_no_target": sum(w.decided for w in out),
        "decided_with_target": sum(out[i].decided for i in targets),
        "no_target_accuracy": metrics.no_target_accuracy([expression_result(w.row) for w in out]),
        "no_target_accuracy_no_decisions": metrics.no_target_accuracy([expression_result(t.row) for t in tracks]),
        "target_jf": jf_with, "target_jf_no_decisions": jf_without,
        "target_jf_delta": None if jf_with is None or jf_without is None else jf_with - jf_without,
    }


def target_rows(heldout: dict[str, Any], threshold: float) -> list[dict[str, Any]]:
    """Each target with its measured value and whether it holds (None: not measurable)."""
    auroc, accuracy, delta = heldout["auroc"], heldout["no_target_accuracy"], heldout["target_jf_delta"]
    return [
        {"name": f"AUROC of confidence for J&F >= {threshold} >= {TARGET_AUROC}", "value": auroc,
         "met": None if auroc is None else auroc >= TARGET_AUROC},
        {"name": f"no-target accuracy (ReVOS) >= {TARGET_NO_TARGET}", "value": accuracy,
         "met": None if accuracy is None else accuracy >= TARGET_NO_TARGET},
        {"name": f"target-bearing J&F not lower by more than {MAX_TARGET_JF_DROP}", "value": delta,
         "met": None if delta is None else delta >= -MAX_TARGET_JF_DROP},
    ]


# --------------------------------------------------------------------------------------- the bench
def split_namespace(args: argparse.Namespace, seed: int, videos: int) -> argparse.Namespace:
    """The arguments ``evidence.split_config`` reads, for one of the two splits."""
    return argparse.Namespace(synth_config=args.synth_config, seed=seed, videos=videos, frames=args.frames,
                              late_fraction=args.late_fraction, per_kind=args.per_kind, no_target=args.no_target,
                              moments=args.moments)


def load_split(args: argparse.Namespace, seed: int, videos: int) -> Split:
    start = time.perf_counter()
    root, cached = cached_split(split_config(split_namespace(args, seed, videos)), Path(args.cache_dir))
    print(f"split seed {seed}: {root} ({'cached' if cached else f'generated in {time.perf_counter() - start:.1f}s'})",
          flush=True)
    return read_split(root)


def pct(value: float | None) -> str:
    return "   n/a" if value is None else f"{100 * value:6.1f}"


def num(value: float | None) -> str:
    return "  n/a" if value is None else f"{value:.3f}"


def print_tables(figures: dict[str, Any]) -> None:
    fit, held = figures["calibration"], figures["heldout"]
    print(f"\nconfig {figures['config']}; calibration split seed {figures['splits']['calibration']['seed']} "
          f"({fit.get('tracks', 0)} tracks), held-out split seed {figures['splits']['heldout']['seed']}")
    if figures["fit_error"]:
        print(f"calibration not fitted: {figures['fit_error']}")
        return
    rule = fit["no_target_rule"]
    print(f"fitted: {fit['positives']} good of {fit['tracks']} tracks; no-target rule "
          + ("none" if rule is None else f"threshold {rule['threshold']:.3f}, deciding {rule['decided']} "
             f"({rule['decided_with_target']} with a target) on the calibration split"))
    print(f"\nHeld-out ({held['tracks']} tracks, {held['no_target_expressions']} without a target)"
          "            with decisions   without")
    print(f"  AUROC, confidence for J&F >= {figures['threshold']}              {num(held['auroc'])}"
          f"           {num(held['auroc_no_decisions'])}")
    print(f"  ECE ({ECE_BINS} bins)                                  {num(held['ece'])}"
          f"           {num(held['ece_no_decisions'])}")
    print(f"  AUROC, raw mean tracking score (baseline)                         "
          f"{num(held['auroc_raw_mean_track_score'])}")
    print(f"  no-target accuracy (ReVOS, frames predicted empty)  {pct(held['no_target_accuracy'])}"
          f"          {pct(held['no_target_accuracy_no_decisions'])}")
    print(f"  J&F, target-bearing expressions                     {pct(held['target_jf'])}"
          f"          {pct(held['target_jf_no_decisions'])}   (delta {pct(held['target_jf_delta']).strip()})")
    print(f"  tracks decided no-target: {held['decided_no_target']} ({held['decided_with_target']} with a target)")
    print("\nTargets")
    for row in figures["targets"]:
        verdict = "n/a" if row["met"] is None else "met" if row["met"] else "MISSED"
        value = "" if row["value"] is None else f" ({row['value']:.4f})"
        print(f"  {row['name']:<62} {verdict}{value}")
    print(f"\nratio: AUROC {num(held['auroc'])} (calibrated, as written) over "
          f"{num(held['auroc_raw_mean_track_score'])} (raw mean tracking score) = {figures['ratio']}")


def run(args: argparse.Namespace, config: LabelConfig, network: SegModel) -> dict[str, Any]:
    start = time.perf_counter()
    calibration_split = load_split(args, args.calibration_seed, args.calibration_videos or args.videos)
    heldout_split = load_split(args, args.seed, args.videos)
    fitting = label_split(network, config, calibration_split, "calibration split")
    heldout = label_split(network, config, heldout_split, "held-out split")
    figures: dict[str, Any] = {
        "bench": "label_quality", "ratio": None, "config": args.config, "threshold": args.threshold,
        "splits": {"calibration": {"seed": args.calibration_seed, "videos": len(calibration_split.videos),
                                   "cache": str(calibration_split.root)},
                   "heldout": {"seed": args.seed, "videos": len(heldout_split.videos),
                               "cache": str(heldout_split.root)},
                   "frames": args.frames},
        "fit_error": None, "calibration": {"tracks": len(fitting)}, "heldout": {"tracks": len(heldout)},
    }
    try:
        calibration = fit_calibration(fitting, args.threshold, args.max_jf_loss,
                                      {"data": f"procedural split seed {args.calibration_seed}",
                                       "videos": len(calibration_split.videos), "config": args.config})
    except ValueError as exc:
        figures["fit_error"] = str(exc)
        calibration = None
    if calibration is not None:
        rule = calibration.no_target
        figures["calibration"] = {
            "tracks": len(fitting), "positives": calibration.fit_info["positives"],
            "no_target_rule": None if rule is None else {"threshold": rule.threshold, **{
                k: rule.fit_info[k] for k in ("decided", "decided_with_target", "target_jf_change")}}}
        if args.save_calibration:
            calibration.save(args.save_calibration)
            print(f"calibration saved to {args.save_calibration}", flush=True)
        figures["heldout"] = quality_figures(heldout, calibration, args.threshold)
        auroc, baseline = figures["heldout"]["auroc"], figures["heldout"]["auroc_raw_mean_track_score"]
        figures["ratio"] = None if auroc is None or not baseline else round(auroc / baseline, 4)
    figures["targets"] = target_rows(figures["heldout"], args.threshold) if calibration is not None else []
    figures["load_average"] = load_average()
    figures["seconds"] = round(time.perf_counter() - start, 1)
    return rounded(figures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/label/default.yaml", help="labeling config to measure")
    parser.add_argument("--synth-config", default="configs/synth/default.yaml", help="base of both splits")
    parser.add_argument("--seed", type=int, default=1000, help="held-out split seed")
    parser.add_argument("--calibration-seed", type=int, default=600, help="calibration split seed")
    parser.add_argument("--videos", type=int, default=32, help="held-out videos")
    parser.add_argument("--calibration-videos", type=int, default=None, help="calibration videos (default --videos)")
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--late-fraction", type=float, default=0.5, help="fraction of videos with a late target")
    parser.add_argument("--per-kind", type=int, default=2, help="expressions per kind with a target")
    parser.add_argument("--no-target", type=int, default=1, help="no-target expressions per video")
    parser.add_argument("--moments", type=int, default=3, help="grounding queries per video (evidence.py's split)")
    parser.add_argument("--threshold", type=float, default=0.5, help="a track is good when its J&F >= this")
    parser.add_argument("--max-jf-loss", type=float, default=MAX_JF_LOSS,
                        help="what the no-target rule may cost the calibration split's target-bearing J&F")
    parser.add_argument("--save-calibration", default=None, metavar="PATH", help="write the fitted calibration")
    parser.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "vrseg-evidence"))
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    print(f"load average at start: {load_average()}", flush=True)
    try:
        config, model = load_label_config(resolve(args.config))
        split_config(split_namespace(args, args.seed, args.videos))
    except (ConfigError, ValueError) as exc:
        raise SystemExit(f"label_quality: {exc}") from None
    torch.set_num_threads(args.threads)
    figures = run(args, config, load_inference_model(model))
    print_tables(figures)
    print(f"done in {figures['seconds']}s", flush=True)
    print_result(figures)


if __name__ == "__main__":
    main()
