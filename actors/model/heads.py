"""Projection heads on the MLLM hidden states: ``[SEG]`` -> SAM2 prompt, ``[FIND]`` -> frame relevance,
VRS-HQ temporal dynamic aggregation, and the DeSa2VA decoupler (text/visual prompts, GRL discriminators, CLUB).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

if TYPE_CHECKING:
    from collections.abc import Sequence

    from actors.model.config import LocationMapConfig


def seg_projection(hidden_size: int, prompt_dim: int) -> nn.Sequential:
    """``[SEG]`` projection Linear(H, H) -> ReLU -> Linear(H, prompt_dim), laid out as Sa2VA's ``text_hidden_fcs``
    (parameters ``0.*`` and ``2.*``) so Sa2VA weights load key for key."""
    return nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.ReLU(), nn.Linear(hidden_size, prompt_dim))


class RunningStandardization(nn.Module):
    """Per-dimension standardisation of the ``[SEG]`` states before the projection, by running statistics
    (``mllm.seg_norm``; our choice for training from scratch, none of the four papers has it).

    Why: the ``[SEG]`` states of an MLLM initialised at random differ between expressions by a few percent of
    their norm (relative spread 0.04-0.08 on the procedural model, ``actors.model.prompt_diagnostics``); the
    rest is a part common to all of them. Training the backbone moves that common part by more than the
    differences (one full-rate AdamW step took the calibrated prompts' spread from 0.92 to 0.03), so a
    projection fitted once (``prompt_calibration``) soon sees one state for every expression, and a SAM2
    decoder facing one prompt learns to ignore it. Subtracting a running mean follows the common part as it
    moves, and dividing by the running deviation keeps the differences at unit scale. Measured with
    calibration, 100 warmup steps and the backbone at a tenth of the rate (``optim.backbone_lr_scale``), static
    expressions of the procedural world: the standardised states' spread stayed 0.23-0.35 over the first 80
    steps while the raw states' grew from 0.08 to 0.12 (the backbone starts telling expressions apart); with
    calibration and warmup alone (full rate, no standardisation) the prompts' spread was 0.04-0.07. Not
    enough on its own: over the procedural recipe's 900 joint steps the spread still fell to 0.057 and SAM2's
    decoder never came to follow the prompts (held-out static IoU 0.33, every salient object).

    What: ``y = (x - m) / sqrt(v + shrinkage * mean(v))`` per dimension, ``m`` and ``v`` exponential moving
    averages of the states seen in training mode (each state one update, factor ``max(momentum, 1 / n)``
    for the n-th, so the first states give their plain average), frozen in eval mode. Statistics never get
    gradient (as batch normalisation's running estimates), so the network cannot shrink differences through
    them; ``shrinkage`` keeps directions that barely vary from being blown up (as ``prompt_calibration``).
    Until two states are seen the deviation is taken as 1. With DDP the buffers are broadcast from rank 0 at
    every forward, so all workers use rank 0's statistics.
    """

    def __init__(self, dim: int, momentum: float, shrinkage: float) -> None:
        super().__init__()
        if not 0 < momentum <= 1 or shrinkage <= 0:
            raise ValueError(f"running standardisation needs 0 < momentum <= 1 and shrinkage > 0, got "
                             f"{momentum} and {shrinkage}")
        self.momentum, self.shrinkage = momentum, shrinkage
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, states: torch.Tensor) -> None:
        """Fold (..., dim) ``states`` into the running statistics, one state at a time."""
        for state in states.reshape(-1, self.mean.shape[0]).to(self.mean.dtype):
            self.count += 1
            factor = max(self.momentum, 1.0 / float(self.count))
            if int(self.count) == 1:
                self.mean.copy_(state)
                self.var.zero_()
                continue
            delta = state - self.mean
            self.mean.add_(factor * delta)
            self.var.mul_(1 - factor).add_(factor * (1 - factor) * delta * delta)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.update(states.detach())
        var = self.var if int(self.count) >= 2 else torch.ones_like(self.var)
        scale = (var + self.shrinkage * var.mean()).clamp_min(torch.finfo(var.dtype).tiny).rsqrt()
        return ((states - self.mean) * scale).to(states.dtype)


class TextPrompt(nn.Module):
    """The expression's own words as a part of the SAM2 prompt (``mllm.text_prompt``; our addition for models
    trained from scratch, none of the four papers has it): ``Linear(LayerNorm(mean token embedding))``, added
    to the ``[SEG]`` projection.

    Why: an MLLM initialised at random gives ``[SEG]`` states that differ between expressions by a few percent
    of their norm, and joint training drove even the standardised prompts together (``RunningStandardization``):
    on the procedural model the prompts' spread fell to 0.049 by step 300 of the joint stage, with the location
    map on, and SAM2's masks did not change when the prompts of two expressions were swapped (0.0002). The mean
    of the expression's input embeddings differs between "the red circle" and "the blue square" from the first
    step, so the location map and the decoder learn to read a prompt while the backbone learns to tell videos
    apart; the ``[SEG]`` part still carries what the words alone cannot say (which shape moves, stops, is
    nearest). The layer normalisation puts the embedding mean, whose scale is the embedding initialisation's,
    on the scale of the standardised ``[SEG]`` states. DeSa2VA's text prompt is a projection of ``[SEG]``
    trained to hold the text's content; this one reads the text directly.
    """

    def __init__(self, hidden_size: int, prompt_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False)
        self.proj = nn.Linear(hidden_size, prompt_dim)

    def forward(self, expression_embeddings: torch.Tensor) -> torch.Tensor:
        """(E, H) mean token embeddings -> (E, prompt_dim)."""
        return self.proj(self.norm(expression_embeddings))


class FindHead(nn.Module):
    """MomentSeg Eq. 5 similarity: one MLP maps the ``[FIND]`` states and the temporal-token states to a shared
    space; temporal tokens are projected *then* average-pooled per temporal index (the paper's order:
    "projected into a feature space using an MLP layer and subsequently average-pooled"); the relevance of
    temporal index j for [FIND] i is cos(T^f_i, T^v_j) / tau.
    """

    def __init__(self, hidden_size: int, find_dim: int, tau: float) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, hidden_size), nn.ReLU(), nn.Linear(hidden_size, find_dim)
        )
        self.tau = tau

    def forward(self, find_states: torch.Tensor, frame_token_states: torch.Tensor) -> torch.Tensor:
        """find_states (E, H), frame_token_states (L_t, n, H) with n tokens per temporal index -> (E, L_t)."""
        find = F.normalize(self.mlp(find_states), dim=-1)  # (E, C)
        frames = F.normalize(self.mlp(frame_token_states).mean(dim=1), dim=-1)  # (L_t, C)
        return find @ frames.T / self.tau


def interpolate_to_frames(
    temporal_scores: torch.Tensor, num_frames: int, temporal_patch_size: int
) -> torch.Tensor:
    """(E, L_t) scores over temporal tokens -> (E, num_frames) scores over the input frames.

    Each temporal token covers ``temporal_patch_size`` consecutive input frames (the Qwen2.5-VL video
    processor pads the last group by repeating the last frame). Scores are linearly interpolated with
    ``align_corners=False`` so a token's score sits at the centre of its frames (MomentSeg: "bilinear
    interpolation ... to ensure alignment with the original input length"), then the padded frames are dropped.
    """
    padded = temporal_scores.shape[-1] * temporal_patch_size
    if padded < num_frames:
        raise ValueError(f"{temporal_scores.shape[-1]} temporal tokens cannot cover {num_frames} frames")
    stretched = F.interpolate(temporal_scores[:, None, :], size=padded, mode="linear", align_corners=False)
    return stretched[:, 0, :num_frames]


def temporal_dynamic_aggregation(
    frame_tokens: torch.Tensor, tak: torch.Tensor, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """VRS-HQ Eq. 2: fused = <TAK> + alpha * sum_i softmax_i(cos(<SEG>_i, <TAK>)) * <SEG>_i.

    frame_tokens (E, N, D), tak (E, D) -> fused (E, D) and the per-frame similarities cos(<SEG>_i, <TAK>)
    (E, N) that token-driven keyframe selection (TKS) reuses. Applied to the projected prompts (the space
    SAM2 reads), a choice the paper leaves open.
    """
    similarity = F.cosine_similarity(frame_tokens, tak[:, None, :], dim=-1)  # (E, N)
    weights = similarity.softmax(dim=-1)
    fused = tak + alpha * (weights[..., None] * frame_tokens).sum(dim=1)
    return fused, similarity


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, scale: float) -> torch.Tensor:  # noqa: ANN001
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN001
        return -ctx.scale * grad, None


def gradient_reversal(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Identity forward, gradient multiplied by ``-scale`` backward (Ganin & Lempitsky 2015)."""
    return _GradientReversal.apply(x, scale)


class CLUB(nn.Module):
    """CLUB mutual-information upper bound (Cheng et al. 2020) between x (B, D) and y (B, D).

    q(y|x) = N(mu(x), exp(logvar(x))). ``upper_bound`` = E_p(x,y)[log q(y|x)] - E_p(x)p(y)[log q(y|x)]
    over all pairs of the batch, evaluated with q's parameters detached (the model is pushed to lower it,
    q is not); ``likelihood_loss`` = -E[log q(y|x)] on detached x, y trains q alone. A batch of one gives 0.
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.mu = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        self.logvar = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim), nn.Tanh())

    def _gaussian(
        self, x: torch.Tensor, params: dict[str, torch.Tensor] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if params is None:
            return self.mu(x), self.logvar(x)
        mu = functional_call(self.mu, {k[3:]: v for k, v in params.items() if k.startswith("mu.")}, (x,))
        logvar = functional_call(
            self.logvar, {k[7:]: v for k, v in params.items() if k.startswith("logvar.")}, (x,)
        )
        return mu, logvar

    def upper_bound(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        frozen = {name: p.detach() for name, p in self.named_parameters()}
        mu, logvar = self._gaussian(x, frozen)  # (B, D)
        positive = -((mu - y) ** 2) / logvar.exp()  # (B, D)
        negative = -((mu[:, None, :] - y[None, :, :]) ** 2).mean(dim=1) / logvar.exp()  # (B, D)
        return (positive.sum(-1) - negative.sum(-1)).mean() / 2.0

    def likelihood_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        mu, logvar = self._gaussian(x.detach(), None)
        return (((mu - y.detach()) ** 2) / logvar.exp() + logvar).sum(-1).mean() / 2.0


class Decoupler(nn.Module):
    """DeSa2VA 3.2: two linear projections of the ``[SEG]`` hidden state into a text prompt and a visual prompt.

    Adversaries (behind a gradient-reversal layer) try to recover the *other* modality from each prompt:
    ``visual_adversary`` predicts the pooled key-frame token states from the text prompt and
    ``text_adversary`` predicts the pooled expression embedding from the visual prompt. The adversaries
    minimise their error; through the reversal the projections maximise it, which strips visual content
    from the text prompt and textual content from the visual prompt. (The paper's summary gives no exact
    discriminator targets; this regression form is our choice and works with any batch size.) ``club``
    bounds the mutual information between the two prompts.
    """

    def __init__(self, hidden_size: int, prompt_dim: int, grl_scale: float, club_hidden: int) -> None:
        super().__init__()
        self.text_proj = nn.Linear(hidden_size, prompt_dim)
        self.visual_proj = nn.Linear(hidden_size, prompt_dim)
        self.text_adversary = nn.Sequential(
            nn.Linear(prompt_dim, hidden_size), nn.ReLU(), nn.Linear(hidden_size, hidden_size)
        )
        self.visual_adversary = nn.Sequential(
            nn.Linear(prompt_dim, hidden_size), nn.ReLU(), nn.Linear(hidden_size, hidden_size)
        )
        self.club = CLUB(prompt_dim, club_hidden)
        self.grl_scale = grl_scale

    def forward(self, seg_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """seg_states (E, H) -> text prompts (E, D), visual prompts (E, D)."""
        return self.text_proj(seg_states), self.visual_proj(seg_states)

    def adversary_predictions(
        self, text_prompts: torch.Tensor, visual_prompts: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(text recovered from the visual prompt, visual recovered from the text prompt), both (E, H)."""
        text_from_visual = self.text_adversary(gradient_reversal(visual_prompts, self.grl_scale))
        visual_from_text = self.visual_adversary(gradient_reversal(text_prompts, self.grl_scale))
        return text_from_visual, visual_from_text


LOCATION_MAP_LEVELS = (0, 1, 2)  # grids of stride 4, 8 and 16 (SAM2's embedding)


class LocationMap(nn.Module):
    """A dense SAM2 prompt grounded by the ``[SEG]`` prompt: where in the frame the referred object is
    (``mllm.location_map``; our addition for models trained from scratch, none of the four papers has it).

    Why: SAM2's mask decoder reads a language prompt only through its two-way transformer, whose
    token-to-image attention is 8 heads of ``prompt_dim / 16`` dimensions (4 on the procedural model's 64).
    Trained from scratch it learnt to segment every salient object and ignore the prompt (held-out static
    IoU 0.33, the all-objects mask's 0.39); even prompts given the right answer (learned colour + shape
    embeddings, no MLLM) reached only 0.44-0.55 after 1,000 steps of 8. This head scores the frame against
    the prompt directly and hands SAM2 the score map as its dense (mask) prompt, the input DeSa2VA's mask
    re-prompting uses, so the decoder refines a located object instead of having to find it.

    What: every level of SAM2's feature pyramid (one, the stride-16 embedding, when the model does not use
    high-resolution features) resized (bilinear) to the grid of stride 4 * 2^``level`` and
    concatenated, with ``pixels`` also the normalised input frame space-to-depth to that grid (``pixel_unshuffle``:
    the 3 x r x r pixels of each cell as channels, r = the level's stride 4 * 2^level), a small convolutional
    key network (one 3x3 convolution and GELU per entry of ``dilations``, with that dilation, then 1x1 to
    ``prompt_dim``), then per grid cell
    ``<key(x, y), p> / sqrt(prompt_dim) + b`` for the prompt ``p`` (the mean of its tokens when there are
    several). Returns (B, 1, h, w) logits; ``losses.mask_location`` trains them towards the target's area
    fraction per cell (``location_map_loss``).

    With ``residual`` the map is also added to SAM2's low-resolution mask logits (``Sam2Bridge.decode_masks``).
    Why: from scratch the decoder did not learn to read the dense prompt. After the procedural recipe's static
    stage the map's top cell was on the target for 89% of held-out static key frames, yet the decoder's masks
    were the same with the map, with the ground-truth mask (+-10 logits) or with no dense prompt (IoU 0.31 each)
    and 300 more steps of its own left it there (0.32); with the map added to its logits, the same decoder gave
    IoU 0.46 at once and 0.51-0.53 after 200-300 steps.

    Why pixels: SAM2's features from its tracking stage carry colour weakly. Probed with oracle prompts (learned
    colour and shape embeddings) on 300 procedural training videos at stride 4, the map's held-out IoU after
    800 steps of 8 frames was 0.62 from the pixels alone against 0.57 from the features (0.42 with 48 videos).
    """

    def __init__(self, feature_channels: list[int], prompt_dim: int, hidden: int, level: int,
                 pixels: bool = False, residual: bool = False, dilations: Sequence[int] = (1, 1)) -> None:
        super().__init__()
        self.residual = residual
        if level not in LOCATION_MAP_LEVELS:
            raise ValueError(f"mllm.location_map.level must be 0, 1 or 2 (a grid of stride 4, 8 or 16), got {level}")
        self.level = level
        self.pixel_stride = 4 * 2**level if pixels else 0
        widths = [sum(feature_channels) + 3 * self.pixel_stride**2] + [hidden] * (len(dilations) - 1)
        layers: list[nn.Module] = []
        for width, dilation in zip(widths, dilations, strict=True):
            layers += [nn.Conv2d(width, hidden, 3, padding=dilation, dilation=dilation), nn.GELU()]
        self.key = nn.Sequential(*layers, nn.Conv2d(hidden, prompt_dim, 1))
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, feature_maps: list[torch.Tensor], prompts: torch.Tensor,
                images: torch.Tensor | None = None) -> torch.Tensor:
        """feature_maps: SAM2's levels as (B, C_i, H_i, W_i); prompts (B, D) or (B, N, D); images (B, 3, S, S)
        SAM2's normalised input (read with ``pixels``) -> (B, 1, h, w)."""
        # the last level is SAM2's stride-16 embedding, whatever finer levels the model keeps
        scale = 2 ** (len(LOCATION_MAP_LEVELS) - 1 - self.level)
        size = (feature_maps[-1].shape[-2] * scale, feature_maps[-1].shape[-1] * scale)
        levels = [m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False)
                  for m in feature_maps]
        if self.pixel_stride:
            if images is None or tuple(images.shape[-2:]) != (size[0] * self.pixel_stride, size[1] * self.pixel_stride):
                raise ValueError(f"mllm.location_map.pixels needs SAM2's input images of {size[0] * self.pixel_stride} "
                                 f"px for its {tuple(size)} grid, got "
                                 f"{None if images is None else tuple(images.shape)}")
            levels.append(F.pixel_unshuffle(images.to(levels[0].dtype), self.pixel_stride))
        stacked = torch.cat(levels, dim=1)
        keys = self.key(stacked.to(self.bias.dtype))  # (B, D, h, w)
        query = prompts.mean(dim=1) if prompts.ndim == 3 else prompts
        scores = torch.einsum("bdhw,bd->bhw", keys, query.to(keys.dtype)) / keys.shape[1] ** 0.5
        return (scores + self.bias)[:, None].float()


LOCATION_MAP_SEED = 17


def build_location_map(
    config: LocationMapConfig, feature_channels: list[int], prompt_dim: int, dtype: torch.dtype
) -> LocationMap | None:
    """The ``mllm.location_map`` head (``None`` when off), initialised under its own seed: the MLLM worker (whose
    heads hold it) and the propagator (which decodes with it) build the same head from the same config."""
    if not config.enabled:
        return None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(LOCATION_MAP_SEED)
        return LocationMap(feature_channels, prompt_dim, config.hidden, config.level, config.pixels,
                           config.residual, config.dilations).to(dtype)
