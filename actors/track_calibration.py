"""``TrackCalibration``: a logistic regression from a track's features to the probability that it is right,
and (version 2) a fitted rule deciding that an expression has no target.

Pure numpy (no torch, no Ray). ``fit`` learns it from labeled tracks (features from
``actors.track_confidence.track_features``, label 1 when the track is good, e.g. its J&F >= 0.5 on held-out
data); ``predict`` gives each track's confidence in [0, 1]; ``save`` / ``load`` keep it as a JSON file at
any fsspec location, which a labeling config names (``tracks.calibration``). ``pipelines.calibrate``
(``vrseg calibrate``) fits both parts on a labeling output scored against ground truth.

No-target decisions (``NoTargetRule``): without a rule (no calibration, or a version 1 file) a track is
no-target when the engine found its object on no frame (``TrackStats.no_target``). A rule adds a second
logistic regression on the same features, fitted to "the expression has no target", and a threshold on its
probability: a track whose probability is above it is decided no-target too, and the labeling writer
empties its masks on every frame. The threshold is fitted, not set: among the cut points of the fitting
set's probabilities, the one that most raises the total J&F of the fitting set's expressions when the
decided tracks are emptied (emptying a no-target expression's track makes it right, emptying a target's
costs what its masks were worth), subject to the mean J&F of the target-bearing expressions falling by
at most ``max_jf_loss``; ties go to the higher threshold (fewer decisions), and 1.0 (never) when no cut
point gains. ``TrackCalibration.assess`` is the one place the decision and the confidence written for it
are made: a decided track's confidence is the rule's probability that the expression has no target
(an emptied track is right exactly when there is nothing to segment), every other track's is ``predict``.

Fitting: the features are standardised (mean 0, standard deviation 1 over the fitting set; a constant
feature keeps scale 1), then Newton's method (iteratively reweighted least squares) minimises the mean log
loss plus ``l2`` / 2 x the squared weights (the bias unpenalised), from zero weights, until the step is
below ``tolerance`` or after ``max_iterations``. The penalty keeps the weights finite on separable data.
It is deterministic: the same inputs give the same file. The standardisation is folded into the saved
``weights`` and ``bias``, so ``predict(x) = sigmoid(x . weights + bias)`` on raw features.

The file: ``{"format": "vrseg.track_calibration", "version": 2, "features": [...], "weights": [...],
"bias": b, "fit": {...}, "no_target": null | {"weights": [...], "bias": b, "threshold": t, "fit": {...}}}``
with ``fit`` the fit's metadata (samples, positives, l2, iterations, converged, final log loss, and whatever
the caller adds, e.g. the data it was fitted on). Version 1 files (no ``no_target`` key) are still read:
they have no rule, so decisions stay the engine's.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from actors.uri import filesystem_for, redact

FORMAT = "vrseg.track_calibration"
VERSION = 2
READABLE_VERSIONS = (1, 2)
NEVER = 1.0  # the threshold that decides nothing: a probability is never above 1


class CalibrationError(ValueError):
    """A calibration file that cannot be used: the message names the file and the problem."""

    def __init__(self, uri: str, problem: str) -> None:
        super().__init__(f"track calibration {redact(uri)}: {problem}")


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # = 1 / (1 + exp(-z)), without overflow


def fit_logistic(features: np.ndarray, labels: np.ndarray, names: Sequence[str], l2: float = 1e-2,
                 max_iterations: int = 100, tolerance: float = 1e-10, classes: str = "both classes",
                 ) -> tuple[tuple[float, ...], float, dict[str, Any]]:
    """(weights, bias, fit info) of the penalised logistic regression of the module docstring, on (N, F)
    ``features`` (columns ``names``) and (N,) binary ``labels`` (both classes present; ``classes`` names
    them in the error when one is missing)."""
    x, y = np.asarray(features, np.float64), np.asarray(labels, np.float64)
    if x.ndim != 2 or x.shape[1] != len(names) or y.shape != (x.shape[0],):
        raise ValueError(f"fit needs (N, {len(names)}) features and (N,) labels, got {x.shape} and {y.shape}")
    if not np.all(np.isfinite(x)) or not np.all((y == 0) | (y == 1)):
        raise ValueError("fit needs finite features and labels in {0, 1}")
    if y.min() == y.max():
        raise ValueError(f"fit needs {classes}, got only label {int(y[0])}")
    if l2 <= 0:
        raise ValueError(f"l2 must be > 0 (it keeps separable data finite), got {l2}")
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale == 0] = 1.0
    design = np.hstack([(x - mean) / scale, np.ones((x.shape[0], 1))])  # the bias last
    penalty = np.diag([l2] * len(names) + [0.0])
    theta = np.zeros(design.shape[1])
    converged, iterations = False, 0
    while not converged and iterations < max_iterations:
        iterations += 1
        p = _sigmoid(design @ theta)
        gradient = design.T @ (p - y) / len(y) + penalty @ theta
        hessian = (design * (p * (1 - p))[:, None]).T @ design / len(y) + penalty
        step = np.linalg.solve(hessian + 1e-12 * np.eye(len(theta)), gradient)
        theta -= step
        converged = bool(np.max(np.abs(step)) < tolerance)
    weights = theta[:-1] / scale
    bias = float(theta[-1] - np.sum(weights * mean))
    p = np.clip(_sigmoid(x @ weights + bias), 1e-15, 1 - 1e-15)
    log_loss = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    info = {"samples": int(len(y)), "positives": int(y.sum()), "l2": l2, "iterations": iterations,
            "converged": converged, "log_loss": round(log_loss, 6)}
    return tuple(float(w) for w in weights), bias, info


def _check_finite(weights: Sequence[float], bias: float) -> None:
    if not all(math.isfinite(v) for v in (*weights, bias)):
        raise ValueError("a calibration's weights and bias must be finite numbers")


def _linear(features: np.ndarray, weights: Sequence[float], bias: float) -> np.ndarray:
    x = np.atleast_2d(np.asarray(features, np.float64))
    if x.shape[1] != len(weights):
        raise ValueError(f"this calibration takes {len(weights)} features, got {x.shape[1]}")
    return _sigmoid(x @ np.asarray(weights) + bias)


def fit_threshold(probabilities: np.ndarray, gains: np.ndarray, has_target: np.ndarray,
                  max_jf_loss: float) -> tuple[float, dict[str, Any]]:
    """The no-target threshold of the module docstring and what it does on the fitting set.

    ``probabilities`` (N,): the rule's probability that each expression has no target; ``gains`` (N,): each
    track's J&F when emptied minus its J&F as labeled; ``has_target`` (N,) bool. A track is decided when its
    probability is above the threshold; candidates are 1.0 (never), the midpoints between consecutive
    distinct probabilities and 0.0."""
    p, gain, target = (np.asarray(probabilities, np.float64), np.asarray(gains, np.float64),
                       np.asarray(has_target, bool))
    if not (p.shape == gain.shape == target.shape and p.ndim == 1) or not np.all(np.isfinite(gain)):
        raise ValueError(f"fit_threshold needs equal (N,) arrays with finite gains, got {p.shape}, {gain.shape}, "
                         f"{target.shape}")
    if max_jf_loss < 0:
        raise ValueError(f"max_jf_loss must be >= 0, got {max_jf_loss}")
    distinct = np.unique(p)[::-1]
    candidates = [NEVER, *((distinct[:-1] + distinct[1:]) / 2).tolist(), 0.0]
    targets = max(1, int(target.sum()))
    best, best_total = NEVER, 0.0
    for threshold in candidates:
        decided = p > threshold
        target_change = float(gain[decided & target].sum()) / targets
        total = float(gain[decided].sum())
        if target_change >= -max_jf_loss and total > best_total + 1e-12:
            best, best_total = float(threshold), total
    decided = p > best
    info = {"threshold_objective": "total J&F of the fitting set's expressions with the decided tracks emptied",
            "max_jf_loss": max_jf_loss, "decided": int(decided.sum()),
            "decided_with_target": int((decided & target).sum()),
            "no_target_expressions": int((~target).sum()),
            "total_jf_gain": round(best_total, 6),
            "target_jf_change": round(float(gain[decided & target].sum()) / targets, 6)}
    return best, info


@dataclass(frozen=True)
class NoTargetRule:
    """P(no target) = sigmoid(x . weights + bias); a track is decided no-target when it is above
    ``threshold`` (see the module docstring)."""

    weights: tuple[float, ...]
    bias: float
    threshold: float
    fit_info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_finite(self.weights, self.bias)
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"a no-target threshold must be in [0, 1], got {self.threshold}")

    @classmethod
    def fit(cls, features: np.ndarray, has_target: np.ndarray, gains: np.ndarray, names: Sequence[str],
            max_jf_loss: float = 0.01, l2: float = 1e-2, metadata: Mapping[str, Any] | None = None) -> NoTargetRule:
        """Fit on (N, F) ``features``, (N,) ``has_target`` (both kinds present) and (N,) ``gains`` (each
        track's J&F emptied minus as labeled)."""
        target = np.asarray(has_target, bool)
        weights, bias, info = fit_logistic(features, (~target).astype(np.float64), names, l2,
                                           classes="expressions with and without a target")
        threshold, decided = fit_threshold(_linear(features, weights, bias), gains, target, max_jf_loss)
        return cls(weights, bias, threshold, {**info, **decided, **(metadata or {})})

    def probability(self, features: np.ndarray) -> np.ndarray:
        """(N,) probabilities that each track's expression has no target."""
        return _linear(features, self.weights, self.bias)

    def to_dict(self) -> dict[str, Any]:
        return {"weights": list(self.weights), "bias": self.bias, "threshold": self.threshold, "fit": self.fit_info}


@dataclass(frozen=True)
class TrackCalibration:
    """``predict(x) = sigmoid(x . weights + bias)`` over the named ``features``, and optionally the
    ``no_target`` rule (see the module docstring)."""

    features: tuple[str, ...]
    weights: tuple[float, ...]
    bias: float
    fit_info: dict[str, Any] = field(default_factory=dict)
    no_target: NoTargetRule | None = None

    def __post_init__(self) -> None:
        if len(self.features) != len(self.weights) or not self.features:
            raise ValueError(f"a calibration needs one weight per feature, got {len(self.features)} features and "
                             f"{len(self.weights)} weights")
        _check_finite(self.weights, self.bias)
        if self.no_target is not None and len(self.no_target.weights) != len(self.features):
            raise ValueError(f"the no-target rule needs one weight per feature, got {len(self.no_target.weights)} "
                             f"for {len(self.features)} features")

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray, names: Sequence[str], l2: float = 1e-2,
            max_iterations: int = 100, tolerance: float = 1e-10, metadata: Mapping[str, Any] | None = None,
            ) -> TrackCalibration:
        """Fit on (N, F) ``features`` (columns ``names``) and (N,) binary ``labels`` (both classes present);
        no no-target rule (``with_no_target`` adds one)."""
        weights, bias, info = fit_logistic(features, labels, names, l2, max_iterations, tolerance,
                                           classes="both good and bad tracks")
        return cls(tuple(names), weights, bias, {**info, **(metadata or {})})

    def with_no_target(self, rule: NoTargetRule | None) -> TrackCalibration:
        """This calibration with ``rule`` deciding no-target tracks."""
        return dataclasses.replace(self, no_target=rule)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """(N,) probabilities in [0, 1] of (N, F) features (or one (F,) vector -> (1,))."""
        x = np.atleast_2d(np.asarray(features, np.float64))
        if x.shape[1] != len(self.features):
            raise ValueError(f"this calibration takes {len(self.features)} features {list(self.features)}, "
                             f"got {x.shape[1]}")
        return _sigmoid(x @ np.asarray(self.weights) + self.bias)

    def assess(self, features: np.ndarray, engine_no_target: bool) -> tuple[float, bool]:
        """(confidence, no_target) of one track's (F,) ``features``: no-target when the engine found the
        object nowhere or the rule decides so; a track the rule decides gets the rule's probability as its
        confidence, every other ``predict`` (see the module docstring)."""
        if self.no_target is not None and not engine_no_target:
            p = float(self.no_target.probability(features)[0])
            if p > self.no_target.threshold:
                return p, True
        return float(self.predict(features)[0]), engine_no_target

    def to_json(self) -> str:
        rule = None if self.no_target is None else self.no_target.to_dict()
        return json.dumps({"format": FORMAT, "version": VERSION, "features": list(self.features),
                           "weights": list(self.weights), "bias": self.bias, "fit": self.fit_info,
                           "no_target": rule}, indent=2)

    def save(self, uri: str, storage_options: Mapping[str, Any] | None = None) -> None:
        fs, path = filesystem_for(uri, storage_options)
        parent = path.rsplit("/", 1)[0] if "/" in path else ""
        if parent:
            fs.makedirs(parent, exist_ok=True)
        with fs.open(path, "w") as handle:
            handle.write(self.to_json())

    @classmethod
    def load(cls, uri: str, storage_options: Mapping[str, Any] | None = None) -> TrackCalibration:
        """The calibration at ``uri`` (version 1 or 2); ``CalibrationError`` naming the file and the problem
        when it is unusable."""
        fs, path = filesystem_for(uri, storage_options)
        try:
            with fs.open(path, "r") as handle:
                raw = json.load(handle)
        except FileNotFoundError:
            raise CalibrationError(uri, "no such file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CalibrationError(uri, f"not JSON ({exc})") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise CalibrationError(uri, f"not a track calibration (\"format\" must be \"{FORMAT}\")")
        if raw.get("version") not in READABLE_VERSIONS:
            raise CalibrationError(uri, f"version {raw.get('version')!r} is not one of the supported "
                                   f"{list(READABLE_VERSIONS)}")
        missing = [key for key in ("features", "weights", "bias") if key not in raw]
        if missing:
            raise CalibrationError(uri, f"missing key(s) {missing}")
        names = raw["features"]
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise CalibrationError(uri, "\"features\" must be a list of names")
        weights, bias = _numbers(uri, raw, "")
        rule = _rule(uri, raw.get("no_target"))
        try:
            return cls(tuple(names), weights, bias, dict(raw.get("fit") or {}), rule)
        except ValueError as exc:
            raise CalibrationError(uri, str(exc)) from None

    def require_features(self, names: Sequence[str], uri: str) -> None:
        """Refuse a calibration fitted on other features than ``names`` (``CalibrationError`` naming ``uri``)."""
        if list(self.features) != list(names):
            raise CalibrationError(uri, f"fitted on features {list(self.features)}, the tracks have {list(names)}")


def _is_number(value: Any) -> bool:  # noqa: ANN401 - any JSON value
    return isinstance(value, int | float) and not isinstance(value, bool)


def _numbers(uri: str, raw: Mapping[str, Any], where: str) -> tuple[tuple[float, ...], float]:
    """``raw["weights"]`` and ``raw["bias"]`` as numbers (``CalibrationError`` naming ``uri`` otherwise)."""
    weights, bias = raw.get("weights"), raw.get("bias")
    numbers = weights if isinstance(weights, list) else [None]
    if not all(_is_number(v) for v in [*numbers, bias]):
        raise CalibrationError(uri, f"\"{where}weights\" must be a list of numbers and \"{where}bias\" a number")
    return tuple(float(w) for w in numbers), float(bias)


def _rule(uri: str, raw: Any) -> NoTargetRule | None:  # noqa: ANN401 - any JSON value
    """The ``no_target`` entry of a calibration file (None: null or absent, as in version 1 files)."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or not _is_number(raw.get("threshold")):
        raise CalibrationError(uri, "\"no_target\" must be null or an object with a number \"threshold\"")
    weights, bias = _numbers(uri, raw, "no_target.")
    try:
        return NoTargetRule(weights, bias, float(raw["threshold"]), dict(raw.get("fit") or {}))
    except ValueError as exc:
        raise CalibrationError(uri, f"no_target: {exc}") from None
