"""``TrackCalibration``: a logistic regression from a track's features to the probability that it is right.

Pure numpy (no torch, no Ray). ``fit`` learns it from labeled tracks (features from
``actors.track_confidence.track_features``, label 1 when the track is good, e.g. its J&F >= 0.5 on held-out
data); ``predict`` gives each track's confidence in [0, 1]; ``save`` / ``load`` keep it as a JSON file at
any fsspec location, which a labeling config names (``tracks.calibration``).

Fitting: the features are standardised (mean 0, standard deviation 1 over the fitting set; a constant
feature keeps scale 1), then Newton's method (iteratively reweighted least squares) minimises the mean log
loss plus ``l2`` / 2 x the squared weights (the bias unpenalised), from zero weights, until the step is
below ``tolerance`` or after ``max_iterations``. The penalty keeps the weights finite on separable data.
It is deterministic: the same inputs give the same file. The standardisation is folded into the saved
``weights`` and ``bias``, so ``predict(x) = sigmoid(x . weights + bias)`` on raw features.

The file: ``{"format": "vrseg.track_calibration", "version": 1, "features": [...], "weights": [...],
"bias": b, "fit": {...}}`` with ``fit`` the fit's metadata (samples, positives, l2, iterations, converged,
final log loss, and whatever the caller adds, e.g. the data it was fitted on).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from actors.uri import filesystem_for, redact

FORMAT = "vrseg.track_calibration"
VERSION = 1


class CalibrationError(ValueError):
    """A calibration file that cannot be used: the message names the file and the problem."""

    def __init__(self, uri: str, problem: str) -> None:
        super().__init__(f"track calibration {redact(uri)}: {problem}")


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # = 1 / (1 + exp(-z)), without overflow


@dataclass(frozen=True)
class TrackCalibration:
    """``predict(x) = sigmoid(x . weights + bias)`` over the named ``features`` (see the module docstring)."""

    features: tuple[str, ...]
    weights: tuple[float, ...]
    bias: float
    fit_info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.features) != len(self.weights) or not self.features:
            raise ValueError(f"a calibration needs one weight per feature, got {len(self.features)} features and "
                             f"{len(self.weights)} weights")
        if not all(math.isfinite(v) for v in (*self.weights, self.bias)):
            raise ValueError("a calibration's weights and bias must be finite numbers")

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray, names: Sequence[str], l2: float = 1e-2,
            max_iterations: int = 100, tolerance: float = 1e-10, metadata: Mapping[str, Any] | None = None,
            ) -> TrackCalibration:
        """Fit on (N, F) ``features`` (columns ``names``) and (N,) binary ``labels`` (both classes present)."""
        x, y = np.asarray(features, np.float64), np.asarray(labels, np.float64)
        if x.ndim != 2 or x.shape[1] != len(names) or y.shape != (x.shape[0],):
            raise ValueError(f"fit needs (N, {len(names)}) features and (N,) labels, got {x.shape} and {y.shape}")
        if not np.all(np.isfinite(x)) or not np.all((y == 0) | (y == 1)):
            raise ValueError("fit needs finite features and labels in {0, 1}")
        if y.min() == y.max():
            raise ValueError(f"fit needs both good and bad tracks, got only label {int(y[0])}")
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
                "converged": converged, "log_loss": round(log_loss, 6), **(metadata or {})}
        return cls(tuple(names), tuple(float(w) for w in weights), bias, info)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """(N,) probabilities in [0, 1] of (N, F) features (or one (F,) vector -> (1,))."""
        x = np.atleast_2d(np.asarray(features, np.float64))
        if x.shape[1] != len(self.features):
            raise ValueError(f"this calibration takes {len(self.features)} features {list(self.features)}, "
                             f"got {x.shape[1]}")
        return _sigmoid(x @ np.asarray(self.weights) + self.bias)

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "version": VERSION, "features": list(self.features),
                           "weights": list(self.weights), "bias": self.bias, "fit": self.fit_info}, indent=2)

    def save(self, uri: str, storage_options: Mapping[str, Any] | None = None) -> None:
        fs, path = filesystem_for(uri, storage_options)
        parent = path.rsplit("/", 1)[0] if "/" in path else ""
        if parent:
            fs.makedirs(parent, exist_ok=True)
        with fs.open(path, "w") as handle:
            handle.write(self.to_json())

    @classmethod
    def load(cls, uri: str, storage_options: Mapping[str, Any] | None = None) -> TrackCalibration:
        """The calibration at ``uri``; ``CalibrationError`` naming the file and the problem when it is unusable."""
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
        if raw.get("version") != VERSION:
            raise CalibrationError(uri, f"version {raw.get('version')!r} is not the supported {VERSION}")
        missing = [key for key in ("features", "weights", "bias") if key not in raw]
        if missing:
            raise CalibrationError(uri, f"missing key(s) {missing}")
        names, weights, bias = raw["features"], raw["weights"], raw["bias"]
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise CalibrationError(uri, "\"features\" must be a list of names")
        numbers = weights if isinstance(weights, list) else [None]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in [*numbers, bias]):
            raise CalibrationError(uri, "\"weights\" must be a list of numbers and \"bias\" a number")
        try:
            return cls(tuple(names), tuple(float(w) for w in weights), float(bias), dict(raw.get("fit") or {}))
        except ValueError as exc:
            raise CalibrationError(uri, str(exc)) from None

    def require_features(self, names: Sequence[str], uri: str) -> None:
        """Refuse a calibration fitted on other features than ``names`` (``CalibrationError`` naming ``uri``)."""
        if list(self.features) != list(names):
            raise CalibrationError(uri, f"fitted on features {list(self.features)}, the tracks have {list(names)}")
