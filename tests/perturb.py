"""Shared by the checkpoint tests: move a model's trainable parameters away from their initial values, so a
round trip that loses any of them shows."""

from __future__ import annotations

import torch

from actors.model.segmllm import SegModel


def perturb_trainable(model: SegModel, seed: int) -> SegModel:
    """Add seeded noise (std 0.05) to every parameter that requires grad; returns the model in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model.eval()
