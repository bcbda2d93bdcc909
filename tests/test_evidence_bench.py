"""``benches/evidence.py`` without a model: its split cache and its scoring of perfect predictions."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

from actors import rle as rle_codec
from actors.grounding import predict_moment
from pipelines.evaluate import score_refvos_expression
from pipelines.formats.prediction_memory import VideoMasksInMemory

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benches"))
evidence = importlib.import_module("evidence")


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - evidence.Split
    """A 2-video held-out split of the tiny synth config in which every video has a late target."""
    args = argparse.Namespace(synth_config="configs/synth/tiny.yaml", seed=1000, videos=2, frames=16,
                              late_fraction=1.0, per_kind=1, no_target=1, moments=2)
    config = evidence.split_config(args)
    cache = tmp_path_factory.mktemp("evidence-cache")
    root, cached = evidence.cached_split(config, cache)
    assert not cached
    assert evidence.cached_split(config, cache) == (root, True)  # same parameters: reused
    args.seed = 1001
    assert evidence.split_key(evidence.split_config(args)) not in root.name  # another seed, another split
    assert not list(cache.glob("*.partial-*"))
    return evidence.read_split(root)


def truth_masks(video) -> dict[str, list[rle_codec.RLE]]:  # noqa: ANN001 - evidence.SplitVideo
    """The ground-truth masks of every expression, per frame, as the engine outputs them."""
    record = video.record
    return {e.expr_id: [rle_codec.encode(record.target_mask(e, f)) for f in range(record.num_frames)]
            for e in record.expressions}


def test_split_has_every_kind_and_late_targets(split) -> None:
    kinds = {e.kind for v in split.videos for e in v.record.expressions}
    assert {"static", "no_target"} <= kinds
    assert len(split.videos) == 2 and all(v.path.is_file() for v in split.videos)
    late = set(split.late_keys())
    assert late and late < set(split.keys())
    lines = (split.root / "charades_sta.txt").read_text().splitlines()
    assert [m.query_id for m in split.moments()] == list(range(len(lines))) and lines


def test_perfect_masks_score_one_overall_and_per_kind(split) -> None:
    rows = []
    for video in split.videos:
        store = VideoMasksInMemory(video.record, truth_masks(video))
        rows += [evidence.expression_result(score_refvos_expression(video.record, e, store))
                 for e in video.record.expressions]
    figures = evidence.refvos_figures(rows)
    assert (figures["J"], figures["F"], figures["J&F"]) == (1.0, 1.0, 1.0)
    assert figures["num_expressions"] == len(split.keys())
    assert {kind: values["J&F"] for kind, values in figures["kinds"].items()} == dict.fromkeys(figures["kinds"], 1.0)
    # an empty prediction scores J = 1 on the frames without the target (all frames of a no-target
    # expression, the frames before a late target appears) and 0 elsewhere
    record = split.videos[0].record
    blank = rle_codec.encode(np.zeros((record.height, record.width), bool))
    empty = VideoMasksInMemory(record, {e.expr_id: [blank] * record.num_frames for e in record.expressions})
    for expression in record.expressions:
        absent = np.mean([not record.target_mask(expression, f).any() for f in range(record.num_frames)])
        scored = evidence.expression_result(score_refvos_expression(record, expression, empty))
        assert scored.J == absent
        assert (absent == 1.0) == (expression.kind == "no_target")


def test_find_curve_peaked_on_each_moment_gives_perfect_grounding(split) -> None:
    predictions = {}
    for video in split.videos:
        fps, num_frames = video.fps, video.record.num_frames
        for moment in video.moments:
            frames = np.arange(num_frames)
            inside = (frames >= round(moment.start * fps)) & (frames < round(moment.end * fps))
            predictions[moment.query_id] = predict_moment(np.where(inside, 6.0, -6.0), fps)
            assert predictions[moment.query_id] == (moment.start, moment.end)
    moments = split.moments()
    perfect = evidence.grounding_figures(moments, predictions)
    count = len(moments)
    assert perfect == {"R@0.3": 1.0, "R@0.5": 1.0, "R@0.7": 1.0, "mIoU": 1.0, "num_queries": count, "missing": 0}
    none = evidence.grounding_figures(moments, {})
    assert (none["R@0.5"], none["mIoU"], none["missing"]) == (0.0, 0.0, count)


def test_orderings_and_mode_rows() -> None:
    tiers = evidence.SAMPLER_TIERS
    assert evidence.tiers_hold({"mcs": 0.6, "nearbyk": 0.5, "topk": 0.55, "uniform": 0.4, "firstk": 0.3}, tiers)
    assert not evidence.tiers_hold({"mcs": 0.6, "nearbyk": 0.5, "topk": 0.61, "uniform": 0.4, "firstk": 0.3}, tiers)
    assert not evidence.tiers_hold({"mcs": 0.6, "nearbyk": 0.5, "topk": 0.5, "uniform": 0.3, "firstk": 0.3}, tiers)
    assert evidence.tiers_hold({"mcs": 0.6, "firstk": 0.3}, tiers)  # absent tiers are skipped
    assert evidence.tiers_hold({"mcs": None, "firstk": 0.3}, tiers) is None
    assert evidence.parse_modes(["forward:uniform", "keyframe", "bap"], "mcs") == [
        ("uniform", "forward"), ("mcs", "keyframe"), ("mcs", "bap")]
    assert evidence.parse_modes(evidence.DEFAULT_MODES, "mcs") == [  # Table 9's rows, top to bottom
        ("mcs", "forward"), ("mcs", "anchor_updating"), ("mcs", "memory_cleaning"), ("mcs", "bap")]
    assert evidence.BASELINE == ("uniform", "anchor_updating")
    with pytest.raises(ValueError, match="propagation.mode"):
        evidence.parse_modes(["sideways"], "mcs")
    with pytest.raises(ValueError, match="sampling.method"):
        evidence.parse_modes(["bap:random"], "mcs")
