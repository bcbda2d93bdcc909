"""SAM2's own video training objective on the package's ``SAM2Base``: prompt one frame of a clip, track the
object through the others with memory, and score every frame with SAM2's loss.

This is the model side of training SAM2's tracker (image encoder, memory attention, memory encoder, prompt
encoder, mask decoder) on clips; it follows facebookresearch/sam2's training model (``training/model/sam2.py``,
``SAM2Train.forward_tracking`` and ``track_step``) and loss (``training/loss_fns.py``,
``MultiStepMultiMasksAndIous``, configured by ``TrackingLossConfig``). As there, the image encoder runs once
on all frames of a clip, the conditioning frame is processed first and stored under ``cond_frame_outputs``,
every other frame is a ``_track_step`` whose memory attention reads the earlier frames' memories and object
pointers from ``output_dict``, and ``_encode_memory_in_output`` turns each frame's predicted mask into that
frame's memory, so gradients reach memory attention, the memory encoder and the object pointers through
later frames.

Choices written down:
- ``SAM2Base.track_step`` of sam2 1.1.0 returns only the selected mask, so each frame is
  ``_track_step`` + ``_encode_memory_in_output``, the composition ``SAM2Train.track_step`` uses, keeping the
  decoder's candidates (``high_res_multimasks``) and all its IoU predictions for the loss.
- One prompt per clip, on ``prompt_frame``, plus optional extra *conditioning* frames (``cond_frames``),
  each given the object's ground-truth mask as a mask prompt: SAM2.1's second random initial conditioning
  frame (``num_init_cond_frames_for_train: 2``, ``rand_init_cond_frames_for_train``), which is what
  MomentSeg's anchor updating feeds the tracker at inference (key-frame masks entering memory as
  conditioning frames). As in ``SAM2Train.forward_tracking``, every conditioning frame is processed first
  (the prompt frame, then the others in time order) and stored under ``cond_frame_outputs``, so the frames
  tracked afterwards read them wherever they are in the clip, before or after. SAM2's interactive
  correction clicks (up to 7 per corrected frame in SAM2.1's config) are not simulated. SAM2 training
  always prompts frame 0 and tracks forward; here tracking runs forward from ``prompt_frame`` to the last
  frame, then backward from ``prompt_frame - 1`` to 0 with ``track_in_reverse=True`` in the same
  ``output_dict``, as ``SAM2VideoPredictor.propagate_in_video`` does for a prompt in mid-clip; the
  conditioning frames are skipped (their output is their mask).
- Mask prompts take SAM2's ``use_mask_input_as_output_without_sam`` path when the config has it (every
  published SAM2.1 config): the prompted frame's output is the input mask itself (logits of +-10), the IoU
  prediction a constant 1 and the object score +-10, so that frame's loss carries no gradient, as in SAM2;
  the decoder still runs on the downsampled mask to make the frame's object pointer, which later frames
  read. Point and box prompts run the prompt encoder and mask decoder on the prompted frame (one positive
  point gives SAM2's 3-candidate output, a box a single mask, per ``SAM2Base._use_multimask``).
- Losses are computed at the model's input resolution (``image_size``), on ``high_res_multimasks`` as SAM2
  does (``multistep_pred_multimasks_high_res``), against the target masks resized with nearest-neighbour
  (``nearest-exact``) sampling; a frame's object is present when its resized target has a pixel.
- Candidate masks are those SAM2 produces, hard-gated to ``NO_OBJ_SCORE`` where the object score is <= 0
  (``_forward_sam_heads``): on such frames the mask losses are large constants without gradient and the
  object-score loss is what moves the frame back, as in SAM2 training.
- Reduction: each part is averaged over a clip's frames, then over clips. SAM2 divides by the number of
  objects and *sums* over frames, so its parts are T times these (8 with its 8-frame clips); averaging keeps
  the scale independent of clip length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from actors.model.losses import TrackingLossConfig, tracking_losses
from actors.model.sam2_bridge import ImageFeatures, Sam2Bridge

PROMPT_KINDS = ("mask", "box", "points")

# SAM2's point labels (``SAM2VideoPredictor.add_new_points_or_box``, ``sam2_utils.sample_box_points``).
POSITIVE_POINT_LABEL = 1
BOX_LABELS = (2, 3)  # top-left, bottom-right corner


@dataclass
class TrackingClip:
    """One object in one clip: ``frames`` (T, H, W, 3) uint8, ``masks`` (T, H, W) uint8 (or bool) in {0, 1}
    (an empty mask where the object is absent), the prompt on ``prompt_frame`` (where the object must be
    present) as a ``"mask"``, ``"box"`` or ``"points"`` prompt, and the ``seed`` that samples the points.
    ``cond_frames``: further frames whose ground-truth mask (empty where the object is absent) enters memory
    as a conditioning frame (SAM2's extra initial conditioning frames), sorted, without ``prompt_frame``."""

    frames: np.ndarray
    masks: np.ndarray
    prompt_frame: int = 0
    prompt: str = "mask"
    seed: int = 0
    cond_frames: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        frames, masks = self.frames, self.masks
        if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"TrackingClip.frames must be (T, H, W, 3) uint8, got {_describe(frames)}")
        if not isinstance(masks, np.ndarray) or masks.shape != frames.shape[:3] or masks.dtype not in (np.uint8, bool):
            raise ValueError(
                f"TrackingClip.masks must be (T, H, W) = {frames.shape[:3]} uint8 or bool, got {_describe(masks)}"
            )
        if masks.dtype == np.uint8 and masks.max(initial=0) > 1:
            raise ValueError(f"TrackingClip.masks must hold 0 and 1 only, found {int(masks.max())}")
        if self.prompt not in PROMPT_KINDS:
            raise ValueError(f"TrackingClip.prompt must be one of {PROMPT_KINDS}, got '{self.prompt}'")
        if not 0 <= self.prompt_frame < len(frames):
            raise ValueError(f"TrackingClip.prompt_frame must be in [0, {len(frames)}), got {self.prompt_frame}")
        if not masks[self.prompt_frame].any():
            raise ValueError(
                f"TrackingClip.masks[{self.prompt_frame}] (the prompt_frame) is empty: the prompt needs the object"
            )
        cond = tuple(int(t) for t in self.cond_frames)
        if list(cond) != sorted(set(cond)) or self.prompt_frame in cond or not all(0 <= t < len(frames) for t in cond):
            raise ValueError(f"TrackingClip.cond_frames must be sorted distinct frames in [0, {len(frames)}) "
                             f"other than prompt_frame {self.prompt_frame}, got {list(self.cond_frames)}")
        self.cond_frames = cond

    @property
    def num_frames(self) -> int:
        return len(self.frames)


def _describe(array: object) -> str:
    if isinstance(array, np.ndarray):
        return f"shape {array.shape} dtype {array.dtype}"
    return type(array).__name__


def _mask_pixels(mask: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    if mask.ndim != 2:
        raise ValueError(f"{kind} prompt: mask must be (H, W), got shape {mask.shape}")
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise ValueError(f"{kind} prompt: the mask is empty, there is no object to prompt")
    return xs, ys


def _to_model_coords(xs: np.ndarray, ys: np.ndarray, mask_shape: tuple[int, int], image_size: int) -> np.ndarray:
    """Pixel indices (x, y) of an (H, W) frame -> (N, 2) float32 coordinates of the model's S x S input, scaled
    as ``SAM2VideoPredictor.add_new_points_or_box`` scales them (``x / W * S``, ``y / H * S``)."""
    height, width = mask_shape
    return np.stack([xs * (image_size / width), ys * (image_size / height)], axis=-1).astype(np.float32)


def box_prompt(mask: np.ndarray, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """SAM2's box prompt for a non-empty (H, W) mask: the tight box's top-left and bottom-right pixels (as
    ``sam2_utils.mask_to_box``, inclusive) as two points (2, 2) float32 in the model's input coordinates,
    with labels (2,) int32 ``[2, 3]``. SAM2 training jitters the corners (``sample_box_points``, 10% of the
    side, at most 20 px); this box is exact."""
    xs, ys = _mask_pixels(mask, "box")
    corners = _to_model_coords(np.array([xs.min(), xs.max()]), np.array([ys.min(), ys.max()]), mask.shape, image_size)
    return corners, np.array(BOX_LABELS, np.int32)


def point_prompt(mask: np.ndarray, image_size: int, num_points: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``num_points`` positive clicks drawn independently and uniformly from a non-empty (H, W) mask's pixels
    (SAM2 training's ``get_next_point(method="uniform")`` with no prediction), as (N, 2) float32 coordinates
    in the model's input pixels and labels (N,) int32 of 1; the same ``seed`` draws the same points."""
    if num_points < 1:
        raise ValueError(f"points prompt: num_points must be >= 1, got {num_points}")
    xs, ys = _mask_pixels(mask, "points")
    picks = np.random.default_rng(seed).integers(0, len(xs), size=num_points)
    return _to_model_coords(xs[picks], ys[picks], mask.shape, image_size), np.full(num_points, POSITIVE_POINT_LABEL, np.int32)


@dataclass
class TrackedFrame:
    """SAM2's output on one frame of a clip, at the model's input resolution S.

    ``multimask_logits`` (M, S, S) are the decoder's candidates (M = 3 or 1), gated by the object score,
    ``ious`` (M,) their predicted IoUs, ``mask_logits`` (S, S) SAM2's pick among them (highest predicted
    IoU; the frame's output and memory), ``object_score_logit`` () the presence logit.
    """

    frame_idx: int
    multimask_logits: torch.Tensor
    ious: torch.Tensor
    mask_logits: torch.Tensor
    object_score_logit: torch.Tensor


class Sam2TrackingObjective(torch.nn.Module):
    """SAM2's video objective on a ``Sam2Bridge``: ``forward(clips)`` returns the loss parts ``track_focal``,
    ``track_dice``, ``track_iou``, ``track_object`` (each averaged over frames, then clips) and their weighted
    sum ``loss``. ``num_points`` positive clicks make a points prompt (SAM2 training starts from one).
    Runs on the bridge's device; call ``train()`` for SAM2's training-mode behaviour.
    """

    def __init__(self, bridge: Sam2Bridge, loss_config: TrackingLossConfig | None = None, num_points: int = 1) -> None:
        super().__init__()
        if num_points < 1:
            raise ValueError(f"num_points must be >= 1, got {num_points}")
        self.bridge = bridge
        self.loss_config = loss_config or TrackingLossConfig()
        self.num_points = num_points

    def targets(self, clip: TrackingClip) -> torch.Tensor:
        """The clip's masks at the model's input resolution: (T, S, S) float in {0, 1} (nearest-exact)."""
        masks = torch.as_tensor(clip.masks.astype(np.float32), device=self.bridge.sam.device)
        size = self.bridge.image_size
        if masks.shape[-2:] == (size, size):
            return masks
        return F.interpolate(masks[None], size=(size, size), mode="nearest-exact")[0]

    def _prompt_inputs(
        self, clip: TrackingClip, targets: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor] | None, torch.Tensor | None]:
        """(point_inputs, mask_inputs) of the prompt frame in ``SAM2Base._track_step``'s form: points (1, N, 2)
        float32 in input pixels with labels (1, N) int32, or a (1, 1, S, S) mask."""
        if clip.prompt == "mask":
            return None, targets[clip.prompt_frame][None, None]
        mask = clip.masks[clip.prompt_frame]
        if clip.prompt == "box":
            coords, labels = box_prompt(mask, self.bridge.image_size)
        else:
            coords, labels = point_prompt(mask, self.bridge.image_size, self.num_points, clip.seed)
        device = targets.device
        return {
            "point_coords": torch.as_tensor(coords, device=device)[None],
            "point_labels": torch.as_tensor(labels, device=device)[None],
        }, None

    def track(self, clip: TrackingClip, targets: torch.Tensor | None = None,
              features: ImageFeatures | None = None) -> list[TrackedFrame]:
        """Prompt ``clip.prompt_frame`` and seed ``clip.cond_frames`` with their masks, then track forward to
        the last frame and backward to frame 0 (SAM2's ``_track_step`` + ``_encode_memory_in_output`` per
        frame); returns the frames in time order. ``features``: the clip's frames already encoded
        (``Sam2Bridge.encode_images``)."""
        sam = self.bridge.sam
        targets = self.targets(clip) if targets is None else targets
        if features is None:
            features = self.bridge.encode_images(clip.frames)  # all T frames in one batch, levels (HW, T, C)
        prompt_points, prompt_mask = self._prompt_inputs(clip, targets)
        num_frames, start, conditioning = clip.num_frames, clip.prompt_frame, set(clip.cond_frames)
        order = [(start, False), *((t, False) for t in clip.cond_frames)]
        order += [(t, False) for t in range(start + 1, num_frames) if t not in conditioning]
        order += [(t, True) for t in range(start - 1, -1, -1) if t not in conditioning]
        output_dict: dict[str, dict[int, dict]] = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
        tracked: dict[int, TrackedFrame] = {}
        for frame_idx, reverse in order:
            is_cond = frame_idx == start or frame_idx in conditioning
            point_inputs = prompt_points if frame_idx == start else None
            mask_inputs = (prompt_mask if frame_idx == start
                           else targets[frame_idx][None, None] if frame_idx in conditioning else None)
            vision_feats = [x[:, frame_idx : frame_idx + 1] for x in features.vision_feats]  # (HW, 1, C)
            vision_pos = [x[:, frame_idx : frame_idx + 1] for x in features.vision_pos]
            current_out, sam_outputs, _, _ = sam._track_step(
                frame_idx=frame_idx,
                is_init_cond_frame=is_cond,
                current_vision_feats=vision_feats,
                current_vision_pos_embeds=vision_pos,
                feat_sizes=features.feat_sizes,
                point_inputs=point_inputs,
                mask_inputs=mask_inputs,
                output_dict=output_dict,
                num_frames=num_frames,
                track_in_reverse=reverse,
                prev_sam_mask_logits=None,
            )
            _, high_res_multimasks, ious, _, high_res_masks, obj_ptr, object_score_logits = sam_outputs
            # Later frames read a frame's object pointer and (below) its memory features from output_dict.
            current_out["obj_ptr"] = obj_ptr
            sam._encode_memory_in_output(
                current_vision_feats=vision_feats,
                feat_sizes=features.feat_sizes,
                point_inputs=point_inputs,
                run_mem_encoder=True,
                high_res_masks=high_res_masks,
                object_score_logits=object_score_logits,
                current_out=current_out,
            )
            output_dict["cond_frame_outputs" if is_cond else "non_cond_frame_outputs"][frame_idx] = current_out
            tracked[frame_idx] = TrackedFrame(
                frame_idx, high_res_multimasks[0], ious[0], high_res_masks[0, 0], object_score_logits[0, 0]
            )
        return [tracked[t] for t in range(num_frames)]

    def clip_losses(self, clip: TrackingClip, features: ImageFeatures | None = None) -> dict[str, torch.Tensor]:
        """SAM2's loss parts on one clip, each averaged over its frames."""
        targets = self.targets(clip)
        per_frame = [
            tracking_losses(
                frame.multimask_logits[None],
                frame.ious[None],
                frame.object_score_logit.reshape(1, 1),
                targets[frame.frame_idx][None],
                self.loss_config,
            )
            for frame in self.track(clip, targets, features)
        ]
        return {name: torch.cat([parts[name] for parts in per_frame]).mean() for name in per_frame[0]}

    def forward(self, clips: Sequence[TrackingClip]) -> dict[str, torch.Tensor]:
        """Loss parts averaged over the clips (each clip weighs the same) and ``loss``, their weighted sum.
        Clips holding the same frames array (several objects of one clip, SAM2's multi-object training) share
        one encoding of it."""
        if not clips:
            raise ValueError("Sam2TrackingObjective needs at least one clip")
        encoded: dict[int, ImageFeatures] = {}
        for clip in clips:
            if id(clip.frames) not in encoded:
                encoded[id(clip.frames)] = self.bridge.encode_images(clip.frames)
        per_clip = [self.clip_losses(clip, encoded[id(clip.frames)]) for clip in clips]
        parts = {name: torch.stack([losses[name] for losses in per_clip]).mean() for name in per_clip[0]}
        parts["loss"] = self.loss_config.total(parts)
        return parts
