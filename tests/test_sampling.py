"""Key-frame samplers: properties for every method, MCS (MomentSeg Eq. 6-7) by hand, TKS, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from actors.config import ConfigError, load_config
from actors.sampling import (
    METHODS,
    TIE_TOLERANCE,
    MomentCentric,
    RelevancePrep,
    SampleResult,
    SamplingConfig,
    SamplingError,
    inverse_cdf,
    make_sampler,
    moment_center,
    relevance_distribution,
    split_budget,
    spread_duplicates,
    tks_scores,
    tks_select,
    uniform_indices,
    window_frames,
)

RELEVANCE_METHODS = ("topk", "nearbyk", "mcs")
PROFILE = settings(max_examples=100, deadline=None)

logit_curves = st.integers(1, 300).flatmap(
    lambda t: arrays(np.float64, t, elements=st.floats(-12, 12, allow_nan=False, allow_infinity=False))
)
configs = st.builds(
    SamplingConfig,
    method=st.sampled_from(METHODS),
    k=st.integers(1, 40),
    window=st.integers(1, 60),
    sigma=st.sampled_from([0.0, 0.5, 2.0, 6.0]),
    dense=st.just(1),
)


def hand_mcs(window: int = 3) -> MomentCentric:
    """MCS on probabilities without smoothing, so every step can be computed by hand."""
    return MomentCentric(RelevancePrep(kind="probabilities", sigma=0.0), window=window)


# ---------------------------------------------------------------- properties of every sampler


@PROFILE
@given(curve=logit_curves, config=configs, dense=st.integers(1, 40))
def test_every_sampler_returns_k_distinct_sorted_in_range_frames_with_anchor_among_them(curve, config, dense):
    config.dense = min(dense, config.k)
    result = make_sampler(config).sample(curve, config.k)
    num_frames = curve.size
    assert result.indices.dtype == np.int64
    if config.method == "tks":  # the authors' stride gives at most K - 1 candidates on longer videos
        assert 1 <= result.indices.size <= min(config.k, num_frames)
    else:
        assert result.indices.size == min(config.k, num_frames)
    assert np.all(np.diff(result.indices) > 0)
    assert result.indices[0] >= 0 and result.indices[-1] < num_frames
    assert np.isin(result.key_frames, result.indices).all()
    if config.method == "sparse_dense":
        assert result.key_frames.size == min(config.dense, result.indices.size)
    else:
        assert np.array_equal(result.key_frames, result.indices)
    if config.method in (*RELEVANCE_METHODS, "tks"):
        assert result.anchor is not None and result.anchor in result.indices
    else:
        assert result.anchor is None


@PROFILE
@given(curve=logit_curves, method=st.sampled_from(METHODS), extra=st.integers(0, 20))
def test_short_video_returns_every_frame(curve, method, extra):
    k = curve.size + extra
    result = make_sampler(SamplingConfig(method=method, k=k, dense=1)).sample(curve, k)
    assert result.indices.tolist() == list(range(curve.size))


@PROFILE
@given(
    num_frames=st.integers(1, 400),
    k=st.integers(1, 30),
    level=st.floats(-8, 8),
    method=st.sampled_from(RELEVANCE_METHODS),
    sigma=st.sampled_from([0.0, 2.0]),
)
def test_flat_logit_curve_falls_back_to_uniform_anchored_at_the_middle_sample(
    num_frames, k, level, method, sigma
):
    config = SamplingConfig(method=method, k=k, sigma=sigma)
    result = make_sampler(config).sample(np.full(num_frames, level), k)
    expected = uniform_indices(num_frames, k)
    assert np.array_equal(result.indices, expected)
    assert result.anchor == expected[(expected.size - 1) // 2]


@pytest.mark.parametrize("method", RELEVANCE_METHODS)
def test_all_zero_probabilities_fall_back_to_uniform(method):
    config = SamplingConfig(method=method, k=5, relevance="probabilities")
    result = make_sampler(config).sample(np.zeros(41), 5)
    assert result.indices.tolist() == [0, 10, 20, 30, 40]
    assert result.anchor == 20


@PROFILE
@given(num_frames=st.integers(1, 5000), k=st.integers(1, 64))
def test_uniform_spreads_evenly_and_keeps_both_ends(num_frames, k):
    frames = uniform_indices(num_frames, k)
    assert frames.size == min(num_frames, k)
    assert frames[0] == 0
    if frames.size >= 2:
        assert frames[-1] == num_frames - 1
        gaps = np.diff(frames)
        assert gaps.min() >= 1 and gaps.max() - gaps.min() <= 1


@PROFILE
@given(curve=logit_curves, k=st.integers(1, 20))
def test_firstk_is_the_first_frames(curve, k):
    result = make_sampler(SamplingConfig(method="firstk", k=k)).sample(curve, k)
    assert result.indices.tolist() == list(range(min(k, curve.size)))


@PROFILE
@given(curve=logit_curves, k=st.integers(1, 20), sigma=st.sampled_from([0.0, 1.5]))
def test_topk_keeps_the_highest_frames_and_anchors_at_the_best(curve, k, sigma):
    scores = relevance_distribution(curve, "logits", sigma)
    assume(scores.max() - scores.min() > 1e-3 * scores.max())
    result = make_sampler(SamplingConfig(method="topk", k=k, sigma=sigma)).sample(curve, k)
    chosen = np.zeros(curve.size, dtype=bool)
    chosen[result.indices] = True
    if (~chosen).any():
        assert scores[chosen].min() >= scores[~chosen].max()
    assert scores[result.anchor] == scores.max()


@PROFILE
@given(curve=logit_curves, k=st.integers(1, 20), sigma=st.sampled_from([0.0, 1.5]))
def test_nearbyk_is_a_contiguous_run_around_the_most_relevant_frame(curve, k, sigma):
    scores = relevance_distribution(curve, "logits", sigma)
    assume(scores.max() - scores.min() > 1e-3 * scores.max())
    result = make_sampler(SamplingConfig(method="nearbyk", k=k, sigma=sigma)).sample(curve, k)
    peak = int(np.argmax(scores))
    assert result.anchor == peak
    assert np.all(np.diff(result.indices) == 1)
    assert result.indices[0] <= peak <= result.indices[-1]


def test_nearbyk_centres_the_run_and_shifts_it_inside_the_video():
    sampler = make_sampler(SamplingConfig(method="nearbyk", k=4, sigma=0.0, relevance="probabilities"))
    middle = np.zeros(20)
    middle[10] = 1.0
    assert sampler.sample(middle, 4).indices.tolist() == [9, 10, 11, 12]
    end = np.zeros(20)
    end[19] = 1.0
    assert sampler.sample(end, 4).indices.tolist() == [16, 17, 18, 19]


@PROFILE
@given(curve=logit_curves, k=st.integers(1, 16), window=st.integers(1, 40), sigma=st.sampled_from([0.0, 2.0]))
def test_mcs_anchor_is_the_centre_of_the_best_window_eq6(curve, k, window, sigma):
    scores = relevance_distribution(curve, "logits", sigma)
    assume(scores.max() - scores.min() > 1e-6 * scores.max())
    result = make_sampler(SamplingConfig(method="mcs", k=k, window=window, sigma=sigma)).sample(curve, k)
    w = min(window, curve.size)
    window_sums = [math.fsum(scores[i : i + w]) for i in range(curve.size - w + 1)]
    tolerance = TIE_TOLERANCE * math.fsum(scores)
    tied = [total >= max(window_sums) - tolerance for total in window_sums]
    first = tied.index(True)
    last = first
    while last + 1 < len(tied) and tied[last + 1]:
        last += 1
    assert result.anchor == (first + last) // 2 + w // 2  # i* = the middle of the first run of tied windows


def test_mcs_anchor_is_centred_on_a_tied_plateau():
    relevance = np.array([0, 0, 1, 1, 1, 1, 1, 1, 0, 0], dtype=float)
    # w = 3: window sums 1, 2, 3, 3, 3, 3, 2, 1 -> starts 2..5 tie; i* = (2 + 5) // 2 = 3, c* = 4, the
    # middle of the plateau 2..7 (the earliest window would put c* at 3)
    assert moment_center(relevance, 3) == 4
    assert hand_mcs().sample(relevance, 3).anchor == 4
    # two separate plateaus of equal mass: the earlier one, centred
    twin = np.array([1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1], dtype=float)
    assert moment_center(twin, 2) == (0 + 2) // 2 + 1
    # a [FIND] curve saturated over a long stretch: the anchor is its centre, not its start
    saturated = np.full(40, -8.0)
    saturated[10:30] = 8.0
    result = make_sampler(SamplingConfig(method="mcs", k=5, window=5, sigma=1.0)).sample(saturated, 5)
    assert result.anchor == 19


def test_mcs_window_and_sigma_are_in_find_frame_units():
    # probabilities over 40 frames: a spike of 10 at frame 5, a block of 1s over frames 20..39
    relevance = np.zeros(40)
    relevance[5] = 10.0
    relevance[20:] = 1.0
    sampler = MomentCentric(RelevancePrep(kind="probabilities", sigma=0.0), window=5)
    # scored frame by frame, w = 5 frames: the spike's windows (sum 10) beat the block's (sum 5)
    assert sampler.sample(relevance, 4).anchor in range(3, 8)
    # each [FIND] frame standing for 4 video frames, w = 20 frames: the block's window (20) wins, centred
    assert window_frames(5, 4.0) == 20
    assert sampler.sample(relevance, 4, stride=4.0).anchor == 20 + 10
    # sigma scales the same way: sigma 1 [FIND] frame = 4 video frames
    smooth = RelevancePrep(kind="probabilities", sigma=1.0)
    np.testing.assert_allclose(smooth.distribution(relevance, 4.0), relevance_distribution(relevance, "probabilities", 4.0))
    with pytest.raises(SamplingError, match=r"stride \(video frames per \[FIND\] frame\) must be finite and > 0"):
        sampler.sample(relevance, 4, stride=0.0)


@PROFILE
@given(
    num_frames=st.integers(60, 600),
    k=st.integers(3, 16),
    data=st.data(),
)
def test_mcs_puts_more_samples_in_a_high_relevance_moment_than_uniform(num_frames, k, data):
    length = data.draw(st.integers(max(8, num_frames // 20), num_frames // 4), label="moment length")
    start = data.draw(st.integers(0, num_frames - length), label="moment start")
    curve = np.full(num_frames, -4.0)
    curve[start : start + length] = 4.0
    config = SamplingConfig(method="mcs", k=k, window=8, sigma=1.0)
    result = make_sampler(config).sample(curve, k)
    inside = lambda frames: int(np.count_nonzero((frames >= start) & (frames < start + length)))  # noqa: E731
    uniform_inside = inside(uniform_indices(num_frames, k))
    assert start <= result.anchor < start + length
    assert inside(result.indices) > uniform_inside or inside(result.indices) == min(length, k)


# ---------------------------------------------------------------- MCS step by step (Eq. 6-7, Alg. 1)


def test_mcs_by_hand_two_sided_moment():
    relevance = np.array([0, 1, 0, 0, 2, 4, 2, 0, 1, 0], dtype=float)
    # Eq. 6 with w = 3: window sums 1, 1, 2, 6, 8, 6, 3, 1 -> i* = 4, c* = 4 + 1 = 5
    assert moment_center(relevance, 3) == 5
    # masses: w_L = S[0:5] = 3, w_R = S[6:10] = 3 -> K-1 = 4 split 2 / 2
    assert split_budget(3.0, 3.0, 4, 5, 4) == (2, 2)
    # left S[0:5] = [0,1,0,0,2]: F = [0, 1/3, 1/3, 1/3, 1]; u = 0.25, 0.75 -> frames 1, 4
    assert inverse_cdf(relevance[:5], 2).tolist() == [1, 4]
    # right S[6:10] = [2,0,1,0]: F = [2/3, 2/3, 1, 1]; u = 0.25, 0.75 -> offsets 0, 2 -> frames 6, 8
    assert inverse_cdf(relevance[6:], 2).tolist() == [0, 2]
    result = hand_mcs().sample(relevance, 5)
    assert result.indices.tolist() == [1, 4, 5, 6, 8]
    assert result.anchor == 5


def test_mcs_by_hand_repeated_frames_move_to_the_nearest_free_frame_on_their_side():
    relevance = np.array([0, 0, 0, 0, 1, 10, 1, 0, 0, 0], dtype=float)
    assert moment_center(relevance, 3) == 5  # sums 0, 1, 11, 12, 11, 1, 0, 0
    assert split_budget(1.0, 1.0, 4, 5, 4) == (2, 2)
    assert inverse_cdf(relevance[:5], 2).tolist() == [4, 4]  # all left mass on frame 4
    assert spread_duplicates(np.array([4, 4]), 0, 4, toward_anchor=1).tolist() == [3, 4]
    assert spread_duplicates(np.array([6, 6]), 6, 9, toward_anchor=-1).tolist() == [6, 7]
    result = hand_mcs().sample(relevance, 5)
    assert result.indices.tolist() == [3, 4, 5, 6, 7]


def test_spread_duplicates_prefers_the_anchor_side_on_ties():
    # anchor to the right (left side): 5, then 6 (nearer the anchor), then 4
    assert spread_duplicates(np.array([5, 5, 5]), 0, 9, toward_anchor=1).tolist() == [4, 5, 6]
    # anchor to the left (right side): 15, then 14, then 16
    assert spread_duplicates(np.array([15, 15, 15]), 11, 20, toward_anchor=-1).tolist() == [14, 15, 16]
    # quantile order matters: the second 1 takes 2, so the later 2 moves on to 3
    assert spread_duplicates(np.array([1, 1, 2]), 0, 5, toward_anchor=1).tolist() == [1, 2, 3]


def test_inverse_cdf_quantiles_eq7():
    # F = [0.25, 0.5, 1.0]; u = 0.125, 0.375, 0.625, 0.875 -> 0, 1, 2, 2
    assert inverse_cdf(np.array([1.0, 1.0, 2.0]), 4).tolist() == [0, 1, 2, 2]
    # a side without mass is sampled as if uniform: u = 0.25, 0.75 over 4 frames -> 0, 2
    assert inverse_cdf(np.zeros(4), 2).tolist() == [0, 2]
    assert inverse_cdf(np.ones(3), 0).tolist() == []


def test_split_budget_rounding_and_room():
    assert split_budget(1.0, 1.0, 5, 10, 10) == (3, 2)  # 2.5 rounds half to the left
    assert split_budget(1.0, 2.0, 3, 10, 10) == (1, 2)
    assert split_budget(1.0, 3.0, 6, 10, 10) == (2, 4)  # 1.5 -> 2
    assert split_budget(100.0, 1.0, 6, 2, 10) == (2, 4)  # left has only 2 frames
    assert split_budget(1.0, 100.0, 6, 10, 1) == (5, 1)  # right has only 1 frame
    assert split_budget(0.0, 0.0, 4, 3, 9) == (1, 3)  # no mass: split by frame counts
    with pytest.raises(SamplingError, match="cannot place 5 samples"):
        split_budget(1.0, 1.0, 5, 2, 2)


def test_mcs_budget_of_one_is_the_anchor():
    relevance = np.array([0, 0, 1, 5, 1, 0, 0], dtype=float)
    result = hand_mcs(window=1).sample(relevance, 1)
    assert result.indices.tolist() == [3] and result.anchor == 3


def test_mcs_anchor_at_the_last_frame_samples_only_to_its_left():
    relevance = np.array([1, 1, 1, 1, 1, 1, 1, 9], dtype=float)
    result = hand_mcs(window=1).sample(relevance, 4)
    # c* = 7; w_R = 0 -> all 3 samples left; left is uniform 1s: u = 1/6, 1/2, 5/6 over 7 frames -> 1, 3, 5
    assert result.anchor == 7
    assert result.indices.tolist() == [1, 3, 5, 7]


def test_relevance_logits_go_through_a_sigmoid_and_smoothing_keeps_the_peak():
    logits = np.array([-2.0, 0.0, 3.0])
    expected = [1 / (1 + math.exp(2.0)), 0.5, 1 / (1 + math.exp(-3.0))]
    assert np.allclose(relevance_distribution(logits, "logits", 0.0), expected)
    spike = np.zeros(21)
    spike[10] = 1.0
    smoothed = relevance_distribution(spike, "probabilities", 2.0)
    assert int(np.argmax(smoothed)) == 10
    assert np.allclose(smoothed[:10], smoothed[20:10:-1])
    assert smoothed[10] < 1.0 and smoothed[3] > 0.0


# ---------------------------------------------------------------- Sparse-Dense, TKS


def test_sparse_dense_returns_uniform_context_and_a_uniform_dense_subset():
    result = make_sampler(SamplingConfig(method="sparse_dense", k=32, dense=4)).sample(np.zeros(311), 32)
    assert np.array_equal(result.indices, uniform_indices(311, 32))
    assert result.key_frames.tolist() == [0, 100, 210, 310]  # sparse positions 0, 10, 21, 31
    assert result.anchor is None


def test_tks_candidates_are_the_authors_stride_through_the_most_relevant_frame():
    """VRS-HQ ``sample_frames``: step = ceil(T / (K - 1)) through the peak, from peak mod step."""
    relevance = np.zeros(30)
    relevance[17] = 3.0
    candidates = make_sampler(SamplingConfig(method="tks", k=12)).sample(relevance, 12)
    # step = ceil(30 / 11) = 3, start = 17 mod 3 = 2
    assert candidates.indices.tolist() == [2, 5, 8, 11, 14, 17, 20, 23, 26, 29]
    assert candidates.anchor == 17 and np.array_equal(candidates.key_frames, candidates.indices)
    assert make_sampler(SamplingConfig(method="tks", k=12)).sample(relevance[:9], 12).indices.tolist() == list(
        range(9)
    )
    assert make_sampler(SamplingConfig(method="tks", k=1)).sample(relevance, 1).indices.tolist() == [17]


def test_tks_scores_and_selection_by_hand():
    # softmax([0, 2, -1]) = [0.1142, 0.8438, 0.0420]; softmax([0.9, 0.1, 1.0]) = [0.3915, 0.1759, 0.4326]
    scores = tks_scores(np.array([0.0, 2.0, -1.0]), np.array([0.9, 0.1, 1.0]))
    assert np.allclose(scores, [0.5057, 1.0197, 0.4746], atol=1e-4)
    candidates = SampleResult(np.array([0, 4, 8]), anchor=None)
    chosen = tks_select(candidates, np.array([0.0, 2.0, -1.0]), np.array([0.9, 0.1, 1.0]))
    assert chosen.anchor == 4 and np.array_equal(chosen.indices, candidates.indices)
    # the similarities decide when the object scores are equal
    assert tks_select(candidates, np.array([1.0, 1.0, 1.0]), np.array([0.2, 0.1, 0.5])).anchor == 8
    # ties go to the earliest candidate
    assert tks_select(candidates, np.array([1.0, 1.0, 1.0]), np.array([0.3, 0.3, 0.3])).anchor == 0


def test_tks_rejects_mismatched_or_invalid_scores():
    candidates = SampleResult(np.array([2, 5, 9]), anchor=None)
    with pytest.raises(SamplingError, match="one object score and one similarity per candidate"):
        tks_select(candidates, np.zeros(3), np.zeros(2))
    with pytest.raises(SamplingError, match="3 candidate frames"):
        tks_select(candidates, np.zeros(2), np.zeros(2))
    with pytest.raises(SamplingError, match=r"must be a cosine in \[-1, 1\]; candidates \[1\]"):
        tks_select(candidates, np.zeros(3), np.array([0.0, 1.5, 0.0]))
    with pytest.raises(SamplingError, match=r"object_score_logits has NaN.*\[2\]"):
        tks_select(candidates, np.array([0.0, 0.0, np.nan]), np.zeros(3))


# ---------------------------------------------------------------- errors and config


@pytest.mark.parametrize("method", METHODS)
def test_bad_requests_are_errors_naming_the_problem(method):
    sampler = make_sampler(SamplingConfig(method=method, k=4, dense=2))
    with pytest.raises(SamplingError, match=r"NaN or infinite values at frames \[2, 4\]"):
        sampler.sample(np.array([0.0, 1.0, np.nan, 0.0, np.inf]), 4)
    with pytest.raises(SamplingError, match="k \\(frame budget\\) must be >= 1, got 0"):
        sampler.sample(np.zeros(5), 0)
    with pytest.raises(SamplingError, match="must be >= 1, got -3"):
        sampler.sample(np.zeros(5), -3)
    with pytest.raises(SamplingError, match="must be an integer"):
        sampler.sample(np.zeros(5), True)
    with pytest.raises(SamplingError, match="empty: the video has no frames"):
        sampler.sample(np.zeros(0), 4)
    with pytest.raises(SamplingError, match="must be 1-D"):
        sampler.sample(np.zeros((2, 3)), 4)


def test_negative_probabilities_and_lengths_are_errors():
    sampler = make_sampler(SamplingConfig(method="mcs", relevance="probabilities"))
    with pytest.raises(SamplingError, match=r"must be >= 0; frames \[1\] are negative"):
        sampler.sample(np.array([0.2, -0.1, 0.3]), 2)
    with pytest.raises(SamplingError, match="video length must be >= 1 frame, got -4"):
        uniform_indices(-4, 2)
    with pytest.raises(SamplingError, match="anchor 3 is not one of the key frames"):
        SampleResult(np.array([1, 2, 4]), anchor=3)
    with pytest.raises(SamplingError, match="sorted list of distinct frames"):
        SampleResult(np.array([4, 2]), anchor=None)


def test_config_is_validated_through_load_config(tmp_path):
    path = tmp_path / "sampling.yaml"
    assert (SamplingConfig().window, SamplingConfig().sigma) == (5, 1.0)  # the authors' code, in [FIND] frames
    path.write_text("method: mcs\nk: 10\nwindow: 24\nsigma: 1.5\n")
    config = load_config(SamplingConfig, path, ["relevance=probabilities"])
    assert (config.method, config.k, config.window, config.sigma, config.relevance) == (
        "mcs",
        10,
        24,
        1.5,
        "probabilities",
    )
    sampler = make_sampler(config)
    assert isinstance(sampler, MomentCentric) and sampler.window == 24 and sampler.prep.sigma == 1.5
    with pytest.raises(ConfigError, match="sampling.method must be one of"):
        load_config(SamplingConfig, path, ["method=mcs2"])
    with pytest.raises(ConfigError, match=r"sampling.dense \(T_dense\) must not exceed sampling.k=10"):
        load_config(SamplingConfig, path, ["method=sparse_dense", "dense=11"])
    with pytest.raises(ConfigError, match="unknown key 'windw'"):
        load_config(SamplingConfig, path, ["windw=3"])
    with pytest.raises(ConfigError, match="sampling.sigma must be a finite number >= 0"):
        load_config(SamplingConfig, path, ["sigma=-1"])
