"""The running standardisation of the ``[SEG]`` states (``mllm.seg_norm``, actors.model.heads.RunningStandardization):
its statistics, that it keeps a collapsing spread at unit scale, that it carries no gradient, and that the
model saves it with its heads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from actors.config import ConfigError, load_config
from actors.model.checkpoints import build_model
from actors.model.config import ModelConfig
from actors.model.heads import RunningStandardization
from actors.model.segmllm import TrainSample

TINY_YAML = Path(__file__).resolve().parents[1] / "configs/model/tiny.yaml"


def _drifting(rows: int, width: int, spread: float) -> torch.Tensor:
    """States around a large common part, differing by ``spread``: what an MLLM trained from scratch gives."""
    generator = torch.Generator().manual_seed(0)
    common = 5.0 * torch.randn(width, generator=generator)
    scales = torch.linspace(0.5, 2.0, width)
    return common + spread * scales * torch.randn(rows, width, generator=generator)


def test_first_states_give_their_plain_mean_and_variance_and_eval_does_not_update() -> None:
    norm = RunningStandardization(6, momentum=0.01, shrinkage=0.1).train()
    states = _drifting(40, 6, 1.0)  # fewer than 1 / momentum: every state weighs the same
    norm(states[:25])
    norm(states[25:])
    assert int(norm.count) == 40
    assert torch.allclose(norm.mean, states.mean(0), atol=1e-5)
    assert torch.allclose(norm.var, states.var(0, unbiased=False), rtol=1e-4)
    norm.eval()
    before = {k: v.clone() for k, v in norm.state_dict().items()}
    out = norm(states)
    assert all(torch.equal(before[k], v) for k, v in norm.state_dict().items())
    expected = (states - states.mean(0)) / torch.sqrt(norm.var + 0.1 * norm.var.mean())
    assert torch.allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("spread", [1.0, 1e-3])
def test_a_collapsing_spread_comes_out_at_unit_scale(spread: float) -> None:
    """However small the differences between states, after standardisation they are of order 1 per dimension
    (1 / sqrt(1 + shrinkage x mean variance / variance)): the decoder keeps seeing prompts that differ."""
    norm = RunningStandardization(8, momentum=0.01, shrinkage=0.1).train()
    states = _drifting(3000, 8, spread)
    for chunk in states.split(4):
        norm(chunk)
    out = norm.eval()(states[-500:])
    assert out.mean(0).abs().max() < 0.3
    stds = out.std(0)
    assert stds.min() > 0.5 and stds.max() < 1.1, stds  # raw stds: spread x (0.5 .. 2.0)


def test_statistics_carry_no_gradient() -> None:
    norm = RunningStandardization(5, momentum=0.5, shrinkage=0.1).train()
    norm(_drifting(10, 5, 1.0))
    states = _drifting(3, 5, 1.0).requires_grad_(True)
    norm(states).sum().backward()
    scale = (norm.var + 0.1 * norm.var.mean()).rsqrt()
    assert torch.allclose(states.grad, scale.expand(3, 5), atol=1e-6)


def test_the_model_standardises_seg_states_and_saves_the_statistics_with_its_heads() -> None:
    config = load_config(ModelConfig, TINY_YAML, ["mllm.seg_norm.enabled=true"])
    model = build_model(config)
    assert "seg_norm" not in build_model(load_config(ModelConfig, TINY_YAML)).mllm.heads()
    heads = model.mllm.heads().state_dict()
    assert {"seg_norm.mean", "seg_norm.var", "seg_norm.count"} <= set(heads)
    frames = np.random.default_rng(3).integers(0, 255, (2, 112, 112, 3), dtype=np.uint8)
    lowres = np.random.default_rng(4).integers(0, 255, (4, 56, 56, 3), dtype=np.uint8)
    samples = [TrainSample(e, lowres, key_frames=frames, masks=torch.zeros(2, 112, 112))
               for e in ("the red circle", "the blue square", "the smallest shape")]
    model.train()
    with torch.no_grad():
        for sample in samples:
            model.mllm.train_outputs(sample)
    assert int(model.mllm.seg_norm.count) == 3  # one [SEG] state per RefVOS turn, in training mode
    model.eval()
    seen: dict[str, torch.Tensor] = {}
    hooks = [model.mllm.seg_norm.register_forward_hook(lambda _, args, out: seen.update(raw=args[0], norm=out)),
             model.mllm.seg_proj.register_forward_pre_hook(lambda _, args: seen.update(projected=args[0]))]
    with torch.no_grad():
        model.mllm.seg_prompts(frames, [s.expression for s in samples])
    for hook in hooks:
        hook.remove()
    assert int(model.mllm.seg_norm.count) == 3  # inference reads the statistics, never updates them
    # the projection gets the [SEG] states standardised by the saved statistics
    norm = model.mllm.seg_norm
    expected = (seen["raw"] - norm.mean) * (norm.var + norm.shrinkage * norm.var.mean()).rsqrt()
    assert seen["raw"].shape == (3, model.mllm.hidden_size)
    assert torch.equal(seen["projected"], seen["norm"]) and torch.allclose(seen["norm"], expected, atol=1e-5)
    with pytest.raises(ConfigError, match="mllm.seg_norm needs 0 < momentum <= 1"):
        load_config(ModelConfig, TINY_YAML, ["mllm.seg_norm.enabled=true", "mllm.seg_norm.momentum=0"])
