"""Data-dependent initialisation of the ``[SEG]`` projection (``text_hidden_fcs``) for training from scratch.

Why: an untrained MLLM gives nearly the same ``[SEG]`` state for every expression (pairwise cosine >= 0.998
on the procedural model, ``actors.model.prompt_diagnostics``), and a SAM2 decoder facing one prompt for all
expressions learns to segment every salient object and to ignore its prompt; the prompt then gets no useful
gradient either (a saddle on both sides). Measured on the procedural world (static expressions, 8 frames a
step, the MLLM frozen): with the default initialisation the prompts' spread stays 0.05 and swapping two
expressions' prompts moves SAM2's logits by 0.000 after 100 steps; with this calibration the spread starts
at 0.95 and the swap sensitivity grows (0.05 at step 100).

What (our choice; none of the four papers trains from scratch): on the states ``h`` the projection sees at
the start of training (every ``[SEG]``/``<SEG>``/``<TAK>`` state of a few batches), the first Linear becomes
the shrunk ZCA whitening ``W = U (Lambda + eps I)^(-1/2) U^T``, ``b = -W mu`` (``eps`` = ``shrinkage`` x the
mean eigenvalue, so directions the batches barely vary in are not blown up), and the second Linear is
rescaled and shifted so the prompts are zero-mean with a standard deviation of 1 per dimension on average
over those states: the scale of SAM2's own learned prompt-token embeddings (N(0, 1) rows) that the decoder
attends to.
The layout stays Sa2VA's ``Linear -> ReLU -> Linear``: only the initial values change.

With several Ray Train workers the statistics are summed over workers (``torch.distributed.all_reduce``),
so every worker starts from the same projection.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn

from actors.model.segmllm import SegModel, TrainSample


def _all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def moments(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and covariance (D, D) of (N, D) rows, summed over distributed workers first (float64)."""
    rows = rows.double()
    stats = torch.cat([torch.tensor([rows.shape[0]], dtype=torch.float64), rows.sum(0), (rows.T @ rows).flatten()])
    stats = _all_reduce(stats)
    count, width = stats[0], rows.shape[1]
    if count < 2:
        raise ValueError(f"prompt calibration needs >= 2 [SEG] states, got {int(count)}")
    mean = stats[1 : 1 + width] / count
    second = stats[1 + width :].view(width, width) / count
    return mean, (second - torch.outer(mean, mean)) * count / (count - 1)


def whitening(mean: torch.Tensor, covariance: torch.Tensor, shrinkage: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Shrunk ZCA whitening as an affine map ``x -> W x + b``: ``W = U (Lambda + eps I)^(-1/2) U^T`` with
    ``eps = shrinkage * mean(Lambda)``, ``b = -W mean``; for ``shrinkage`` -> 0, ``W x + b`` has identity
    covariance."""
    if shrinkage <= 0:
        raise ValueError(f"prompt calibration: shrinkage must be > 0, got {shrinkage}")
    eigenvalues, vectors = torch.linalg.eigh(covariance.double())
    eigenvalues = eigenvalues.clamp(min=0)
    epsilon = shrinkage * eigenvalues.mean()
    if epsilon <= 0:
        raise ValueError("prompt calibration: every [SEG] state is the same; nothing to whiten")
    weight = vectors @ torch.diag((eigenvalues + epsilon).rsqrt()) @ vectors.T
    return weight, -weight @ mean.double()


@contextmanager
def _inputs_of(module: nn.Module, into: list[torch.Tensor]) -> Iterator[None]:
    handle = module.register_forward_pre_hook(lambda _, args: into.append(args[0].detach().flatten(0, -2)))
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def seg_states(model: SegModel, samples: Sequence[TrainSample]) -> torch.Tensor:
    """Every state the ``[SEG]`` projection receives on the samples' RefVOS conversations (training path)."""
    states: list[torch.Tensor] = []
    with _inputs_of(model.mllm.seg_proj, states):
        for sample in samples:
            if sample.key_frames is not None:
                model.mllm.train_outputs(sample)
    if not states:
        raise ValueError("prompt calibration: the batches hold no RefVOS sample (no [SEG] state to calibrate on)")
    return torch.cat(states)


@torch.no_grad()
def calibrate_seg_projection(model: SegModel, samples: Sequence[TrainSample], shrinkage: float) -> None:
    """Set ``model.mllm.seg_proj`` (Linear, ReLU, Linear) as the module docstring says, from ``samples``."""
    first, activation, second = model.mllm.seg_proj
    states = seg_states(model, samples).to(first.weight.dtype)
    weight, bias = whitening(*moments(states), shrinkage)
    first.weight.copy_(weight)
    first.bias.copy_(bias)
    mean, covariance = moments(activation(first(states)))
    output_mean = second.weight.double() @ mean + second.bias.double()
    output_std = torch.einsum("ij,jk,ik->i", second.weight.double(), covariance, second.weight.double()).sqrt()
    scale = 1.0 / output_std.mean()
    second.weight.mul_(scale)
    second.bias.copy_((second.bias.double() - output_mean) * scale)
