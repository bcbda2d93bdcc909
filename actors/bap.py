"""Propagation policies: where SAM2 starts, which way it runs, and what happens at key frames.

Pure: the policy never touches SAM2. For one object (expression) it knows the video length T, the key
frames (whose masks were decoded from ``[SEG]`` before propagation, with prediction confidences S^p) and
the anchor; the engine tracks frame by frame and reports each tracking score S^t, and the policy answers
whether Eq. 8 clears memory at a key frame. ``run_propagation`` drives a ``PropagationSession`` through a
whole policy; an engine that steps several objects in lock-step calls ``begin`` / ``reach`` /
``after_track`` itself, one ``PropagationPolicy`` per object, following ``passes``.

Modes (``PropagationConfig.mode``) are the rows of MomentSeg Table 9, each adding one feature of
Bidirectional Anchor-updated Propagation (3.2.3) to the previous row, plus VRS-HQ's keyframe propagation:

- ``forward``: one-way, no updating, no cleaning (Table 9's "Forward Propagation (Baseline)");
- ``anchor_updating``: one-way, anchor updating ("+Moment-anchored Updating"; also Sa2VA's inference,
  which prompts SAM2 on every sampled frame and propagates forward);
- ``memory_cleaning``: one-way, anchor updating, Eq. 8 memory cleaning ("+Adaptive Memory Cleaning");
- ``bap``: bidirectional, anchor updating, memory cleaning ("+Bidirectional Propagation"; the default);
- ``keyframe``: bidirectional, no updating, no cleaning (VRS-HQ: propagation from the TKS keyframe).
- ``one_token_seg_all``: no propagation at all (VideoLISA's One-Token-Seg-All at inference: the single
  ``<TRK>``/``[SEG]`` prompt is decoded by SAM2's mask decoder on every frame of the video, each frame on
  its own, without memory, as the authors' ``evaluate`` returns a mask per frame from the one token). The
  engine runs it (``MaskStage``); there is no policy to follow, so ``PropagationPolicy`` refuses it.

What each feature does:

- Start: bidirectional modes seed the anchor (MCS's c*, TKS's keyframe; the first key frame for samplers
  without an anchor) and run forward to T-1, then backward to 0. One-way modes seed the first key frame
  and run forward only, as SAM2's ``propagate_in_video`` does from its earliest conditioning frame; the
  frames before it get no mask (``PropagationPolicy.unlabeled``: the engine writes them empty with score
  0; there are none when frame 0 is a key frame, as with ``firstk`` and ``uniform``).
- Anchor updating ("the target mask is updated at sampled key moments", Table 9's Moment-anchored
  Updating): every key frame the pass will reach enters the object's memory as a conditioning frame
  holding its key-frame mask, and when the pass reaches it, that mask is the frame's output (SAM2 does not
  track it). Without it, the pass's seed is its only conditioning frame.
- Memory cleaning (Eq. 8): at each key frame i the pass reaches (the seed excluded), U_i = 1 when
  P < lambda * S_i^p, with P the product of tracking scores S^t; then the object's tracked memory is
  dropped and its conditioning frames (the seed and the key frames) are kept.

Choices where the paper is silent or its code differs (Dmmm1997/MomentSeg,
``bidirectional_adaptive_propagate_in_video``, which these follow):

- All key frames of a pass are conditioning frames from the start of the pass, before it reaches them,
  as the authors' code (and Sa2VA's) adds every sampled frame's mask before ``propagate_in_video``;
  SAM2 attends to conditioning frames at any distance, so the later key frames steer the frames before
  them too (their object pointers only once passed, SAM2's ``only_obj_ptrs_in_the_past_for_eval``).
- Eq. 8 writes P = prod_{j=1}^{t} S_j^t over every frame tracked so far. Taken literally P never rises
  again, so after the first clearing every later key frame would clear too; the product describes the
  memory the next frames read, which a clearing replaces. Here, as in the authors' code, j runs over the
  frames tracked since the pass started or memory was last cleared (P restarts at 1 after a clearing, not
  after a key frame that did not clear). Key frames and the seed add no factor: their masks are given,
  not tracked.
- Clearing drops all of the object's tracked memory (``Sam2VideoSession.clear(keep_seeds=True)``); the
  authors' code drops the non-conditioning memory within ``num_maskmem`` frames of the key frame, which is
  all the tracked memory SAM2 reads except older object pointers.
- Each pass starts from fresh memory: the backward pass begins with the anchor and its own key frames
  and P = 1, so the forward pass's memory never conditions it (the authors' code resets the state between
  the two directions).

With ``actors.model.sam2_session.Sam2VideoSession`` the actions are: ``Seed`` = ``add_mask`` before the
pass; ``Update`` = the seeded output ``propagate`` returns on that frame; ``Clear`` =
``clear(obj, keep_seeds=True)``; ``Track`` = the object's entry in ``propagate``'s ``FrameResult``
(S^t = ``object_scores``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

FORWARD = 1
BACKWARD = -1


@dataclass(frozen=True)
class Features:
    """What a propagation mode does (see the module docstring's table)."""

    bidirectional: bool
    anchor_updating: bool
    memory_cleaning: bool
    tracking: bool = True  # False: nothing propagates, every frame is decoded from the prompt


MODES: dict[str, Features] = {
    "forward": Features(bidirectional=False, anchor_updating=False, memory_cleaning=False),
    "anchor_updating": Features(bidirectional=False, anchor_updating=True, memory_cleaning=False),
    "memory_cleaning": Features(bidirectional=False, anchor_updating=True, memory_cleaning=True),
    "bap": Features(bidirectional=True, anchor_updating=True, memory_cleaning=True),
    "keyframe": Features(bidirectional=True, anchor_updating=False, memory_cleaning=False),
    "one_token_seg_all": Features(bidirectional=False, anchor_updating=False, memory_cleaning=False, tracking=False),
}
TABLE9_ROWS = ("forward", "anchor_updating", "memory_cleaning", "bap")  # MomentSeg Table 9, top to bottom


class BAPError(ValueError):
    """A propagation policy got inconsistent frames, scores or call order; the message names which."""


@dataclass
class PropagationConfig:
    mode: str = "bap"
    lam: float = 0.9  # lambda of Eq. 8

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"propagation.mode must be one of {list(MODES)}, got '{self.mode}'")
        if not math.isfinite(self.lam) or self.lam < 0:
            raise ValueError(f"propagation.lam must be a finite number >= 0, got {self.lam}")

    @property
    def features(self) -> Features:
        return MODES[self.mode]


@dataclass(frozen=True)
class Seed:
    """Before a pass: the key-frame mask at ``frame`` enters the object's memory as a conditioning frame."""

    frame: int
    direction: int


@dataclass(frozen=True)
class Track:
    """Propagate the object's memory to ``frame``; yields the tracking score S^t."""

    frame: int
    direction: int


@dataclass(frozen=True)
class Update:
    """The pass reached the seeded key frame ``frame``: its key-frame mask is the output (anchor updating)."""

    frame: int
    direction: int


@dataclass(frozen=True)
class Clear:
    """Eq. 8 fired at key frame ``frame``: the object's tracked memory is dropped, its seeds kept."""

    frame: int
    direction: int


Action = Seed | Track | Update | Clear


@dataclass(frozen=True)
class PropagationPass:
    """One direction: ``seeds`` (the start frame first, then key frames in pass order) enter memory, then
    each of ``frames`` is visited in order: an ``Update`` on a seed, a ``Track`` elsewhere."""

    direction: int
    seeds: tuple[int, ...]
    frames: range

    @property
    def start(self) -> int:
        return self.seeds[0]


class PropagationSession(Protocol):
    """What ``run_propagation`` needs from a SAM2 session holding one object."""

    def seed(self, frame: int, direction: int) -> None: ...

    def track(self, frame: int, direction: int) -> float: ...

    def clear(self, frame: int, direction: int) -> None: ...


def _check_unit_score(name: str, frame: int, value: float) -> float:
    score = float(value)
    if not 0.0 <= score <= 1.0:  # also rejects NaN
        raise BAPError(f"{name} at frame {frame} must be in [0, 1], got {value}")
    return score


class PropagationPolicy:
    """The propagation plan and key-frame decisions for one object.

    ``key_confidence`` maps key frames to S^p in [0, 1]; modes with memory cleaning need it for every key
    frame except the start, the others ignore it.
    """

    def __init__(
        self,
        num_frames: int,
        key_frames: Sequence[int],
        anchor: int | None,
        key_confidence: Mapping[int, float],
        config: PropagationConfig,
    ) -> None:
        if num_frames < 1:
            raise BAPError(f"video length must be >= 1 frame, got {num_frames}")
        keys = [int(frame) for frame in key_frames]
        if not keys or any(b <= a for a, b in zip(keys, keys[1:], strict=False)):
            raise BAPError(f"key frames must be a non-empty sorted list of distinct frames, got {keys}")
        if keys[0] < 0 or keys[-1] >= num_frames:
            raise BAPError(f"key frames {keys} fall outside the video's frames 0..{num_frames - 1}")
        features = config.features
        if not features.tracking:
            raise BAPError(f"mode '{config.mode}' propagates nothing: the engine decodes every frame instead")
        self.num_frames, self.config, self.features = num_frames, config, features
        start = keys[0] if anchor is None or not features.bidirectional else int(anchor)
        if start not in keys:
            raise BAPError(f"anchor {start} is not one of the key frames {keys}")
        self.start = start
        self.key_confidence: dict[int, float] = {}
        if features.memory_cleaning:
            decided = set(keys) - {start}
            missing = sorted(decided - {int(frame) for frame in key_confidence})
            if missing:
                raise BAPError(f"memory cleaning needs the key-frame prediction confidence S^p of frames {missing}")
            self.key_confidence = {
                frame: _check_unit_score("key-frame confidence S^p", frame, key_confidence[frame])
                for frame in decided
            }
        later = [k for k in keys if k > start] if features.anchor_updating else []
        earlier = [k for k in reversed(keys) if k < start] if features.anchor_updating else []
        passes = [PropagationPass(FORWARD, (start, *later), range(start + 1, num_frames))]
        if features.bidirectional and start > 0:
            passes.append(PropagationPass(BACKWARD, (start, *earlier), range(start - 1, -1, -1)))
        self.passes: tuple[PropagationPass, ...] = tuple(passes)
        self.unlabeled = range(0) if features.bidirectional else range(start)
        self.product = 1.0
        self._current: PropagationPass | None = None
        self._position = 0

    def begin(self, direction: int) -> PropagationPass:
        """Start the pass in ``direction`` (fresh memory: its ``seeds``, P = 1) and return it."""
        for candidate in self.passes:
            if candidate.direction == direction:
                self._current, self._position, self.product = candidate, 0, 1.0
                return candidate
        raise BAPError(f"mode '{self.config.mode}' from frame {self.start} has no pass in direction {direction}")

    def _visit(self, frame: int, seeded: bool) -> PropagationPass:
        """Check that ``frame`` is the current pass's next frame and of the expected kind; advance."""
        current, position = self._current, self._position
        if current is None or position >= len(current.frames):
            raise BAPError(f"frame {frame} was visited outside a pass (call begin(direction) first)")
        if frame != current.frames[position]:
            raise BAPError(
                f"frame {frame} visited out of order: the pass in direction {current.direction} "
                f"expects {current.frames[position]}"
            )
        if (frame in current.seeds) != seeded:
            kind = "a seeded key frame, reach it" if frame in current.seeds else "not seeded, track it"
            raise BAPError(f"frame {frame} is {kind}")
        self._position = position + 1
        return current

    def after_track(self, frame: int, tracking_score: float) -> None:
        """Account for the tracked ``frame`` (S^t = ``tracking_score``): P *= S^t."""
        self._visit(frame, seeded=False)
        self.product *= _check_unit_score("tracking score S^t", frame, tracking_score)

    def reach(self, frame: int) -> bool:
        """The pass reached the seeded key ``frame`` (its output is its key-frame mask); whether Eq. 8
        clears the tracked memory there, P < lambda * S^p (P restarts at 1 when it does)."""
        self._visit(frame, seeded=True)
        if not self.features.memory_cleaning:
            return False
        if self.product < self.config.lam * self.key_confidence[frame]:  # Eq. 8: U_i = 1
            self.product = 1.0
            return True
        return False


def run_propagation(policy: PropagationPolicy, session: PropagationSession) -> list[Action]:
    """Drive ``session`` through every pass of ``policy``; return the actions taken, in order."""
    actions: list[Action] = []
    for planned in policy.passes:
        current = policy.begin(planned.direction)
        for frame in current.seeds:
            session.seed(frame, current.direction)
            actions.append(Seed(frame, current.direction))
        for frame in current.frames:
            if frame in current.seeds:
                actions.append(Update(frame, current.direction))
                if policy.reach(frame):
                    session.clear(frame, current.direction)
                    actions.append(Clear(frame, current.direction))
            else:
                score = session.track(frame, current.direction)
                actions.append(Track(frame, current.direction))
                policy.after_track(frame, score)
    return actions
