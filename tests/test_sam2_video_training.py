"""SAM2's video training objective on the tiny SAM2.1 configuration (128 px, real ``sam2`` modules): prompt
builders, SAM2's loss functions, gradients through memory, and a short deterministic training run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from actors.config import load_config
from actors.model.config import ModelConfig
from actors.model.losses import (
    TrackingLossConfig,
    iou_prediction_loss,
    multimask_dice_loss,
    object_score_loss,
    sigmoid_focal_loss,
    tracking_losses,
)
from actors.model.sam2_bridge import Sam2Bridge, Sam2Config, build_sam2
from actors.model.sam2_video_training import Sam2TrackingObjective, TrackingClip, box_prompt, point_prompt

TINY_YAML = Path(__file__).resolve().parents[1] / "configs" / "model" / "tiny.yaml"
PARTS = ("track_focal", "track_dice", "track_iou", "track_object")
TRACKER_MODULES = ("image_encoder.trunk", "memory_attention", "memory_encoder", "sam_prompt_encoder", "sam_mask_decoder")

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def config() -> Sam2Config:
    return load_config(ModelConfig, TINY_YAML).sam2


def disk_clip(
    num_frames: int = 6,
    prompt: str = "mask",
    prompt_frame: int = 0,
    start: tuple[int, int] = (14, 20),
    velocity: tuple[int, int] = (5, 2),
    color: tuple[int, int, int] = (220, 60, 40),
    absent_from: int | None = None,
    seed: int = 0,
    size: int = 64,
) -> TrackingClip:
    """A coloured disk (radius 9) moving over a wavy grey background; the mask is the disk. From frame
    ``absent_from`` on the disk is gone (empty masks)."""
    yy, xx = np.mgrid[0:size, 0:size]
    frames = np.zeros((num_frames, size, size, 3), np.uint8)
    masks = np.zeros((num_frames, size, size), np.uint8)
    for t in range(num_frames):
        frames[t] = (40 + 20 * np.sin(xx / 7.0 + t / 2.0))[..., None].astype(np.uint8)
        if absent_from is not None and t >= absent_from:
            continue
        disk = (xx - start[0] - velocity[0] * t) ** 2 + (yy - start[1] - velocity[1] * t) ** 2 < 81
        masks[t] = disk
        frames[t][disk] = color
    return TrackingClip(frames, masks, prompt_frame, prompt, seed)


def grad_norm(bridge: Sam2Bridge, module: str) -> float:
    grads = [p.grad for p in bridge.sam.get_submodule(module).parameters() if p.grad is not None]
    return float(sum(g.abs().sum() for g in grads)) if grads else 0.0


def mask_iou(logits: torch.Tensor, target: torch.Tensor) -> float:
    predicted, truth = logits > 0, target > 0
    union = (predicted | truth).sum().item()
    return 1.0 if union == 0 else (predicted & truth).sum().item() / union


# ---------------------------------------------------------------- prompts and clips


def ellipse(height: int = 48, width: int = 80) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    return (((xx - 50) / 14.0) ** 2 + ((yy - 20) / 9.0) ** 2 < 1).astype(np.uint8)


def test_box_is_the_masks_corners_in_model_coordinates():
    mask = ellipse()  # 48 x 80 frame, model input 128 x 128
    corners, labels = box_prompt(mask, 128)
    ys, xs = np.nonzero(mask)
    assert corners.dtype == np.float32 and labels.dtype == np.int32
    assert labels.tolist() == [2, 3]
    np.testing.assert_allclose(corners[0], [xs.min() * 128 / 80, ys.min() * 128 / 48], rtol=1e-6)
    np.testing.assert_allclose(corners[1], [xs.max() * 128 / 80, ys.max() * 128 / 48], rtol=1e-6)
    scaled = np.stack([xs * 128 / 80, ys * 128 / 48], axis=-1)
    assert (scaled >= corners[0] - 1e-4).all() and (scaled <= corners[1] + 1e-4).all()


def test_points_fall_inside_the_mask_and_repeat_for_a_seed():
    mask = ellipse()
    points, labels = point_prompt(mask, 128, num_points=6, seed=7)
    assert points.shape == (6, 2) and points.dtype == np.float32
    assert labels.tolist() == [1] * 6
    assert ((points >= 0) & (points < 128)).all()
    cols, rows = np.rint(points[:, 0] * 80 / 128).astype(int), np.rint(points[:, 1] * 48 / 128).astype(int)
    assert mask[rows, cols].all()
    np.testing.assert_array_equal(points, point_prompt(mask, 128, num_points=6, seed=7)[0])
    assert not np.array_equal(points, point_prompt(mask, 128, num_points=6, seed=8)[0])


def test_empty_prompt_masks_are_errors_that_name_them():
    clip = disk_clip(absent_from=3)
    with pytest.raises(ValueError, match=r"TrackingClip.masks\[4\] \(the prompt_frame\) is empty"):
        TrackingClip(clip.frames, clip.masks, prompt_frame=4, prompt="points")
    with pytest.raises(ValueError, match="box prompt: the mask is empty"):
        box_prompt(np.zeros((8, 8), np.uint8), 128)
    with pytest.raises(ValueError, match="points prompt: the mask is empty"):
        point_prompt(np.zeros((8, 8), np.uint8), 128, 1, seed=0)


def test_clip_inputs_are_validated_by_name():
    clip = disk_clip()
    with pytest.raises(ValueError, match="TrackingClip.frames must be"):
        TrackingClip(clip.frames.astype(np.float32), clip.masks)
    with pytest.raises(ValueError, match="TrackingClip.masks must be"):
        TrackingClip(clip.frames, clip.masks[:, :32])
    with pytest.raises(ValueError, match="TrackingClip.masks must hold 0 and 1"):
        TrackingClip(clip.frames, clip.masks * 255)
    with pytest.raises(ValueError, match="TrackingClip.prompt must be one of"):
        TrackingClip(clip.frames, clip.masks, prompt="scribble")
    with pytest.raises(ValueError, match="TrackingClip.prompt_frame must be in"):
        TrackingClip(clip.frames, clip.masks, prompt_frame=6)


# ---------------------------------------------------------------- SAM2's loss functions


def test_focal_loss_matches_the_retinanet_formula_and_skips_absent_objects():
    logits = torch.tensor([[[[2.0, -1.0]], [[0.5, 0.0]]], [[[1.0, 1.0]], [[-3.0, 2.0]]]])  # (2, 2, 1, 2)
    targets = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    present = torch.tensor([True, False])
    loss = sigmoid_focal_loss(logits, targets, present, alpha=0.25, gamma=2.0)
    p = torch.sigmoid(torch.tensor([2.0, -1.0]))
    expected = (0.25 * (1 - p[0]) ** 2 * -torch.log(p[0]) + 0.75 * p[1] ** 2 * -torch.log(1 - p[1])) / 2
    assert loss.shape == (2, 2)
    assert loss[0, 0].item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss[1].abs().sum().item() == 0.0


def test_dice_iou_and_object_losses_follow_sam2():
    targets = torch.zeros(2, 4, 4)
    targets[:, :2] = 1  # top half
    logits = torch.full((2, 2, 4, 4), -20.0)
    logits[:, 0, :2] = 20.0  # candidate 0 is the target, candidate 1 is empty
    logits[:, 1, :1] = 20.0  # candidate 1: half the target
    present = torch.tensor([True, False])
    dice = multimask_dice_loss(logits, targets, present)
    assert dice[0, 0].item() == pytest.approx(0.0, abs=1e-6)
    assert dice[0, 1].item() == pytest.approx(1 - (2 * 4 + 1) / (4 + 8 + 1), rel=1e-5)
    assert dice[1].abs().sum().item() == 0.0
    pred_ious = torch.tensor([[0.8, 0.8], [0.1, 0.1]])
    iou = iou_prediction_loss(logits, targets, pred_ious, present)
    assert iou[0].tolist() == pytest.approx([0.2, 0.3])  # L1 against actual IoUs 1 and 0.5
    assert iou_prediction_loss(logits, targets, pred_ious, present, use_l1_loss=False)[0].tolist() == pytest.approx(
        [0.04, 0.09]
    )
    assert iou[1].abs().sum().item() == 0.0
    scores = object_score_loss(torch.tensor([[2.0], [2.0]]), present)
    assert scores.tolist() == pytest.approx([np.log1p(np.exp(-2.0)), np.log1p(np.exp(2.0))], rel=1e-5)


def test_frame_loss_supervises_the_best_candidate_and_all_ious():
    targets = torch.zeros(1, 4, 4)
    targets[:, :2] = 1
    logits = torch.full((1, 3, 4, 4), -20.0)
    logits[:, 1, :2] = 20.0  # candidate 1 is right
    ious = torch.tensor([[0.5, 0.5, 0.5]])
    parts = tracking_losses(logits, ious, torch.tensor([[3.0]]), targets, TrackingLossConfig())
    assert parts["track_dice"].item() == pytest.approx(0.0, abs=1e-6)
    assert parts["track_iou"].item() == pytest.approx((0.5 + 0.5 + 0.5) / 3)  # actual IoUs 0, 1, 0
    one = tracking_losses(logits, ious, torch.tensor([[3.0]]), targets, TrackingLossConfig(supervise_all_iou=False))
    assert one["track_iou"].item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="focal_alpha must be <= 1"):
        TrackingLossConfig(focal_alpha=2.0)


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize(
    ("prompt", "prompt_embeddings"), [("mask", ()), ("box", (2, 3)), ("points", (1,))]
)
def test_one_backward_reaches_every_tracker_module(config: Sam2Config, prompt: str, prompt_embeddings: tuple) -> None:
    bridge = build_sam2(config).train()
    objective = Sam2TrackingObjective(bridge)
    torch.manual_seed(0)
    parts = objective([disk_clip(prompt=prompt, prompt_frame=2, seed=1)])
    assert set(parts) == {*PARTS, "loss"}
    assert all(torch.isfinite(v) for v in parts.values())
    weights = TrackingLossConfig()
    expected = sum(getattr(weights, name.removeprefix("track_")) * parts[name] for name in PARTS)
    assert parts["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    parts["loss"].backward()
    for module in TRACKER_MODULES:
        assert grad_norm(bridge, module) > 0, module
    for label in prompt_embeddings:  # the prompt's own embeddings: positive point, box corners
        assert grad_norm(bridge, f"sam_prompt_encoder.point_embeddings.{label}") > 0, label


def test_tracked_frames_read_the_prompt_through_memory(config: Sam2Config) -> None:
    bridge = build_sam2(config).train()
    objective = Sam2TrackingObjective(bridge)
    clip = disk_clip(prompt="mask", prompt_frame=0)
    torch.manual_seed(0)
    objective([clip])["loss"].backward()
    assert grad_norm(bridge, "memory_attention") > 0
    assert grad_norm(bridge, "memory_encoder") > 0
    # Frames 1.. see the frame-0 prompt only through memory: another frame-0 mask changes their masks.
    moved = clip.masks.copy()
    moved[0] = np.roll(moved[0], 20, axis=1)
    bridge.eval()
    with torch.no_grad():
        first = objective.track(clip)
        second = objective.track(TrackingClip(clip.frames, moved, 0, "mask"))
    for a, b in zip(first[1:], second[1:], strict=True):
        assert not torch.equal(a.mask_logits, b.mask_logits)


def test_conditioning_frames_output_their_masks_and_steer_the_frames_around_them(config: Sam2Config) -> None:
    """SAM2.1's extra conditioning frame: its ground-truth mask is its output (no gradient, as the prompt's), and
    the tracked frames before and after it read it from memory."""
    bridge = build_sam2(config).eval()
    objective = Sam2TrackingObjective(bridge)
    clip = disk_clip(num_frames=6)
    conditioned = TrackingClip(clip.frames, clip.masks, 0, "mask", cond_frames=(4,))
    with torch.no_grad():
        plain, anchored = objective.track(clip), objective.track(conditioned)
    targets = objective.targets(clip)
    assert torch.equal(anchored[4].mask_logits > 0, targets[4] > 0)
    assert not torch.equal(plain[4].mask_logits > 0, targets[4] > 0)
    for t in (1, 2, 3, 5):  # every tracked frame reads frame 4's memory (before it too: SAM2 reads all conditioning)
        assert not torch.allclose(plain[t].mask_logits, anchored[t].mask_logits), t
    assert torch.equal(plain[0].mask_logits, anchored[0].mask_logits)  # the prompt frame is its mask either way
    bridge.train()
    torch.manual_seed(0)
    objective([conditioned])["loss"].backward()
    assert grad_norm(bridge, "memory_attention") > 0


@pytest.mark.parametrize("cond_frames", [(0, 3), (4, 2), (6,), (3, 3)])
def test_conditioning_frames_are_validated_by_name(cond_frames: tuple[int, ...]) -> None:
    clip = disk_clip(num_frames=6)
    with pytest.raises(ValueError, match=r"TrackingClip.cond_frames must be sorted distinct frames in \[0, 6\) "
                                         r"other than prompt_frame 0"):
        TrackingClip(clip.frames, clip.masks, 0, "mask", cond_frames=cond_frames)


def test_objects_of_one_clip_share_one_encoding_and_keep_their_own_losses(config: Sam2Config) -> None:
    bridge = build_sam2(config).eval()  # eval: no dropout, so separate and shared runs compare exactly
    objective = Sam2TrackingObjective(bridge)
    first = disk_clip(prompt="points", seed=3)
    other = first.masks.copy()
    other[:] = 0
    other[:, 40:56, 4:20] = 1  # a second (static) object in the same frames
    second = TrackingClip(first.frames, other, 0, "box")
    encodes = []
    encode = bridge.encode_images
    bridge.encode_images = lambda frames: encodes.append(1) or encode(frames)
    with torch.no_grad():
        shared = objective([first, second])
        assert len(encodes) == 1
        alone = [objective([clip]) for clip in (first, second)]
    for name, value in shared.items():
        assert torch.allclose(value, (alone[0][name] + alone[1][name]) / 2, atol=1e-5), name
    assert not torch.allclose(alone[0]["track_dice"], alone[1]["track_dice"])


# ---------------------------------------------------------------- training


@dataclass
class TrainingRun:
    history: np.ndarray  # (steps, 4) loss parts per step
    ious_before: list[float]
    ious_after: list[float]
    object_before: np.ndarray  # the leaving clip's object-score logits per frame
    object_after: np.ndarray


def tracked_ious(objective: Sam2TrackingObjective, clips: list[TrackingClip]) -> list[float]:
    """Mean IoU of SAM2's output masks with the targets, per clip (eval mode: as inference runs)."""
    objective.eval()
    with torch.no_grad():
        ious = []
        for clip in clips:
            targets = objective.targets(clip)
            frames = objective.track(clip, targets)
            ious.append(float(np.mean([mask_iou(f.mask_logits, targets[f.frame_idx]) for f in frames])))
    objective.train()
    return ious


def object_logits(objective: Sam2TrackingObjective, clip: TrackingClip) -> np.ndarray:
    objective.eval()
    with torch.no_grad():
        logits = np.array([f.object_score_logit.item() for f in objective.track(clip)])
    objective.train()
    return logits


STEPS = 45


@pytest.fixture(scope="module")
def trained(config: Sam2Config) -> TrainingRun:
    """``STEPS`` Adam steps (lr 1e-3, gradients clipped to norm 0.1 as SAM2.1's training config clips them)
    on a fixed pool of two 6-frame clips: one mask-prompted on frame 0, one point-prompted on frame 2 (tracked
    forward and backward) whose disk is gone from frame 4 on."""
    leaving = disk_clip(
        prompt="points", prompt_frame=2, start=(50, 40), velocity=(-5, -3), color=(40, 200, 90), absent_from=4, seed=3
    )
    clips = [disk_clip(prompt="mask"), leaving]
    bridge = build_sam2(config).train()
    objective = Sam2TrackingObjective(bridge)
    ious_before, object_before = tracked_ious(objective, clips), object_logits(objective, clips[1])
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(bridge.parameters(), lr=1e-3)
    history = []
    for _ in range(STEPS):
        optimizer.zero_grad()
        parts = objective(clips)
        parts["loss"].backward()
        torch.nn.utils.clip_grad_norm_(bridge.parameters(), 0.1)
        optimizer.step()
        history.append([parts[name].item() for name in PARTS])
    return TrainingRun(
        np.array(history), ious_before, tracked_ious(objective, clips), object_before, object_logits(objective, clips[1])
    )


def test_every_loss_part_falls(trained: TrainingRun) -> None:
    first, last = trained.history[0], trained.history[-10:].mean(axis=0)
    for name, a, b in zip(PARTS, first, last, strict=True):
        assert b < 0.5 * a, f"{name}: first {a:.4f}, last ten {b:.4f}"


def test_tracked_masks_match_the_targets_after_training(trained: TrainingRun) -> None:
    assert max(trained.ious_before) < 0.3
    assert min(trained.ious_after) > 0.8, trained.ious_after


def test_object_score_learns_where_the_object_left(trained: TrainingRun) -> None:
    present, absent = trained.object_after[:4], trained.object_after[4:]
    assert (trained.object_before[4:] > 0).all()  # the untrained tracker calls the absent frames present
    assert (absent < 0).all() and (present > 0).all(), trained.object_after
