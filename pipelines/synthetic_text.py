"""Expressions and grounding moments that are true of a simulated scene (pure functions).

``SceneFacts`` is what was measured from a simulation (positions, visible pixel counts, occlusion,
bounces); every template below reads only those facts and is emitted only when it is unambiguous:
each object is either clearly a target or clearly not (e.g. "moving left" needs >= 60 % of the moving
frames going left for a target and <= 10 % for every other candidate). Ambiguous templates are left
out rather than guessed, so the ground truth is true by construction.

Expression kinds (``KINDS``): ``static`` (appearance: colour, shape, size), ``motion`` (direction,
speed, stillness, bounces), ``temporal`` (order and events in time: appears first/last, after it
stops, leaves), ``relational`` (needs another object: closest when it stops, in front of, same
colour; ReVOS "reasoning", ``type_id`` 1), ``no_target`` (describes nothing in the video; ReVOS
``type_id`` 0 with no objects). Every expression with a target carries a relevant moment ``frames``
(inclusive frame range where the described thing happens or the target is visible, see each template).

Grounding moments are events that happen exactly once in the video (one bounce of that object off
that wall, one stop, its entry or exit, one occlusion episode), so [start, end] is unique:
a frame ``t`` spans ``[t / fps, (t + 1) / fps)`` seconds; instantaneous events (a bounce between
frames ``t - 1`` and ``t``, popping into view at ``t``) get a window of ``EVENT_WINDOW_S`` seconds
on each side (bounce) or after (appearance), clipped to the video.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

KINDS: tuple[str, ...] = ("static", "motion", "temporal", "relational", "no_target")
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (0, -1), "right": (0, 1), "up": (1, -1), "down": (1, 1)}
SIDES: tuple[str, ...] = ("left", "right", "top", "bottom")

DIRECTION_IN, DIRECTION_OUT = 0.6, 0.1  # fraction of moving frames: clearly moving that way / clearly not
MOVING_PX = 0.2  # a displacement (pixels per frame) below this is not motion in any direction
AXIS_DOMINANCE = 1.5  # a frame moves "left" when |dx| >= 1.5 |dy| and dx < 0
SPEED_MARGIN = 1.3  # fastest / slowest must beat the runner-up by this ratio
SIZE_MARGIN = 1.25  # biggest / smallest by area
DISTANCE_MARGIN = 1.3  # closest / farthest by centre distance
TIME_MARGIN = 2  # frames between first/last appearance and the runner-up
OCCLUSION_FRACTION = 0.1  # covering >= 10 % of an object's area is "passing in front"; 0 is clearly not
EVENT_WINDOW_S = 0.5


@dataclass
class TextConfig:
    """How many expressions and grounding moments to keep per video (fewer when fewer are true)."""

    per_kind: int = 2  # of each target kind: static, motion, temporal, relational
    no_target: int = 1
    moments: int = 3

    def __post_init__(self) -> None:
        for name in ("per_kind", "no_target", "moments"):
            if getattr(self, name) < 0:
                raise ValueError(f"text.{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class ObjectFacts:
    """What one object did, measured from the simulation (arrays are indexed by frame)."""

    obj_id: str
    shape: str
    colour: str
    area: float  # exact shape area in pixels^2 (before clipping/occlusion)
    depth: int  # larger is nearer
    positions: np.ndarray  # (T, 2) centre (x, y); NaN where not in the scene
    visible_area: np.ndarray  # (T,) visible pixels after clipping and occlusion
    fully_inside: np.ndarray  # (T,) whole shape inside the frame
    bounces: list[tuple[int, str]]  # (frame, side)
    slides_in: bool  # entered across a border (else popped into view inside the frame)
    exit_at: int | None  # frame its exit starts

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    @cached_property
    def visible(self) -> np.ndarray:
        return self.visible_area > 0

    @cached_property
    def first_visible(self) -> int | None:
        frames = np.flatnonzero(self.visible)
        return int(frames[0]) if frames.size else None

    @cached_property
    def last_visible(self) -> int | None:
        frames = np.flatnonzero(self.visible)
        return int(frames[-1]) if frames.size else None

    @property
    def span(self) -> tuple[int, int]:
        return self.first_visible, self.last_visible

    @cached_property
    def displacement(self) -> np.ndarray:
        """(T, 2): position[t] - position[t - 1]; NaN at t = 0 and where either is absent."""
        out = np.full_like(self.positions, np.nan)
        out[1:] = self.positions[1:] - self.positions[:-1]
        return out

    @cached_property
    def measured(self) -> np.ndarray:
        """(T,) frames visible with a defined displacement: the frames motion facts are about."""
        return self.visible & ~np.isnan(self.displacement[:, 0])

    @cached_property
    def mean_speed(self) -> float:
        """Mean displacement length (pixels per frame) over the measured frames; NaN if none."""
        if not self.measured.any():
            return float("nan")
        return float(np.linalg.norm(self.displacement[self.measured], axis=1).mean())

    def moves(self, direction: str) -> np.ndarray:
        """(T,) measured frames whose displacement goes ``direction`` (axis dominant, >= MOVING_PX)."""
        axis, sign = DIRECTIONS[direction]
        d = np.nan_to_num(self.displacement)
        along, across = d[:, axis] * sign, np.abs(d[:, 1 - axis])
        return self.measured & (along >= MOVING_PX) & (along >= AXIS_DOMINANCE * across)

    def ever_towards(self, direction: str) -> bool:
        """Any displacement with a positive component towards ``direction``, however small or diagonal."""
        axis, sign = DIRECTIONS[direction]
        return bool(np.any(np.nan_to_num(self.displacement[:, axis]) * sign > 0))

    @cached_property
    def moving(self) -> np.ndarray:
        return self.measured & (np.linalg.norm(np.nan_to_num(self.displacement), axis=1) >= MOVING_PX)

    def direction_fraction(self, direction: str) -> float:
        moving = int(self.moving.sum())
        return float(self.moves(direction).sum()) / moving if moving else 0.0

    @cached_property
    def never_moves(self) -> bool:
        return self.measured.sum() >= 1 and not np.any(np.nan_to_num(self.displacement)[self.measured])

    @cached_property
    def stops(self) -> list[tuple[int, int]]:
        """Inclusive frame ranges at rest that follow motion: [arrival frame, last frame there]."""
        d = self.displacement
        still = ~np.isnan(d[:, 0]) & np.all(d == 0, axis=1)
        out, t = [], 1
        while t < len(still):
            if still[t] and not still[t - 1]:
                end = t
                while end + 1 < len(still) and still[end + 1]:
                    end += 1
                arrived = t - 1
                if not np.isnan(d[arrived, 0]) and np.any(d[arrived] != 0):
                    out.append((arrived, end))
                t = end + 1
            else:
                t += 1
        return out

    @cached_property
    def visible_bounces(self) -> list[tuple[int, str]]:
        return [(t, side) for t, side in self.bounces if self.visible[t] or self.visible[t - 1]]

    @cached_property
    def leaves(self) -> bool:
        """Exits the frame for good before the video ends."""
        return self.exit_at is not None and bool(np.isnan(self.positions[-1, 0]))


@dataclass
class SceneFacts:
    """Facts of one video; ``occlusion[t, i, j]`` = pixels of object i's shape covered by nearer j."""

    num_frames: int
    fps: float
    height: int
    width: int
    objects: list[ObjectFacts]
    occlusion: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class SyntheticExpression:
    """An expression with its ground truth; ``frames`` is the inclusive relevant moment (None: no target)."""

    expr_id: str
    text: str
    kind: str
    obj_ids: tuple[str, ...]
    frames: tuple[int, int] | None
    late: bool  # every target first appears in the second half of the video

    @property
    def type_id(self) -> int:
        """ReVOS: 1 = reasoning (relational), 0 = referring (everything else, no-target included)."""
        return 1 if self.kind == "relational" else 0


@dataclass(frozen=True)
class SyntheticMoment:
    """A grounding query: ``text`` happens over the inclusive frame range ``frames``."""

    text: str
    kind: str
    obj_ids: tuple[str, ...]
    frames: tuple[int, int]

    def seconds(self, fps: float) -> tuple[float, float]:
        return self.frames[0] / fps, (self.frames[1] + 1) / fps


@dataclass(frozen=True)
class _Candidate:
    kind: str
    text: str
    targets: tuple[int, ...]
    frames: tuple[int, int] | None


def _plural(noun: str, count: int) -> str:
    return noun if count == 1 else f"{noun}es" if noun.endswith("sh") else f"{noun}s"


def _clear_split(objects: list[ObjectFacts], candidates: list[int], score: Callable[[ObjectFacts], float]) -> tuple[int, ...] | None:
    """Candidates with score >= DIRECTION_IN if every other is <= DIRECTION_OUT, else None."""
    targets = tuple(i for i in candidates if score(objects[i]) >= DIRECTION_IN)
    if not targets or any(DIRECTION_OUT < score(objects[i]) < DIRECTION_IN for i in candidates):
        return None
    return targets


def _frames_where(mask: np.ndarray) -> tuple[int, int]:
    frames = np.flatnonzero(mask)
    return int(frames[0]), int(frames[-1])


def _union_span(facts: SceneFacts, targets: tuple[int, ...]) -> tuple[int, int]:
    return min(facts.objects[i].first_visible for i in targets), max(facts.objects[i].last_visible for i in targets)


def _extreme(values: dict[int, float], largest: bool, margin: float) -> int | None:
    """The index whose value beats every other by ``margin`` (a ratio), or None."""
    if len(values) < 2:
        return None
    ordered = sorted(values, key=values.get, reverse=largest)
    best, runner = values[ordered[0]], values[ordered[1]]
    if largest and best > 0 and best >= margin * runner:
        return ordered[0]
    if not largest and best * margin <= runner:
        return ordered[0]
    return None


def _static(facts: SceneFacts) -> list[_Candidate]:
    objs = facts.objects
    out = [_Candidate("static", f"the {o.name}", (i,), o.span) for i, o in enumerate(objs)]
    for shape in sorted({o.shape for o in objs}):
        targets = tuple(i for i, o in enumerate(objs) if o.shape == shape)
        out.append(_Candidate("static", f"the {_plural(shape, len(targets))}", targets, _union_span(facts, targets)))
    for colour in sorted({o.colour for o in objs}):
        targets = tuple(i for i, o in enumerate(objs) if o.colour == colour)
        text = f"the {colour} {_plural('shape', len(targets))}"
        out.append(_Candidate("static", text, targets, _union_span(facts, targets)))
    areas = {i: o.area for i, o in enumerate(objs)}
    for largest, word in ((True, "biggest"), (False, "smallest")):
        best = _extreme(areas, largest, SIZE_MARGIN)
        if best is not None:
            out.append(_Candidate("static", f"the {word} shape", (best,), objs[best].span))
    return out


def _motion(facts: SceneFacts) -> list[_Candidate]:
    objs = facts.objects
    out = []
    groups = {"shape": list(range(len(objs)))}
    groups.update({o.shape: [i for i, p in enumerate(objs) if p.shape == o.shape] for o in objs})
    for noun, members in groups.items():
        for direction in DIRECTIONS:
            targets = _clear_split(objs, members, lambda o, d=direction: o.direction_fraction(d))
            if targets is None:
                continue
            moving = np.zeros(facts.num_frames, dtype=bool)
            for i in targets:
                moving |= objs[i].moves(direction)
            text = f"the {_plural(noun, len(targets))} moving {direction}"
            out.append(_Candidate("motion", text, targets, _frames_where(moving)))
    speeds = {i: o.mean_speed for i, o in enumerate(objs)}
    if not any(np.isnan(v) for v in speeds.values()):
        fastest = _extreme(speeds, True, SPEED_MARGIN)
        if fastest is not None:
            out.append(_Candidate("motion", "the fastest shape", (fastest,), objs[fastest].span))
        moving_speeds = {i: v for i, v in speeds.items() if v >= MOVING_PX}
        slowest = _extreme(moving_speeds, False, SPEED_MARGIN)
        if slowest is not None and len(moving_speeds) >= 2:
            out.append(_Candidate("motion", "the slowest moving shape", (slowest,), objs[slowest].span))
        still = tuple(i for i, o in enumerate(objs) if o.never_moves)
        if still and len(still) < len(objs):
            noun = _plural("shape", len(still))
            verb = "never moves" if len(still) == 1 else "never move"
            out.append(_Candidate("motion", f"the {noun} that {verb}", still, _union_span(facts, still)))
    for side in SIDES:
        targets = tuple(i for i, o in enumerate(objs) if any(s == side for _, s in o.visible_bounces))
        hidden = any(any(s == side for _, s in o.bounces) for i, o in enumerate(objs) if i not in targets)
        if targets and not hidden:
            frames = [t for i in targets for t, s in objs[i].visible_bounces if s == side]
            noun, verb = _plural("shape", len(targets)), "bounces" if len(targets) == 1 else "bounce"
            span = (max(0, min(frames) - 1), max(frames))
            out.append(_Candidate("motion", f"the {noun} that {verb} off the {side} wall", targets, span))
    return out


def _temporal(facts: SceneFacts) -> list[_Candidate]:
    objs = facts.objects
    out = []
    window = max(1, round(EVENT_WINDOW_S * facts.fps))
    first = {i: o.first_visible for i, o in enumerate(objs)}
    order = sorted(first, key=first.get)
    if first[order[-1]] - first[order[-2]] >= TIME_MARGIN:
        i = order[-1]
        out.append(_Candidate("temporal", "the shape that appears last", (i,), (first[i], min(first[i] + window, objs[i].last_visible))))
    if first[order[1]] - first[order[0]] >= TIME_MARGIN:
        i = order[0]
        out.append(_Candidate("temporal", "the shape that appears first", (i,), (first[i], min(first[i] + window, objs[i].last_visible))))
    for shape in sorted({o.shape for o in objs}):
        members = [i for i, o in enumerate(objs) if o.shape == shape]
        stoppers = [i for i in members if objs[i].stops]
        if len(stoppers) != 1:
            continue
        i = stoppers[0]
        if len(members) == 1:
            out.append(_Candidate("temporal", f"the {shape} after it stops", (i,), (objs[i].stops[0][0], objs[i].last_visible)))
        else:
            out.append(_Candidate("temporal", f"the {shape} that stops", (i,), objs[i].stops[0]))
    leavers = tuple(i for i, o in enumerate(objs) if o.leaves)
    # out of sight at the end without a completed exit (on its way out, or covered): neither clearly in nor out
    half_out = any(not o.leaves and (o.exit_at is not None or not o.visible[-1]) for o in objs)
    if leavers and len(leavers) < len(objs) and not half_out:
        noun, verb = _plural("shape", len(leavers)), "leaves" if len(leavers) == 1 else "leave"
        span = (min(objs[i].exit_at for i in leavers), max(objs[i].last_visible for i in leavers))
        out.append(_Candidate("temporal", f"the {noun} that {verb} the frame", leavers, span))
    return out


def _relational(facts: SceneFacts) -> list[_Candidate]:
    objs = facts.objects
    out = []
    for r, ref in enumerate(objs):
        others = [i for i in range(len(objs)) if i != r]
        if len(ref.stops) == 1:
            start, end = ref.stops[0]
            here = ref.positions[start]
            distances = {
                i: float(np.linalg.norm(objs[i].positions[start] - here)) for i in others if objs[i].visible[start]
            }
            for largest, word in ((False, "closest to"), (True, "farthest from")):
                best = _extreme(distances, largest, DISTANCE_MARGIN)
                if best is not None:
                    out.append(_Candidate("relational", f"the shape {word} the {ref.name} when it stops", (best,), (start, end)))
        for in_front in (True, False):
            # in front: others covering ref (pixels of ref covered); behind: others that ref covers
            cover = {i: facts.occlusion[:, r, i] if in_front else facts.occlusion[:, i, r] for i in others}
            threshold = {i: OCCLUSION_FRACTION * (ref.area if in_front else objs[i].area) for i in others}
            targets = tuple(i for i in others if cover[i].max() >= threshold[i])
            if not targets or any(0 < cover[i].max() < threshold[i] for i in others):
                continue
            overlap = np.zeros(facts.num_frames, dtype=bool)
            for i in targets:
                overlap |= cover[i] > 0
            noun = _plural("shape", len(targets))
            if in_front:
                text = f"the {noun} in front of the {ref.name}"
            else:
                text = f"the {noun} partly hidden behind the {ref.name}"
            out.append(_Candidate("relational", text, targets, _frames_where(overlap)))
        same = tuple(i for i in others if objs[i].colour == ref.colour)
        if same:
            noun = _plural("shape", len(same))
            out.append(_Candidate("relational", f"the {noun} with the same colour as the {ref.name}", same, _union_span(facts, same)))
    counts = {i: len(o.bounces) for i, o in enumerate(objs)}
    ordered = sorted(counts, key=counts.get, reverse=True)
    if counts[ordered[0]] >= 2 and counts[ordered[0]] > counts[ordered[1]]:
        i = ordered[0]
        out.append(_Candidate("relational", "the shape that bounces the most", (i,), objs[i].span))
    return out


def _no_target(facts: SceneFacts, shapes: list[str], colours: list[str]) -> list[_Candidate]:
    objs = facts.objects
    present = {(o.colour, o.shape) for o in objs}
    seen_shapes, seen_colours = {o.shape for o in objs}, {o.colour for o in objs}
    out = []
    for colour in colours:
        for shape in shapes:
            if (colour, shape) not in present and (colour in seen_colours or shape in seen_shapes):
                out.append(_Candidate("no_target", f"the {colour} {shape}", (), None))
        if colour not in seen_colours:
            out.append(_Candidate("no_target", f"the {colour} shape", (), None))
    for shape in sorted(seen_shapes):
        members = [o for o in objs if o.shape == shape]
        for direction in DIRECTIONS:
            if not any(o.ever_towards(direction) for o in members):
                out.append(_Candidate("no_target", f"the {shape} moving {direction}", (), None))
    if any(o.moving.any() for o in objs):
        for side in SIDES:
            if not any(s == side for o in objs for _, s in o.bounces):
                out.append(_Candidate("no_target", f"the shape that bounces off the {side} wall", (), None))
    return out


def _pick(rng: np.random.Generator, candidates: list[_Candidate], count: int, first: Callable[[_Candidate], bool] | None = None) -> list[_Candidate]:
    """``count`` candidates in a seeded random order, those with ``first(c)`` true ahead, unique texts."""
    order = [candidates[i] for i in rng.permutation(len(candidates))]
    if first is not None:
        order = [c for c in order if first(c)] + [c for c in order if not first(c)]
    out, texts = [], set()
    for candidate in order:
        if len(out) == count:
            break
        if candidate.text not in texts:
            texts.add(candidate.text)
            out.append(candidate)
    return out


def _moments(facts: SceneFacts) -> list[SyntheticMoment]:
    """Every once-only event of the video as a grounding query (see the module docstring)."""
    objs, last = facts.objects, facts.num_frames - 1
    window = max(1, round(EVENT_WINDOW_S * facts.fps))
    out = []
    for i, o in enumerate(objs):
        ids = (o.obj_id,)
        for side in SIDES:
            hits = [t for t, s in o.visible_bounces if s == side]
            if len(hits) == 1 and sum(s == side for _, s in o.bounces) == 1:
                frames = (max(0, hits[0] - window), min(last, hits[0] + window - 1))
                out.append(SyntheticMoment(f"the {o.name} bounces off the {side} wall", "bounce", ids, frames))
        if len(o.stops) == 1 and o.visible[o.stops[0][0]]:
            out.append(SyntheticMoment(f"the {o.name} stays still", "stop", ids, o.stops[0]))
        if o.slides_in and o.fully_inside.any():
            done = int(np.flatnonzero(o.fully_inside)[0])
            out.append(SyntheticMoment(f"the {o.name} enters the frame", "enter", ids, (o.first_visible, max(done, o.first_visible))))
        elif o.first_visible > 0 and not o.slides_in:
            frames = (o.first_visible, min(last, o.first_visible + window - 1))
            out.append(SyntheticMoment(f"the {o.name} appears", "appear", ids, frames))
        if o.leaves:
            inside = np.flatnonzero(o.fully_inside[: o.last_visible + 1])
            start = int(inside[-1]) if inside.size else o.exit_at
            out.append(SyntheticMoment(f"the {o.name} leaves the frame", "leave", ids, (start, o.last_visible)))
        for j, p in enumerate(objs):
            covered = facts.occlusion[:, i, j] > 0
            if j == i or not covered.any():
                continue
            start, end = _frames_where(covered)
            once = bool(covered[start : end + 1].all())
            if once and facts.occlusion[:, i, j].max() >= OCCLUSION_FRACTION * o.area:
                text = f"the {p.name} is in front of the {o.name}"
                out.append(SyntheticMoment(text, "occlusion", (p.obj_id, o.obj_id), (start, end)))
    return out


def describe_scene(
    facts: SceneFacts, rng: np.random.Generator, config: TextConfig, late: bool, shapes: list[str], colours: list[str]
) -> tuple[list[SyntheticExpression], list[SyntheticMoment]]:
    """Expressions (``config.per_kind`` of each target kind, ``config.no_target`` without target) and
    ``config.moments`` grounding moments of one scene, picked in a seeded random order.

    In a ``late`` video the static name of a late object is always among the static expressions.
    ``shapes``/``colours`` are the vocabularies no-target expressions draw from.
    """
    half = facts.num_frames / 2
    objs = facts.objects

    def is_late(candidate: _Candidate) -> bool:
        return bool(candidate.targets) and all(objs[i].first_visible >= half for i in candidate.targets)

    chosen: list[_Candidate] = []
    chosen += _pick(rng, _static(facts), config.per_kind, is_late if late else None)
    chosen += _pick(rng, _motion(facts), config.per_kind)
    chosen += _pick(rng, _temporal(facts), config.per_kind)
    chosen += _pick(rng, _relational(facts), config.per_kind)
    chosen += _pick(rng, _no_target(facts, shapes, colours), config.no_target)
    expressions = [
        SyntheticExpression(str(n), c.text, c.kind, tuple(objs[i].obj_id for i in c.targets), c.frames, is_late(c))
        for n, c in enumerate(chosen)
    ]
    moments = _moments(facts)
    moments = [moments[i] for i in rng.permutation(len(moments))[: config.moments]]
    return expressions, moments
