"""Training losses: ``[FIND]`` matching (MomentSeg Eq. 5), mask BCE + Dice, answer LM cross-entropy, and the
DeSa2VA adversarial and CLUB terms. Each term is returned separately; ``LossConfig`` weighs them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LossConfig:
    """Weights of each loss term (MomentSeg / Sa2VA defaults) and the Eq. 5 positive weight.

    ``mask_object`` weighs SAM2's object-presence loss on the ``[SEG]``-prompted key frames (SAM2's own
    ``loss_class``, not in MomentSeg or Sa2VA, hence 0 by default). Inference gates every mask whose object
    score is below 0 to empty (``SAM2Base._forward_sam_heads``, ``Sam2Bridge.decode_masks``), so a decoder
    trained on ``[SEG]`` prompts without it can leave the presence head where it drifts: training from
    scratch, the head went negative for every prompt within 50 steps and labeling returned empty masks on
    every frame while the ungated training masks were not empty (configs/model/procedural.yaml sets it).
    ``mask_location`` weighs ``location_map_loss`` (only with ``mllm.location_map``).
    """

    find: float = 1.0
    find_positive_weight: float = 2.0
    mask_bce: float = 2.0
    mask_dice: float = 0.5
    mask_object: float = 0.0
    mask_location: float = 1.0
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


def location_map_loss(location_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``LocationMap``'s (B, 1, h, w) logits against (B, H, W) {0, 1} target masks: each cell's target is
    the fraction of it the object covers (area-averaged, the frame resized to the grid as SAM2 resizes it to
    its square input); BCE on those soft targets plus soft Dice (``mask_dice_loss``), as small objects cover a
    few cells of the grid and BCE alone is content to predict nothing."""
    cover = F.interpolate(targets[:, None].float(), size=location_logits.shape[-2:], mode="area")[:, 0]
    logits = location_logits[:, 0].float()
    return F.binary_cross_entropy_with_logits(logits, cover) + mask_dice_loss(logits, cover)


def object_presence_loss(object_score_logits: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """SAM2's ``loss_class``: sigmoid BCE of the (N,) object-score logits against (N,) target presence."""
    return F.binary_cross_entropy_with_logits(object_score_logits, present.to(object_score_logits.dtype))


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


@dataclass
class TrackingLossConfig:
    """SAM2's video objective: the settings of ``MultiStepMultiMasksAndIous`` (facebookresearch/sam2
    ``training/loss_fns.py``) in SAM2.1's training config (``sam2/configs/sam2.1_training/*.yaml``).

    - Weights ``weight_dict``: ``loss_mask`` (sigmoid focal) 20, ``loss_dice`` 1, ``loss_iou`` 1,
      ``loss_class`` (object score) 1.
    - Mask focal loss: the module's defaults ``focal_alpha=0.25``, ``focal_gamma=2`` (RetinaNet's values).
    - Object-score loss: ``focal_alpha_obj_score=-1`` (no class weighting) and ``focal_gamma_obj_score=0``,
      i.e. plain sigmoid cross-entropy on the decoder's object-score logit.
    - IoU prediction: ``iou_use_l1_loss: true`` (L1 instead of MSE against the actual IoU) and
      ``supervise_all_iou: true`` (the IoU loss is averaged over all candidates of a multimask output).
    - With several candidate masks, focal and dice are taken from the candidate with the lowest
      ``focal * 20 + dice * 1``; focal, dice and IoU losses are zero on frames where the object is absent
      (the target mask is empty) and the object-score loss counts on every frame.

    A negative alpha disables the class weighting, as in ``loss_fns.sigmoid_focal_loss``.
    """

    focal: float = 20.0
    dice: float = 1.0
    iou: float = 1.0
    object: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    object_focal_alpha: float = -1.0
    object_focal_gamma: float = 0.0
    iou_use_l1_loss: bool = True
    supervise_all_iou: bool = True

    def __post_init__(self) -> None:
        for name in ("focal", "dice", "iou", "object", "focal_gamma", "object_focal_gamma"):
            if getattr(self, name) < 0:
                raise ValueError(f"tracking loss {name} must be >= 0, got {getattr(self, name)}")
        for name in ("focal_alpha", "object_focal_alpha"):
            if getattr(self, name) > 1:
                raise ValueError(f"tracking loss {name} must be <= 1 (negative: no weighting), got {getattr(self, name)}")

    def total(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """``focal * track_focal + dice * track_dice + iou * track_iou + object * track_object``."""
        return (
            self.focal * parts["track_focal"]
            + self.dice * parts["track_dice"]
            + self.iou * parts["track_iou"]
            + self.object * parts["track_object"]
        )


def _focal_terms(logits: torch.Tensor, targets: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """Element-wise RetinaNet focal loss (Lin et al. 2017): ``alpha_t (1 - p_t)^gamma CE(p, y)``; ``alpha < 0``
    drops ``alpha_t`` and ``gamma = 0`` leaves the cross-entropy unmodulated."""
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    if gamma > 0:
        prob = logits.sigmoid()
        p_t = prob * targets + (1 - prob) * (1 - targets)
        loss = loss * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def _check_multimask(mask_logits: torch.Tensor, targets: torch.Tensor, present: torch.Tensor) -> None:
    if mask_logits.ndim != 4 or targets.shape != (mask_logits.shape[0], *mask_logits.shape[2:]):
        raise ValueError(
            f"mask_logits must be (N, M, H, W) and targets (N, H, W); got {tuple(mask_logits.shape)} and "
            f"{tuple(targets.shape)}"
        )
    if present.shape != (mask_logits.shape[0],):
        raise ValueError(f"present must be ({mask_logits.shape[0]},), got {tuple(present.shape)}")


def sigmoid_focal_loss(
    mask_logits: torch.Tensor,
    targets: torch.Tensor,
    present: torch.Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> torch.Tensor:
    """Per-candidate focal loss, mean over pixels (SAM2 ``sigmoid_focal_loss(loss_on_multimask=True)``), zero
    where the object is absent. mask_logits (N, M, H, W), targets (N, H, W) in {0, 1}, present (N,) bool;
    returns (N, M)."""
    _check_multimask(mask_logits, targets, present)
    expanded = targets[:, None].to(mask_logits.dtype).expand_as(mask_logits)
    per_mask = _focal_terms(mask_logits, expanded, alpha, gamma).flatten(2).mean(-1)
    return per_mask * present[:, None].to(per_mask.dtype)


def multimask_dice_loss(mask_logits: torch.Tensor, targets: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Per-candidate ``1 - (2 |P.G| + 1) / (|P| + |G| + 1)`` on sigmoid probabilities, zero where the object is
    absent. SAM2's ``dice_loss`` writes the numerator as ``|P| + |G| - |P - G|_1``, which is ``2 |P.G|`` for
    binary targets. mask_logits (N, M, H, W), targets (N, H, W), present (N,); returns (N, M)."""
    _check_multimask(mask_logits, targets, present)
    probs = mask_logits.sigmoid().flatten(2)
    flat = targets.to(probs.dtype).flatten(1)[:, None]
    dice = (2 * (probs * flat).sum(-1) + 1) / (probs.sum(-1) + flat.sum(-1) + 1)
    return (1 - dice) * present[:, None].to(dice.dtype)


def iou_prediction_loss(
    mask_logits: torch.Tensor,
    targets: torch.Tensor,
    pred_ious: torch.Tensor,
    present: torch.Tensor,
    use_l1_loss: bool = True,
) -> torch.Tensor:
    """Per-candidate error of the decoder's IoU prediction against the actual IoU of the binarised candidate
    (logits > 0) with the target (SAM2 ``iou_loss``): L1 or squared, zero where the object is absent. The
    actual IoU is a target and carries no gradient. pred_ious (N, M); returns (N, M)."""
    _check_multimask(mask_logits, targets, present)
    if pred_ious.shape != mask_logits.shape[:2]:
        raise ValueError(f"pred_ious must be {tuple(mask_logits.shape[:2])}, got {tuple(pred_ious.shape)}")
    predicted = mask_logits.detach().flatten(2) > 0
    truth = (targets > 0).flatten(1)[:, None]
    union = (predicted | truth).sum(-1).clamp(min=1)
    actual = (predicted & truth).sum(-1) / union
    actual = actual.to(pred_ious.dtype)
    if use_l1_loss:
        loss = F.l1_loss(pred_ious, actual, reduction="none")
    else:
        loss = F.mse_loss(pred_ious, actual, reduction="none")
    return loss * present[:, None].to(loss.dtype)


def object_score_loss(
    object_score_logits: torch.Tensor, present: torch.Tensor, alpha: float = -1.0, gamma: float = 0.0
) -> torch.Tensor:
    """Focal loss of SAM2's object-score logit (N, 1) or (N,) against presence (N,), on every frame, absent
    ones included (SAM2 ``loss_class``; with SAM2.1's ``alpha=-1, gamma=0`` it is sigmoid cross-entropy).
    Returns (N,)."""
    logits = object_score_logits.reshape(-1)
    if logits.shape != present.shape:
        raise ValueError(
            f"object_score_logits must be (N, 1) or (N,) for present {tuple(present.shape)}, "
            f"got {tuple(object_score_logits.shape)}"
        )
    return _focal_terms(logits, present.to(logits.dtype), alpha, gamma)


def tracking_losses(
    mask_logits: torch.Tensor,
    pred_ious: torch.Tensor,
    object_score_logits: torch.Tensor,
    targets: torch.Tensor,
    config: TrackingLossConfig,
) -> dict[str, torch.Tensor]:
    """SAM2's loss for N objects on one frame (``MultiStepMultiMasksAndIous._update_losses``): each (N,).

    mask_logits (N, M, H, W) are the decoder's M candidates, pred_ious (N, M) its IoU predictions,
    object_score_logits (N, 1), targets (N, H, W) in {0, 1}; an object is present where its target has a
    pixel. With M > 1, focal and dice come from the candidate with the lowest ``focal * config.focal + dice *
    config.dice``; the IoU loss is averaged over all candidates (``supervise_all_iou``) or taken from that
    one. Returns ``track_focal``, ``track_dice``, ``track_iou``, ``track_object``.
    """
    present = (targets > 0).flatten(1).any(-1)
    focal = sigmoid_focal_loss(mask_logits, targets, present, config.focal_alpha, config.focal_gamma)
    dice = multimask_dice_loss(mask_logits, targets, present)
    iou = iou_prediction_loss(mask_logits, targets, pred_ious, present, config.iou_use_l1_loss)
    best = (focal * config.focal + dice * config.dice).argmin(-1, keepdim=True)  # (N, 1)
    return {
        "track_focal": focal.gather(1, best)[:, 0],
        "track_dice": dice.gather(1, best)[:, 0],
        "track_iou": iou.mean(-1) if config.supervise_all_iou else iou.gather(1, best)[:, 0],
        "track_object": object_score_loss(
            object_score_logits, present, config.object_focal_alpha, config.object_focal_gamma
        ),
    }
