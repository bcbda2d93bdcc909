"""Training losses: ``[FIND]`` matching (MomentSeg Eq. 5), mask BCE + Dice, answer LM cross-entropy, and the
DeSa2VA adversarial and CLUB terms. Each term is returned separately; ``LossConfig`` weighs them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LossConfig:
    """Weights of each loss term (MomentSeg / Sa2VA defaults) and the Eq. 5 positive weight."""

    find: float = 1.0
    find_positive_weight: float = 2.0
    mask_bce: float = 2.0
    mask_dice: float = 0.5
    lm: float = 1.0
    adversarial: float = 0.1
    club: float = 0.1
    club_likelihood: float = 0.1

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value < 0:
                raise ValueError(f"losses.{name} must be >= 0, got {value}")


def find_matching_loss(
    logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, positive_weight: float = 2.0
) -> torch.Tensor:
    """MomentSeg Eq. 5: mean over valid (FIND i, frame j) pairs of
    ``-lambda_p * y_ij * log sigmoid(l_ij) - (1 - y_ij) * log(1 - sigmoid(l_ij))``.

    logits (N_f, L) are cos / tau; labels (N_f, L) in {0, 1}; valid (N_f, L) bool marks Omega.
    Returns 0 (still attached to the graph) when Omega is empty.
    """
    if logits.shape != labels.shape or logits.shape != valid.shape:
        raise ValueError(
            f"find loss shapes differ: logits {tuple(logits.shape)}, labels {tuple(labels.shape)}, "
            f"valid {tuple(valid.shape)}"
        )
    per_pair = F.binary_cross_entropy_with_logits(
        logits, labels.to(logits.dtype), pos_weight=logits.new_tensor(positive_weight), reduction="none"
    )
    valid = valid.to(torch.bool)
    return (per_pair * valid).sum() / valid.sum().clamp(min=1)


def mask_bce_loss(mask_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-pixel sigmoid BCE, mean over masks and pixels. mask_logits, targets (N, H, W)."""
    return F.binary_cross_entropy_with_logits(mask_logits, targets.to(mask_logits.dtype))


def mask_dice_loss(mask_logits: torch.Tensor, targets: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - (2 |P.G| + s) / (|P| + |G| + s) per mask on sigmoid probabilities, mean over masks. (N, H, W)."""
    probs = mask_logits.sigmoid().flatten(1)
    targets = targets.to(probs.dtype).flatten(1)
    dice = (2 * (probs * targets).sum(-1) + smooth) / (probs.sum(-1) + targets.sum(-1) + smooth)
    return (1 - dice).mean()


def answer_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy on the answer: logits (N, V) at positions whose next token is labels (N,)."""
    return F.cross_entropy(logits.float(), labels)


def adversarial_loss(predictions: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """1 - cosine(adversary prediction, detached reference), mean over rows (DeSa2VA discriminators)."""
    return (1 - F.cosine_similarity(predictions, references.detach(), dim=-1)).mean()


def weighted_total(parts: dict[str, torch.Tensor], config: LossConfig) -> torch.Tensor:
    """Sum of ``parts`` each multiplied by the config weight of the same name (``find``, ``mask_bce``, ...)."""
    total = None
    for name, value in parts.items():
        term = getattr(config, name) * value
        total = term if total is None else total + term
    if total is None:
        raise ValueError("no loss terms to combine")
    return total
