"""``sam2.prompt_heads: separate``: the language-prompted path trains and saves its own copy of SAM2's mask
decoder and mask-prompt downscaling, while the tracker (what the video session decodes propagated frames
with) keeps SAM2's own; checkpoints, the export and the propagator carry both."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_location_map import TINY_YAML, _frames

from actors.config import load_config
from actors.model.checkpoints import build_model, export_model, load_exported, load_trainable, save_trainable
from actors.model.config import ModelConfig, read_model_config
from actors.model.segmllm import TrainSample
from actors.propagate import load_sam2

SEPARATE = ["mllm.location_map.enabled=true", "sam2.prompt_heads=separate"]


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, state[k]) for k, v in module.state_dict().items())


def _train_step(model) -> None:
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    masks = torch.zeros(2, 112, 112)
    masks[:, 20:60, 30:70] = 1
    parts = model.forward_train([TrainSample("the red circle", _frames(2, 4), key_frames=_frames(1), masks=masks)])
    parts["loss"].backward()
    optimizer.step()


def test_training_changes_the_prompted_copy_and_leaves_the_tracker_as_it_was() -> None:
    with pytest.raises(ValueError, match=r"sam2.prompt_heads must be one of \['shared', 'separate'\], got 'both'"):
        load_config(ModelConfig, TINY_YAML, ["sam2.prompt_heads=both"])
    shared = build_model(load_config(ModelConfig, TINY_YAML, SEPARATE[:1]))
    shared.enable_training("heads")
    assert shared.sam2.prompt_heads is None and shared.sam2.mask_decoder is shared.sam2.sam.sam_mask_decoder

    model = build_model(load_config(ModelConfig, TINY_YAML, SEPARATE))
    sam = model.sam2.sam
    tracker = _state(sam.sam_mask_decoder)
    tracker_prompts = _state(sam.sam_prompt_encoder)
    frames, prompts = _frames(3), torch.randn(2, model.sam2.prompt_dim)
    with torch.no_grad():
        before = model.sam2.decode_masks(frames, prompts, location_map=model.mllm.location_map).mask_logits
    model.enable_training("heads")
    # the copies start as the tracker's weights: decoding is unchanged by the split itself
    assert model.sam2.mask_decoder is not sam.sam_mask_decoder and _same(model.sam2.mask_decoder, tracker)
    with torch.no_grad():
        model.eval()
        assert torch.equal(model.sam2.decode_masks(frames, prompts, location_map=model.mllm.location_map).mask_logits,
                           before)
        model.train()
    assert not any(p.requires_grad for p in sam.parameters())
    assert all(p.requires_grad for p in model.sam2.mask_decoder.parameters())
    _train_step(model)
    assert _same(sam.sam_mask_decoder, tracker) and _same(sam.sam_prompt_encoder, tracker_prompts)
    assert not _same(model.sam2.mask_decoder, tracker)
    assert not _same(model.sam2.prompt_encoder, tracker_prompts)  # its mask-prompt downscaling trained


def test_checkpoints_export_and_the_propagator_keep_both_decoders(tmp_path: Path) -> None:
    config = load_config(ModelConfig, TINY_YAML, SEPARATE)
    model = build_model(config)
    tracker = _state(model.sam2.sam)
    model.enable_training("lora")
    _train_step(model)
    prompted = _state(model.sam2.mask_decoder)
    save_trainable(model, str(tmp_path / "ckpt"), ("adapter", "heads", "sam2_decoder"))
    resumed = build_model(config)
    resumed.enable_training("lora")
    load_trainable(resumed, str(tmp_path / "ckpt"), ("adapter", "heads", "sam2_decoder"))
    assert _same(resumed.sam2.mask_decoder, prompted) and _same(resumed.sam2.sam, tracker)

    export_model(model.eval(), config, str(tmp_path / "model"))
    assert read_model_config(str(tmp_path / "model/model.yaml")).sam2_decoder_uri.endswith("sam2_decoder.safetensors")
    exported = load_exported(str(tmp_path / "model")).eval()
    sam2, location_map = load_sam2(read_model_config(str(tmp_path / "model/model.yaml")))
    for bridge in (exported.sam2, sam2):
        assert _same(bridge.sam, tracker)  # the tracker the session decodes propagated frames with
        assert _same(bridge.mask_decoder, prompted)
    frames, prompts = _frames(5), torch.randn(2, sam2.prompt_dim)
    with torch.no_grad():
        trained = model.sam2.decode_masks(frames, prompts, location_map=model.mllm.location_map)
        whole = exported.sam2.decode_masks(frames, prompts, location_map=exported.mllm.location_map)
        alone = sam2.decode_masks(frames, prompts, location_map=location_map)
    assert torch.equal(whole.mask_logits, trained.mask_logits) and torch.equal(alone.mask_logits, trained.mask_logits)
