"""Key-frame samplers: which frames of a T-frame video the MLLM sees, and where propagation starts.

Pure numpy/scipy. Every sampler answers ``sample(relevance, k) -> SampleResult`` where ``relevance`` is
the per-frame curve over all T frames produced by ``[FIND]`` (MomentSeg 3.2.1) and ``k`` the frame budget.

Methods (``SamplingConfig.method``):

- ``firstk``  (Sa2VA): frames 0..K-1.
- ``uniform`` (VideoLISA, Sa2VA-i): K frames evenly spread over the video, first and last included.
- ``topk``    (MomentSeg Table 8, "KeyFrame (TopK)"): the K frames of highest relevance.
- ``nearbyk`` (MomentSeg Table 8, "KeyFrame (NearbyK)"): K adjacent frames around the most relevant one.
- ``mcs``     (MomentSeg 3.2.2, Eq. 6-7, Alg. 1): moment-centric sampling, see ``MomentCentric``.
- ``tks``     (VRS-HQ token-driven keyframe selection): the authors' candidates (``TokenKeyframeCandidates``,
  a stride through the most relevant frame); once the engine has SAM2 object scores and ``<SEG>``/``<TAK>``
  similarities for them, ``tks_select`` picks the keyframe (anchor).
- ``sparse_dense`` (VideoLISA): K = T_sparse uniform context frames, ``dense`` = T_dense of them (a uniform
  subset) segmented at full resolution; the dense set is ``SampleResult.key_frames``.

Relevance preprocessing (shared by ``topk``, ``nearbyk`` and ``mcs`` so that they differ only in the
selection rule): the curve must be non-negative before it is a distribution. The ``[FIND]`` loss
(MomentSeg Eq. 5) scores a frame by sigmoid(cos / tau), so with ``relevance="logits"`` (the default: the
curve holds cos / tau) we apply the sigmoid; with ``relevance="probabilities"`` values are used as given
and must be >= 0. Then Gaussian smoothing with standard deviation ``sigma`` (``sigma=0``: none; edges
replicate the end values). A curve whose smoothed values are all zero or equal within ``flat_tolerance``
(relative to its maximum) carries no information: these samplers then return the ``uniform`` frames,
anchored at the middle sample ``indices[(K-1)//2]``.

Units: the curve covers all T frames, but ``[FIND]`` scored only L of them (the engine interpolates the
rest), so the smoothing ``sigma`` and MCS's window ``w`` (Eq. 6) are given in ``[FIND]``-frame units and
multiplied by ``stride`` = T / L, the video frames one ``[FIND]`` frame stands for (``sample``'s argument;
1 when the curve is scored frame by frame). A window then covers the same share of the ``[FIND]`` pass,
and its meaning does not change with the video's length. The authors' code (Dmmm1997/MomentSeg,
``find_start_end_FIND``) smooths with sigma = 1 and searches a window of 5 on the curve it interpolates to
the video's frames; its ``[FIND]`` pass sees every frame of videos up to 101 frames, where the two units
agree, which is where the defaults (w = 5, sigma = 1) come from.

Degenerate inputs: T <= K returns every frame (the anchor is still the method's own); NaN or infinite
relevance, an empty curve, k < 1 and negative lengths raise ``SamplingError`` naming the input.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.special import expit

METHODS = ("firstk", "uniform", "topk", "nearbyk", "mcs", "tks", "sparse_dense")
RELEVANCE_KINDS = ("logits", "probabilities")
TIE_TOLERANCE = 1e-9  # window sums this close (relative to the total mass) are equal in Eq. 6


class SamplingError(ValueError):
    """A sampler was given an unusable relevance curve, budget or length; the message names which."""


@dataclass
class SamplingConfig:
    """Which sampler, and its parameters (``k`` and ``dense`` count video frames; ``window`` and ``sigma``
    are in ``[FIND]``-frame units, see the module docstring)."""

    method: str = "mcs"
    k: int = 8  # frame budget K (MomentSeg inference uses 8 video frames); T_sparse for sparse_dense
    window: int = 5  # w of Eq. 6 in [FIND] frames (the authors' code: 5); clipped to T for shorter videos
    sigma: float = 1.0  # Gaussian smoothing std in [FIND] frames (the authors' code: 1); 0 disables smoothing
    relevance: str = "logits"  # "logits" (cos / tau, sigmoid applied) or "probabilities" (>= 0, as is)
    dense: int = 4  # T_dense for sparse_dense (VideoLISA uses T_sparse = 32, T_dense = 4)
    flat_tolerance: float = 1e-6  # (max - min) <= tol * max counts as a flat curve

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"sampling.method must be one of {list(METHODS)}, got '{self.method}'")
        if self.relevance not in RELEVANCE_KINDS:
            raise ValueError(
                f"sampling.relevance must be one of {list(RELEVANCE_KINDS)}, got '{self.relevance}'"
            )
        if self.k < 1:
            raise ValueError(f"sampling.k must be >= 1, got {self.k}")
        if self.window < 1:
            raise ValueError(f"sampling.window must be >= 1 frame, got {self.window}")
        if not math.isfinite(self.sigma) or self.sigma < 0:
            raise ValueError(f"sampling.sigma must be a finite number >= 0, got {self.sigma}")
        if self.dense < 1:
            raise ValueError(f"sampling.dense must be >= 1, got {self.dense}")
        if self.method == "sparse_dense" and self.dense > self.k:
            raise ValueError(
                f"sampling.dense (T_dense) must not exceed sampling.k={self.k} (T_sparse), got {self.dense}"
            )
        if not math.isfinite(self.flat_tolerance) or self.flat_tolerance < 0:
            raise ValueError(
                f"sampling.flat_tolerance must be a finite number >= 0, got {self.flat_tolerance}"
            )


@dataclass(frozen=True, eq=False)
class SampleResult:
    """Frames chosen for one expression.

    ``indices``: sorted distinct frames the MLLM sees. ``anchor``: where propagation starts (None when the
    method has no notion of one). ``key_frames``: frames whose masks are decoded from ``[SEG]``; equal to
    ``indices`` except for ``sparse_dense`` (the dense subset). Defaults to ``indices``.
    """

    indices: np.ndarray
    anchor: int | None
    key_frames: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        indices = np.asarray(self.indices, dtype=np.int64)
        key_frames = indices if self.key_frames is None else np.asarray(self.key_frames, dtype=np.int64)
        for name, frames in (("indices", indices), ("key_frames", key_frames)):
            if frames.ndim != 1 or frames.size == 0 or (frames.size > 1 and np.any(np.diff(frames) <= 0)):
                raise SamplingError(
                    f"{name} must be a non-empty sorted list of distinct frames, got {frames.tolist()}"
                )
        if not np.isin(key_frames, indices).all():
            raise SamplingError(
                f"key_frames {key_frames.tolist()} are not all among indices {indices.tolist()}"
            )
        if self.anchor is not None and self.anchor not in key_frames:
            raise SamplingError(f"anchor {self.anchor} is not one of the key frames {key_frames.tolist()}")
        object.__setattr__(self, "indices", indices)
        object.__setattr__(self, "key_frames", key_frames)
        object.__setattr__(self, "anchor", None if self.anchor is None else int(self.anchor))


class Sampler(Protocol):
    """``uses_relevance`` False means only the curve's length matters (the engine may pass zeros).

    ``stride``: video frames per ``[FIND]`` frame (T / L), the unit of ``window`` and ``sigma``."""

    uses_relevance: bool

    def sample(self, relevance: np.ndarray, k: int, stride: float = 1.0) -> SampleResult: ...


def check_request(relevance: np.ndarray, k: int) -> int:
    """Validate a sampling request and return T; raise ``SamplingError`` naming what is wrong."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise SamplingError(f"k (frame budget) must be an integer, got {k!r}")
    if k < 1:
        raise SamplingError(f"k (frame budget) must be >= 1, got {k}")
    curve = np.asarray(relevance)
    if curve.ndim != 1:
        raise SamplingError(f"relevance curve must be 1-D (one value per frame), got shape {curve.shape}")
    if curve.size == 0:
        raise SamplingError("relevance curve is empty: the video has no frames")
    if not np.issubdtype(curve.dtype, np.number) or np.issubdtype(curve.dtype, np.complexfloating):
        raise SamplingError(f"relevance curve must hold real numbers, got dtype {curve.dtype}")
    bad = np.flatnonzero(~np.isfinite(curve))
    if bad.size:
        raise SamplingError(f"relevance curve has NaN or infinite values at frames {bad[:10].tolist()}")
    return int(curve.size)


def check_stride(stride: float) -> float:
    """``stride`` (video frames per ``[FIND]`` frame) as a float; ``SamplingError`` unless finite and > 0."""
    if isinstance(stride, bool) or not isinstance(stride, int | float | np.integer | np.floating):
        raise SamplingError(f"stride (video frames per [FIND] frame) must be a number, got {stride!r}")
    if not (math.isfinite(stride) and stride > 0):
        raise SamplingError(f"stride (video frames per [FIND] frame) must be finite and > 0, got {stride}")
    return float(stride)


def window_frames(window: int, stride: float) -> int:
    """A window of ``window`` ``[FIND]`` frames in video frames: floor(window * stride + 0.5), at least 1."""
    return max(1, math.floor(window * check_stride(stride) + 0.5))


def relevance_distribution(relevance: np.ndarray, kind: str, sigma: float) -> np.ndarray:
    """Non-negative, smoothed relevance S (float64, shape (T,)): sigmoid for logits, then Gaussian(sigma),
    ``sigma`` in video frames."""
    values = np.asarray(relevance, dtype=np.float64)
    if kind == "logits":
        probabilities = expit(values)
    elif kind == "probabilities":
        negative = np.flatnonzero(values < 0)
        if negative.size:
            raise SamplingError(
                f"relevance given as probabilities must be >= 0; frames {negative[:10].tolist()} are negative "
                "(pass relevance='logits' for raw [FIND] scores)"
            )
        probabilities = values
    else:
        raise SamplingError(f"relevance kind must be one of {list(RELEVANCE_KINDS)}, got '{kind}'")
    if sigma > 0:
        return gaussian_filter1d(probabilities, sigma, mode="nearest")
    return probabilities


def is_flat(distribution: np.ndarray, tolerance: float) -> bool:
    """True when S is all zero or its spread is within ``tolerance`` of its maximum."""
    peak = float(distribution.max())
    return peak <= 0 or float(distribution.max() - distribution.min()) <= tolerance * peak


def uniform_indices(num_frames: int, k: int) -> np.ndarray:
    """K frames evenly spread over [0, T-1] (both ends included for K >= 2): floor(m (T-1)/(K-1) + 0.5).

    Distinct because consecutive positions are at least one frame apart when K <= T; T <= K gives all.
    """
    if num_frames < 1:
        raise SamplingError(f"video length must be >= 1 frame, got {num_frames}")
    if k < 1:
        raise SamplingError(f"k (frame budget) must be >= 1, got {k}")
    if num_frames <= k:
        return np.arange(num_frames, dtype=np.int64)
    return np.floor(np.linspace(0, num_frames - 1, k) + 0.5).astype(np.int64)


def _uniform_fallback(num_frames: int, k: int) -> SampleResult:
    indices = uniform_indices(num_frames, k)
    return SampleResult(indices, anchor=int(indices[(indices.size - 1) // 2]))


def moment_center(distribution: np.ndarray, window: int) -> int:
    """Eq. 6: the anchor c* = i* + floor(w/2), i* the start of the w-frame window of largest summed S.

    ``window`` (video frames) is clipped to T. Sums within ``TIE_TOLERANCE`` times the total mass of the
    best one are ties, so float rounding of the running sums cannot reorder them. Eq. 6's argmax is not
    unique on a plateau (a stretch of equal relevance longer than w, e.g. a saturated ``[FIND]`` curve):
    there i* is the middle of the run of consecutive tied starts, floor((first + last) / 2), so c* lands
    on the plateau's centre rather than near its first frame; of several separate runs of ties, the
    earliest. Without ties this is Eq. 6 as written.
    """
    w = min(window, distribution.size)
    cumulative = np.concatenate(([0.0], np.cumsum(distribution)))
    window_sums = cumulative[w:] - cumulative[:-w]  # (T - w + 1,): sum of S[i : i + w]
    tied = window_sums >= window_sums.max() - TIE_TOLERANCE * cumulative[-1]
    first = int(np.argmax(tied))
    last = first + int(np.argmin(np.append(tied[first:], False))) - 1  # the run of tied starts from ``first``
    return (first + last) // 2 + w // 2


def split_budget(
    mass_left: float, mass_right: float, budget: int, room_left: int, room_right: int
) -> tuple[int, int]:
    """Alg. 1 step 2: share ``budget`` = K-1 samples between the sides of c* in proportion to their masses.

    Rounding rule: k_L = floor(budget * w_L / (w_L + w_R) + 0.5) (a half goes to the left), k_R = budget - k_L.
    A side never gets more samples than it has frames (``room``); the excess moves to the other side.
    With no mass on either side the split follows the frame counts instead.
    """
    if budget > room_left + room_right:
        raise SamplingError(f"cannot place {budget} samples in {room_left} + {room_right} frames")
    total = mass_left + mass_right
    if total > 0:
        share = mass_left / total
    else:
        share = room_left / (room_left + room_right) if room_left + room_right else 0.0
    k_left = min(math.floor(budget * share + 0.5), room_left)
    k_right = budget - k_left
    if k_right > room_right:
        k_right = room_right
        k_left = budget - room_right
    return k_left, k_right


def inverse_cdf(distribution: np.ndarray, k: int) -> np.ndarray:
    """Eq. 7 on one side: positions i_m = min{i : F(i) >= (m - 0.5)/k}, m = 1..k (may repeat).

    F is the normalised cumulative sum of ``distribution``; a side with zero mass is sampled as if its
    mass were uniform.
    """
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    weights = distribution if distribution.sum() > 0 else np.ones_like(distribution)
    cdf = np.cumsum(weights) / weights.sum()
    cdf[-1] = 1.0  # guard the last quantile against rounding just below 1
    quantiles = (np.arange(1, k + 1) - 0.5) / k
    return np.searchsorted(cdf, quantiles, side="left").astype(np.int64)


def spread_duplicates(frames: np.ndarray, low: int, high: int, toward_anchor: int) -> np.ndarray:
    """Make the inverse-CDF picks of one side distinct, deterministically.

    Picks are taken in quantile order (m = 1..k); a pick already taken moves to the nearest free frame in
    [low, high] (this side only), preferring the frame closer to the anchor when two are equally near
    (``toward_anchor`` is +1 on the left side, -1 on the right). Needs k <= high - low + 1.
    """
    taken: set[int] = set()
    for frame in (int(f) for f in frames):
        if frame in taken:
            frame = next(
                candidate
                for distance in range(1, high - low + 1)
                for candidate in (frame + distance * toward_anchor, frame - distance * toward_anchor)
                if low <= candidate <= high and candidate not in taken
            )
        taken.add(frame)
    return np.array(sorted(taken), dtype=np.int64)


@dataclass(frozen=True)
class RelevancePrep:
    """Shared preprocessing of the relevance-based samplers (see module docstring)."""

    kind: str = "logits"
    sigma: float = 1.0
    flat_tolerance: float = 1e-6

    def distribution(self, relevance: np.ndarray, stride: float) -> np.ndarray:
        """S with ``sigma`` taken in ``[FIND]`` frames (``stride`` video frames each)."""
        return relevance_distribution(relevance, self.kind, self.sigma * check_stride(stride))

    def is_flat(self, distribution: np.ndarray) -> bool:
        return is_flat(distribution, self.flat_tolerance)


@dataclass(frozen=True)
class FirstK:
    """Sa2VA: the first K frames; no anchor (propagation starts at frame 0)."""

    uses_relevance: bool = False

    def sample(self, relevance: np.ndarray, k: int, stride: float = 1.0) -> SampleResult:
        num_frames = check_request(relevance, k)
        return SampleResult(np.arange(min(k, num_frames), dtype=np.int64), anchor=None)


@dataclass(frozen=True)
class Uniform:
    """VideoLISA / Sa2VA-i: ``uniform_indices``; no anchor."""

    uses_relevance: bool = False

    def sample(self, relevance: np.ndarray, k: int, stride: float = 1.0) -> SampleResult:
        return SampleResult(uniform_indices(check_request(relevance, k), k), anchor=None)


@dataclass(frozen=True)
class TopK:
    """MomentSeg Table 8 TopK: the K frames of highest smoothed relevance (earlier frame wins ties).

    Anchor: the single most relevant frame.
    """

    prep: RelevancePrep = RelevancePrep()
    uses_relevance: bool = True

    def sample(self, relevance: np.ndarray, k: int, stride: float = 1.0) -> SampleResult:
        num_frames = check_request(relevance, k)
        scores = self.prep.distribution(relevance, stride)
        if self.prep.is_flat(scores):
            return _uniform_fallback(num_frames, k)
        order = np.argsort(-scores, kind="stable")
        return SampleResult(np.sort(order[:k]), anchor=int(order[0]))


@dataclass(frozen=True)
class NearbyK:
    """MomentSeg Table 8 NearbyK: K adjacent frames around the most relevant frame a (earliest on ties).

    The run is [a - floor((K-1)/2), ...] (one more frame after a than before when K is even), shifted to
    stay inside the video. Anchor: a.
    """

    prep: RelevancePrep = RelevancePrep()
    uses_relevance: bool = True

    def sample(self, relevance: np.ndarray, k: int, stride: float = 1.0) -> SampleResult:
        num_frames = check_request(relevance, k)
        scores = self.prep.distribution(relevance, stride)
        if self.prep.is_flat(scores):
            return _uniform_fallback(num_frames, k)
        peak = int(np.argmax(scores))
        length = min(k, num_frames)
        start = min(max(peak - (length - 1) // 2, 0), num_frames - length)
        return SampleResult(np.arange(start, start + length, dtype=np.int64), anchor=peak)


@dataclass(frozen=True)
class MomentCentric:
    """MomentSeg MCS (3.2.2, Eq. 6-7, Alg. 1).

    1. S = smoothed non-negative relevance (``RelevancePrep``).
    2. Eq. 6 (``moment_center``): i* = start of the window of w = ``window`` ``[FIND]`` frames
       (``window_frames``: ``window * stride`` video frames) of largest summed S, anchor c* = i* + floor(w/2),
       centred on a plateau of tied windows.
    3. Masses w_L = sum S[0 : c*], w_R = sum S[c*+1 : T] (c* itself belongs to neither side).
    4. ``split_budget``: the other K-1 samples go left/right in proportion to w_L : w_R.
    5. Eq. 7 ``inverse_cdf`` on each side at quantiles (m - 0.5)/k, repeats resolved by
       ``spread_duplicates``; the result is both sides plus c*.
    """

    prep: RelevancePrep = RelevancePrep()
    window: int = 5
    uses_relevance: bool = True

    def sample(self, relevance: np.ndarray, k: int, stride: float = 1.0) -> SampleResult:
        num_frames = check_request(relevance, k)
        if self.window < 1:
            raise SamplingError(f"MCS window must be >= 1 frame, got {self.window}")
        scores = self.prep.distribution(relevance, stride)
        if self.prep.is_flat(scores):
            return _uniform_fallback(num_frames, k)
        center = moment_center(scores, window_frames(self.window, stride))
        if num_frames <= k:
            return SampleResult(np.arange(num_frames, dtype=np.int64), anchor=center)
        left, right = scores[:center], scores[center + 1 :]
        k_left, k_right = split_budget(float(left.sum()), float(right.sum()), k - 1, left.size, right.size)
        left_frames = spread_duplicates(inverse_cdf(left, k_left), 0, center - 1, toward_anchor=1)
        right_frames = spread_duplicates(
            inverse_cdf(right, k_right) + center + 1, center + 1, num_frames - 1, -1
        )
        indices = np.concatenate((left_frames, [center], right_frames)).astype(np.int64)
        return SampleResult(indices, anchor=center)


@dataclass(frozen=True)
class SparseDense:
    """VideoLISA: T_sparse = K uniform frames for temporal context, ``dense`` of them (a uniform subset of
    the sparse frames) at full resolution for segmentation, returned as ``key_frames``. No anchor."""

    dense: int = 4
    uses_relevance: bool = False

    def sample(self, relevance: np.ndarray, k: int, stride: float = 1.0) -> SampleResult:
        num_frames = check_request(relevance, k)
        if self.dense < 1:
            raise SamplingError(f"sparse_dense needs dense >= 1, got {self.dense}")
        sparse = uniform_indices(num_frames, k)
        dense = sparse[uniform_indices(sparse.size, min(self.dense, sparse.size))]
        return SampleResult(sparse, anchor=None, key_frames=dense)


@dataclass(frozen=True)
class TokenKeyframeCandidates:
    """VRS-HQ TKS candidates, as the authors' inference samples them (SitongGong/VRS-HQ,
    ``sample_frames``): a frame-text relevance picks the most relevant frame p, and the candidates are the
    frames at a fixed stride through p, step = ceil(T / (K - 1)), from p mod step to the end: p is always
    among them, and there are at most K - 1 (K = 1: p alone). A video of T <= K frames gives every frame
    (this module's rule for short videos; the authors' stride would keep about half at T = K). The authors' p is
    the argmax of CLIP's frame-text scores and K = 12 (``max_image_token``); here the frame-text relevance
    is the ``[FIND]`` curve, taken as given (no smoothing), earliest frame on ties. These frames are the
    ones the MLLM sees (one ``<SEG>`` each) and the ones TKS scores; the anchor until ``tks_select`` is p
    (the authors' initial conditioning frame).
    """

    uses_relevance: bool = True

    def sample(self, relevance: np.ndarray, k: int, stride: float = 1.0) -> SampleResult:
        num_frames = check_request(relevance, k)
        peak = int(np.argmax(relevance))
        if num_frames <= k:
            return SampleResult(np.arange(num_frames, dtype=np.int64), anchor=peak)
        if k == 1:
            return SampleResult(np.array([peak]), anchor=peak)
        step = math.ceil(num_frames / (k - 1))
        return SampleResult(np.arange(peak % step, num_frames, step, dtype=np.int64), anchor=peak)


def _softmax(values: np.ndarray) -> np.ndarray:
    exponent = np.exp(values - values.max())
    return exponent / exponent.sum()


def tks_scores(object_score_logits: np.ndarray, seg_tak_similarity: np.ndarray) -> np.ndarray:
    """VRS-HQ TKS score per candidate frame, as the authors' inference computes it (SitongGong/VRS-HQ,
    ``model_forward``): softmax over the candidates of SAM2's object-score logits plus softmax over the
    candidates of the ``<SEG>``/``<TAK>`` cosine similarities (temperature 1, equal weights; each term
    sums to 1 over the candidates).

    ``object_score_logits``: SAM2's object (occlusion) score logit for each candidate frame when prompted
    with the fused ``<TAK>`` embedding (VRS-HQ Eq. 2). ``seg_tak_similarity``: cosine similarity of that
    frame's ``<SEG>`` token to ``<TAK>``, the same values whose softmax weights TDA (Eq. 2).
    """
    logits = np.asarray(object_score_logits, dtype=np.float64)
    cosine = np.asarray(seg_tak_similarity, dtype=np.float64)
    if logits.ndim != 1 or logits.shape != cosine.shape or logits.size == 0:
        raise SamplingError(
            f"TKS needs one object score and one similarity per candidate, got shapes {logits.shape} and {cosine.shape}"
        )
    for name, values in (("object_score_logits", logits), ("seg_tak_similarity", cosine)):
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise SamplingError(f"TKS {name} has NaN or infinite values at candidates {bad[:10].tolist()}")
    outside = np.flatnonzero(np.abs(cosine) > 1 + 1e-6)
    if outside.size:
        raise SamplingError(
            f"TKS seg_tak_similarity must be a cosine in [-1, 1]; candidates {outside[:10].tolist()} are not"
        )
    return _softmax(logits) + _softmax(np.clip(cosine, -1.0, 1.0))


def tks_select(
    candidates: SampleResult, object_score_logits: np.ndarray, seg_tak_similarity: np.ndarray
) -> SampleResult:
    """The candidates with the TKS keyframe (highest ``tks_scores``, earliest on ties, as the authors'
    ``list.index(max)``) as anchor. Scores are given per frame of ``candidates.key_frames``, in order.
    """
    scores = tks_scores(object_score_logits, seg_tak_similarity)
    if scores.size != candidates.key_frames.size:
        raise SamplingError(f"TKS got {scores.size} scores for {candidates.key_frames.size} candidate frames")
    keyframe = int(candidates.key_frames[int(np.argmax(scores))])
    return SampleResult(candidates.indices, anchor=keyframe, key_frames=candidates.key_frames)


def _relevance_prep(config: SamplingConfig) -> RelevancePrep:
    return RelevancePrep(kind=config.relevance, sigma=config.sigma, flat_tolerance=config.flat_tolerance)


SAMPLERS: dict[str, Callable[[SamplingConfig], Sampler]] = {
    "firstk": lambda config: FirstK(),
    "uniform": lambda config: Uniform(),
    "topk": lambda config: TopK(_relevance_prep(config)),
    "nearbyk": lambda config: NearbyK(_relevance_prep(config)),
    "mcs": lambda config: MomentCentric(_relevance_prep(config), window=config.window),
    "tks": lambda config: TokenKeyframeCandidates(),
    "sparse_dense": lambda config: SparseDense(dense=config.dense),
}


def make_sampler(config: SamplingConfig) -> Sampler:
    """The sampler ``config.method`` names, built from the config's parameters."""
    try:
        return SAMPLERS[config.method](config)
    except KeyError:
        raise SamplingError(
            f"unknown sampling method '{config.method}'; choose one of {list(METHODS)}"
        ) from None
