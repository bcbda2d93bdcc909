"""``benches/label_quality.py``: its held-out figures on hand-made tracks, and a smoke run on the tiny model."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from actors.track_calibration import NoTargetRule, TrackCalibration
from actors.track_confidence import FEATURE_NAMES
from pipelines.calibrate import ScoredTrack

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benches"))
label_quality = importlib.import_module("label_quality")


def _weights(**named: float) -> tuple[float, ...]:
    return tuple(named.get(name, 0.0) for name in FEATURE_NAMES)


def _track(name: str, track_mean: float, area: float, jf: float, empty_jf: float, has_target: bool,
           empty_fraction: tuple[float, float] = (0.0, 1.0), engine_no_target: bool = False) -> ScoredTrack:
    features = np.zeros(len(FEATURE_NAMES))
    features[FEATURE_NAMES.index("track_mean")], features[FEATURE_NAMES.index("area_mean")] = track_mean, area

    def row(value: float, empty: float) -> dict:
        return {"video": "v", "expr_id": name, "J": value, "F": value, "J&F": value, "num_frames": 4,
                "no_target": not has_target, "empty_fraction": None if has_target else empty}

    return ScoredTrack("v", name, tuple(features), row(jf, empty_fraction[0]), row(empty_jf, empty_fraction[1]),
                       has_target, engine_no_target)


def test_heldout_figures_apply_the_decisions_as_the_writer_does() -> None:
    # confidence sigmoid(10 track_mean - 5); P(no target) sigmoid(2 - 100 area_mean), decided above 0.5
    calibration = TrackCalibration(FEATURE_NAMES, _weights(track_mean=10.0), -5.0).with_no_target(
        NoTargetRule(_weights(area_mean=-100.0), 2.0, 0.5))
    tracks = [
        _track("a", 0.9, 0.2, jf=0.8, empty_jf=0.1, has_target=True),  # good, kept
        _track("b", 0.2, 0.2, jf=0.1, empty_jf=0.0, has_target=True),  # bad, kept
        _track("c", 0.3, 0.01, jf=0.2, empty_jf=1.0, has_target=False, empty_fraction=(0.25, 1.0)),  # decided: right
        _track("d", 0.6, 0.005, jf=0.7, empty_jf=0.3, has_target=True),  # a small target decided: wrong
        _track("e", 0.0, 0.0, jf=1.0, empty_jf=1.0, has_target=False, empty_fraction=(1.0, 1.0),
               engine_no_target=True),  # found nowhere by the engine
    ]
    figures = label_quality.quality_figures(tracks, calibration, 0.5)
    # written J&F 0.8, 0.1, 1.0, 0.3, 1.0 -> good a, c, e; confidences 0.982, 0.047, 0.731, 0.818, 0.0067:
    # a beats b and d, c beats b only, e beats neither -> 3 of 6 pairs
    assert figures["auroc"] == pytest.approx(0.5)
    # as labeled: good a (0.9), d (0.6), e (0.0) against b (0.2), c (0.3) on the raw tracking score -> 4 of 6
    assert figures["auroc_raw_mean_track_score"] == pytest.approx(4 / 6)
    assert (figures["decided_no_target"], figures["decided_with_target"]) == (2, 1)
    assert figures["no_target_accuracy"] == 1.0 and figures["no_target_accuracy_no_decisions"] == pytest.approx(0.625)
    assert figures["target_jf"] == pytest.approx(0.4) and figures["target_jf_no_decisions"] == pytest.approx(1.6 / 3)
    assert figures["target_jf_delta"] == pytest.approx(0.4 - 1.6 / 3)
    confidences = [0.9820137900379085, 0.04742587317756678, 0.7310585786300049, 0.8175744761936437,
                   0.0066928509242848554]
    # bin 0 holds b (0.047, bad) and e (0.0067, good): |1/2 - their mean confidence| x 2/5; a, c, d one bin each
    a, b, c, d, e = confidences
    assert figures["ece"] == pytest.approx(abs(0.5 - (b + e) / 2) * 2 / 5 + ((1 - a) + (1 - c) + d) / 5)
    targets = label_quality.target_rows(figures, 0.5)
    assert [row["met"] for row in targets] == [False, True, False]


def test_smoke_run_on_the_tiny_model(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, str(ROOT / "benches" / "label_quality.py"), "--config",
                          "configs/label/tiny.yaml", "--videos", "2", "--cache-dir", str(tmp_path / "cache"),
                          "--save-calibration", str(tmp_path / "tracks.json")],
                         cwd=ROOT, capture_output=True, text=True, check=False, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1].removeprefix("RESULT "))
    assert result["bench"] == "label_quality" and "ratio" in result
    assert (result["splits"]["calibration"]["seed"], result["splits"]["heldout"]["seed"]) == (600, 1000)
    assert result["calibration"]["tracks"] == result["heldout"]["tracks"] == 18  # 2 videos x 9 expressions
    # the tiny random model's tracks are all bad (J&F < 0.5): nothing to fit, said so, nothing saved
    assert result["fit_error"] == "fit needs both good and bad tracks, got only label 0"
    assert result["ratio"] is None and result["targets"] == []
    assert "calibration not fitted: fit needs both good and bad tracks" in out.stdout
    assert not (tmp_path / "tracks.json").exists()
