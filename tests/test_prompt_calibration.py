"""The data-dependent [SEG] projection initialisation (actors.model.prompt_calibration) and the ``heads``
training mode it is used with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from actors.config import ConfigError, load_config
from actors.model.checkpoints import build_model
from actors.model.config import ModelConfig
from actors.model.prompt_calibration import calibrate_seg_projection, moments, seg_states, whitening
from actors.model.prompt_diagnostics import prompt_spread
from actors.model.segmllm import SegModel, TrainSample
from pipelines.train import trained_parts
from pipelines.train_config import load_train_config

ROOT = Path(__file__).resolve().parents[1]
TINY_YAML = ROOT / "configs/model/tiny.yaml"


def _correlated(rows: int, width: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    mixing = torch.randn(width, width, generator=generator, dtype=torch.float64)
    return torch.randn(rows, width, generator=generator, dtype=torch.float64) @ mixing + 3.0


def test_moments_are_the_mean_and_unbiased_covariance() -> None:
    rows = _correlated(50, 5)
    mean, covariance = moments(rows)
    assert torch.allclose(mean, rows.mean(0))
    assert torch.allclose(covariance, torch.cov(rows.T))


def test_whitening_gives_identity_covariance_and_shrinkage_bounds_the_gain() -> None:
    rows = _correlated(2000, 6)
    mean, covariance = moments(rows)
    weight, bias = whitening(mean, covariance, shrinkage=1e-9)
    white = rows @ weight.T + bias
    assert torch.allclose(white.mean(0), torch.zeros(6, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(torch.cov(white.T), torch.eye(6, dtype=torch.float64), atol=1e-6)
    # with shrinkage s, a direction of variance lambda keeps lambda / (lambda + s * mean(lambda))
    eigenvalues = torch.linalg.eigvalsh(covariance)
    weight, bias = whitening(mean, covariance, shrinkage=1.0)
    expected = eigenvalues / (eigenvalues + eigenvalues.mean())
    assert torch.allclose(torch.linalg.eigvalsh(torch.cov((rows @ weight.T + bias).T)), expected, atol=1e-6)
    with pytest.raises(ValueError, match="shrinkage must be > 0"):
        whitening(mean, covariance, shrinkage=0.0)
    with pytest.raises(ValueError, match="every \\[SEG\\] state is the same"):
        whitening(mean, torch.zeros(6, 6, dtype=torch.float64), shrinkage=1.0)


def _samples() -> list[TrainSample]:
    frames = np.random.default_rng(3).integers(0, 255, (2, 112, 112, 3), dtype=np.uint8)
    lowres = np.random.default_rng(4).integers(0, 255, (4, 56, 56, 3), dtype=np.uint8)
    masks = torch.zeros(2, 112, 112)
    masks[:, 20:70, 30:90] = 1
    expressions = ("the red circle", "the blue square", "the dog that jumps last", "the thing used to cut bread",
                   "the smallest shape", "the green car on the left")
    return [TrainSample(e, lowres, key_frames=frames, masks=masks) for e in expressions]


def _prompts(model: SegModel, samples: list[TrainSample]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model.mllm.train_outputs(s)[0].seg.prompts for s in samples])


def test_calibrated_prompts_are_centred_unit_scale_and_tell_expressions_apart() -> None:
    model = build_model(load_config(ModelConfig, TINY_YAML))
    samples = _samples()
    before = _prompts(model, samples)
    states = seg_states(model, samples)
    assert states.shape == (len(samples), model.mllm.hidden_size)
    calibrate_seg_projection(model, samples, shrinkage=0.1)
    after = _prompts(model, samples)
    assert after.mean(0).abs().max() < 1e-4
    assert after.std(0).mean().item() == pytest.approx(1.0, rel=1e-4)
    # the same frames, six expressions: the default prompts barely differ, the calibrated ones do
    assert prompt_spread(before) < 0.3 < prompt_spread(after)
    with pytest.raises(ValueError, match="no RefVOS sample"):
        calibrate_seg_projection(model, [TrainSample("x", samples[0].lowres_frames)], shrinkage=0.1)


def test_heads_mode_trains_the_heads_and_the_mask_decoder_only(tmp_path: Path) -> None:
    model = build_model(load_config(ModelConfig, TINY_YAML))
    model.enable_training("heads")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("mllm.seg_proj.", "mllm.find_head.", "sam2.sam.sam_mask_decoder."))
                             for n in trainable)
    assert any(n.startswith("mllm.seg_proj.") for n in trainable)
    config = load_train_config(ROOT / "configs/train/tiny.yaml",
                               [f"data_root={tmp_path}", "mode=heads", "prompt_calibration.batches=2"])
    assert trained_parts(config) == ("heads", "sam2_decoder")
    with pytest.raises(ConfigError, match="needs >= 2 samples per worker"):
        load_train_config(ROOT / "configs/train/tiny.yaml",
                          [f"data_root={tmp_path}", "optim.batch_size=1", "prompt_calibration.batches=1"])
    with pytest.raises(ConfigError, match="prompt_calibration calibrates"):
        load_train_config(ROOT / "configs/train/tiny_sam2.yaml",
                          [f"data_root={tmp_path}", "prompt_calibration.batches=1"])
