"""Label one video with all of its expressions: [FIND] -> sampling -> [SEG] -> key-frame masks -> BAP.

``VideoLabeler.label`` is what a labeling actor runs per video (ARCHITECTURE "One video through the
labeling pipeline", steps 2-6). Work is shared across the expressions of the video:

- the low-resolution frames for temporal tokens are decoded once, and ``SegMLLM.moment_scores`` computes
  the video prefix once for every expression (MomentSeg 3.2.1);
- after the low-res pass, the video is decoded once more, front to back, at the ``source_size`` (SAM2's
  input size, or larger where the MLLM's key frames need more) into a local frame store
  (``actors.frame_store``): key frames, anchors and both propagation streams are reads from it, resized
  for each consumer, so every frame is decoded at most twice whatever the keyframe interval, and the
  frames objects are tracked through never depend on which expressions share the video;
- expressions with the same key frames share one ``seg_prompts`` call (one visual prefix);
- each key frame's SAM2 image features are computed once and decoded with the prompts of every
  expression that sampled it;
- all expressions are objects of one ``Sam2VideoSession``: the forward pass streams frames from the
  earliest anchor to the end, the backward pass from the latest anchor to the start, each frame's image
  features computed once per pass for all objects (ARCHITECTURE step 6);
- each mask goes to a ``MaskSink`` the moment it is final (``actors.mask_spool``): nothing the engine
  holds grows with the video's length but the per-frame scores.

Choices where the papers leave room (MomentSeg 3.2.1-3.2.3, VRS-HQ, DeSa2VA):

- The [FIND] curve over the L low-res frames is interpolated linearly over frame positions to all T
  frames (the paper interpolates the temporal-token similarities "bilinearly" to the input length; the
  model already interpolates temporal tokens -> L frames, we continue it L -> T), constant beyond the
  first/last sampled frame.
- The key-frame prediction confidence S^p of Eq. 8 is sigmoid(SAM2 object-score logit) of the mask
  decoded from ``[SEG]`` on that key frame, the same scale as the tracking score S^t
  (sigmoid of the tracked object-score logit, see ``Sam2VideoSession``).
- The start frame and every key frame a pass reaches with anchor updating output the key-frame mask
  decoded from the prompt; the per-frame score written there is its S^p (``actors.bap`` for the modes).
  The key frames where a pass fed that mask in besides its start are the track's ``reseeds``; at each, the
  mask propagation would have output there had the key-frame mask not replaced it (tracked from the object's
  memory with that frame's own key-frame mask held out, ``Sam2VideoSession.propagate(track_seeds=True)``)
  is kept as an RLE, ``pre_update`` (MomentSeg Table 13's "Anchor mIoU w/o updating"). It is not the
  output of a run without anchor updating: the other key frames still condition the memory, as they do in
  the run whose masks are written.
- Presence: the object is present on a frame when SAM2's object-score logit there is > 0 (of the tracked
  frame, or of the key-frame mask where one is output) and the mask has a pixel. SAM2's hard gate
  (``actors.model.sam2_bridge.select_mask``) already sets the mask logits to ``NO_OBJ_SCORE`` where the
  logit is <= 0, so masks are empty exactly where the object is absent; the engine changes no mask.
  Frames a one-way pass never reaches are empty and absent.
- Decoupled prompts (DeSa2VA): the text- and visual-prompt masks are fused by averaging their logits;
  mask re-prompt feeds the fused low-res logits back once as SAM2's dense prompt to the same prompts
  (``actors.model.segmllm.decode_seg_prompts``).
- TKS (VRS-HQ): the candidates (``TokenKeyframeCandidates``) are decoded with the fused ``<TAK>`` prompt;
  the keyframe with the best ``tks_scores`` becomes the anchor (needs ``mllm.tda.enabled``).
- SAM2 frames are the source-size frames (resized, bilinear antialiased, to SAM2's square input size
  where they are larger: what SAM2's preprocessing does anyway), the key frames' and the streams' alike;
  the MLLM's key frames are resized from the same frames; masks are
  upsampled bilinearly (logits) to the video's resolution and thresholded at ``mask_threshold``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from actors import rle as rle_codec
from actors.bap import BACKWARD, FORWARD, PropagationConfig, PropagationPolicy
from actors.decode import FrameChunk, FrameSource, Size, fit_within, uniform_indices
from actors.frame_store import StoreFile, frame_store
from actors.grounding import FIND_THRESHOLD
from actors.mask_spool import MaskSink, MaskSpool
from actors.model.heads import LocationMap
from actors.model.sam2_bridge import MaskPrediction, Sam2Bridge
from actors.model.sam2_session import Sam2VideoSession
from actors.model.segmllm import SegMLLM, SegPrompts, decode_seg_prompts
from actors.sampling import Sampler, SampleResult, SamplingConfig, make_sampler, tks_select


@dataclass
class EngineConfig:
    """Per-video inference settings (the ``engine`` section of a labeling config).

    MomentSeg's inference inputs (4.3, App. B.2, E.1, Table 10) are three separate frame sets, each with its
    own budget and resolution (the real configs: 100 ``[FIND]`` frames at 64 tokens, 8 key frames at 448 px,
    temporal tokens off; 50 frames at 16 tokens when turned on):

    - ``lowres_frames`` / ``lowres_side``: the L uniformly sampled frames of the ``[FIND]`` pass and their
      longer side (224 px = 8 x 8 merged 28-px patches = 64 tokens per frame, App. B.2's TSG pixels);
    - ``sampling.k`` key frames at ``keyframe_side`` for ``[SEG]``;
    - ``temporal_tokens``: whether the ``[SEG]`` pass also reads the low-res video (Temporal Token
      Injecting). MomentSeg trains with them and omits them at inference ("inference without tokens
      achieves similar performance, so we omit them", Table 10, App. E.1), so the default is off;
      ``temporal_frames`` / ``temporal_side`` (50 frames at 112 px = 16 tokens) when on. The temporal
      frames are a uniform subset of the ``[FIND]`` frames (``actors.decode.uniform_indices`` over them)
      resized to ``temporal_side``, so turning them on decodes nothing more; with more temporal frames than
      ``[FIND]`` frames, all of these.

    A frame set's token count is the model's business (Qwen2.5-VL's processor caps video frames at
    ``mllm.video_tokens_per_frame``), so ``PromptStage`` refuses sides the model's cap would shrink.
    ``find_threshold``: theta of the predicted moment (``actors.grounding``); ``chunk_size``: frames per
    decode chunk of the SAM2 streams (bounds memory); ``mask_threshold``: on mask logits.
    """

    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    propagation: PropagationConfig = field(default_factory=PropagationConfig)
    lowres_frames: int = 32
    lowres_side: int = 112
    keyframe_side: int = 448
    temporal_tokens: bool = False
    temporal_frames: int = 50
    temporal_side: int = 112
    find_threshold: float = FIND_THRESHOLD
    chunk_size: int = 32
    mask_threshold: float = 0.0
    reprompt: bool = False

    def __post_init__(self) -> None:
        for name in ("lowres_frames", "lowres_side", "keyframe_side", "temporal_frames", "temporal_side",
                     "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"engine.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.find_threshold <= 1.0:
            raise ValueError(f"engine.find_threshold must be in [0, 1], got {self.find_threshold}")


@dataclass(frozen=True)
class ExpressionQuery:
    expr_id: str
    text: str


@dataclass
class ExpressionLabels:
    """Everything the engine produced for one expression.

    ``rles``: one COCO RLE per frame at the video's resolution; ``scores`` (T,): per-frame confidence
    (S^t where tracked, S^p where the key-frame mask was used); ``present`` (T,) bool: where the object
    is present (see the module docstring); ``relevance`` (T,): the [FIND] logits; ``sampled`` /
    ``key_frames``: the sampler's output; ``key_scores``: S^p of each key frame; ``anchor``: where
    propagation started (the sampler's anchor, or the first key frame); ``reseeds``: key frames where a
    pass fed the key-frame mask in (anchor updating); ``pre_update``: per re-seeded frame (in ``reseeds``
    order) the RLE of the mask tracking gave there before the key-frame mask replaced it (see the module
    docstring); ``cleared``: key frames where Eq. 8 cleared the tracked memory (``actors.bap``).
    """

    expr_id: str
    rles: list[rle_codec.RLE]
    scores: np.ndarray
    present: np.ndarray
    relevance: np.ndarray
    sampled: list[int]
    key_frames: list[int]
    key_scores: list[float]
    anchor: int
    reseeds: list[int]
    cleared: list[int]
    pre_update: list[rle_codec.RLE]


@dataclass
class VideoLabels:
    num_frames: int
    height: int
    width: int
    expressions: list[ExpressionLabels]
    timings: dict[str, float]


class StageTimer:
    """Wall-clock seconds per named stage (summed over repeated entries)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def interpolate_relevance(sample_logits: np.ndarray, sample_frames: np.ndarray, num_frames: int) -> np.ndarray:
    """(E, L) curves at frames ``sample_frames`` -> (E, T) over every frame (linear, constant at the ends)."""
    frames = np.arange(num_frames, dtype=np.float64)
    return np.stack([np.interp(frames, sample_frames.astype(np.float64), row) for row in sample_logits])


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, h, w, 3) uint8, bilinear with antialiasing; a no-op at the same size.

    Runs torch's uint8 channels-last kernel (an (N, H, W, 3) array is channels-last already): measured
    14x faster on CPU than converting to float and back."""
    if frames.shape[1:3] == tuple(size):
        return frames
    tensor = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    resized = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False, antialias=True)
    return np.ascontiguousarray(resized.permute(0, 2, 3, 1).numpy())


class StreamedFrames:
    """A frame source for one propagation pass: frames come from the source's chunked stream at
    ``source_size`` in the pass's order, resized to ``size``, with a few frames (the key frames, needed to
    seed objects before the stream reaches them) served from memory."""

    def __init__(self, source: FrameSource, start: int, direction: int, source_size: Size, size: Size,
                 chunk_size: int, preloaded: dict[int, np.ndarray]) -> None:
        self._chunks: Iterator[FrameChunk] = source.stream(
            start, "forward" if direction == FORWARD else "backward", source_size, chunk_size
        )
        self._size = size
        self._preloaded = preloaded
        self._chunk: dict[int, np.ndarray] = {}

    def __call__(self, frame_idx: int) -> np.ndarray:
        if frame_idx in self._preloaded:
            return self._preloaded[frame_idx]
        while frame_idx not in self._chunk:
            chunk = next(self._chunks, None)
            if chunk is None:
                raise IndexError(f"frame {frame_idx} is not ahead of this propagation pass")
            frames = resize_frames(chunk.frames, self._size)
            self._chunk = dict(zip(chunk.indices.tolist(), frames, strict=True))
        return self._chunk[frame_idx]


@dataclass
class KeyFrames:
    """The union of the expressions' key frames, decoded once: sorted ``indices`` and their ``frames``."""

    indices: np.ndarray  # (N,) int64, sorted distinct
    frames: np.ndarray  # (N, H, W, 3) uint8

    def take(self, frame_indices: Sequence[int]) -> np.ndarray:
        wanted = np.asarray(frame_indices, dtype=np.int64)
        rows = np.minimum(np.searchsorted(self.indices, wanted), len(self.indices) - 1)
        if np.any(self.indices[rows] != wanted):
            raise KeyError(f"frames {wanted.tolist()} are not all among the decoded key frames")
        return self.frames[rows]

    def resized(self, size: tuple[int, int]) -> KeyFrames:
        return KeyFrames(self.indices, resize_frames(self.frames, size))


def source_size(config: EngineConfig, sam2_image_size: int, height: int, width: int) -> Size:
    """The size high-resolution frames are read at: each side the larger of SAM2's square input and the
    MLLM's key frames (``keyframe_side``, aspect kept), so both are resized from it without upsampling.
    With the real configurations (SAM2 1024 px, key frames 448 px) it is SAM2's input itself, which the
    SAM2 frames then are as decoded."""
    key_height, key_width = fit_within(height, width, config.keyframe_side)
    return max(sam2_image_size, key_height), max(sam2_image_size, key_width)


def key_frame_union(samples: Sequence[SampleResult]) -> np.ndarray:
    """Every frame some expression's MLLM or SAM2 stage needs at high resolution."""
    return np.unique(np.concatenate([s.indices for s in samples]))


def sample_expressions(sampler: Sampler, relevance: np.ndarray, k: int, find_frames: int) -> list[SampleResult]:
    """The sampler applied to each expression's (T,) relevance curve, scored by ``[FIND]`` on
    ``find_frames`` frames: each stands for T / L video frames, the unit of MCS's window and smoothing."""
    return [sampler.sample(curve, k, stride=relevance.shape[1] / find_frames) for curve in relevance]


def split_prompts(batch: SegPrompts) -> list[SegPrompts]:
    """A batch of E expressions' prompts -> E batches of one."""
    fields = vars(batch)
    return [
        SegPrompts(**{name: (v[i : i + 1] if isinstance(v, torch.Tensor) else v) for name, v in fields.items()})
        for i in range(batch.prompts.shape[0])
    ]


def check_video_tokens(config: EngineConfig, mllm: SegMLLM) -> None:
    """The ``[FIND]`` frames (and temporal-token frames, when on) must not exceed the model's tokens per
    video frame, or its processor would shrink them silently: a square frame of side s gives
    round(s / (patch * merge))^2 tokens (Qwen2.5-VL's resize rounds sides to multiples of 28 px)."""
    unit, cap = mllm.patch_size * mllm.merge_size, mllm.config.video_tokens_per_frame
    sides = {"lowres_side": config.lowres_side}
    if config.temporal_tokens:
        sides["temporal_side"] = config.temporal_side
    for name, side in sides.items():
        tokens = round(side / unit) ** 2
        if tokens > cap:
            raise ValueError(
                f"engine.{name}={side} makes {tokens} tokens per frame but the model caps video frames at "
                f"mllm.video_tokens_per_frame={cap}: raise it (model.inference of the labeling config) "
                f"or lower engine.{name}"
            )


def subsample(frames: FrameChunk, count: int, side: int) -> FrameChunk:
    """``count`` of ``frames`` (``actors.decode.uniform_indices`` over them), longer side at most ``side``."""
    rows = uniform_indices(len(frames.indices), count)
    height, width = frames.frames.shape[1:3]
    return FrameChunk(frames.indices[rows], resize_frames(frames.frames[rows], fit_within(height, width, side)))


class PromptStage:
    """The MLLM half of the engine (what an ``MLLMWorker`` runs): ``[FIND]`` relevance and ``[SEG]`` prompts."""

    def __init__(self, mllm: SegMLLM, config: EngineConfig) -> None:
        check_video_tokens(config, mllm)
        self.mllm = mllm.eval()
        self.config = config

    @torch.inference_mode()
    def relevance(self, lowres: FrameChunk, texts: Sequence[str], num_frames: int, fps: float | None) -> np.ndarray:
        """(E, T) ``[FIND]`` logits over every frame from the L low-res frames (video prefix shared)."""
        sample_fps = fps * len(lowres.indices) / num_frames if fps else None
        logits = self.mllm.moment_scores(lowres.frames, list(texts), fps=sample_fps).float().cpu().numpy()
        return interpolate_relevance(logits, lowres.indices, num_frames)

    @torch.inference_mode()
    def prompts(self, samples: Sequence[SampleResult], texts: Sequence[str], key_frames: KeyFrames,
                lowres: FrameChunk, num_frames: int, fps: float | None = None) -> list[SegPrompts]:
        """One ``SegPrompts`` (batch of one) per expression; expressions with equal frames share a call.

        ``key_frames`` at the MLLM's key-frame size; ``lowres`` the ``[FIND]`` frames, whose subset is the
        temporal-token video when ``temporal_tokens`` is on (for Sparse-Dense, the sparse frames taken from
        ``key_frames`` are the context video instead). A context video is given its own frame rate,
        ``fps`` x its frames / ``num_frames``, as the ``[FIND]`` pass is.
        """
        temporal = (subsample(lowres, self.config.temporal_frames, self.config.temporal_side).frames
                    if self.config.temporal_tokens else None)
        groups: dict[tuple[int, ...], list[int]] = {}
        for e, sample in enumerate(samples):
            groups.setdefault(tuple(sample.key_frames.tolist()), []).append(e)
        out: list[SegPrompts | None] = [None] * len(samples)
        for frames, members in groups.items():
            context = temporal
            if self.config.sampling.method == "sparse_dense":
                context = key_frames.take(samples[members[0]].indices.tolist())
            context_fps = fps * len(context) / num_frames if fps and context is not None else None
            batch = self.mllm.seg_prompts(key_frames.take(frames), [texts[e] for e in members],
                                          lowres_video=context, fps=context_fps)
            for e, prompts in zip(members, split_prompts(batch), strict=True):
                out[e] = prompts
        return out  # type: ignore[return-value]


@dataclass
class _KeyMasks:
    """Key-frame masks of one expression at SAM2 frame size: frame -> mask, frame -> S^p, frame -> whether
    the object-score logit is > 0."""

    masks: dict[int, np.ndarray] = field(default_factory=dict)
    confidence: dict[int, float] = field(default_factory=dict)
    present: dict[int, bool] = field(default_factory=dict)


@dataclass
class ExpressionMasks:
    """The SAM2 half's output for one expression besides its masks (fields as in ``ExpressionLabels``)."""

    anchor: int
    key_frames: list[int]
    key_scores: list[float]
    reseeds: list[int]
    cleared: list[int]
    pre_update: list[rle_codec.RLE]


class MaskStage:
    """The SAM2 half of the engine (what a ``Propagator`` runs): key-frame masks, TKS, BAP propagation."""

    def __init__(self, sam2: Sam2Bridge, config: EngineConfig, location_map: LocationMap | None = None) -> None:
        """``location_map``: the model's ``mllm.location_map`` head, which makes the key frames' dense prompts."""
        self.sam2 = sam2.eval()
        self.location_map = None if location_map is None else location_map.eval()
        self.config = config

    @property
    def frame_size(self) -> Size:
        """SAM2 frames are fed at its square input size."""
        return (self.sam2.image_size, self.sam2.image_size)

    def source_size(self, height: int, width: int) -> Size:
        return source_size(self.config, self.sam2.image_size, height, width)

    @torch.inference_mode()
    def segment(self, source: FrameSource, samples: Sequence[SampleResult], prompts: Sequence[SegPrompts],
                key_frames: KeyFrames, sink: MaskSink) -> list[ExpressionMasks]:
        """Masks for every frame of every expression, handed to ``sink`` as they become final.

        ``source`` serves frames at ``source_size`` (streamed in both directions: a ``frame_store``);
        ``key_frames`` are at ``source_size`` too.
        """
        samples = list(samples)
        source_size = self.source_size(source.height, source.width)
        key_frames = key_frames.resized(self.frame_size)
        if self.config.sampling.method == "tks":
            samples = self._select_keyframes(samples, prompts, key_frames)
        if not self.config.propagation.features.tracking:
            return self._decode_every_frame(source, source_size, samples, prompts, sink)
        key_masks = self._key_masks(samples, prompts, key_frames)
        policies = [
            PropagationPolicy(source.num_frames, s.key_frames.tolist(), s.anchor, key_masks[e].confidence,
                              self.config.propagation)
            for e, s in enumerate(samples)
        ]
        preloaded = dict(zip(key_frames.indices.tolist(), key_frames.frames, strict=True))
        reseeds, cleared, pre_update = self._propagate(source, source_size, policies, key_masks, preloaded, sink)
        out = []
        for e, sample in enumerate(samples):
            frames = sample.key_frames.tolist()
            out.append(ExpressionMasks(policies[e].start, frames, [key_masks[e].confidence[f] for f in frames],
                                       reseeds[e], cleared[e], pre_update[e]))
        return out

    # ------------------------------------------------------------------ key-frame masks
    def _frame_predictions(self, samples: Sequence[SampleResult], prompts: Sequence[SegPrompts],
                           key_frames: KeyFrames) -> dict[tuple[int, int], MaskPrediction]:
        """(frame, expression) -> prediction on each of its key frames. Each frame's image features are
        computed once; the plain prompts of all expressions that sampled it are decoded as one batch."""
        members: dict[int, list[int]] = {}
        for e, sample in enumerate(samples):
            for frame in sample.key_frames.tolist():
                members.setdefault(frame, []).append(e)
        batched = all(p.text_prompts is None for p in prompts) and not self.config.reprompt
        out: dict[tuple[int, int], MaskPrediction] = {}
        for frame, expressions in members.items():
            features = self.sam2.encode_images(key_frames.take([frame]))
            if batched:
                batch = self.sam2.decode_masks(
                    features, torch.cat([prompts[e].prompts for e in expressions]), location_map=self.location_map
                )
                for i, e in enumerate(expressions):
                    out[(frame, e)] = MaskPrediction(
                        *(None if v is None else v[i : i + 1] for v in vars(batch).values())
                    )
            else:
                for e in expressions:
                    out[(frame, e)] = decode_seg_prompts(
                        self.sam2, features, prompts[e], self.config.reprompt, self.location_map
                    )
        return out

    def _key_masks(self, samples: Sequence[SampleResult], prompts: Sequence[SegPrompts],
                   key_frames: KeyFrames) -> list[_KeyMasks]:
        out = [_KeyMasks() for _ in samples]
        for (frame, e), prediction in self._frame_predictions(samples, prompts, key_frames).items():
            out[e].masks[frame] = (prediction.mask_logits[0] > self.config.mask_threshold).cpu().numpy()
            out[e].confidence[frame] = float(torch.sigmoid(prediction.object_score_logits[0]))
            out[e].present[frame] = bool(prediction.object_score_logits[0] > 0)
        return out

    def _select_keyframes(self, samples: list[SampleResult], prompts: Sequence[SegPrompts],
                          key_frames: KeyFrames) -> list[SampleResult]:
        """VRS-HQ TKS: object scores of the fused ``<TAK>`` prompt on every candidate + <SEG>/<TAK> similarity."""
        predictions = self._frame_predictions(samples, prompts, key_frames)
        selected = []
        for e, sample in enumerate(samples):
            if prompts[e].frame_similarity is None:
                raise ValueError("TKS needs per-frame <SEG>/<TAK> similarities: enable mllm.tda")
            frames = sample.key_frames.tolist()
            logits = np.array([float(predictions[(f, e)].object_score_logits[0]) for f in frames])
            similarity = prompts[e].frame_similarity[0].float().cpu().numpy()
            selected.append(tks_select(sample, logits, similarity))
        return selected

    def _decode_every_frame(self, source: FrameSource, source_size: Size, samples: Sequence[SampleResult],
                            prompts: Sequence[SegPrompts], sink: MaskSink) -> list[ExpressionMasks]:
        """VideoLISA One-Token-Seg-All at inference (``propagation.mode: one_token_seg_all``): each
        expression's one prompt decoded on every frame, streamed front to back, with no memory between
        frames; each frame's image features once for all expressions. The score is sigmoid(object-score
        logit); the recorded anchor is the first key frame (nothing starts there: there is no propagation), and
        a key frame's S^p is its score."""
        to_rle = _MaskWriter((source.height, source.width), self.config.mask_threshold)
        keys = [set(s.key_frames.tolist()) for s in samples]
        key_scores: dict[tuple[int, int], float] = {}
        for chunk in source.stream(0, "forward", source_size, self.config.chunk_size):
            frames = KeyFrames(chunk.indices, resize_frames(chunk.frames, self.frame_size))
            every = [SampleResult(chunk.indices, anchor=None)] * len(samples)
            for (frame, e), prediction in self._frame_predictions(every, prompts, frames).items():
                rle = to_rle.from_logits(prediction.mask_logits)[0]
                logit = prediction.object_score_logits[0]
                score = float(torch.sigmoid(logit))
                if frame in keys[e]:
                    key_scores[(frame, e)] = score
                sink.put(e, frame, rle["counts"], score, is_present(bool(logit > 0), rle))
        return [ExpressionMasks(int(s.key_frames[0]), s.key_frames.tolist(),
                                [key_scores[(f, e)] for f in s.key_frames.tolist()], [], [], [])
                for e, s in enumerate(samples)]

    # ------------------------------------------------------------------ propagation (BAP)
    def _propagate(self, source: FrameSource, source_size: Size, policies: list[PropagationPolicy],
                   key_masks: list[_KeyMasks], preloaded: dict[int, np.ndarray], sink: MaskSink,
                   ) -> tuple[list[list[int]], list[list[int]], list[list[rle_codec.RLE]]]:
        """Drive one ``PropagationPolicy`` per expression in lock-step over a shared multi-object session
        per direction; returns each expression's re-seeded key frames (the key-frame mask fed in besides
        the pass's start), its key frames where Eq. 8 cleared memory, and at each re-seeded frame (sorted as
        those) the RLE of the mask tracking gave before the key-frame mask replaced it."""
        num_frames = source.num_frames
        done = np.zeros((len(policies), num_frames), dtype=bool)
        reseeds: list[list[int]] = [[] for _ in policies]
        cleared: list[list[int]] = [[] for _ in policies]
        pre_update: list[dict[int, rle_codec.RLE]] = [{} for _ in policies]
        track_seeds = self.config.propagation.features.anchor_updating
        to_rle = _MaskWriter((source.height, source.width), self.config.mask_threshold)

        def emit(e: int, frame: int, rle: rle_codec.RLE, score: float, visible: bool) -> None:
            sink.put(e, frame, rle["counts"], score, is_present(visible, rle))
            done[e, frame] = True

        def use_key_mask(e: int, frame: int) -> None:
            emit(e, frame, to_rle.from_mask(key_masks[e].masks[frame]), key_masks[e].confidence[frame],
                 key_masks[e].present[frame])

        for e, policy in enumerate(policies):
            for frame in policy.unlabeled:  # before a one-way pass's start: no mask, as SAM2 leaves them
                emit(e, frame, to_rle.empty(), 0.0, False)
        for direction in (FORWARD, BACKWARD):
            members = [e for e, p in enumerate(policies) if any(q.direction == direction for q in p.passes)]
            if not members:
                continue
            passes = {e: policies[e].begin(direction) for e in members}
            starts = {e: p.start for e, p in passes.items()}
            start = min(starts.values()) if direction == FORWARD else max(starts.values())
            frames = StreamedFrames(source, start, direction, source_size, self.frame_size, self.config.chunk_size,
                                    preloaded)
            session = Sam2VideoSession(self.sam2, frames, num_frames, mask_size=(source.height, source.width))
            seeds: dict[int, dict[int, np.ndarray]] = {}
            for e, planned in passes.items():
                for frame in planned.seeds:
                    seeds.setdefault(frame, {})[e] = key_masks[e].masks[frame]
            for frame in sorted(seeds):  # every conditioning frame of the pass, before it starts
                session.add_masks(frame, seeds[frame])
            for result in session.propagate(start, reverse=direction == BACKWARD, object_starts=starts,
                                            track_seeds=track_seeds):
                frame = result.frame_idx
                probed = list(result.tracked_at_seed)
                if probed:
                    rles = to_rle.from_logits(torch.stack([result.tracked_at_seed[e] for e in probed]))
                    for e, rle in zip(probed, rles, strict=True):
                        pre_update[e][frame] = rle
                tracked: list[tuple[int, int, float]] = []  # (expression, row in result, score)
                for i, e in enumerate(result.obj_ids):
                    if frame == starts[e]:
                        if direction == FORWARD:
                            use_key_mask(e, frame)
                    elif frame in passes[e].seeds:  # anchor updating: the key-frame mask is the output
                        if policies[e].reach(frame):  # Eq. 8
                            session.clear(e, keep_seeds=True)
                            cleared[e].append(frame)
                        reseeds[e].append(frame)
                        use_key_mask(e, frame)
                    else:
                        score = float(result.object_scores[i])
                        policies[e].after_track(frame, score)
                        tracked.append((e, i, score))
                if tracked:
                    rles = to_rle.from_logits(result.mask_logits[[i for _, i, _ in tracked]])
                    for (e, i, score), rle in zip(tracked, rles, strict=True):
                        emit(e, frame, rle, score, result.present[i])
        for e in range(len(policies)):
            missing = np.flatnonzero(~done[e])
            if missing.size:
                raise RuntimeError(f"propagation left frames {missing[:10].tolist()} of expression {e} without a mask")
            if set(pre_update[e]) != set(reseeds[e]):
                raise RuntimeError(f"expression {e}: re-seeded frames {sorted(reseeds[e])} but a pre-update mask "
                                   f"at {sorted(pre_update[e])}")
        return ([sorted(frames) for frames in reseeds], [sorted(frames) for frames in cleared],
                [[pre_update[e][frame] for frame in sorted(reseeds[e])] for e in range(len(policies))])


def require_tda_for_tks(config: EngineConfig, mllm: SegMLLM) -> None:
    """TKS scores candidates with the fused ``<TAK>`` prompt, which only a model with TDA produces."""
    if config.sampling.method == "tks" and not mllm.config.tda.enabled:
        raise ValueError("sampling.method 'tks' needs the model's mllm.tda.enabled (the fused <TAK> prompt)")


class VideoLabeler:
    """Both halves in one process: ``label`` runs one video with all its expressions."""

    def __init__(self, mllm: SegMLLM, sam2: Sam2Bridge, config: EngineConfig) -> None:
        require_tda_for_tks(config, mllm)
        self.config = config
        self.prompt_stage = PromptStage(mllm, config)
        self.mask_stage = MaskStage(sam2, config, mllm.location_map)
        self.sampler = make_sampler(config.sampling)
        self.store_file = StoreFile()  # reused by every video this labeler sweeps

    def label(self, source: FrameSource, queries: Sequence[ExpressionQuery]) -> VideoLabels:
        if not queries:
            raise ValueError("label needs at least one expression")
        config, timer = self.config, StageTimer()
        num_frames, height, width = source.num_frames, source.height, source.width
        texts = [q.text for q in queries]
        with timer.stage("decode_lowres"):
            lowres = source.uniform(min(config.lowres_frames, num_frames), fit_within(height, width, config.lowres_side))
        with timer.stage("find"):
            relevance = self.prompt_stage.relevance(lowres, texts, num_frames, source.fps)
        with timer.stage("sample"):
            samples = sample_expressions(self.sampler, relevance, config.sampling.k, len(lowres.indices))
        with ExitStack() as stack:
            with timer.stage("decode_keyframes"):
                union = key_frame_union(samples)
                source_size = self.mask_stage.source_size(height, width)
                frames = stack.enter_context(frame_store(source, source_size, self.store_file))
                decoded = KeyFrames(union, frames.get(union, source_size))
            with timer.stage("seg"):
                mllm_frames = decoded.resized(fit_within(height, width, config.keyframe_side))
                prompts = self.prompt_stage.prompts(samples, texts, mllm_frames, lowres, num_frames, source.fps)
            spool = stack.enter_context(MaskSpool(len(queries), num_frames))
            with timer.stage("segment"):
                masks = self.mask_stage.segment(frames, samples, prompts, decoded, spool)
            rles = [[{"size": [height, width], "counts": m.counts} for m in spool.rows(e)] for e in range(len(queries))]
            scores = [spool.scores(e) for e in range(len(queries))]
            present = [spool.present(e) for e in range(len(queries))]
        labels = [
            ExpressionLabels(
                expr_id=query.expr_id,
                rles=rles[e],
                scores=scores[e],
                present=present[e],
                relevance=relevance[e].astype(np.float32),
                sampled=sample.indices.tolist(),
                key_frames=out.key_frames,
                key_scores=out.key_scores,
                anchor=out.anchor,
                reseeds=out.reseeds,
                cleared=out.cleared,
                pre_update=out.pre_update,
            )
            for e, (query, sample, out) in enumerate(zip(queries, samples, masks, strict=True))
        ]
        return VideoLabels(num_frames, height, width, labels, timer.seconds)


def is_present(visible: bool, rle: rle_codec.RLE) -> bool:
    """Whether the object is present on a frame: SAM2 sees it (object-score logit > 0) and its mask has a pixel."""
    return visible and rle_codec.area(rle) > 0


class _MaskWriter:
    """SAM2-size masks / logits -> COCO RLE at the video's resolution."""

    def __init__(self, size: tuple[int, int], threshold: float) -> None:
        self.size, self.threshold = size, threshold

    def from_logits(self, logits: torch.Tensor) -> list[rle_codec.RLE]:
        """RLEs of (N, h, w) logits, thresholded together (one device-to-host copy)."""
        if tuple(logits.shape[-2:]) != self.size:
            logits = F.interpolate(logits[:, None], size=self.size, mode="bilinear", align_corners=False)[:, 0]
        return rle_codec.encode_many((logits > self.threshold).cpu().numpy())

    def from_mask(self, mask: np.ndarray) -> rle_codec.RLE:
        logits = torch.from_numpy(mask.astype(np.float32) * 2.0 - 1.0)
        return self.from_logits(logits[None])[0]

    def empty(self) -> rle_codec.RLE:
        """The RLE of a mask without any pixel."""
        return rle_codec.encode(np.zeros(self.size, dtype=bool))
