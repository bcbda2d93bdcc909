"""Prompt diagnostics: hand-computed spread and swap values, and on the real tiny model both are 0 exactly when
the ``[SEG]`` prompt cannot depend on the expression."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from actors.config import load_config
from actors.model.checkpoints import build_model
from actors.model.config import ModelConfig
from actors.model.prompt_diagnostics import prompt_spread, seg_prompt_diagnostics, swap_sensitivity

TINY_MODEL = Path(__file__).resolve().parents[1] / "configs" / "model" / "tiny.yaml"
EXPRESSIONS = ["the red circle", "the blue square on the left", "the triangle that moves last"]


def test_spread_and_swap_by_hand() -> None:
    assert prompt_spread(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(1.0)
    assert prompt_spread(torch.tensor([[3.0, 0.0], [1.0, 0.0]])) == pytest.approx(0.5)  # centroid 2, norms 3 and 1
    assert prompt_spread(torch.ones(4, 8)) == 0.0
    assert swap_sensitivity(torch.tensor([1.0, -1.0]), torch.tensor([1.0, 1.0])) == pytest.approx(1.0)
    assert swap_sensitivity(torch.zeros(3), torch.ones(3)) == 0.0
    with pytest.raises(ValueError, match="needs \\(E >= 2, D\\) prompts"):
        prompt_spread(torch.ones(1, 8))
    with pytest.raises(ValueError, match="logits \\(2,\\) and \\(3,\\) differ"):
        swap_sensitivity(torch.ones(2), torch.ones(3))


def test_a_prompt_that_ignores_the_expression_measures_zero() -> None:
    model = build_model(load_config(ModelConfig, TINY_MODEL)).eval()
    frames = np.random.default_rng(0).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    random_init = seg_prompt_diagnostics(model, frames, EXPRESSIONS)
    assert random_init.spread > 1e-3 and random_init.swap > 1e-4, random_init
    with torch.no_grad():
        last = model.mllm.seg_proj[-1]
        last.weight.zero_()
        last.bias.copy_(torch.randn_like(last.bias))
    constant = seg_prompt_diagnostics(model, frames, EXPRESSIONS)
    assert constant.spread < 1e-6 and constant.swap == 0.0
