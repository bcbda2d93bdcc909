"""A SAM2 video session over in-memory frames or a frame source, many objects at once, bounded memory.

``Sam2VideoSession`` drives the package's ``SAM2Base`` (``_track_step``, ``_encode_new_memory``) with its
own bookkeeping instead of ``SAM2VideoPredictor``'s, for three reasons:

1. Frames come from a callable (``frame_idx -> (H, W, 3) uint8``) or a sequence and are fetched when a
   frame is visited; only the last visited frame's image features are cached.
2. Memory does not grow with the video. SAM2's memory attention reads, for each object, its conditioning
   (seed) frames, the last ``num_maskmem - 1`` tracked frames and object pointers of up to
   ``max_obj_ptrs_in_encoder - 1`` tracked frames around the current one. The session keeps, per object,
   the seeds and the tracked frames within that reach of the propagation front or of a seed (the latter so
   that a backward pass started at a seed after a forward pass reads what the stock predictor would read).
   Everything else is dropped; per-frame outputs are yielded to the caller, never stored.
3. Objects are batched. All objects tracked on a frame share one image-encoder pass, one mask-decoder
   pass and one memory-encoder pass. Memory attention runs once per memory *shape*: SAM2's own
   ``_prepare_memory_conditioned_features`` assembles each object's memory tokens and their temporal
   encodings (from whichever frames that object was seeded or tracked on), and objects with the same
   number of memory tokens and object-pointer tokens are attended as one batch. Objects seeded on
   different frames (different anchors, BAP re-seeds at different key frames) so still share the work;
   only the first frames after a seed, while an object's memory fills up, form smaller batches. What is the
   same for every object on a frame (memory attention's first self-attention, the prompt-free prompt
   embeddings) runs once, and only the selected mask is upsampled (``actors/model/sam2_tracking.py``).

Tracking a seed frame (``propagate(..., track_seeds=True)``): on a frame where an object has a seed (other
than the frame it joined the pass on), SAM2 outputs the seed mask and tracks nothing. For MomentSeg Table 13's
"Anchor mIoU w/o updating" the caller also needs what propagation would have output there, so the object is
also tracked from its memory with that frame's own seed held out (its other seeds and its tracked frames as
they are), in the same ``_track`` call as the objects tracked on the frame: one image-encoder pass (the
frame's, which the other objects need anyway), the probe's memory attention batched with theirs by shape, one
mask-decoder pass for all; the memory encoder does not run for it and nothing of it is stored, so the memory
every later frame reads is unchanged. The extra cost is one object's memory attention and mask decoding per
such frame (and the frame's image encoding when no other object is tracked on it): a small fraction when key
frames are few against the frames tracked. Holding the key frames' image features from their seeding instead
would save that encoding but keep ~17 MB per key frame at 1024 px, so they are recomputed.

The tracking score S^t (MomentSeg Eq. 8) is ``object_scores = sigmoid(object_score_logits)``, SAM2's
occlusion head: the probability that the object is visible in the frame. The predicted IoU of the tracked
mask is reported alongside (``ious``) for callers that prefer it.

Matching the stock ``SAM2VideoPredictor``: seeds are encoded exactly as ``add_new_mask`` followed by
``propagate_in_video`` encodes them (mask resized to the model's input size, used as output, memory
encoded from the low-resolution mask, binarised), memory features are stored in bfloat16 as the stock
predictor stores them, and masks are returned at frame resolution by bilinear upsampling of the
low-resolution logits. Unlike the stock predictor, ``add_mask`` always adds a *conditioning* frame, also on
a frame that was already tracked (the stock default turns such corrections into non-conditioning frames).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from actors.model.sam2_bridge import ImageFeatures, Sam2Bridge
from actors.model.sam2_tracking import attend_memory, decode_tracked_masks

FrameSource = Callable[[int], np.ndarray]


@dataclass
class FrameResult:
    """One frame's output for the objects tracked on it (in session order).

    ``mask_logits`` (N, H, W) float32 at the session's mask size (default: frame resolution);
    ``object_scores`` (N,) the tracking score S^t; ``present`` whether SAM2 sees each object on the frame
    (its object-score logit > 0: where it is not, SAM2's gate has set the mask logits to ``NO_OBJ_SCORE``);
    ``ious`` (N,) predicted IoU; ``is_seed`` tells which objects' outputs are their seed masks;
    ``tracked_at_seed`` (with ``propagate(..., track_seeds=True)``): per object whose output here is a seed
    other than its start, the (H, W) mask logits tracking from its memory gives with that seed held out.
    """

    frame_idx: int
    obj_ids: list[Hashable]
    mask_logits: torch.Tensor
    object_scores: torch.Tensor
    ious: torch.Tensor
    is_seed: list[bool]
    present: list[bool]
    tracked_at_seed: dict[Hashable, torch.Tensor] = field(default_factory=dict)


@dataclass
class _Memory:
    """What SAM2's memory attention reads from one frame of one object."""

    maskmem_features: torch.Tensor  # (1, mem_dim, h, w) bfloat16
    obj_ptr: torch.Tensor  # (1, hidden_dim)


@dataclass
class _Seed(_Memory):
    """A conditioning frame, with the output that is returned when propagation passes it."""

    low_res_logits: torch.Tensor  # (1, 1, S/4, S/4)
    object_score_logit: float
    iou: float


@dataclass
class _ObjectState:
    seeds: dict[int, _Seed] = field(default_factory=dict)
    tracked: dict[int, _Memory] = field(default_factory=dict)


@dataclass
class _AttentionInputs:
    """What SAM2's memory attention reads for a batch of objects on one frame: (tokens, B, C) memory and its
    positional encodings, and how many of the tokens are object pointers (excluded from RoPE)."""

    memory: torch.Tensor
    memory_pos: torch.Tensor
    num_obj_ptr_tokens: int


class _MemoryAttentionRecorder(torch.nn.Module):
    """Stands in for ``SAM2Base.memory_attention`` while SAM2 assembles an object's memory: records the
    inputs and returns the current features unchanged (the real attention runs later, batched)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[_AttentionInputs] = []

    def forward(self, curr: list[torch.Tensor], curr_pos: list[torch.Tensor], memory: torch.Tensor,
                memory_pos: torch.Tensor, num_obj_ptr_tokens: int = 0) -> torch.Tensor:
        self.calls.append(_AttentionInputs(memory, memory_pos, num_obj_ptr_tokens))
        return curr[0]


class Sam2VideoSession:
    """Seed objects with masks, propagate them forward or backward, clear their memory.

    ``frames`` is a sequence of (H, W, 3) uint8 frames (or a (T, H, W, 3) array) or a callable
    ``frame_idx -> frame`` together with ``num_frames``. The model must be in eval mode. ``mask_size``: the
    (height, width) masks are returned at (default: the frames'), upsampled once from SAM2's low-resolution
    logits, e.g. straight to the video's size when the frames were resized for SAM2.
    """

    def __init__(
        self, bridge: Sam2Bridge, frames: FrameSource | Sequence[np.ndarray] | np.ndarray, num_frames: int | None = None,
        mask_size: tuple[int, int] | None = None,
    ) -> None:
        if callable(frames):
            if num_frames is None:
                raise ValueError("num_frames is required when frames is a frame source callable")
            self._source: FrameSource = frames
        else:
            if num_frames is not None and num_frames != len(frames):
                raise ValueError(f"num_frames={num_frames} but {len(frames)} frames were given")
            num_frames = len(frames)
            self._source = frames.__getitem__
        if num_frames <= 0:
            raise ValueError(f"a video session needs at least one frame, got num_frames={num_frames}")
        self.bridge = bridge
        self.sam = bridge.sam
        self.num_frames = num_frames
        self.frame_size: tuple[int, int] | None = None
        self.mask_size = mask_size
        self._objects: dict[Hashable, _ObjectState] = {}
        self._cached: tuple[int, ImageFeatures] | None = None
        self._maskmem_pos_enc: list[torch.Tensor] | None = None
        sam = self.sam
        ptr_reach = min(num_frames, sam.max_obj_ptrs_in_encoder) - 1 if sam.use_obj_ptrs_in_encoder else 0
        mask_reach = (sam.num_maskmem - 1) * sam.memory_temporal_stride_for_eval + 1
        self._reach = max(ptr_reach, mask_reach)

    @property
    def obj_ids(self) -> list[Hashable]:
        return list(self._objects)

    def memory_frames(self, obj_id: Hashable) -> tuple[list[int], list[int]]:
        """(seed frames, tracked frames) whose memory the session holds for ``obj_id``."""
        state = self._state(obj_id)
        return sorted(state.seeds), sorted(state.tracked)

    def _state(self, obj_id: Hashable) -> _ObjectState:
        if obj_id not in self._objects:
            raise KeyError(f"unknown object {obj_id!r}; known objects: {self.obj_ids}")
        return self._objects[obj_id]

    def _check_frame_idx(self, frame_idx: int, name: str = "frame_idx") -> None:
        if not 0 <= frame_idx < self.num_frames:
            raise IndexError(f"{name}={frame_idx} is outside the video's {self.num_frames} frames")

    def _check_eval(self) -> None:
        if self.sam.training:
            raise RuntimeError("Sam2VideoSession needs the SAM2 model in eval mode (call .eval())")

    @torch.inference_mode()
    def image_features(self, frame_idx: int) -> ImageFeatures:
        """Image features of one frame (batch of one); the last visited frame's features are cached."""
        self._check_frame_idx(frame_idx)
        if self._cached is not None and self._cached[0] == frame_idx:
            return self._cached[1]
        frame = np.asarray(self._source(frame_idx))
        if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"frame {frame_idx}: expected (H, W, 3) uint8, got {frame.shape} {frame.dtype}")
        if self.frame_size is None:
            self.frame_size = frame.shape[:2]
        elif frame.shape[:2] != self.frame_size:
            raise ValueError(f"frame {frame_idx}: size {frame.shape[:2]} differs from the video's {self.frame_size}")
        features = self.bridge.encode_images(frame[None])
        self._cached = (frame_idx, features)
        return features

    @torch.inference_mode()
    def add_mask(self, obj_id: Hashable, frame_idx: int, mask: np.ndarray | torch.Tensor) -> None:
        """Seed ``obj_id`` (new or known) with an (H, W) mask at ``frame_idx`` as a conditioning frame.

        Replaces any earlier seed or tracked memory of that object on that frame.
        """
        self.add_masks(frame_idx, {obj_id: mask})

    @torch.inference_mode()
    def add_masks(self, frame_idx: int, masks: Mapping[Hashable, np.ndarray | torch.Tensor]) -> None:
        """``add_mask`` for several objects on one frame, encoded as one batch (one mask-decoder and one
        memory-encoder pass for all of them)."""
        self._check_eval()
        self._check_frame_idx(frame_idx)
        if not masks:
            return
        features = self.image_features(frame_idx)
        size = self.sam.image_size
        inputs = []
        for obj_id, mask in masks.items():
            mask = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
            if tuple(mask.shape) != tuple(self.frame_size):
                raise ValueError(
                    f"mask for object {obj_id!r} at frame {frame_idx} has shape {tuple(mask.shape)}, "
                    f"the video's frames are {tuple(self.frame_size)}"
                )
            inputs.append(mask.to(torch.bool).float()[None, None])
        mask_inputs = torch.cat(inputs)  # (B, 1, H, W)
        if tuple(mask_inputs.shape[-2:]) != (size, size):
            mask_inputs = F.interpolate(
                mask_inputs, size=(size, size), mode="bilinear", align_corners=False, antialias=True
            )
            mask_inputs = (mask_inputs >= 0.5).float()
        batch = features.expand(len(inputs))
        _, sam_outputs, _, _ = self.sam._track_step(
            frame_idx=frame_idx,
            is_init_cond_frame=True,
            current_vision_feats=batch.vision_feats,
            current_vision_pos_embeds=batch.vision_pos,
            feat_sizes=batch.feat_sizes,
            point_inputs=None,
            mask_inputs=mask_inputs,
            output_dict={"cond_frame_outputs": {}, "non_cond_frame_outputs": {}},
            num_frames=self.num_frames,
            track_in_reverse=False,
            prev_sam_mask_logits=None,
        )
        _, _, ious, low_res, _, obj_ptr, object_score_logits = sam_outputs
        # As the stock predictor's preflight: memory from the low-res mask upsampled, binarised.
        high_res = F.interpolate(low_res, size=(size, size), mode="bilinear", align_corners=False)
        maskmem = self._encode_memory(features, high_res, object_score_logits, is_mask_from_pts=True)
        for i, obj_id in enumerate(masks):
            state = self._objects.setdefault(obj_id, _ObjectState())
            state.seeds[frame_idx] = _Seed(
                maskmem_features=maskmem[i : i + 1],
                obj_ptr=obj_ptr[i : i + 1],
                low_res_logits=low_res[i : i + 1],
                object_score_logit=float(object_score_logits[i].flatten()[0]),
                iou=float(ious[i].max()),
            )
            state.tracked.pop(frame_idx, None)

    def clear(self, obj_id: Hashable, keep_seeds: bool = True) -> None:
        """Drop ``obj_id``'s tracked memory; with ``keep_seeds=False`` its seeds too (re-seed before tracking)."""
        state = self._state(obj_id)
        state.tracked.clear()
        if not keep_seeds:
            state.seeds.clear()

    def remove(self, obj_id: Hashable) -> None:
        """Forget ``obj_id`` entirely."""
        self._state(obj_id)
        del self._objects[obj_id]

    def _encode_memory(
        self,
        features: ImageFeatures,
        high_res_masks: torch.Tensor,
        object_score_logits: torch.Tensor,
        is_mask_from_pts: bool,
    ) -> torch.Tensor:
        """SAM2's memory encoder on (B, 1, S, S) mask logits; returns bfloat16 (B, mem_dim, h, w) features."""
        features = features.expand(high_res_masks.shape[0])
        maskmem, pos_enc = self.sam._encode_new_memory(
            current_vision_feats=features.vision_feats,
            feat_sizes=features.feat_sizes,
            pred_masks_high_res=high_res_masks,
            object_score_logits=object_score_logits,
            is_mask_from_pts=is_mask_from_pts,
        )
        if self._maskmem_pos_enc is None:  # the same for every frame and object: keep one copy
            self._maskmem_pos_enc = [p[:1].clone() for p in pos_enc]
        return maskmem.to(torch.bfloat16)

    def _layout(self, state: _ObjectState, frame_idx: int,
                hold_out_seed: bool = False) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Which frames an object's memory holds for ``frame_idx``: its seeds (without the one on ``frame_idx``
        when ``hold_out_seed``), its tracked frames in reach."""
        near = tuple(sorted(t for t in state.tracked if abs(t - frame_idx) <= self._reach))
        seeds = tuple(sorted(t for t in state.seeds if not (hold_out_seed and t == frame_idx)))
        return seeds, near

    def _memory_view(self, states: list[_ObjectState], layout: tuple[tuple[int, ...], tuple[int, ...]]) -> dict:
        """A batched SAM2 ``output_dict`` for objects whose memory holds the frames of ``layout``."""
        pos_enc = [p.expand(len(states), -1, -1, -1) for p in self._maskmem_pos_enc]

        def stacked(entries: list[_Memory]) -> dict:
            return {
                "maskmem_features": torch.cat([e.maskmem_features for e in entries]),
                "maskmem_pos_enc": pos_enc,
                "obj_ptr": torch.cat([e.obj_ptr for e in entries]),
            }

        seeds, tracked = layout
        return {
            "cond_frame_outputs": {t: stacked([s.seeds[t] for s in states]) for t in seeds},
            "non_cond_frame_outputs": {t: stacked([s.tracked[t] for s in states]) for t in tracked},
        }

    def _memory_inputs(self, frame_idx: int, states: list[_ObjectState],
                       object_layouts: list[tuple[tuple[int, ...], tuple[int, ...]]], features: ImageFeatures,
                       reverse: bool) -> list[tuple[list[int], _AttentionInputs]]:
        """Memory-attention inputs per group of objects whose memory holds the same frames (``object_layouts``,
        one per state; indices into ``states``, inputs with the group as batch), assembled by SAM2's own
        ``_prepare_memory_conditioned_features`` (which memory frames and object pointers, their temporal
        encodings) with its ``memory_attention`` swapped for a recorder, so they can be run in batches."""
        layouts: dict[tuple[tuple[int, ...], tuple[int, ...]], list[int]] = {}
        for i, layout in enumerate(object_layouts):
            layouts.setdefault(layout, []).append(i)
        recorder = _MemoryAttentionRecorder()
        attention, self.sam.memory_attention = self.sam.memory_attention, recorder
        try:
            for layout, members in layouts.items():
                batch = features.expand(len(members))
                self.sam._prepare_memory_conditioned_features(
                    frame_idx=frame_idx,
                    is_init_cond_frame=False,
                    current_vision_feats=batch.vision_feats[-1:],
                    current_vision_pos_embeds=batch.vision_pos[-1:],
                    feat_sizes=batch.feat_sizes[-1:],
                    output_dict=self._memory_view([states[i] for i in members], layout),
                    num_frames=self.num_frames,
                    track_in_reverse=reverse,
                )
        finally:
            self.sam.memory_attention = attention
        return list(zip(layouts.values(), recorder.calls, strict=True))

    def _track(
        self, frame_idx: int, states: list[_ObjectState], reverse: bool, probes: Sequence[_ObjectState] = ()
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Track objects on one frame; stores the memory of ``states``, returns (low-res logits
        (B + P, 1, S/4, S/4), object score logits (B + P,), ious (B + P,)), ``states`` first, then ``probes``.

        ``probes``: objects seeded on this frame, tracked with that seed held out and nothing stored (see the
        module docstring). Objects whose memory has the same shape (the same number of memory frames and of
        object-pointer tokens, whichever frames they are) run memory attention as one batch; the mask decoder
        runs once for all objects, the memory encoder once for ``states``.
        """
        features = self.image_features(frame_idx)
        layouts = ([self._layout(state, frame_idx) for state in states]
                   + [self._layout(state, frame_idx, hold_out_seed=True) for state in probes])
        states = [*states, *probes]
        stored = len(states) - len(probes)
        shapes: dict[tuple[int, int], list[tuple[list[int], _AttentionInputs]]] = {}
        for members, call in self._memory_inputs(frame_idx, states, layouts, features, reverse):
            shapes.setdefault((call.memory.shape[0], call.num_obj_ptr_tokens), []).append((members, call))
        height, width = features.feat_sizes[-1]
        conditioned: list[torch.Tensor | None] = [None] * len(states)
        for (_, num_ptr_tokens), groups in shapes.items():
            order = [i for members, _ in groups for i in members]
            fused = attend_memory(
                self.sam.memory_attention,
                curr=features.vision_feats[-1],
                curr_pos=features.vision_pos[-1],
                memory=torch.cat([call.memory for _, call in groups], dim=1),
                memory_pos=torch.cat([call.memory_pos for _, call in groups], dim=1),
                num_obj_ptr_tokens=num_ptr_tokens,
            )  # (HW, B, C)
            fused = fused.permute(1, 2, 0).reshape(len(order), -1, height, width)
            for j, i in enumerate(order):
                conditioned[i] = fused[j : j + 1]
        # the frame's high-resolution maps at batch one: the decoder adds them to every object's upscaling
        heads = decode_tracked_masks(self.sam, torch.cat(conditioned), features.high_res_maps())  # type: ignore[arg-type]
        if stored:
            maskmem = self._encode_memory(features, heads.high_res[:stored], heads.object_score_logits[:stored],
                                          is_mask_from_pts=False)
            for i, state in enumerate(states[:stored]):
                state.tracked[frame_idx] = _Memory(maskmem_features=maskmem[i : i + 1],
                                                   obj_ptr=heads.obj_ptr[i : i + 1])
        return heads.low_res, heads.object_score_logits[:, 0], heads.ious

    def _prune(self, state: _ObjectState, front: int) -> None:
        """Keep tracked memory within reach of the propagation front or of a seed."""
        anchors = [front, *state.seeds]
        state.tracked = {
            t: m for t, m in state.tracked.items() if any(abs(t - a) <= self._reach for a in anchors)
        }

    @torch.inference_mode()
    def propagate(
        self,
        start: int,
        end: int | None = None,
        reverse: bool = False,
        object_starts: Mapping[Hashable, int] | None = None,
        track_seeds: bool = False,
    ) -> Iterator[FrameResult]:
        """Yield one ``FrameResult`` per frame from ``start`` to ``end`` (inclusive; backward if ``reverse``).

        ``end`` defaults to the last frame (forward) or frame 0 (backward). ``object_starts`` maps the
        objects to track to the frame where each joins the pass (default: every seeded object joins at
        ``start``); frames on which no object is tracked yet are skipped without being fetched. On a frame
        where an object has a seed, its seed mask is returned; elsewhere it is tracked from its memory.
        Between two frames the caller may ``add_mask`` / ``clear`` (BAP's update); the next frame sees it.
        ``track_seeds``: on a seed frame other than the one an object joined on, also track the object from its
        memory with that seed held out, into ``FrameResult.tracked_at_seed`` (see the module docstring).
        """
        self._check_eval()
        end = (0 if reverse else self.num_frames - 1) if end is None else end
        self._check_frame_idx(start, "start")
        self._check_frame_idx(end, "end")
        if (end < start) != reverse and end != start:
            raise ValueError(f"end={end} lies {'after' if reverse else 'before'} start={start} for this direction")
        if object_starts is None:
            object_starts = {obj_id: start for obj_id, state in self._objects.items() if state.seeds}
        joins: dict[Hashable, int] = {}
        for obj_id in self._objects:  # session order
            if obj_id in object_starts:
                self._check_frame_idx(object_starts[obj_id], f"object_starts[{obj_id!r}]")
                joins[obj_id] = object_starts[obj_id]
        for obj_id in object_starts:
            self._state(obj_id)
        step = -1 if reverse else 1
        for frame_idx in range(start, end + step, step):
            active = [o for o, j in joins.items() if (j >= frame_idx if reverse else j <= frame_idx)]
            if active:
                probed = [o for o in active if joins[o] != frame_idx] if track_seeds else []
                yield self._propagate_frame(frame_idx, active, reverse, probed)

    def _propagate_frame(self, frame_idx: int, active: list[Hashable], reverse: bool,
                         probed: Sequence[Hashable] = ()) -> FrameResult:
        """``probed``: objects to track with their seed on this frame held out, where they have one there and
        another seed (SAM2's memory attention needs a conditioning frame)."""
        # per object: (low-res logits (1, 1, S/4, S/4), object score logit, predicted IoU)
        outputs: dict[Hashable, tuple[torch.Tensor, float, float]] = {}
        tracked: list[Hashable] = []
        probes: list[Hashable] = []
        for obj_id in active:
            state = self._objects[obj_id]
            if not state.seeds:
                raise RuntimeError(f"object {obj_id!r} has no seed mask; call add_mask before tracking it")
            seed = state.seeds.get(frame_idx)
            if seed is not None:
                outputs[obj_id] = (seed.low_res_logits, seed.object_score_logit, seed.iou)
                if obj_id in probed and len(state.seeds) > 1:  # SAM2's memory needs a conditioning frame
                    probes.append(obj_id)
            else:
                tracked.append(obj_id)
        probe_logits: list[torch.Tensor] = []
        if tracked or probes:
            low_res, score_logits, ious = self._track(frame_idx, [self._objects[o] for o in tracked], reverse,
                                                      [self._objects[o] for o in probes])
            for i, obj_id in enumerate(tracked):
                outputs[obj_id] = (low_res[i : i + 1], float(score_logits[i]), float(ious[i]))
            probe_logits = [low_res[i : i + 1] for i in range(len(tracked), len(tracked) + len(probes))]
        for obj_id in active:
            self._prune(self._objects[obj_id], frame_idx)
        masks = F.interpolate(
            torch.cat([outputs[o][0] for o in active] + probe_logits), size=self.mask_size or self.frame_size,
            mode="bilinear", align_corners=False,
        )[:, 0]
        return FrameResult(
            frame_idx=frame_idx,
            obj_ids=list(active),
            mask_logits=masks[: len(active)],
            object_scores=torch.sigmoid(torch.tensor([outputs[o][1] for o in active])),
            ious=torch.tensor([outputs[o][2] for o in active]),
            is_seed=[frame_idx in self._objects[o].seeds for o in active],
            present=[outputs[o][1] > 0 for o in active],
            tracked_at_seed=dict(zip(probes, masks[len(active) :], strict=True)),
        )
