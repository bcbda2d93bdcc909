"""The row every labeling stage passes on: one video, what is known about it so far, or why it failed.

Each stage (``LowresDecoder`` -> ``MLLMWorker`` -> ``Propagator`` -> writer) takes a batch of these rows as an
Arrow table and returns one row per input row with the same schema (``VIDEO_ROW_SCHEMA``), so blocks never
need schema unification:

- ``video_id``; ``source``: JSON telling ``actors.frames.open_source`` how to open the video (a video file
  URI, or a folder of frame images with their names); ``queries``: JSON list of ``{expr_id, text}``;
- ``failure``: empty, or JSON ``{stage, kind, message}`` once a stage failed on the video (later stages pass
  the row on untouched, the writer records it);
- ``timings``: JSON ``{stage: seconds}``, each stage adding its own;
- ``payload``: the previous stage's result for the next one (pickled dataclasses: small arrays only, never
  a full-resolution frame stack); empty on failure.

This module imports no torch: the decode and write stages load it without the model stack.
"""

from __future__ import annotations

import json
import logging
import pickle
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from actors.grounding import ExpressionMoment
from actors.uri import redact

VIDEO_ROW_SCHEMA = pa.schema([
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("source", pa.string(), nullable=False),
    pa.field("queries", pa.string(), nullable=False),
    pa.field("failure", pa.string(), nullable=False),
    pa.field("timings", pa.string(), nullable=False),
    pa.field("payload", pa.large_binary(), nullable=False),
])
MAX_MESSAGE_CHARS = 2000
MAX_TRACEBACK_CHARS = 4000
INTERNAL = "internal"  # the kind of an unexpected exception (a bug or an environment problem, not the input)
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoSource:
    """Where a video's frames are: ``video_uri`` (encoded video) or ``frames_uri`` + ``frame_names``.

    ``frame_names`` may accompany a video file too (a benchmark's frame names, used for PNG outputs).
    """

    video_uri: str | None = None
    frames_uri: str | None = None
    frame_names: list[str] = field(default_factory=list)
    fps: float | None = None
    extension: str = "jpg"

    def __post_init__(self) -> None:
        if (self.video_uri is None) == (self.frames_uri is None):
            raise ValueError("a video source is either a video_uri or a frames_uri, not both or neither")
        if self.frames_uri is not None and not self.frame_names:
            raise ValueError(f"{redact(self.frames_uri)}: a frame folder source needs its frame names")

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v not in (None, [])})

    @classmethod
    def from_json(cls, text: str) -> VideoSource:
        return cls(**json.loads(text))

    @property
    def uri(self) -> str:
        return self.video_uri if self.video_uri is not None else self.frames_uri  # type: ignore[return-value]

    def frame_name(self, index: int) -> str:
        """The name of frame ``index``: the source's own, else its zero-padded number."""
        return self.frame_names[index] if index < len(self.frame_names) else f"{index:05d}"


@dataclass
class LowresVideo:
    """``LowresDecoder``'s payload: the video's geometry and its L low-res frames."""

    num_frames: int
    fps: float
    height: int
    width: int
    indices: np.ndarray  # (L,) int64
    frames: np.ndarray  # (L, h, w, 3) uint8


class VideoOutput(Protocol):
    """A last model stage's payload for one video: the files already written (the output writer's records)
    and what its commit marker records besides them."""

    num_frames: int
    files: list[Any]
    store_fallback: bool  # the video was read by random access: too large for the frame store

    @property
    def num_expressions(self) -> int: ...

    def commit_extra(self) -> dict[str, Any]: ...


def moment_record(expr_id: str, moment: ExpressionMoment) -> dict[str, Any]:
    """An expression's moment in a commit marker: ``moment`` [start, end] seconds and the compact curve."""
    return {"expr_id": expr_id, "moment": [moment.start, moment.end], "find_frames": moment.find_frames,
            "find_scores": moment.find_scores}


@dataclass
class ExpressionTrack:
    """What one expression's propagation did (its masks are in the video's mask files): its text, where it
    started, its key frames, the key frames where Eq. 8 cleared memory, its predicted moment, the key
    frames' prediction confidences S^p (``key_scores``, one per key frame), the key frames where the
    key-frame mask was fed in during propagation (``reseeds``: anchor updating) and, per re-seeded frame in
    that order, the COCO RLE (at the video's size) of the mask tracking gave there before the update
    (``pre_update``, ``actors.engine``: MomentSeg Table 13's "Anchor mIoU w/o updating")."""

    expr_id: str
    text: str
    anchor: int
    key_frames: list[int]
    cleared: list[int]
    moment: ExpressionMoment
    key_scores: list[float]
    reseeds: list[int]
    pre_update: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class VideoMasks:
    """``Propagator``'s payload for one video: its geometry, its tracks, the mask files already written
    (the output writer's records, which the commit marker lists), and whether the video was too large for
    the frame store (``actors.frame_store.random_access_fallback``)."""

    num_frames: int
    fps: float
    height: int
    width: int
    tracks: list[ExpressionTrack]
    files: list[Any]
    store_fallback: bool = False

    @property
    def num_expressions(self) -> int:
        return len(self.tracks)

    def commit_extra(self) -> dict[str, Any]:
        return {
            "num_frames": self.num_frames, "fps": self.fps, "height": self.height, "width": self.width,
            "expressions": [
                {**moment_record(t.expr_id, t.moment), "text": t.text, "anchor": t.anchor,
                 "key_frames": t.key_frames, "cleared": t.cleared}
                for t in self.tracks
            ],
        }


@dataclass
class VideoMoments:
    """``Grounder``'s payload for one video: each query's moment (``vrseg ground`` writes no files)."""

    num_frames: int
    fps: float
    moments: list[tuple[str, ExpressionMoment]]  # (expr_id, moment) in query order
    files: list[Any] = field(default_factory=list)
    store_fallback: bool = False  # no frame store in grounding

    @property
    def num_expressions(self) -> int:
        return len(self.moments)

    def commit_extra(self) -> dict[str, Any]:
        return {"num_frames": self.num_frames, "fps": self.fps,
                "expressions": [moment_record(expr_id, moment) for expr_id, moment in self.moments]}


@dataclass(frozen=True)
class Failure:
    """Why a stage gave up on a video: ``kind`` is a short machine tag, ``message`` redacted text."""

    stage: str
    kind: str
    message: str

    def to_json(self) -> str:
        return json.dumps({"stage": self.stage, "kind": self.kind, "message": self.message})

    @classmethod
    def from_json(cls, text: str) -> Failure:
        raw = json.loads(text)
        return cls(raw["stage"], raw["kind"], raw["message"])

    @classmethod
    def of(cls, stage: str, exc: BaseException) -> Failure:
        """The failure of ``exc``. An input error carries its ``kind`` (``DecodeError``) and keeps its one-line
        message; any other exception is ``internal``: its line, then its traceback (``internal_message``)."""
        kind = getattr(exc, "kind", None)
        if not kind:
            return cls(stage, INTERNAL, internal_message(exc))
        message = redact(str(exc)) or type(exc).__name__
        return cls(stage, str(kind), message[:MAX_MESSAGE_CHARS])


def internal_message(exc: BaseException) -> str:
    """``Type: message`` then the redacted traceback, its innermost ``MAX_TRACEBACK_CHARS`` kept."""
    head = redact(f"{type(exc).__name__}: {exc}".splitlines()[0])[:MAX_MESSAGE_CHARS]
    trace = redact("".join(traceback.format_exception(exc))).rstrip()
    if len(trace) > MAX_TRACEBACK_CHARS:
        trace = "[... traceback truncated]\n" + trace[-MAX_TRACEBACK_CHARS:]
    return f"{head}\n{trace}"


def failure_json(stage: str, video_id: str, exc: BaseException) -> str:
    """``Failure.of(stage, exc)`` as a row's ``failure``; an internal one is logged too (the worker log, which
    reaches the driver unless ``ray.log_to_driver`` is off)."""
    failure = Failure.of(stage, exc)
    if failure.kind == INTERNAL:
        logger.error("vrseg %s: video %s: %s", stage, video_id, failure.message)
    return failure.to_json()


def payload_of(row: dict[str, Any]) -> Any:  # noqa: ANN401 - the previous stage's dataclass
    return pickle.loads(row["payload"])


TRANSIENT_KINDS = frozenset({"io"})  # ``DecodeError`` kinds worth another attempt (storage hiccups)


class StageRunner:
    """Applies one stage's per-video function to a batch, turning exceptions into failure rows.

    ``work(row) -> payload`` runs for rows without a failure; its wall time is added to ``timings`` under
    ``stage``. An error whose ``kind`` is transient (``TRANSIENT_KINDS``) is retried up to ``attempts`` times
    with exponential backoff (``backoff`` seconds, doubling) before it counts. A failed row is passed on with
    an empty payload; rows that failed earlier pass untouched.
    """

    def __init__(self, stage: str, work: Callable[[dict[str, Any]], Any], attempts: int = 4,
                 backoff: float = 0.5) -> None:
        self.stage, self.work, self.attempts, self.backoff = stage, work, attempts, backoff

    def _attempt(self, row: dict[str, Any]) -> Any:  # noqa: ANN401 - the stage's payload
        for attempt in range(1, self.attempts + 1):
            try:
                return self.work(row)
            except Exception as exc:
                if attempt == self.attempts or getattr(exc, "kind", None) not in TRANSIENT_KINDS:
                    raise
                time.sleep(self.backoff * 2 ** (attempt - 1))
        raise AssertionError("unreachable")

    def __call__(self, batch: pa.Table) -> pa.Table:
        return pa.Table.from_pylist([self.one(row) for row in batch.to_pylist()], schema=VIDEO_ROW_SCHEMA)

    def one(self, row: dict[str, Any]) -> dict[str, Any]:
        if row["failure"]:
            return row
        timings = json.loads(row["timings"])
        start = time.perf_counter()
        try:
            payload = pickle.dumps(self._attempt(row), protocol=pickle.HIGHEST_PROTOCOL)
            failure = ""
        except Exception as exc:  # every per-video failure becomes a row; the job goes on
            payload, failure = b"", failure_json(self.stage, row["video_id"], exc)
        timings[self.stage] = timings.get(self.stage, 0.0) + time.perf_counter() - start
        return {**row, "failure": failure, "timings": json.dumps(timings), "payload": payload}

