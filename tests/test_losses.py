"""Loss terms and head formulas against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from actors.model.heads import CLUB, gradient_reversal, interpolate_to_frames, temporal_dynamic_aggregation
from actors.model.losses import (
    LossConfig,
    find_matching_loss,
    mask_bce_loss,
    mask_dice_loss,
    weighted_total,
)


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_find_loss_is_eq5_mean_over_valid_pairs():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    valid = torch.tensor([[True, True, False], [True, True, True]])
    expected = 0.0
    for i in range(2):
        for j in range(3):
            if valid[i, j]:
                x, y = logits[i, j].item(), labels[i, j].item()
                expected += -2.0 * y * _log_sigmoid(x) - (1 - y) * _log_sigmoid(-x)
    expected /= 5
    assert find_matching_loss(logits, labels, valid, 2.0).item() == pytest.approx(expected, rel=1e-6)
    # Invalid pairs do not count, whatever their logits.
    changed = logits.clone()
    changed[0, 2] = -50.0
    assert find_matching_loss(changed, labels, valid, 2.0).item() == pytest.approx(expected, rel=1e-6)


def test_find_loss_positive_weight_and_empty_omega():
    logits, labels = torch.tensor([[0.0]]), torch.tensor([[1.0]])
    valid = torch.ones(1, 1, dtype=torch.bool)
    assert find_matching_loss(logits, labels, valid, 2.0).item() == pytest.approx(2 * math.log(2))
    assert find_matching_loss(logits, labels, valid, 1.0).item() == pytest.approx(math.log(2))
    assert find_matching_loss(logits, labels, ~valid).item() == 0.0
    with pytest.raises(ValueError, match="shapes"):
        find_matching_loss(logits, labels[:, :0], valid)


def test_mask_losses_values():
    target = torch.zeros(1, 4, 4)
    target[0, :2] = 1
    perfect = (target * 2 - 1) * 100.0
    assert mask_bce_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    assert mask_dice_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    zeros = torch.zeros(1, 4, 4)  # p = 0.5 everywhere
    assert mask_bce_loss(zeros, target).item() == pytest.approx(math.log(2))
    assert mask_dice_loss(zeros, target).item() == pytest.approx(1 - (2 * 4 + 1) / (8 + 8 + 1))


def test_weighted_total_uses_config_weights():
    parts = {"mask_bce": torch.tensor(1.0), "mask_dice": torch.tensor(2.0), "find": torch.tensor(3.0)}
    assert weighted_total(parts, LossConfig()).item() == pytest.approx(2.0 + 1.0 + 3.0)
    with pytest.raises(ValueError, match="losses.lm"):
        LossConfig(lm=-1.0)


def test_interpolation_centres_each_temporal_token_on_its_frames():
    scores = torch.tensor([[0.0, 4.0, 8.0]])
    out = interpolate_to_frames(scores, 5, temporal_patch_size=2)  # 3 tokens cover 6 frames, last one padded
    assert out.shape == (1, 5)
    assert out[0].tolist() == pytest.approx([0.0, 1.0, 3.0, 5.0, 7.0])
    with pytest.raises(ValueError, match="cannot cover"):
        interpolate_to_frames(scores, 7, temporal_patch_size=2)


def test_tda_matches_vrs_hq_eq2():
    frames = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    tak = torch.tensor([[1.0, 0.0]])
    fused, similarity = temporal_dynamic_aggregation(frames, tak, alpha=0.1)
    weights = torch.softmax(torch.tensor([1.0, 0.0]), 0)
    assert similarity[0].tolist() == pytest.approx([1.0, 0.0])
    assert fused[0].tolist() == pytest.approx([1.0 + 0.1 * weights[0].item(), 0.1 * weights[1].item()])


def test_gradient_reversal_flips_gradient():
    x = torch.ones(3, requires_grad=True)
    (gradient_reversal(x, 0.5) * 2).sum().backward()
    assert x.grad.tolist() == [-1.0, -1.0, -1.0]


def test_club_bound_and_likelihood_train_different_parameters():
    torch.manual_seed(0)
    club = CLUB(4, 8)
    x = torch.randn(6, 4, requires_grad=True)
    y = (x * 2).detach().requires_grad_(True)
    club.upper_bound(x, y).backward()
    assert all(p.grad is None for p in club.parameters())
    assert x.grad.abs().sum() > 0
    club.likelihood_loss(x, y).backward()
    assert all(p.grad is not None for p in club.parameters())
    assert club.upper_bound(x[:1], y[:1]).item() == pytest.approx(0.0, abs=1e-6)
