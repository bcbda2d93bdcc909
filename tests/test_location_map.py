"""The ``[SEG]``-grounded dense prompt (``mllm.location_map``, actors.model.heads.LocationMap): its score, its
loss, that it becomes SAM2's dense prompt, what trains with it, and that the propagator (SAM2 without the
MLLM) decodes with the same head the model exported."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from actors.config import load_config
from actors.model.checkpoints import (
    LOCATION_MAP_PREFIX,
    build_model,
    export_model,
    load_exported,
    load_trainable,
    read_tensors,
    save_trainable,
)
from actors.model.config import ModelConfig, read_model_config
from actors.model.heads import LocationMap
from actors.model.losses import location_map_loss
from actors.model.segmllm import TrainSample
from actors.propagate import load_sam2

TINY_YAML = Path(__file__).resolve().parents[1] / "configs/model/tiny.yaml"
LOCATED = ["mllm.location_map.enabled=true", "mllm.location_map.pixels=true"]


def _frames(seed: int, count: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (count, 112, 112, 3), dtype=np.uint8)


def test_the_score_is_the_keys_dot_the_prompt_on_the_chosen_levels_grid() -> None:
    torch.manual_seed(0)
    head = LocationMap([8, 16, 32], prompt_dim=32, hidden=16, level=1)
    maps = [torch.randn(2, 8, 16, 16), torch.randn(2, 16, 8, 8), torch.randn(2, 32, 4, 4)]
    first, second = torch.randn(2, 32), torch.randn(2, 32)
    with torch.no_grad():
        head.bias.fill_(0.5)
        out = head(maps, first)
        assert out.shape == (2, 1, 8, 8) and out.dtype == torch.float32
        # linear in the prompt around the bias: the map is <key(x, y), p> / sqrt(D) + b
        total = head(maps, first + second) - 0.5
        assert torch.allclose(total, (out - 0.5) + (head(maps, second) - 0.5), atol=1e-5)
        # several prompt tokens: their mean is the query
        assert torch.allclose(head(maps, torch.stack([first, second], 1)), head(maps, (first + second) / 2), atol=1e-5)
    with pytest.raises(ValueError, match=r"mllm.location_map.level must be 0, 1 or 2 \(a grid of stride 4, 8 or 16\), got 3"):
        LocationMap([8, 16, 32], 32, 16, level=3)


def test_the_grid_is_set_by_the_level_when_sam2_keeps_only_its_embedding() -> None:
    # a SAM2 without high-resolution features (use_high_res_features_in_sam: false) hands over one level, stride 16
    torch.manual_seed(0)
    embedding, prompt, images = torch.randn(1, 32, 4, 4), torch.randn(1, 32), torch.randn(1, 3, 64, 64)
    for level, grid in ((0, 16), (1, 8), (2, 4)):
        head = LocationMap([32], prompt_dim=32, hidden=16, level=level, pixels=True)
        with torch.no_grad():
            assert head([embedding], prompt, images).shape == (1, 1, grid, grid)


def test_with_pixels_the_keys_read_each_cells_block_of_the_input_frame() -> None:
    torch.manual_seed(0)
    head = LocationMap([8, 16, 32], prompt_dim=32, hidden=16, level=0, pixels=True)  # stride 4: 16x16 of 64 px
    maps = [torch.randn(1, 8, 16, 16), torch.randn(1, 16, 8, 8), torch.randn(1, 32, 4, 4)]
    prompt, images = torch.randn(1, 32), torch.randn(1, 3, 64, 64)
    changed = images.clone()
    changed[..., 60:, 60:] += 1.0  # inside the bottom-right cell only
    with torch.no_grad():
        out, moved = head(maps, prompt, images), head(maps, prompt, changed)
    assert out.shape == (1, 1, 16, 16)
    # the 3x3, 3x3 key network sees 2 cells around a cell: only the bottom-right 3x3 cells move
    differs = (out - moved).abs()[0, 0] > 1e-6
    assert differs[13:, 13:].all() and not differs[:13].any() and not differs[:, :13].any()
    with pytest.raises(ValueError, match=r"pixels needs SAM2's input images of 64 px for its \(16, 16\) grid, got None"):
        head(maps, prompt)


def test_dilations_set_how_far_around_a_cell_the_keys_see() -> None:
    torch.manual_seed(0)
    head = LocationMap([8, 16, 32], prompt_dim=32, hidden=16, level=0, pixels=True, dilations=[1, 2, 4])
    assert [m.dilation for m in head.key if isinstance(m, torch.nn.Conv2d)] == [(1, 1), (2, 2), (4, 4), (1, 1)]
    maps = [torch.randn(1, 8, 16, 16), torch.randn(1, 16, 8, 8), torch.randn(1, 32, 4, 4)]
    prompt, images = torch.randn(1, 32), torch.randn(1, 3, 64, 64)
    changed = images.clone()
    changed[..., 60:, 60:] += 1.0  # inside the bottom-right cell only
    with torch.no_grad():
        differs = (head(maps, prompt, images) - head(maps, prompt, changed)).abs()[0, 0] > 1e-6
    # 1 + 2 + 4 = 7 cells of reach: exactly the bottom-right 8x8 cells move
    assert differs[8:, 8:].all() and not differs[:8].any() and not differs[:, :8].any()
    with pytest.raises(ValueError, match=r"dilations must be a non-empty list of integers >= 1, got \[1, 0\]"):
        load_config(ModelConfig, TINY_YAML, [*LOCATED, "mllm.location_map.dilations=[1,0]"])


def test_the_loss_targets_each_cells_covered_fraction() -> None:
    targets = torch.zeros(1, 8, 8)
    targets[0, :4, :2] = 1  # covers half of the top-left 4x4 cell of a 2x2 grid
    cover = torch.tensor([[0.5, 0.0], [0.0, 0.0]])
    logits = torch.tensor([[[[0.3, -2.0], [-1.0, -3.0]]]])
    probs = logits[0, 0].sigmoid()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits[0, 0], cover)
    dice = 1 - (2 * (probs * cover).sum() + 1) / (probs.sum() + cover.sum() + 1)
    assert torch.allclose(location_map_loss(logits, targets), bce + dice, atol=1e-6)
    # a perfect map scores lower than a map on the wrong cell
    right = torch.tensor([[[[4.0, -8.0], [-8.0, -8.0]]]])
    wrong = torch.tensor([[[[-8.0, 4.0], [-8.0, -8.0]]]])
    assert location_map_loss(right, targets) < location_map_loss(wrong, targets) - 1.0


def test_the_map_is_sams_dense_prompt_and_trains_with_the_mask_prompt_downscaling() -> None:
    model = build_model(load_config(ModelConfig, TINY_YAML, LOCATED))
    assert "location_map" not in build_model(load_config(ModelConfig, TINY_YAML)).mllm.heads()
    assert any(k.startswith(LOCATION_MAP_PREFIX) for k in model.mllm.heads().state_dict())
    frames = _frames(1)
    prompts = torch.randn(2, model.sam2.prompt_dim)
    with torch.no_grad():
        grounded = model.sam2.decode_masks(frames, prompts, location_map=model.mllm.location_map)
        plain = model.sam2.decode_masks(frames, prompts)
        given = model.sam2.decode_masks(frames, prompts, dense_prompt=grounded.location_logits)
    level = model.mllm.config.location_map.level
    grid = model.sam2.encode_images(frames).feat_sizes[level]
    assert grounded.location_logits.shape == (2, 1, *grid) and plain.location_logits is None
    assert torch.equal(given.mask_logits, grounded.mask_logits)  # the map is exactly the dense prompt
    assert not torch.allclose(plain.mask_logits, grounded.mask_logits)
    model.enable_training("full")
    sam = model.sam2.sam
    assert all(p.requires_grad for p in sam.sam_prompt_encoder.mask_downscaling.parameters())
    assert not sam.sam_prompt_encoder.no_mask_embed.weight.requires_grad  # tracking decodes with it
    assert all(p.requires_grad for p in model.mllm.location_map.parameters())
    masks = torch.zeros(2, 112, 112)
    masks[:, 20:60, 30:70] = 1
    parts = model.forward_train([TrainSample("the red circle", _frames(2, 4), key_frames=frames, masks=masks)])
    assert {"mask_bce", "mask_dice", "mask_object", "mask_location"} <= set(parts)
    parts["loss"].backward()
    assert model.mllm.location_map.bias.grad is not None and model.mllm.location_map.bias.grad.abs() > 0
    assert sam.sam_prompt_encoder.mask_downscaling[0].weight.grad.abs().sum() > 0


def test_a_residual_map_is_also_added_to_the_decoders_logits() -> None:
    model = build_model(load_config(ModelConfig, TINY_YAML, [*LOCATED, "mllm.location_map.residual=true"])).train()
    frames, prompts = _frames(4), torch.randn(2, model.sam2.prompt_dim)
    with torch.no_grad():  # train mode: no object-score gate
        grounded = model.sam2.decode_masks(frames, prompts, location_map=model.mllm.location_map)
        given = model.sam2.decode_masks(frames, prompts, dense_prompt=grounded.location_logits)
    added = torch.nn.functional.interpolate(grounded.location_logits, size=given.low_res_logits.shape[-2:],
                                            mode="bilinear", align_corners=False)
    assert added.abs().max() > 0.1
    assert torch.allclose(grounded.low_res_logits, given.low_res_logits + added, atol=1e-5)


def test_checkpoints_export_and_the_propagator_carry_the_same_head(tmp_path: Path) -> None:
    config = load_config(ModelConfig, TINY_YAML, LOCATED)
    model = build_model(config)
    model.enable_training("lora")
    with torch.no_grad():  # trained values, so a load that silently keeps the seeded ones fails
        for p in (*model.mllm.location_map.parameters(), *model.sam2.sam.sam_prompt_encoder.mask_downscaling.parameters()):
            p.add_(torch.randn_like(p))
    save_trainable(model, str(tmp_path / "ckpt"), ("adapter", "heads", "sam2_decoder"))
    resumed = build_model(config)
    resumed.enable_training("lora")
    load_trainable(resumed, str(tmp_path / "ckpt"), ("adapter", "heads", "sam2_decoder"))
    downscaling = model.sam2.sam.sam_prompt_encoder.mask_downscaling.state_dict()
    for a, b in ((model.mllm.location_map, resumed.mllm.location_map),
                 (model.sam2.sam.sam_prompt_encoder.mask_downscaling, resumed.sam2.sam.sam_prompt_encoder.mask_downscaling)):
        assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    export_model(model, config, str(tmp_path / "model"))
    exported = load_exported(str(tmp_path / "model")).eval()
    sam2, location_map = load_sam2(read_model_config(str(tmp_path / "model/model.yaml")))
    heads = read_tensors(str(tmp_path / "model/heads.safetensors"))
    assert all(torch.equal(v, heads[LOCATION_MAP_PREFIX + k]) for k, v in location_map.state_dict().items())
    assert all(torch.equal(v, sam2.sam.sam_prompt_encoder.mask_downscaling.state_dict()[k])
               for k, v in downscaling.items())
    frames, prompts = _frames(5), torch.randn(2, sam2.prompt_dim)
    with torch.no_grad():
        whole = exported.sam2.decode_masks(frames, prompts, location_map=exported.mllm.location_map)
        alone = sam2.decode_masks(frames, prompts, location_map=location_map)
    assert torch.equal(whole.mask_logits, alone.mask_logits)
    assert torch.equal(whole.location_logits, alone.location_logits)
