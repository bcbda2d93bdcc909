"""Propagation policies: MomentSeg Table 9's rows (conditioning frames, Eq. 8 clearing) with scripted scores."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.bap import (
    BACKWARD,
    FORWARD,
    MODES,
    TABLE9_ROWS,
    BAPError,
    Clear,
    PropagationConfig,
    PropagationPolicy,
    Seed,
    Track,
    Update,
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

    def clear(self, frame: int, direction: int) -> None:
        self.calls.append(("clear", frame, direction))


def tracks(frames: range | list[int], direction: int) -> list[Track]:
    return [Track(frame, direction) for frame in frames]


def run(num_frames, keys, anchor, confidence, scores, mode="bap", lam=0.9, default=1.0):
    policy = PropagationPolicy(num_frames, keys, anchor, confidence, PropagationConfig(mode=mode, lam=lam))
    session = ScriptedSession(scores, default)
    actions = run_propagation(policy, session)
    return actions, session, policy


# ---------------------------------------------------------------- Table 9, row by row, by hand
# T = 12, key frames 1, 4, 7, 10, anchor c* = 7. Every tracked frame scores S^t = 0.9; S^p = 1.0 except
# frame 7 (0.5), lambda = 0.9. Tracked frames between two key frames multiply P by 0.9 * 0.9 = 0.81.
KEYS, ANCHOR, T = [1, 4, 7, 10], 7, 12
CONFIDENCE = {1: 1.0, 4: 1.0, 7: 0.5, 10: 1.0}
F, B = FORWARD, BACKWARD

TABLE9 = {
    # the seed alone conditions; frame 0, before the first key frame, gets no mask
    "forward": [Seed(1, F), *tracks(range(2, 12), F)],
    # every key frame conditions from the start and is the output where the pass reaches it
    "anchor_updating": [Seed(1, F), Seed(4, F), Seed(7, F), Seed(10, F), *tracks([2, 3], F), Update(4, F),
                        *tracks([5, 6], F), Update(7, F), *tracks([8, 9], F), Update(10, F), Track(11, F)],
    # Eq. 8 at 4: P = 0.81 < 0.9 * 1.0 -> clear (P = 1); at 7: P = 0.81 >= 0.9 * 0.5 -> keep, P carries on;
    # at 10: P = 0.81 * 0.81 = 0.6561 < 0.9 -> clear
    "memory_cleaning": [Seed(1, F), Seed(4, F), Seed(7, F), Seed(10, F), *tracks([2, 3], F), Update(4, F),
                        Clear(4, F), *tracks([5, 6], F), Update(7, F), *tracks([8, 9], F), Update(10, F),
                        Clear(10, F), Track(11, F)],
    # from c*: forward with the later key frames, then backward (fresh memory, P = 1) with the earlier ones
    "bap": [Seed(7, F), Seed(10, F), *tracks([8, 9], F), Update(10, F), Clear(10, F), Track(11, F),
            Seed(7, B), Seed(4, B), Seed(1, B), *tracks([6, 5], B), Update(4, B), Clear(4, B), *tracks([3, 2], B),
            Update(1, B), Clear(1, B), Track(0, B)],
    # VRS-HQ: the keyframe alone, both ways
    "keyframe": [Seed(7, F), *tracks(range(8, 12), F), Seed(7, B), *tracks(range(6, -1, -1), B)],
}


@pytest.mark.parametrize("mode", list(TABLE9))
def test_conditioning_frames_and_clearing_per_row(mode: str) -> None:
    actions, session, policy = run(T, KEYS, ANCHOR, CONFIDENCE, {}, mode=mode, default=0.9)
    assert actions == TABLE9[mode]
    conditioning = {d: [a.frame for a in actions if isinstance(a, Seed) and a.direction == d] for d in (F, B)}
    assert [("seed", f, F) for f in conditioning[F]] == [c for c in session.calls if c[0] == "seed" and c[2] == F]
    assert [c for c in session.calls if c[0] == "clear"] == [("clear", a.frame, a.direction) for a in actions
                                                             if isinstance(a, Clear)]
    assert list(policy.unlabeled) == ([0] if not MODES[mode].bidirectional else [])
    # every frame gets exactly one output: the start's seed, an update or a track (or none before a one-way start)
    outputs = [a.frame for a in actions if isinstance(a, Track | Update)] + [policy.start, *policy.unlabeled]
    assert sorted(outputs) == list(range(T))


def test_table9_rows_are_the_ablation_order_with_bap_the_default() -> None:
    assert TABLE9_ROWS == ("forward", "anchor_updating", "memory_cleaning", "bap")
    assert PropagationConfig().mode == "bap"
    features = [MODES[row] for row in TABLE9_ROWS]
    assert [(f.bidirectional, f.anchor_updating, f.memory_cleaning) for f in features] == [
        (False, False, False), (False, True, False), (False, True, True), (True, True, True)]


# ---------------------------------------------------------------- Eq. 8 details


def test_product_excludes_key_frames_and_the_comparison_is_strict() -> None:
    # frames 1..3 score 0.5, key frame 4 would score 0.01 if it were tracked: it is not (its mask is given).
    # P = 0.125; with lam = 0.125 and S^p = 1.0: 0.125 < 0.125 is false -> keep.
    scores = {(f, F): 0.5 for f in (1, 2, 3)} | {(4, F): 0.01}
    actions, session, _ = run(6, [0, 4], 0, {4: 1.0}, scores, lam=0.125)
    assert not any(isinstance(a, Clear) for a in actions) and ("track", 4, F) not in session.calls
    actions, _, _ = run(6, [0, 4], 0, {4: 1.0}, scores, lam=0.126)
    assert Clear(4, F) in actions


def test_backward_pass_starts_fresh_from_the_anchor() -> None:
    # the forward pass decays P to 0.1 ** 4; the backward pass must not inherit it
    forward = {(f, F): 0.1 for f in range(5, 9)}
    actions, _, _ = run(9, [1, 4], 4, {1: 1.0}, forward, lam=0.9)
    assert actions[5] == Seed(4, B)
    assert not any(isinstance(a, Clear) for a in actions)


def test_without_anchor_bidirectional_modes_start_at_the_first_key_frame() -> None:
    policy = PropagationPolicy(6, [0, 3], None, {3: 0.2}, PropagationConfig())
    assert policy.start == 0 and [(p.direction, p.seeds, list(p.frames)) for p in policy.passes] == [
        (F, (0, 3), [1, 2, 3, 4, 5])
    ]
    actions, _, _ = run(6, [2, 5], 5, {2: 0.2}, {})
    assert actions[:2] == [Seed(5, F), Seed(5, B)]


def test_one_token_seg_all_has_no_propagation_policy() -> None:
    assert not MODES["one_token_seg_all"].tracking and all(MODES[m].tracking for m in (*TABLE9_ROWS, "keyframe"))
    with pytest.raises(BAPError, match="propagates nothing"):
        PropagationPolicy(10, [3, 6], 6, {}, PropagationConfig(mode="one_token_seg_all"))


def test_one_way_modes_ignore_the_anchor_and_leave_frames_before_the_first_key_frame() -> None:
    for mode in ("forward", "anchor_updating", "memory_cleaning"):
        policy = PropagationPolicy(10, [3, 6], 6, {6: 1.0}, PropagationConfig(mode=mode))
        assert policy.start == 3 and list(policy.unlabeled) == [0, 1, 2]
        assert [p.direction for p in policy.passes] == [F]


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_bap_decisions_follow_eq8_exactly(data) -> None:
    num_frames = data.draw(st.integers(1, 60), label="T")
    keys = sorted(data.draw(st.sets(st.integers(0, num_frames - 1), min_size=1, max_size=8), label="keys"))
    anchor = data.draw(st.sampled_from(keys), label="anchor")
    lam = data.draw(st.sampled_from([0.5, 0.9, 1.0]), label="lam")
    confidence = {k: data.draw(st.floats(0, 1), label=f"S^p {k}") for k in keys if k != anchor}
    scores = {(f, d): data.draw(st.floats(0, 1)) for f in range(num_frames) for d in (F, B)}
    actions, _, _ = run(num_frames, keys, anchor, confidence, scores, lam=lam)

    visited = [(a.frame, a.direction) for a in actions if isinstance(a, Track | Update)]
    assert sorted([f for f, _ in visited] + [anchor]) == list(range(num_frames))  # every frame once
    assert all((f > anchor) == (d == F) for f, d in visited)
    assert {a.frame for a in actions if isinstance(a, Update)} == set(keys) - {anchor}  # updated at every key
    # replay Eq. 8 from the log: P over the frames tracked since the pass began or memory was last cleared
    product = 1.0
    for index, action in enumerate(actions):
        if isinstance(action, Clear) or (isinstance(action, Seed) and action.frame == anchor):
            product = 1.0
        elif isinstance(action, Track):
            product *= scores[(action.frame, action.direction)]
        elif isinstance(action, Update):
            cleared = index + 1 < len(actions) and actions[index + 1] == Clear(action.frame, action.direction)
            assert cleared == (product < lam * confidence[action.frame])


# ---------------------------------------------------------------- lock-step use and errors


def test_policy_can_be_stepped_by_hand_like_an_engine_with_several_objects() -> None:
    config = PropagationConfig()
    policies = {
        "a": PropagationPolicy(6, [1, 4], 1, {4: 1.0}, config),
        "b": PropagationPolicy(6, [2, 5], 5, {2: 1.0}, config),
    }
    passes = {name: policy.begin(F) for name, policy in policies.items()}
    assert {name: p.seeds for name, p in passes.items()} == {"a": (1, 4), "b": (5,)}
    for frame in (2, 3):
        policies["a"].after_track(frame, 0.8)
    assert policies["a"].reach(4)  # P = 0.64 < 0.9
    policies["a"].after_track(5, 1.0)
    with pytest.raises(BAPError, match="visited outside a pass"):
        policies["a"].after_track(6, 1.0)


def test_policy_errors_name_the_problem() -> None:
    config = PropagationConfig()
    with pytest.raises(BAPError, match=r"S\^p of frames \[2, 8\]"):
        PropagationPolicy(10, [2, 5, 8], 5, {}, config)
    PropagationPolicy(10, [2, 5, 8], 5, {}, PropagationConfig(mode="anchor_updating"))  # no Eq. 8, no S^p
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
    policy = PropagationPolicy(10, [2, 5, 8], 5, {2: 0.5, 8: 0.5}, config)
    policy.begin(F)
    with pytest.raises(BAPError, match="frame 7 visited out of order: the pass in direction 1 expects 6"):
        policy.after_track(7, 1.0)
    with pytest.raises(BAPError, match=r"tracking score S\^t at frame 6 must be in \[0, 1\], got nan"):
        policy.after_track(6, float("nan"))
    policy.after_track(7, 1.0)
    with pytest.raises(BAPError, match="frame 8 is a seeded key frame, reach it"):
        policy.after_track(8, 1.0)
    with pytest.raises(BAPError, match="has no pass in direction -1"):
        PropagationPolicy(10, [0, 5], 0, {5: 0.5}, config).begin(B)


def test_config_is_validated_through_load_config() -> None:
    assert load_config(PropagationConfig, None, ["mode=memory_cleaning", "lam=0.8"]) == PropagationConfig(
        "memory_cleaning", 0.8
    )
    with pytest.raises(ConfigError, match="propagation.mode must be one of"):
        load_config(PropagationConfig, None, ["mode=both"])
    with pytest.raises(ConfigError, match="propagation.lam must be a finite number >= 0"):
        load_config(PropagationConfig, None, ["lam=-0.1"])
