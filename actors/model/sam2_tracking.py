"""SAM2's tracking step for a batch of objects on one frame, with what is the same for every object done once.

On a tracked frame every object reads the same image features and, without point or mask prompts, the
same prompt embeddings; objects differ only in their memory. ``SAM2Base`` nevertheless runs its whole
tracking step per object. These functions compose the package's own modules (same weights, same
operations in the same order) the way ``MemoryAttention.forward`` and ``SAM2Base._forward_sam_heads`` do,
except for three things that are identical across objects or discarded:

- ``attend_memory``: the first memory-attention layer's self-attention reads only the frame's features
  (plus ``0.1 *`` their positional encoding), so it runs once, at batch one, and is broadcast to the
  objects before their cross-attention to their own memories.
- ``decode_tracked_masks``: the prompt encoder's "no point, no mask" embeddings are computed once.
- ``decode_tracked_masks``: of SAM2's multimask output only the selected mask (highest predicted IoU) is
  gated by the object score and upsampled to the model's input size; SAM2 gates and upsamples all three
  candidates, then keeps one. Bilinear upsampling treats channels independently, so the kept mask is
  the same.

Tests (``tests/test_sam2_tracking.py``) compare both functions with the package's to within float
rounding, and the session built on them with the stock ``SAM2VideoPredictor``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from sam2.modeling.memory_attention import MemoryAttention
from sam2.modeling.sam.transformer import RoPEAttention
from sam2.modeling.sam2_base import SAM2Base

from actors.model.sam2_bridge import select_mask


@dataclass
class TrackedMasks:
    """The mask heads' output for B tracked objects: ``low_res`` (B, 1, S/4, S/4) and ``high_res``
    (B, 1, S, S) logits of the selected mask (gated by the object score), ``ious`` (B,) its predicted IoU,
    ``obj_ptr`` (B, C) the object pointer and ``object_score_logits`` (B, 1)."""

    low_res: torch.Tensor
    high_res: torch.Tensor
    ious: torch.Tensor
    obj_ptr: torch.Tensor
    object_score_logits: torch.Tensor


def attend_memory(
    attention: MemoryAttention,
    curr: torch.Tensor,
    curr_pos: torch.Tensor,
    memory: torch.Tensor,
    memory_pos: torch.Tensor,
    num_obj_ptr_tokens: int,
) -> torch.Tensor:
    """``attention(curr=[curr], curr_pos=[curr_pos], memory, memory_pos, num_obj_ptr_tokens)`` for B objects
    that share one frame: ``curr`` / ``curr_pos`` are that frame's (HW, 1, C) features and encodings,
    ``memory`` / ``memory_pos`` the objects' (N, B, C) memories. Returns (HW, B, C).
    """
    if not attention.batch_first:
        raise ValueError("attend_memory supports SAM2 memory attention with batch_first=True (every published config)")
    if curr.shape[1] != 1:
        raise ValueError(f"curr must be one frame's features, (HW, 1, C); got {tuple(curr.shape)}")
    batch = memory.shape[1]
    tokens = curr + 0.1 * curr_pos if attention.pos_enc_at_input else curr
    tokens, query_pos = tokens.transpose(0, 1), curr_pos.transpose(0, 1)  # (1, HW, C)
    memory, memory_pos = memory.transpose(0, 1), memory_pos.transpose(0, 1)  # (B, N, C)
    for i, layer in enumerate(attention.layers):
        tokens = layer._forward_sa(tokens, query_pos)
        if i == 0:
            tokens = tokens.expand(batch, -1, -1)  # the objects diverge at their memories
        rope = {"num_k_exclude_rope": num_obj_ptr_tokens} if isinstance(layer.cross_attn_image, RoPEAttention) else {}
        tokens = layer._forward_ca(tokens, memory, query_pos, memory_pos, **rope)
        hidden = layer.linear2(layer.dropout(layer.activation(layer.linear1(layer.norm3(tokens)))))
        tokens = tokens + layer.dropout3(hidden)
    return attention.norm(tokens).transpose(0, 1)


def decode_tracked_masks(
    sam: SAM2Base, conditioned: torch.Tensor, high_res_features: list[torch.Tensor] | None
) -> TrackedMasks:
    """``sam._forward_sam_heads(conditioned, high_res_features=..., multimask_output=sam._use_multimask(False,
    None))`` (a tracked frame: no point or mask prompt) for B objects' memory-conditioned (B, C, h, w)
    features."""
    batch, device = conditioned.shape[0], conditioned.device
    no_points = (torch.zeros(1, 1, 2, device=device), -torch.ones(1, 1, dtype=torch.int32, device=device))
    sparse, dense = sam.sam_prompt_encoder(points=no_points, boxes=None, masks=None)
    multimask = sam._use_multimask(is_init_cond_frame=False, point_inputs=None)
    low_res, ious, output_tokens, object_score_logits = sam.sam_mask_decoder(
        image_embeddings=conditioned,
        image_pe=sam.sam_prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse.expand(batch, -1, -1),
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
        repeat_image=False,
        high_res_features=high_res_features,
    )
    low_res, best = select_mask(low_res, ious, object_score_logits if sam.pred_obj_scores else None)
    rows = torch.arange(batch, device=device)
    token = output_tokens[rows, best] if multimask and output_tokens.shape[1] > 1 else output_tokens[:, 0]
    obj_ptr = sam.obj_ptr_proj(token)
    if sam.pred_obj_scores:
        visible = object_score_logits.sigmoid() if sam.soft_no_obj_ptr else (object_score_logits > 0).float()
        if sam.fixed_no_obj_ptr:
            obj_ptr = visible * obj_ptr
        obj_ptr = obj_ptr + (1 - visible) * sam.no_obj_ptr
    high_res = F.interpolate(low_res, size=(sam.image_size, sam.image_size), mode="bilinear", align_corners=False)
    return TrackedMasks(low_res, high_res, ious[rows, best], obj_ptr, object_score_logits)
