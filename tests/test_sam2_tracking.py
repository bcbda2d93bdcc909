"""``actors/model/sam2_tracking.py`` against the package's own ``MemoryAttention`` and ``_forward_sam_heads``
on the tiny SAM2.1 (real modules, real image features)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from actors.config import load_config
from actors.model.config import ModelConfig
from actors.model.sam2_bridge import ImageFeatures, Sam2Bridge, build_sam2
from actors.model.sam2_tracking import attend_memory, decode_tracked_masks

TINY_YAML = Path(__file__).resolve().parents[1] / "configs" / "model" / "tiny.yaml"
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def bridge() -> Sam2Bridge:
    return build_sam2(load_config(ModelConfig, TINY_YAML).sam2).eval()


@pytest.fixture(scope="module")
def features(bridge: Sam2Bridge) -> ImageFeatures:
    rng = np.random.default_rng(0)
    frame = (rng.random((1, 96, 128, 3)) * 255).astype(np.uint8)
    with torch.inference_mode():
        return bridge.encode_images(frame)


@pytest.mark.parametrize("memory_frames, pointer_tokens", [(1, 1), (3, 4), (7, 16)])
def test_attend_memory_equals_memory_attention(bridge: Sam2Bridge, features: ImageFeatures, memory_frames: int,
                                               pointer_tokens: int) -> None:
    torch.manual_seed(memory_frames)
    curr, curr_pos = features.vision_feats[-1], features.vision_pos[-1]  # (HW, 1, C)
    tokens, batch = curr.shape[0] * memory_frames + pointer_tokens, 5
    memory = torch.randn(tokens, batch, bridge.sam.mem_dim)
    memory_pos = torch.randn(tokens, batch, bridge.sam.mem_dim)
    attention = bridge.sam.memory_attention
    with torch.inference_mode():
        expected = attention(curr=[curr.expand(-1, batch, -1)], curr_pos=[curr_pos.expand(-1, batch, -1)],
                             memory=memory, memory_pos=memory_pos, num_obj_ptr_tokens=pointer_tokens)
        ours = attend_memory(attention, curr, curr_pos, memory, memory_pos, pointer_tokens)
    assert ours.shape == expected.shape == (curr.shape[0], batch, curr.shape[2])
    torch.testing.assert_close(ours, expected, atol=2e-6, rtol=0)
    # each object attended to its own memory: swapping two memories swaps the outputs
    with torch.inference_mode():
        swapped = attend_memory(attention, curr, curr_pos, memory[:, [1, 0, 2, 3, 4]], memory_pos[:, [1, 0, 2, 3, 4]],
                                pointer_tokens)
    torch.testing.assert_close(swapped[:, [1, 0]], ours[:, :2], atol=2e-6, rtol=0)
    assert (ours[:, 0] - ours[:, 1]).abs().max() > 1e-3


def test_attend_memory_names_a_batched_frame(bridge: Sam2Bridge, features: ImageFeatures) -> None:
    curr = features.vision_feats[-1].expand(-1, 2, -1)
    with pytest.raises(ValueError, match="one frame's features"):
        attend_memory(bridge.sam.memory_attention, curr, curr, torch.zeros(64, 2, 64), torch.zeros(64, 2, 64), 0)


def conditioned_features(features: ImageFeatures, batch: int) -> torch.Tensor:
    """Per-object stand-ins for memory-conditioned features: the frame's features, scaled and shifted."""
    height, width = features.feat_sizes[-1]
    pix = features.vision_feats[-1].permute(1, 2, 0).reshape(1, -1, height, width)
    torch.manual_seed(1)
    return torch.cat([pix * (0.5 + 0.4 * k) + torch.randn_like(pix) * k for k in range(batch)])


@pytest.mark.parametrize("multimask_for_tracking", [True, False])
def test_decode_tracked_masks_equals_forward_sam_heads(bridge: Sam2Bridge, features: ImageFeatures,
                                                       multimask_for_tracking: bool) -> None:
    sam = bridge.sam
    conditioned = conditioned_features(features, 6)
    high_res = features.high_res_maps()
    saved, sam.multimask_output_for_tracking = sam.multimask_output_for_tracking, multimask_for_tracking
    try:
        assert sam._use_multimask(False, None) is multimask_for_tracking
        with torch.inference_mode():
            _, _, ious, low_res, high_res_masks, obj_ptr, scores = sam._forward_sam_heads(
                backbone_features=conditioned,
                high_res_features=[x.expand(6, -1, -1, -1) for x in high_res],
                multimask_output=multimask_for_tracking,
            )
            ours = decode_tracked_masks(sam, conditioned, high_res)
    finally:
        sam.multimask_output_for_tracking = saved
    assert ious.shape[1] == (3 if multimask_for_tracking else 1)
    # both branches of the object-score gate are exercised
    assert (scores > 0).any() and (scores <= 0).any(), scores.flatten()
    torch.testing.assert_close(ours.low_res, low_res, atol=0, rtol=0)
    torch.testing.assert_close(ours.high_res, high_res_masks, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.ious, ious.max(dim=-1).values, atol=0, rtol=0)
    torch.testing.assert_close(ours.obj_ptr, obj_ptr, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.object_score_logits, scores, atol=0, rtol=0)
