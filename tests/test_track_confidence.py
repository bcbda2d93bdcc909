"""Track statistics, features, the logistic-regression calibration of track confidence and its no-target rule
(pure numpy), and the writer emptying the masks of a track the rule decides is no-target."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from actors.track_calibration import NEVER, CalibrationError, NoTargetRule, TrackCalibration, fit_threshold
from actors.track_confidence import FEATURE_NAMES, track_features, track_stats


def _auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    return float(((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg)))


def test_stats_are_over_present_frames_and_none_without_any() -> None:
    scores = np.array([0.9, 0.2, 0.8, 0.7, 0.1])
    present = np.array([True, False, True, True, False])
    areas = np.array([0.10, 0.0, 0.20, 0.30, 0.0])
    stats = track_stats(scores, present, areas)
    assert (stats.num_frames, stats.present_frames, stats.no_target) == (5, 3, False)
    assert stats.mean_track_score == pytest.approx(0.8)
    assert stats.area_mean == pytest.approx(0.2)
    assert stats.area_std == pytest.approx(np.std([0.1, 0.2, 0.3]))
    assert stats.area_max == pytest.approx(0.3)

    empty = track_stats(scores, np.zeros(5, bool), np.zeros(5))
    assert empty.no_target and empty.present_frames == 0
    assert (empty.mean_track_score, empty.area_mean, empty.area_std, empty.area_max) == (None, None, None, None)
    with pytest.raises(ValueError, match="equal non-empty"):
        track_stats(scores, present[:3], areas)


def test_features_follow_their_documented_names() -> None:
    stats = track_stats(np.array([0.9, 0.2, 0.8, 0.7]), np.array([True, False, True, True]),
                        np.array([0.1, 0.0, 0.2, 0.3]))
    features = dict(zip(FEATURE_NAMES, track_features([0.2, 0.8, 0.5], [0.6, 0.9], stats), strict=True))
    assert features == pytest.approx({
        "find_max": 0.8, "find_contrast": 0.3, "key_mean": 0.75, "key_max": 0.9, "track_mean": 0.8,
        "present_fraction": 0.75, "area_mean": 0.2, "area_cv": np.std([0.1, 0.2, 0.3]) / 0.2})

    none = track_features([0.1, 0.1], [0.3], track_stats(np.full(4, 0.2), np.zeros(4, bool), np.zeros(4)))
    assert dict(zip(FEATURE_NAMES, none, strict=True)) == pytest.approx({
        "find_max": 0.1, "find_contrast": 0.0, "key_mean": 0.3, "key_max": 0.3, "track_mean": 0.0,
        "present_fraction": 0.0, "area_mean": 0.0, "area_cv": 0.0})


def _separable(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Good tracks have high tracking scores and presence, bad ones low; the other features are noise."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([1, 0], 40)
    features = rng.uniform(0, 1, size=(80, len(FEATURE_NAMES)))
    features[:, FEATURE_NAMES.index("track_mean")] = np.where(labels == 1, rng.uniform(0.6, 1.0, 80),
                                                               rng.uniform(0.0, 0.4, 80))
    features[:, FEATURE_NAMES.index("present_fraction")] = np.where(labels == 1, rng.uniform(0.5, 1.0, 80),
                                                                     rng.uniform(0.0, 0.45, 80))
    return features, labels


def test_fit_on_separable_tracks_ranks_them_perfectly_and_is_deterministic() -> None:
    features, labels = _separable()
    calibration = TrackCalibration.fit(features, labels, FEATURE_NAMES, metadata={"data": "synthetic"})
    predictions = calibration.predict(features)
    assert predictions.shape == (80,) and np.all((predictions >= 0) & (predictions <= 1))
    assert _auroc(predictions, labels) == 1.0
    assert predictions[labels == 1].min() > 0.5 > predictions[labels == 0].max()
    # ordered: a track better on the informative features gets a higher confidence, all else equal
    middle = np.full(len(FEATURE_NAMES), 0.5)
    ladder = np.repeat(middle[None], 5, axis=0)
    ladder[:, FEATURE_NAMES.index("track_mean")] = np.linspace(0.0, 1.0, 5)
    assert np.all(np.diff(calibration.predict(ladder)) > 0)
    assert calibration.fit_info["converged"] and calibration.fit_info["samples"] == 80
    assert calibration.fit_info["positives"] == 40 and calibration.fit_info["data"] == "synthetic"
    again = TrackCalibration.fit(features, labels, FEATURE_NAMES, metadata={"data": "synthetic"})
    assert again.to_json() == calibration.to_json()


def test_fit_refuses_one_class_and_mismatched_shapes() -> None:
    features, labels = _separable()
    with pytest.raises(ValueError, match="both good and bad"):
        TrackCalibration.fit(features, np.ones(80), FEATURE_NAMES)
    with pytest.raises(ValueError, match=r"\(N, 8\) features"):
        TrackCalibration.fit(features[:, :3], labels, FEATURE_NAMES)


def test_save_load_round_trip_gives_identical_predictions(tmp_path: Path) -> None:
    features, labels = _separable(1)
    calibration = TrackCalibration.fit(features, labels, FEATURE_NAMES)
    uri = str(tmp_path / "calibrations" / "tracks.json")
    calibration.save(uri)
    loaded = TrackCalibration.load(uri)
    assert loaded == calibration
    np.testing.assert_array_equal(loaded.predict(features), calibration.predict(features))
    loaded.require_features(FEATURE_NAMES, uri)
    with pytest.raises(CalibrationError, match=r"tracks\.json: fitted on features \['find_max'"):
        loaded.require_features(FEATURE_NAMES[:-1], uri)


@pytest.mark.parametrize(("content", "problem"), [
    ("{not json", "not JSON"),
    ('{"format": "something.else", "version": 1}', "not a track calibration"),
    ('{"format": "vrseg.track_calibration", "version": 7}', r"version 7 is not one of the supported \[1, 2\]"),
    ('{"format": "vrseg.track_calibration", "version": 1, "features": ["a"], "bias": 0}',
     r"missing key\(s\) \['weights'\]"),
    ('{"format": "vrseg.track_calibration", "version": 1, "features": ["a"], "weights": ["x"], "bias": 0}',
     '"weights" must be a list of numbers'),
    ('{"format": "vrseg.track_calibration", "version": 1, "features": ["a", "b"], "weights": [1.0], "bias": 0}',
     "a calibration needs one weight per feature, got 2 features and 1 weights"),
])
def test_malformed_calibration_file_names_the_file_and_the_problem(tmp_path: Path, content: str,
                                                                   problem: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(CalibrationError, match=rf"track calibration .*bad\.json: {problem}"):
        TrackCalibration.load(str(path))
    with pytest.raises(CalibrationError, match=r"missing\.json: no such file"):
        TrackCalibration.load(str(tmp_path / "missing.json"))


def test_the_labeling_config_names_an_optional_calibration(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from actors.config import load_config
    from pipelines.label import main
    from pipelines.label_config import DEFAULT_LABEL_CONFIG, LabelConfig

    assert load_config(LabelConfig, "configs/label/tiny.yaml").track_calibration() is None  # unset: confidence null
    shipped = load_config(LabelConfig, DEFAULT_LABEL_CONFIG).track_calibration()  # the shipped model's, fitted
    assert shipped is not None and shipped.features == tuple(FEATURE_NAMES)
    features, labels = _separable(2)
    fitted = TrackCalibration.fit(features, labels, FEATURE_NAMES)
    fitted.save(str(tmp_path / "tracks.json"))
    config = load_config(LabelConfig, DEFAULT_LABEL_CONFIG, [f"tracks.calibration={tmp_path / 'tracks.json'}"])
    assert config.track_calibration() == fitted

    # fitted on other features: refused before any work, exit status 2 with the file and the problem
    TrackCalibration.fit(features[:, :2], labels, ["a", "b"]).save(str(tmp_path / "other.json"))
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("")
    status = main(["--manifest", str(manifest), "--output", str(tmp_path / "out"), "--no-progress",
                   f"tracks.calibration={tmp_path / 'other.json'}"])
    assert status == 2
    assert f"other.json: fitted on features ['a', 'b'], the tracks have {list(FEATURE_NAMES)}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_no_target_threshold_is_the_best_total_gain_within_the_jf_budget() -> None:
    # decided when p > threshold; candidates 1.0 (never), midpoints 0.85 / 0.7 / 0.45, and 0.0 (always):
    #   0.85 decides {0.9}: total gain 1.0, target-bearing mean change 0
    #   0.7 adds a target losing 0.5: total 0.5, change -0.5 / 2 targets = -0.25
    #   0.45 adds a no-target gaining 0.6: total 1.1, change -0.25; 0.0 adds a target losing 0.4: 0.7, -0.45
    p, gains, has_target = [0.9, 0.8, 0.6, 0.3], [1.0, -0.5, 0.6, -0.4], [False, True, False, True]
    threshold, info = fit_threshold(np.array(p), np.array(gains), np.array(has_target), max_jf_loss=0.3)
    assert threshold == pytest.approx(0.45)
    assert (info["decided"], info["decided_with_target"], info["total_jf_gain"], info["target_jf_change"]) == (
        3, 1, pytest.approx(1.1), pytest.approx(-0.25))
    assert fit_threshold(np.array(p), np.array(gains), np.array(has_target), max_jf_loss=0.01)[0] == pytest.approx(0.85)
    never, info = fit_threshold(np.array(p), -np.abs(gains), np.array(has_target), max_jf_loss=1.0)
    assert never == NEVER and info["decided"] == 0  # nothing gains: never decide


def _rule_calibration() -> TrackCalibration:
    """Confidence from ``track_mean``; the rule says "no target" for small masks (``area_mean`` < 0.05)."""
    rng = np.random.default_rng(3)
    features = rng.uniform(0, 1, size=(60, len(FEATURE_NAMES)))
    good = features[:, FEATURE_NAMES.index("track_mean")] > 0.5
    area = FEATURE_NAMES.index("area_mean")
    features[:30, area] = rng.uniform(0.0, 0.04, 30)
    features[30:, area] = rng.uniform(0.1, 0.5, 30)
    has_target = np.arange(60) >= 30
    gains = np.where(has_target, -0.6, 0.9)
    rule = NoTargetRule.fit(features, has_target, gains, FEATURE_NAMES, metadata={"data": "synthetic"})
    return TrackCalibration.fit(features, good, FEATURE_NAMES).with_no_target(rule)


def test_assess_decides_no_target_with_the_rule_and_keeps_engine_decisions() -> None:
    calibration = _rule_calibration()
    rule = calibration.no_target
    assert rule is not None and rule.fit_info["decided"] == 30 and rule.fit_info["decided_with_target"] == 0
    small, large = np.full(len(FEATURE_NAMES), 0.5), np.full(len(FEATURE_NAMES), 0.5)
    small[FEATURE_NAMES.index("area_mean")], large[FEATURE_NAMES.index("area_mean")] = 0.01, 0.4
    confidence, no_target = calibration.assess(small, engine_no_target=False)
    assert no_target and confidence == pytest.approx(rule.probability(small)[0]) and confidence > rule.threshold
    confidence, no_target = calibration.assess(large, engine_no_target=False)
    assert not no_target and confidence == pytest.approx(calibration.predict(large)[0])
    # a track the engine found nowhere stays no-target, its confidence the calibrated one
    assert calibration.assess(large, engine_no_target=True) == (pytest.approx(calibration.predict(large)[0]), True)
    # without a rule only the engine decides
    plain = calibration.with_no_target(None)
    assert plain.assess(small, engine_no_target=False) == (pytest.approx(plain.predict(small)[0]), False)


def test_version_2_files_round_trip_the_rule_and_version_1_files_still_load(tmp_path: Path) -> None:
    calibration = _rule_calibration()
    calibration.save(str(tmp_path / "v2.json"))
    assert json.loads((tmp_path / "v2.json").read_text())["version"] == 2
    assert TrackCalibration.load(str(tmp_path / "v2.json")) == calibration
    version1 = {"format": "vrseg.track_calibration", "version": 1, "features": list(FEATURE_NAMES),
                "weights": list(calibration.weights), "bias": calibration.bias, "fit": {"samples": 60}}
    (tmp_path / "v1.json").write_text(json.dumps(version1))
    assert TrackCalibration.load(str(tmp_path / "v1.json")) == TrackCalibration(
        calibration.features, calibration.weights, calibration.bias, {"samples": 60})
    broken = {**json.loads(calibration.to_json()), "no_target": {"weights": [1.0], "bias": 0.0, "threshold": 0.5}}
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(CalibrationError, match=r"broken\.json: the no-target rule needs one weight per feature"):
        TrackCalibration.load(str(tmp_path / "broken.json"))
    broken["no_target"]["threshold"] = "high"
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(CalibrationError, match=r'broken\.json: "no_target" must be null or an object with a number'):
        TrackCalibration.load(str(tmp_path / "broken.json"))


def test_the_writer_empties_every_mask_of_a_track_decided_no_target(tmp_path: Path) -> None:
    """A track the engine found on frames 1-3 of 5 with 1-pixel masks, which the rule decides is no-target:
    its masks are written empty and not present, its row is no-target with the empty track's statistics,
    its features are those of the engine's masks and its confidence the rule's probability."""
    from actors.grounding import ExpressionMoment
    from actors.mask_spool import MaskSpool
    from actors.rle import area, encode
    from actors.video_rows import ExpressionTrack, VideoSource
    from pipelines.label_writer import MaskFileWriter

    calibration = _rule_calibration()
    size, frames = (10, 10), 5
    track = ExpressionTrack("e", "a thing", 1, [1], [], ExpressionMoment(0.0, 0.5, [0, 2], [0.3, 0.6]), [0.7], [])
    with MaskSpool(1, frames, str(tmp_path)) as spool:
        for t in range(frames):
            mask = np.zeros(size, dtype=bool)
            mask[0, 0] = t in (1, 2, 3)
            spool.put(0, t, encode(mask)["counts"], 0.8, t in (1, 2, 3))
        MaskFileWriter(str(tmp_path / "out"), None, png=True, calibration=calibration).write(
            "v", VideoSource(video_uri="file:///v.mp4"), size, [track], spool)
    masks = pq.read_table(tmp_path / "out" / "masks" / "v.parquet").to_pylist()
    assert [m["present"] for m in masks] == [False] * frames
    assert [area({"size": list(size), "counts": m["rle"]}) for m in masks] == [0] * frames
    assert [m["score"] for m in masks] == pytest.approx([0.8] * frames)
    assert not any(np.asarray(Image.open(png)).any() for png in (tmp_path / "out" / "png").rglob("*.png"))
    row = pq.read_table(tmp_path / "out" / "tracks" / "v.parquet").to_pylist()[0]
    assert (row["no_target"], row["present_frames"], row["mean_track_score"], row["area_mean"]) == (True, 0, None, None)
    features = dict(zip(FEATURE_NAMES, row["features"], strict=True))
    assert features["present_fraction"] == pytest.approx(0.6) and features["area_mean"] == pytest.approx(0.01)
    assert row["confidence"] == pytest.approx(calibration.no_target.probability(np.array(row["features"]))[0])
