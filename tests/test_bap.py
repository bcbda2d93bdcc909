"""Propagation policies: BAP decisions (MomentSeg Eq. 8) with scripted scores, and the two baselines."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.bap import (
    BACKWARD,
    FORWARD,
    BAPError,
    ClearAndReseed,
    Condition,
    PropagationConfig,
    PropagationPolicy,
    Seed,
    Track,
    run_propagation,
)
from actors.config import ConfigError, load_config


@dataclass
class ScriptedSession:
    """A propagation session whose tracking scores are given per (frame, direction); it records every call."""

    scores: dict[tuple[int, int], float] = field(default_factory=dict)
    default: float = 1.0
    calls: list[tuple[str, int, int]] = field(default_factory=list)

    def seed(self, frame: int, direction: int) -> None:
        self.calls.append(("seed", frame, direction))

    def track(self, frame: int, direction: int) -> float:
        self.calls.append(("track", frame, direction))
        return self.scores.get((frame, direction), self.default)

    def clear_and_reseed(self, frame: int, direction: int) -> None:
        self.calls.append(("clear_and_reseed", frame, direction))

    def condition(self, frame: int, direction: int) -> None:
        self.calls.append(("condition", frame, direction))


def tracks(frames: range | list[int], direction: int) -> list[Track]:
    return [Track(frame, direction) for frame in frames]


def run(num_frames, keys, anchor, confidence, scores, mode="bap", lam=0.9, default=1.0):
    policy = PropagationPolicy(num_frames, keys, anchor, confidence, PropagationConfig(mode=mode, lam=lam))
    session = ScriptedSession(scores, default)
    actions = run_propagation(policy, session)
    return actions, session


# ---------------------------------------------------------------- BAP, Eq. 8 by hand


def test_bap_hand_computed_updates():
    # forward: P(8) = 0.9 * 0.9 * 0.95 = 0.7695 < 0.9 * S^p_8 = 0.81 -> clear + reseed at 8
    # backward (fresh, P = 1): P(2) = 0.99 * 0.99 * 0.8 = 0.78408 >= 0.9 * S^p_2 = 0.72 -> keep tracking
    scores = {
        (6, FORWARD): 0.9,
        (7, FORWARD): 0.9,
        (8, FORWARD): 0.95,
        (9, FORWARD): 0.5,
        (4, BACKWARD): 0.99,
        (3, BACKWARD): 0.99,
        (2, BACKWARD): 0.8,
    }
    actions, session = run(10, [2, 5, 8], 5, {2: 0.8, 8: 0.9}, scores)
    assert actions == (
        [Seed(5, FORWARD), *tracks([6, 7, 8], FORWARD), ClearAndReseed(8, FORWARD), Track(9, FORWARD)]
        + [Seed(5, BACKWARD), *tracks([4, 3, 2, 1, 0], BACKWARD)]
    )
    assert ("clear_and_reseed", 8, FORWARD) in session.calls
    assert [call for call in session.calls if call[0] == "track"] == [
        ("track", f, FORWARD) for f in (6, 7, 8, 9)
    ] + [("track", f, BACKWARD) for f in (4, 3, 2, 1, 0)]


def test_bap_product_restarts_after_each_reseed():
    # anchor 0: one forward pass. Every S^t = 0.95; P reaches 0.95^3 = 0.857375 at each key frame
    # because it restarts at the previous reseed: < 0.9 * 1.0 at 3 and 6; at 9, 0.857 >= 0.9 * 0.5 -> keep
    policy = PropagationPolicy(12, [0, 3, 6, 9], 0, {3: 1.0, 6: 1.0, 9: 0.5}, PropagationConfig())
    assert [p.direction for p in policy.passes] == [FORWARD]
    actions = run_propagation(policy, ScriptedSession(default=0.95))
    assert [a for a in actions if not isinstance(a, Track)] == [
        Seed(0, FORWARD),
        ClearAndReseed(3, FORWARD),
        ClearAndReseed(6, FORWARD),
    ]
    assert math.isclose(policy.product, 0.95**5)  # frames 7..11 since the reseed at 6


def test_bap_product_includes_the_key_frame_own_score_and_the_comparison_is_strict():
    # frames 1..3 score 1.0 and key frame 4 scores 0.5: P = 0.5. With lam = 0.5, S^p = 1.0: 0.5 < 0.5 is false.
    scores = {(4, FORWARD): 0.5}
    actions, _ = run(6, [0, 4], 0, {4: 1.0}, scores, lam=0.5)
    assert not any(isinstance(a, ClearAndReseed) for a in actions)
    # with lam = 0.9 the key frame's own score (0.5) pulls P under 0.9 although frames 1..3 were perfect
    actions, _ = run(6, [0, 4], 0, {4: 1.0}, scores, lam=0.9)
    assert ClearAndReseed(4, FORWARD) in actions


def test_bap_backward_pass_starts_fresh_from_the_anchor():
    # the forward pass decays P to 0.1 ** 4; the backward pass must not inherit it
    forward = {(f, FORWARD): 0.1 for f in range(5, 9)}
    actions, _ = run(9, [1, 4], 4, {1: 1.0}, forward, lam=0.9)
    assert actions[5] == Seed(4, BACKWARD)
    assert not any(isinstance(a, ClearAndReseed) for a in actions)


def test_bap_without_anchor_starts_at_the_first_key_frame_and_anchor_at_the_end_runs_backward():
    policy = PropagationPolicy(6, [0, 3], None, {3: 0.2}, PropagationConfig())
    assert policy.start == 0 and [(p.direction, p.seed, list(p.frames)) for p in policy.passes] == [
        (FORWARD, 0, [1, 2, 3, 4, 5])
    ]
    actions, _ = run(6, [2, 5], 5, {2: 0.2}, {})
    assert actions == [Seed(5, FORWARD), Seed(5, BACKWARD), *tracks([4, 3, 2, 1, 0], BACKWARD)]


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_bap_decisions_follow_eq8_exactly(data):
    num_frames = data.draw(st.integers(1, 60), label="T")
    keys = sorted(data.draw(st.sets(st.integers(0, num_frames - 1), min_size=1, max_size=8), label="keys"))
    anchor = data.draw(st.sampled_from(keys), label="anchor")
    lam = data.draw(st.sampled_from([0.5, 0.9, 1.0]), label="lam")
    confidence = {k: data.draw(st.floats(0, 1), label=f"S^p {k}") for k in keys if k != anchor}
    unit = st.floats(0, 1)
    scores = {(f, d): data.draw(unit) for f in range(num_frames) for d in (FORWARD, BACKWARD)}
    actions, _ = run(num_frames, keys, anchor, confidence, scores, lam=lam)

    tracked = [(a.frame, a.direction) for a in actions if isinstance(a, Track)]
    seeds = [a.frame for a in actions if isinstance(a, Seed)]
    assert sorted({f for f, _ in tracked} | set(seeds)) == list(range(num_frames))  # every frame gets a mask
    assert len(tracked) == len(set(f for f, _ in tracked)) == num_frames - 1  # each tracked once
    assert all((f > anchor) == (d == FORWARD) for f, d in tracked)
    # replay Eq. 8 from the log: P since the last seed, including the key frame's own S^t
    product = 1.0
    for index, action in enumerate(actions):
        if isinstance(action, Seed | ClearAndReseed):
            product = 1.0
        elif isinstance(action, Track):
            product *= scores[(action.frame, action.direction)]
            if action.frame in confidence:
                reseeded = index + 1 < len(actions) and isinstance(actions[index + 1], ClearAndReseed)
                assert reseeded == (product < lam * confidence[action.frame])


# ---------------------------------------------------------------- baselines


def test_forward_only_baseline_seeds_frame_zero_and_conditions_every_other_key_frame():
    actions, session = run(8, [0, 3, 6], None, {}, {(3, FORWARD): 0.01}, mode="forward")
    assert actions == [
        Seed(0, FORWARD),
        *tracks([1, 2, 3], FORWARD),
        Condition(3, FORWARD),
        *tracks([4, 5, 6], FORWARD),
        Condition(6, FORWARD),
        Track(7, FORWARD),
    ]
    assert ("condition", 6, FORWARD) in session.calls
    assert not any(call[2] == BACKWARD for call in session.calls)


def test_forward_only_baseline_ignores_the_anchor_and_needs_frame_zero():
    actions, _ = run(4, [0, 2], 2, {}, {}, mode="forward")
    assert actions[0] == Seed(0, FORWARD)
    with pytest.raises(BAPError, match="first key frame is 3: sample with firstk or uniform"):
        PropagationPolicy(10, [3, 6], 3, {}, PropagationConfig(mode="forward"))


def test_keyframe_baseline_runs_both_ways_from_the_keyframe_without_updates():
    terrible = {(f, d): 0.01 for f in range(10) for d in (FORWARD, BACKWARD)}
    actions, _ = run(10, [1, 4, 8], 4, {}, terrible, mode="keyframe")
    assert actions == (
        [Seed(4, FORWARD), *tracks(range(5, 10), FORWARD)]
        + [Seed(4, BACKWARD), *tracks([3, 2, 1, 0], BACKWARD)]
    )


# ---------------------------------------------------------------- lock-step use and errors


def test_policy_can_be_stepped_by_hand_like_an_engine_with_several_objects():
    config = PropagationConfig()
    policies = {
        "a": PropagationPolicy(6, [1, 4], 1, {4: 1.0}, config),
        "b": PropagationPolicy(6, [2, 5], 5, {2: 1.0}, config),
    }
    seeds = {name: policy.begin(FORWARD) for name, policy in policies.items()}
    assert seeds == {"a": Seed(1, FORWARD), "b": Seed(5, FORWARD)}
    decisions = []
    for frame in range(2, 6):  # one forward sweep; "b" has nothing to track forward of its anchor
        decisions.append(policies["a"].after_track(frame, 0.8))
    assert decisions == [None, None, ClearAndReseed(4, FORWARD), None]
    with pytest.raises(BAPError, match="tracked outside a pass"):
        policies["a"].after_track(6, 1.0)


def test_policy_errors_name_the_problem():
    config = PropagationConfig()
    with pytest.raises(BAPError, match=r"S\^p of frames \[2, 8\]"):
        PropagationPolicy(10, [2, 5, 8], 5, {}, config)
    with pytest.raises(BAPError, match="anchor 4 is not one of the key frames"):
        PropagationPolicy(10, [2, 5], 4, {2: 1.0, 5: 1.0}, config)
    with pytest.raises(BAPError, match="outside the video's frames 0..9"):
        PropagationPolicy(10, [2, 10], 2, {10: 1.0}, config)
    with pytest.raises(BAPError, match="sorted list of distinct frames"):
        PropagationPolicy(10, [5, 2], 5, {2: 1.0}, config)
    with pytest.raises(BAPError, match="video length must be >= 1 frame, got -1"):
        PropagationPolicy(-1, [0], 0, {}, config)
    with pytest.raises(BAPError, match=r"key-frame confidence S\^p at frame 2 must be in \[0, 1\], got 1.5"):
        PropagationPolicy(10, [2, 5], 5, {2: 1.5}, config)
    policy = PropagationPolicy(10, [2, 5], 5, {2: 0.5}, config)
    policy.begin(FORWARD)
    with pytest.raises(BAPError, match="tracked frame 7 out of order: the pass in direction 1 expects 6"):
        policy.after_track(7, 1.0)
    with pytest.raises(BAPError, match=r"tracking score S\^t at frame 6 must be in \[0, 1\], got nan"):
        policy.after_track(6, float("nan"))
    with pytest.raises(BAPError, match="has no pass in direction -1"):
        PropagationPolicy(10, [0, 5], 0, {5: 0.5}, config).begin(BACKWARD)


def test_config_is_validated_through_load_config():
    assert load_config(PropagationConfig, None, ["mode=keyframe", "lam=0.8"]) == PropagationConfig(
        "keyframe", 0.8
    )
    with pytest.raises(ConfigError, match="propagation.mode must be one of"):
        load_config(PropagationConfig, None, ["mode=both"])
    with pytest.raises(ConfigError, match="propagation.lam must be a finite number >= 0"):
        load_config(PropagationConfig, None, ["lam=-0.1"])
