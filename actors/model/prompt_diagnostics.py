"""Does the SAM2 prompt tell expressions apart, and does SAM2 listen to it?

Two measurements of a ``SegModel`` on one video's key frames and several of its expressions, both 0 for a
model whose masks cannot depend on the expression:

- ``prompt_spread``: how much the ``[SEG]`` prompts differ across expressions, the mean distance to their
  centroid over their mean norm (0: one prompt for every expression; about 1.4 for independent N(0, 1)
  prompts of width >= 64).
- ``swap_sensitivity``: how much SAM2's key-frame mask logits move when each expression's prompt is replaced
  by another expression's (mean absolute change over mean absolute logit; 0: SAM2 ignores the prompt).

Measured on the untrained procedural model, the spread is 0.014-0.06: the ``[SEG]`` position attends almost
uniformly over a few hundred visual tokens, of which the expression is a few percent, and a decoder facing
one prompt for all expressions learns to segment every salient object. Tracked by ``benches/evidence.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from actors.model.segmllm import SegModel


def prompt_spread(prompts: torch.Tensor) -> float:
    """Mean distance of the (E, D) prompts to their centroid over their mean norm; needs E >= 2."""
    if prompts.ndim != 2 or prompts.shape[0] < 2:
        raise ValueError(f"prompt_spread needs (E >= 2, D) prompts, got {tuple(prompts.shape)}")
    prompts = prompts.float()
    norm = prompts.norm(dim=-1).mean()
    if norm == 0:
        return 0.0
    return float((prompts - prompts.mean(0)).norm(dim=-1).mean() / norm)


def swap_sensitivity(own: torch.Tensor, swapped: torch.Tensor) -> float:
    """Mean |swapped - own| over mean |own| for mask logits of the same shape (0 when ``own`` is all 0)."""
    if own.shape != swapped.shape:
        raise ValueError(f"swap_sensitivity: logits {tuple(own.shape)} and {tuple(swapped.shape)} differ")
    scale = own.float().abs().mean()
    return 0.0 if scale == 0 else float((swapped.float() - own.float()).abs().mean() / scale)


@dataclass
class PromptDiagnostics:
    spread: float
    swap: float


@torch.no_grad()
def seg_prompt_diagnostics(model: SegModel, key_frames: np.ndarray, expressions: Sequence[str]) -> PromptDiagnostics:
    """``prompt_spread`` of the expressions' ``[SEG]`` prompts on ``key_frames`` (K, H, W, 3) uint8, and
    ``swap_sensitivity`` of SAM2's mask logits on those frames when expression e gets e+1's prompt (cyclic)."""
    if len(expressions) < 2:
        raise ValueError(f"seg_prompt_diagnostics needs >= 2 expressions, got {len(expressions)}")
    prompts = model.mllm.seg_prompts(key_frames, list(expressions)).prompts  # (E, D)
    features = model.sam2.encode_images(key_frames)
    frames = len(key_frames)

    def logits(batch: torch.Tensor) -> torch.Tensor:
        return torch.stack([model.sam2.decode_masks(features, p.expand(frames, -1), location_map=model.mllm.location_map).mask_logits for p in batch])

    own = logits(prompts)
    swapped = logits(torch.roll(prompts, shifts=-1, dims=0))
    return PromptDiagnostics(prompt_spread(prompts), swap_sensitivity(own, swapped))
