"""Procedural videos of moving shapes with exact ground truth (pure numpy, seeded, rendered lazily).

A video is a small 2-D world: flat-coloured shapes (``SHAPES``) in named colours (``COLOURS``) over a
dark gradient background. Each object follows a script (``ObjectSpec``): it appears at a frame, either
already inside the frame ("pops in") or sliding in from outside, then runs through segments of
constant velocity (a zero velocity is a stop); while fully inside the frame it bounces off the walls
(mirror reflection); an optional exit segment turns bouncing off and lets it drift out of the frame.
Objects have a fixed depth order, so nearer objects occlude farther ones; an object's mask at a frame
is its *visible* part (inside the frame, not covered by anything nearer).

``simulate`` turns scripts into per-frame state (centre positions, velocities, bounce events); state
is O(frames x objects) numbers, and a frame (or a mask) is rasterised from the state at that frame only
when asked for, so a 5,000-frame video never sits in memory. ``generate_video`` draws random scripts
from a seed, simulates them, measures what happens (``pipelines.synthetic_text.SceneFacts``) and
derives expressions and grounding moments that are true of the simulation by construction.

Choices where the brief is open:
- A pixel belongs to a shape when its centre ``(x + 0.5, y + 0.5)`` is inside the shape (no
  anti-aliasing), so the frame shows exactly the object's colour wherever its mask is set.
- Sizes are half-extents relative to ``min(height, width)``, speeds are in shorter-sides per second,
  so a scene looks alike at any resolution and frame rate.
- Depth never changes during a video; a larger depth is nearer the camera.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from pipelines.formats.model import Dataset, Expression, Moment, VideoRecord
from pipelines.synthetic_text import (
    SIDES,
    ObjectFacts,
    SceneFacts,
    SyntheticExpression,
    SyntheticMoment,
    TextConfig,
    describe_scene,
)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 70),
    "blue": (50, 100, 245),
    "yellow": (245, 225, 40),
    "purple": (165, 70, 225),
    "orange": (250, 145, 30),
    "cyan": (40, 220, 230),
    "white": (245, 245, 245),
}

# Convex outlines in units of the half-extent, ordered counter-clockwise in image coordinates
# (y down); None is the circle.
_OUTLINES: dict[str, np.ndarray | None] = {
    "square": np.array([[-1.0, -1.0], [-1.0, 1.0], [1.0, 1.0], [1.0, -1.0]]),
    "circle": None,
    "triangle": np.array([[0.0, -1.0], [-1.0, 1.0], [1.0, 1.0]]),
    "diamond": np.array([[0.0, -1.0], [-1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]),
    "hexagon": np.array([[math.cos(a), -math.sin(a)] for a in np.arange(6) * math.pi / 3]),
}
SHAPES: tuple[str, ...] = tuple(_OUTLINES)
OBJECT_ID_STRIDE = 100  # > len(SHAPES) * len(COLOURS), the most objects a video can hold


def shape_half_extents(shape: str, size: float) -> tuple[float, float]:
    """(half width, half height) in pixels of ``shape`` with half-extent ``size``."""
    outline = _OUTLINES[shape]
    if outline is None:
        return size, size
    return float(np.abs(outline[:, 0]).max() * size), float(np.abs(outline[:, 1]).max() * size)


def shape_area(shape: str, size: float) -> float:
    """Exact area in pixels^2 of ``shape`` with half-extent ``size``."""
    outline = _OUTLINES[shape]
    if outline is None:
        return math.pi * size * size
    x, y = outline[:, 0], outline[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))) * size * size


@dataclass(frozen=True)
class Raster:
    """A shape rasterised inside its clipped bounding box: rows ``y0:y0+h``, columns ``x0:x0+w``."""

    y0: int
    x0: int
    mask: np.ndarray  # (h, w) bool

    def full(self, height: int, width: int) -> np.ndarray:
        out = np.zeros((height, width), dtype=bool)
        out[self.y0 : self.y0 + self.mask.shape[0], self.x0 : self.x0 + self.mask.shape[1]] = self.mask
        return out

    def overlap(self, other: Raster) -> int:
        """Number of pixels set in both rasters."""
        y0, x0 = max(self.y0, other.y0), max(self.x0, other.x0)
        y1 = min(self.y0 + self.mask.shape[0], other.y0 + other.mask.shape[0])
        x1 = min(self.x0 + self.mask.shape[1], other.x0 + other.mask.shape[1])
        if y1 <= y0 or x1 <= x0:
            return 0
        mine = self.mask[y0 - self.y0 : y1 - self.y0, x0 - self.x0 : x1 - self.x0]
        theirs = other.mask[y0 - other.y0 : y1 - other.y0, x0 - other.x0 : x1 - other.x0]
        return int(np.count_nonzero(mine & theirs))


def rasterise(shape: str, size: float, cx: float, cy: float, height: int, width: int) -> Raster | None:
    """Pixels whose centres lie inside ``shape`` centred at (cx, cy), clipped to the frame; None if none."""
    hx, hy = shape_half_extents(shape, size)
    x0, x1 = max(0, math.floor(cx - hx)), min(width, math.ceil(cx + hx) + 1)
    y0, y1 = max(0, math.floor(cy - hy)), min(height, math.ceil(cy + hy) + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    px = np.arange(x0, x1, dtype=np.float64)[None, :] + 0.5 - cx
    py = np.arange(y0, y1, dtype=np.float64)[:, None] + 0.5 - cy
    outline = _OUTLINES[shape]
    if outline is None:
        mask = px * px + py * py <= size * size
    else:
        vertices = outline * size
        mask = np.ones((y1 - y0, x1 - x0), dtype=bool)
        for (ax, ay), (bx, by) in zip(vertices, np.roll(vertices, -1, axis=0), strict=True):
            # inside = on the left of every counter-clockwise edge (cross product >= 0, y down)
            mask &= (bx - ax) * (py - ay) - (by - ay) * (px - ax) <= 1e-9
    if not mask.any():
        return None
    return Raster(y0, x0, mask)


@dataclass
class SceneConfig:
    """What one procedural video looks like; sizes relative to ``min(height, width)``."""

    num_frames: int = 48
    height: int = 240
    width: int = 320
    fps: float = 10.0
    min_objects: int = 2
    max_objects: int = 4
    shapes: list[str] = field(default_factory=lambda: list(SHAPES))
    colours: list[str] = field(default_factory=lambda: list(COLOURS))
    size_range: list[float] = field(default_factory=lambda: [0.08, 0.16])  # half-extent / min(H, W)
    speed_range: list[float] = field(default_factory=lambda: [0.15, 0.6])  # min(H, W) per second
    enter_prob: float = 0.3  # slides in from outside the frame during the first third
    exit_prob: float = 0.25  # drifts out of the frame in the second half
    stop_prob: float = 0.35  # a moving segment is followed by a stop
    still_prob: float = 0.1  # never moves at all
    late_target_fraction: float = 0.25  # videos with one object that appears only in the second half

    def __post_init__(self) -> None:
        if self.num_frames < 8:
            raise ValueError(f"scene.num_frames must be >= 8, got {self.num_frames}")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value < 16 or value % 2:
                raise ValueError(f"scene.{name} must be even and >= 16 (H.264 yuv420p), got {value}")
        if self.fps <= 0:
            raise ValueError(f"scene.fps must be positive, got {self.fps}")
        unknown = [s for s in self.shapes if s not in _OUTLINES] + [c for c in self.colours if c not in COLOURS]
        if unknown or not self.shapes or not self.colours:
            raise ValueError(f"scene.shapes/colours: unknown or empty {unknown}; known {list(SHAPES)}, {list(COLOURS)}")
        if not 2 <= self.min_objects <= self.max_objects <= len(self.shapes) * len(self.colours):
            raise ValueError(
                f"scene.min_objects/max_objects must satisfy 2 <= min <= max <= shapes x colours, "
                f"got {self.min_objects}, {self.max_objects}"
            )
        lo, hi = _range(self.size_range, "scene.size_range")
        if not 0 < lo <= hi < 0.3:
            raise ValueError(f"scene.size_range must satisfy 0 < lo <= hi < 0.3, got {self.size_range}")
        lo, hi = _range(self.speed_range, "scene.speed_range")
        if not 0 < lo <= hi:
            raise ValueError(f"scene.speed_range must satisfy 0 < lo <= hi, got {self.speed_range}")
        for name in ("enter_prob", "exit_prob", "stop_prob", "still_prob", "late_target_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"scene.{name} must be in [0, 1], got {getattr(self, name)}")


def _range(values: list[float], name: str) -> tuple[float, float]:
    if len(values) != 2:
        raise ValueError(f"{name} must be [low, high], got {values}")
    return float(values[0]), float(values[1])


@dataclass(frozen=True)
class Segment:
    """From frame ``start`` on, the object moves by ``velocity`` (dx, dy) pixels per frame."""

    start: int
    velocity: tuple[float, float]


@dataclass(frozen=True)
class ObjectSpec:
    """The script of one object.

    ``position`` is the centre (x, y) at frame ``appear``; ``segments`` (sorted by start, the first at
    ``appear``) set the velocity; from ``exit_at`` the object moves towards the wall nearest to it at
    ``exit_speed`` pixels per frame without bouncing, and is gone once fully outside the frame.
    """

    obj_id: str
    shape: str
    colour: str
    size: float
    depth: int
    appear: int
    position: tuple[float, float]
    segments: tuple[Segment, ...]
    exit_at: int | None = None
    exit_speed: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Bounce:
    """``obj`` (index) was reflected off ``side`` between frames ``frame - 1`` and ``frame``."""

    frame: int
    obj: int
    side: str


class Simulation:
    """Per-frame state of scripted objects, and frames/masks rasterised from it on demand.

    ``positions`` (T, N, 2) holds centres (NaN where the object is not in the scene); ``bounces`` the
    wall reflections in frame order per object.
    """

    def __init__(self, specs: list[ObjectSpec], num_frames: int, height: int, width: int, background: np.ndarray) -> None:
        if len({s.obj_id for s in specs}) != len(specs) or len({s.depth for s in specs}) != len(specs):
            raise ValueError("object ids and depths must be unique within a video")
        self.specs = specs
        self.num_frames, self.height, self.width = num_frames, height, width
        self.background = background  # (H, W, 3) uint8
        self.positions = np.full((num_frames, len(specs), 2), np.nan)
        self.bounces: list[Bounce] = []
        for index, spec in enumerate(specs):
            self._run(index, spec)
        self._front_to_back = sorted(range(len(specs)), key=lambda i: -specs[i].depth)

    def _run(self, index: int, spec: ObjectSpec) -> None:
        hx, hy = shape_half_extents(spec.shape, spec.size)
        lo, hi = np.array([hx, hy]), np.array([self.width - hx, self.height - hy])
        position = np.array(spec.position, dtype=np.float64)
        velocity = np.zeros(2)
        starts = {seg.start: seg for seg in spec.segments}
        contained = False
        for t in range(spec.appear, self.num_frames):
            exiting = spec.exit_at is not None and t >= spec.exit_at
            if exiting and t == spec.exit_at:
                velocity = self._exit_velocity(position, spec.exit_speed)
            elif not exiting and t in starts:
                velocity = np.array(starts[t].velocity, dtype=np.float64)
            if exiting and (np.any(position + [hx, hy] <= 0) or np.any(position - [hx, hy] >= [self.width, self.height])):
                return  # fully outside after its exit: gone for good
            self.positions[t, index] = position
            contained = contained or bool(np.all((position >= lo) & (position <= hi)))
            position = position + velocity
            if contained and not exiting:
                for axis, (low_side, high_side) in enumerate((("left", "right"), ("top", "bottom"))):
                    if position[axis] < lo[axis] or position[axis] > hi[axis]:
                        wall, side = (lo[axis], low_side) if position[axis] < lo[axis] else (hi[axis], high_side)
                        position[axis] = 2 * wall - position[axis]
                        velocity = velocity.copy()
                        velocity[axis] = -velocity[axis]
                        if t + 1 < self.num_frames:
                            self.bounces.append(Bounce(t + 1, index, side))

    def _exit_velocity(self, position: np.ndarray, speed: float) -> np.ndarray:
        distances = [position[0], self.width - position[0], position[1], self.height - position[1]]
        directions = [(-1.0, 0.0), (1.0, 0.0), (0.0, -1.0), (0.0, 1.0)]
        return np.array(directions[int(np.argmin(distances))]) * speed

    @property
    def obj_ids(self) -> list[str]:
        return [s.obj_id for s in self.specs]

    def present(self, t: int, index: int) -> bool:
        return not np.isnan(self.positions[t, index, 0])

    def raster(self, t: int, index: int) -> Raster | None:
        """The object's full (unoccluded) shape at frame ``t``, clipped to the frame."""
        if not self.present(t, index):
            return None
        spec = self.specs[index]
        cx, cy = self.positions[t, index]
        return rasterise(spec.shape, spec.size, cx, cy, self.height, self.width)

    def visible_mask(self, t: int, index: int) -> np.ndarray:
        """(H, W) bool: the part of object ``index`` visible at frame ``t`` (inside, not covered)."""
        own = self.raster(t, index)
        out = np.zeros((self.height, self.width), dtype=bool)
        if own is None:
            return out
        mask = own.full(self.height, self.width)
        for other in self._front_to_back:
            if self.specs[other].depth <= self.specs[index].depth:
                break
            cover = self.raster(t, other)
            if cover is not None and own.overlap(cover):
                mask &= ~cover.full(self.height, self.width)
        return mask

    def _visible(self, rasters: list[Raster | None]) -> dict[int, np.ndarray]:
        """Visible (H, W) masks of every object given its rasters: nearer objects cover farther ones."""
        covered = np.zeros((self.height, self.width), dtype=bool)
        visible: dict[int, np.ndarray] = {}
        for index in self._front_to_back:
            raster = rasters[index]
            if raster is None:
                visible[index] = np.zeros((self.height, self.width), dtype=bool)
                continue
            visible[index] = raster.full(self.height, self.width) & ~covered
            covered |= visible[index]
        return visible

    def render(self, t: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Frame ``t`` as (H, W, 3) uint8 RGB and every object's visible (H, W) bool mask."""
        if not 0 <= t < self.num_frames:
            raise IndexError(f"frame {t} out of range [0, {self.num_frames})")
        visible = self._visible([self.raster(t, i) for i in range(len(self.specs))])
        frame = self.background.copy()
        for index, spec in enumerate(self.specs):
            frame[visible[index]] = COLOURS[spec.colour]
        return frame, {spec.obj_id: visible[i] for i, spec in enumerate(self.specs)}

    def frame(self, t: int) -> np.ndarray:
        return self.render(t)[0]

    def iter_frames(self) -> Iterator[np.ndarray]:
        """Frames in order, each rasterised when requested."""
        for t in range(self.num_frames):
            yield self.frame(t)

    def measure(self, fps: float) -> SceneFacts:
        """One pass over all frames: visibility and occlusion of every object (masks are not kept)."""
        num = len(self.specs)
        visible_area = np.zeros((self.num_frames, num), dtype=np.int64)
        occlusion = np.zeros((self.num_frames, num, num), dtype=np.int64)
        for t in range(self.num_frames):
            rasters = [self.raster(t, i) for i in range(num)]
            for i, mask in self._visible(rasters).items():
                visible_area[t, i] = np.count_nonzero(mask)
            for i, j in itertools.permutations(range(num), 2):
                if self.specs[j].depth > self.specs[i].depth and rasters[i] is not None and rasters[j] is not None:
                    occlusion[t, i, j] = rasters[i].overlap(rasters[j])
        objects = []
        for i, spec in enumerate(self.specs):
            hx, hy = shape_half_extents(spec.shape, spec.size)
            pos = self.positions[:, i]
            inside = (pos[:, 0] >= hx) & (pos[:, 0] <= self.width - hx) & (pos[:, 1] >= hy) & (pos[:, 1] <= self.height - hy)
            objects.append(
                ObjectFacts(
                    obj_id=spec.obj_id,
                    shape=spec.shape,
                    colour=spec.colour,
                    area=shape_area(spec.shape, spec.size),
                    depth=spec.depth,
                    positions=pos.copy(),
                    visible_area=visible_area[:, i],
                    fully_inside=inside,
                    bounces=[(b.frame, b.side) for b in self.bounces if b.obj == i],
                    slides_in=not bool(inside[spec.appear]),
                    exit_at=spec.exit_at,
                )
            )
        return SceneFacts(self.num_frames, fps, self.height, self.width, objects, occlusion)


@dataclass
class SyntheticVideo:
    """A simulated video with its ground truth: expressions, grounding moments, late-target flag."""

    video_id: str
    fps: float
    simulation: Simulation
    facts: SceneFacts
    expressions: list[SyntheticExpression]
    moments: list[SyntheticMoment]
    late: bool

    @property
    def num_frames(self) -> int:
        return self.simulation.num_frames

    @property
    def height(self) -> int:
        return self.simulation.height

    @property
    def width(self) -> int:
        return self.simulation.width


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A dark vertical gradient: far from every palette colour (all channels <= 95)."""
    base = rng.uniform(25, 60, size=3)
    ramp = np.linspace(0.0, 1.0, height)[:, None] * rng.uniform(10, 35, size=3)[None, :]
    column = np.clip(base[None, :] + ramp, 0, 95).astype(np.uint8)  # (H, 3)
    return np.repeat(column[:, None, :], width, axis=1)


def _direction(rng: np.random.Generator) -> np.ndarray:
    """A unit vector, mostly close to one of the four axis directions (clear "left"/"up" motion)."""
    if rng.random() < 0.7:
        angle = rng.integers(4) * math.pi / 2 + rng.uniform(-0.3, 0.3)
    else:
        angle = rng.uniform(0, 2 * math.pi)
    return np.array([math.cos(angle), math.sin(angle)])


def _entry(rng: np.random.Generator, hx: float, hy: float, speed: float, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Start centre just outside a random side (leading edge one step inside) and an inward velocity."""
    side = SIDES[rng.integers(4)]
    along = rng.uniform(0.3, 0.7)
    jitter = rng.uniform(-0.3, 0.3)
    inward = {"left": (1.0, 0.0), "right": (-1.0, 0.0), "top": (0.0, 1.0), "bottom": (0.0, -1.0)}[side]
    direction = np.array([inward[0] - inward[1] * jitter, inward[1] + inward[0] * jitter])
    velocity = direction / np.linalg.norm(direction) * speed
    step = max(abs(velocity[0]), abs(velocity[1]), 1.0)
    start = {
        "left": (-hx + step, along * height),
        "right": (width + hx - step, along * height),
        "top": (along * width, -hy + step),
        "bottom": (along * width, height + hy - step),
    }[side]
    return np.array(start), velocity


def _plan_object(
    rng: np.random.Generator, obj_id: str, shape: str, colour: str, depth: int, late: bool, config: SceneConfig
) -> ObjectSpec:
    """Random script for one object (see ``SceneConfig`` for the probabilities)."""
    frames, height, width = config.num_frames, config.height, config.width
    short = min(height, width)
    size = rng.uniform(*config.size_range) * short
    hx, hy = shape_half_extents(shape, size)
    speed = rng.uniform(*config.speed_range) * short / config.fps
    half = math.ceil(frames / 2)
    if late:
        appear = int(rng.integers(half, max(half + 1, frames - 2)))
        slides_in = rng.random() < 0.5
    else:
        slides_in = rng.random() < config.enter_prob
        appear = int(rng.integers(0, max(1, frames // 3))) if slides_in else 0
    if slides_in:
        position, velocity = _entry(rng, hx, hy, speed, height, width)
        first_length = math.ceil((2 * max(hx, hy) + 2) / speed) + 1  # long enough to get fully inside
    else:
        position = np.array([rng.uniform(hx, width - hx), rng.uniform(hy, height - hy)])
        still = rng.random() < config.still_prob
        velocity = np.zeros(2) if still else _direction(rng) * speed
        first_length = frames if still else 0
    segments = [Segment(appear, (float(velocity[0]), float(velocity[1])))]
    t = appear + max(first_length, int(rng.integers(max(2, frames // 5), max(3, frames // 2))))
    moving = bool(np.any(velocity))
    while t < frames:
        if moving and rng.random() < config.stop_prob:
            velocity, length = np.zeros(2), int(rng.integers(max(2, frames // 10), max(3, frames // 3)))
        else:
            velocity, length = _direction(rng) * speed, int(rng.integers(max(2, frames // 5), max(3, frames // 2)))
        segments.append(Segment(t, (float(velocity[0]), float(velocity[1]))))
        moving = bool(np.any(velocity))
        t += length
    exit_at = None
    earliest_exit = max(half, appear + first_length)
    if not late and earliest_exit < frames - 1 and rng.random() < config.exit_prob:
        exit_at = int(rng.integers(earliest_exit, frames - 1))
        segments = [s for s in segments if s.start < exit_at]
    return ObjectSpec(
        obj_id, shape, colour, float(size), depth, appear, (float(position[0]), float(position[1])),
        tuple(segments), exit_at, float(speed),
    )


def _draw_scene(rng: np.random.Generator, index: int, late: bool, config: SceneConfig) -> list[ObjectSpec]:
    count = int(rng.integers(config.min_objects, config.max_objects + 1))
    combos: list[tuple[str, str]] = []
    while len(combos) < count:
        combo = (config.colours[rng.integers(len(config.colours))], config.shapes[rng.integers(len(config.shapes))])
        if combo not in combos:
            combos.append(combo)
    depths = rng.permutation(count)
    late_index = int(rng.integers(count)) if late else -1
    return [
        _plan_object(rng, str(index * OBJECT_ID_STRIDE + i), shape, colour, int(depths[i]), i == late_index, config)
        for i, (colour, shape) in enumerate(combos)
    ]


def _acceptable(facts: SceneFacts, late: bool) -> bool:
    """Every object is visible at some frame; a late object is visible only in the second half."""
    for obj in facts.objects:
        if obj.first_visible is None:
            return False
    if late:
        return any(obj.first_visible >= facts.num_frames / 2 for obj in facts.objects)
    return True


def generate_video(
    video_id: str, seed: int, index: int, config: SceneConfig, text: TextConfig | None = None, max_attempts: int = 50
) -> SyntheticVideo:
    """Video number ``index`` of the corpus seeded ``seed``: the same arguments give the same video.

    The video's random stream is ``numpy.random.default_rng([seed, index])``, so any video can be made
    alone (in parallel, in any order). Object ids are ``index * OBJECT_ID_STRIDE + k``: unique across the
    corpus (MeViS/ReVOS annotation ids are global) without coordination between videos. Scenes in which an object would never be visible (fully covered
    the whole time, or too late to enter) are redrawn from the same stream.
    """
    text = text or TextConfig()
    rng = np.random.default_rng([seed, index])
    late = bool(rng.random() < config.late_target_fraction)
    background = _background(rng, config.height, config.width)
    for _ in range(max_attempts):
        specs = _draw_scene(rng, index, late, config)
        simulation = Simulation(specs, config.num_frames, config.height, config.width, background)
        facts = simulation.measure(config.fps)
        if _acceptable(facts, late):
            expressions, moments = describe_scene(facts, rng, text, late, config.shapes, config.colours)
            return SyntheticVideo(video_id, config.fps, simulation, facts, expressions, moments, late)
    raise RuntimeError(f"video {video_id!r}: no acceptable scene in {max_attempts} attempts (seed {seed}, index {index})")


def generate_corpus(
    num_videos: int, seed: int, config: SceneConfig, text: TextConfig | None = None, prefix: str = "synth"
) -> Iterator[SyntheticVideo]:
    """``num_videos`` videos named ``<prefix>_<index:05d>``, made one at a time."""
    for index in range(num_videos):
        yield generate_video(f"{prefix}_{index:05d}", seed, index, config, text)


@dataclass
class SimulationTrack:
    """``MaskTrack`` of one object, rasterised per request; None where the object is not visible."""

    simulation: Simulation
    index: int

    def frame_mask(self, frame_idx: int) -> np.ndarray | None:
        mask = self.simulation.visible_mask(frame_idx, self.index)
        return mask if mask.any() else None


def to_dataset(
    videos: list[SyntheticVideo], video_uri: Callable[[str], str] | None = None, format_name: str = "synthetic"
) -> Dataset:
    """The internal dataset model of ``videos``; masks stay lazy, moments get running query ids."""
    dataset = Dataset(format=format_name)
    for video in videos:
        dataset.videos[video.video_id] = VideoRecord(
            video_id=video.video_id,
            frame_names=[f"{t:05d}" for t in range(video.num_frames)],
            height=video.height,
            width=video.width,
            expressions=[
                Expression(e.expr_id, e.text, e.obj_ids, e.kind, e.type_id) for e in video.expressions
            ],
            tracks={spec.obj_id: SimulationTrack(video.simulation, i) for i, spec in enumerate(video.simulation.specs)},
            video_uri=video_uri(video.video_id) if video_uri else None,
            fps=video.fps,
        )
        duration = video.num_frames / video.fps
        for moment in video.moments:
            start, end = moment.seconds(video.fps)
            dataset.moments.append(Moment(len(dataset.moments), video.video_id, moment.text, start, end, duration))
    return dataset
