"""Propagation policies: where SAM2 starts, which way it runs, and what happens at key frames.

Pure: the policy never touches SAM2. For one object (expression) it knows the video length T, the key
frames (whose masks were decoded from ``[SEG]`` before propagation, with prediction confidences S^p) and
the anchor; the engine tracks frame by frame and reports each tracking score S^t, and the policy answers
with the action to take at that frame. ``run_propagation`` drives a ``PropagationSession`` through a whole
policy; an engine that steps several objects in lock-step calls ``begin`` / ``after_track`` itself, one
``PropagationPolicy`` per object, following ``passes``.

Modes (``PropagationConfig.mode``):

- ``bap`` (MomentSeg 3.2.3, Eq. 8): seed at the anchor c*, propagate forward to T-1, then backward to 0.
  At every other key frame i reached, with P the running product of tracking scores since the last seed:
  if P < lambda * S_i^p, clear the object's memory and re-seed it with the key-frame mask (P restarts at 1);
  otherwise keep tracking.
- ``forward`` (Sa2VA): seed at frame 0 (which must be a key frame) and propagate forward only; every other
  key frame reached becomes an extra conditioning frame holding its key-frame mask, memory kept (Sa2VA
  prompts one SAM2 state at every sampled frame before propagating).
- ``keyframe`` (VRS-HQ): seed at the anchor (the TKS keyframe), forward then backward, no key-frame updates.

Choices where the paper is silent:

- P multiplies the S^t of the frames tracked in the current pass since its last seed. The seed frame adds
  no factor (its mask is given, not tracked); the key frame under decision adds its own S^t (SAM2 tracks
  it before the decision, as in a propagation loop), so a re-seed replaces that tracked output.
- Each pass starts from fresh memory: the backward pass begins with ``Seed(anchor, BACKWARD)`` (memory =
  the anchor's key-frame mask only) and P = 1, so the forward pass's tracked frames and re-seeds never
  condition the backward pass; the two directions are symmetric and independent.
- The forward pass always runs (it seeds the anchor); the backward pass exists when the anchor is not 0.
- A sampler without an anchor (FirstK, Uniform, Sparse-Dense) starts ``bap``/``keyframe`` at the first
  key frame.

With ``actors.model.sam2_session.Sam2VideoSession`` the actions are: ``Seed`` and ``ClearAndReseed`` =
``clear(obj, keep_seeds=False)`` then ``add_mask(obj, frame, key_mask)``; ``Condition`` = ``add_mask``
alone; ``Track`` = the object's entry in ``propagate``'s ``FrameResult`` (S^t = ``object_scores``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

FORWARD = 1
BACKWARD = -1
MODES = ("bap", "forward", "keyframe")


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


@dataclass(frozen=True)
class Seed:
    """Start a pass: the object's memory becomes only the key-frame mask at ``frame``, which is its output."""

    frame: int
    direction: int


@dataclass(frozen=True)
class Track:
    """Propagate the object's memory to ``frame``; yields the tracking score S^t."""

    frame: int
    direction: int


@dataclass(frozen=True)
class ClearAndReseed:
    """Replace the tracked output at ``frame`` by its key-frame mask and clear memory down to that mask."""

    frame: int
    direction: int


@dataclass(frozen=True)
class Condition:
    """Replace the tracked output at ``frame`` by its key-frame mask and add it as a conditioning frame,
    keeping the rest of memory."""

    frame: int
    direction: int


Action = Seed | Track | ClearAndReseed | Condition


@dataclass(frozen=True)
class PropagationPass:
    """One direction: ``Seed(seed, direction)``, then ``Track`` each of ``frames`` in order."""

    direction: int
    seed: int
    frames: range


class PropagationSession(Protocol):
    """What ``run_propagation`` needs from a SAM2 session holding one object."""

    def seed(self, frame: int, direction: int) -> None: ...

    def track(self, frame: int, direction: int) -> float: ...

    def clear_and_reseed(self, frame: int, direction: int) -> None: ...

    def condition(self, frame: int, direction: int) -> None: ...


def _check_unit_score(name: str, frame: int, value: float) -> float:
    score = float(value)
    if not 0.0 <= score <= 1.0:  # also rejects NaN
        raise BAPError(f"{name} at frame {frame} must be in [0, 1], got {value}")
    return score


class PropagationPolicy:
    """The propagation plan and key-frame decisions for one object.

    ``key_confidence`` maps key frames to S^p in [0, 1]; mode ``bap`` needs it for every key frame except
    the seed, the other modes ignore it.
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
        self.num_frames = num_frames
        self.config = config
        if config.mode == "forward":
            if keys[0] != 0:
                raise BAPError(
                    f"forward propagation starts at frame 0, which must be a key frame (its mask comes from "
                    f"[SEG]); the first key frame is {keys[0]}: sample with firstk or uniform"
                )
            start = 0
        else:
            start = keys[0] if anchor is None else int(anchor)
            if start not in keys:
                raise BAPError(f"anchor {start} is not one of the key frames {keys}")
        self.start = start
        self.decision_frames = frozenset(keys) - {start}
        self.key_confidence: dict[int, float] = {}
        if config.mode == "bap":
            missing = sorted(self.decision_frames - {int(frame) for frame in key_confidence})
            if missing:
                raise BAPError(f"bap needs the key-frame prediction confidence S^p of frames {missing}")
            self.key_confidence = {
                frame: _check_unit_score("key-frame confidence S^p", frame, key_confidence[frame])
                for frame in self.decision_frames
            }
        passes = [PropagationPass(FORWARD, start, range(start + 1, num_frames))]
        if config.mode != "forward" and start > 0:
            passes.append(PropagationPass(BACKWARD, start, range(start - 1, -1, -1)))
        self.passes: tuple[PropagationPass, ...] = tuple(passes)
        self.product = 1.0
        self._current: PropagationPass | None = None
        self._position = 0

    def begin(self, direction: int) -> Seed:
        """Start the pass in ``direction``: fresh memory seeded at the start frame, P = 1."""
        for candidate in self.passes:
            if candidate.direction == direction:
                self._current, self._position, self.product = candidate, 0, 1.0
                return Seed(candidate.seed, direction)
        raise BAPError(
            f"mode '{self.config.mode}' from frame {self.start} has no pass in direction {direction}"
        )

    def after_track(self, frame: int, tracking_score: float) -> ClearAndReseed | Condition | None:
        """Account for the tracked ``frame`` (S^t = ``tracking_score``) and return the key-frame action, if any.

        Frames must arrive in the order of the current pass.
        """
        current, position = self._current, self._position
        if current is None or position >= len(current.frames):
            raise BAPError(f"frame {frame} was tracked outside a pass (call begin(direction) first)")
        if frame != current.frames[position]:
            raise BAPError(
                f"tracked frame {frame} out of order: the pass in direction {current.direction} "
                f"expects {current.frames[position]}"
            )
        self._position = position + 1
        self.product *= _check_unit_score("tracking score S^t", frame, tracking_score)
        if frame not in self.decision_frames:
            return None
        if self.config.mode == "forward":
            return Condition(frame, current.direction)
        if self.config.mode == "bap" and self.product < self.config.lam * self.key_confidence[frame]:  # Eq. 8
            self.product = 1.0
            return ClearAndReseed(frame, current.direction)
        return None


def run_propagation(policy: PropagationPolicy, session: PropagationSession) -> list[Action]:
    """Drive ``session`` through every pass of ``policy``; return the actions taken, in order."""
    actions: list[Action] = []
    for current in policy.passes:
        seed = policy.begin(current.direction)
        session.seed(seed.frame, seed.direction)
        actions.append(seed)
        for frame in current.frames:
            score = session.track(frame, current.direction)
            actions.append(Track(frame, current.direction))
            update = policy.after_track(frame, score)
            match update:
                case ClearAndReseed():
                    session.clear_and_reseed(frame, current.direction)
                case Condition():
                    session.condition(frame, current.direction)
            if update is not None:
                actions.append(update)
    return actions
