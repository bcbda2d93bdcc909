"""Checkpoints: export/load round trips (local and moto S3), resume, Sa2VA key mapping, refusals, config errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from peft import PeftModel
from perturb import perturb_trainable
from transformers import Qwen2_5_VLForConditionalGeneration

from actors.config import ConfigError, load_config
from actors.model.checkpoints import (
    build_model,
    export_model,
    load_exported,
    load_trainable,
    save_trainable,
)
from actors.model.config import ModelConfig, ScratchConfig
from actors.model.sam2_bridge import CheckpointError
from actors.model.scratch_backbone import build_scratch_backbone
from actors.model.segmllm import SegModel

TINY_YAML = "configs/model/tiny.yaml"
EXPRESSIONS = ["red circle", "the dog on the left"]


@pytest.fixture(scope="module", autouse=True)
def _threads():
    torch.set_num_threads(1)


def _frames(count: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def trained() -> tuple[SegModel, ModelConfig]:
    """A tiny model whose every trainable parameter moved away from its initial value."""
    config = load_config(ModelConfig, TINY_YAML)
    model = build_model(config)
    model.enable_training()
    return perturb_trainable(model, 0), config


def _outputs(model: SegModel) -> list[torch.Tensor]:
    video, keys = _frames(5, 56, 1), _frames(2, 112, 2)
    with torch.no_grad():
        prompts = model.mllm.seg_prompts(keys, EXPRESSIONS, lowres_video=video).prompts
        masks = model.sam2.decode_masks(keys[:1], prompts).mask_logits
    return [model.mllm.moment_scores(video, EXPRESSIONS), prompts, masks]


def _assert_identical(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


def test_export_load_round_trip_is_bit_exact_and_opens_with_transformers_and_peft(trained, tmp_path: Path):
    model, config = trained
    expected = _outputs(model)
    export_model(model, config, str(tmp_path / "export"))
    loaded = load_exported(str(tmp_path / "export"))
    _assert_identical(expected, _outputs(loaded))
    assert not torch.equal(expected[0], _outputs(build_model(config))[0])  # training changed the outputs
    backbone = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path / "export" / "backbone")
    assert isinstance(PeftModel.from_pretrained(backbone, tmp_path / "export" / "adapter"), PeftModel)


def test_round_trip_through_s3(trained, s3):
    model, config = trained
    expected = _outputs(model)
    uri = s3.uri("runs/tiny/export")
    export_model(model, config, uri, s3.storage_options)
    assert s3.filesystem().isfile(f"{s3.bucket}/runs/tiny/export/adapter/adapter_model.safetensors")
    _assert_identical(expected, _outputs(load_exported(uri, s3.storage_options)))


def test_save_and_load_trainable_restores_a_fresh_training_model(trained, tmp_path: Path):
    model, config = trained
    save_trainable(model, str(tmp_path / "ckpt"), ("adapter", "heads", "sam2_decoder"))
    fresh = build_model(config)
    fresh.enable_training()
    load_trainable(fresh, str(tmp_path / "ckpt"), ("adapter", "heads", "sam2_decoder"))
    _assert_identical(_outputs(model), _outputs(fresh.eval()))


@pytest.mark.parametrize("parts", [("mllm", "heads", "sam2_decoder"), ("sam2",)])
def test_full_parameter_and_sam2_parts_restore_a_fresh_model(parts, tmp_path: Path):
    """Full-parameter training saves the whole backbone, SAM2 tracking training the whole SAM2: a fresh model
    restored from them computes what the trained one does, and differs from it before restoring."""
    config = load_config(ModelConfig, TINY_YAML)
    model = build_model(config)
    if parts == ("sam2",):
        model.requires_grad_(False)
        model.sam2.requires_grad_(True)
    else:
        model.enable_training("full")
        assert all(p.requires_grad for p in model.mllm.hf_model.model.visual.parameters())
    perturb_trainable(model, 3)
    save_trainable(model, str(tmp_path / "ckpt"), parts)
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == {f"{part}.safetensors" for part in parts}
    fresh = build_model(config).eval()
    assert not torch.equal(_outputs(model)[-1], _outputs(fresh)[-1])
    load_trainable(fresh, str(tmp_path / "ckpt"), parts)
    _assert_identical(_outputs(model), _outputs(fresh))


def test_full_parameter_export_has_no_adapter_and_loads_the_trained_backbone(tmp_path: Path):
    config = load_config(ModelConfig, TINY_YAML)
    model = build_model(config)
    model.enable_training("full")
    perturb_trainable(model, 4)
    export_model(model, config, str(tmp_path / "export"))
    assert not (tmp_path / "export" / "adapter").exists()
    _assert_identical(_outputs(model), _outputs(load_exported(str(tmp_path / "export"))))


def _sa2va_directory(root: Path, misspell: bool = False) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    """A tiny Qwen2.5-VL backbone directory and a synthetic Sa2VA directory with Sa2VA's key names
    (transformers < 4.52 layout of the LLM, SAM2 layer-scale as ``g_weight``, ``text_hidden_fcs``)."""
    config = load_config(ModelConfig, TINY_YAML)
    backbone, processor = build_scratch_backbone(ScratchConfig())
    backbone.save_pretrained(root / "backbone")
    processor.save_pretrained(root / "backbone")
    tokenizer = processor.tokenizer
    tokenizer.add_special_tokens({"additional_special_tokens": ["[SEG]"]}, replace_extra_special_tokens=False)
    sa2va, _ = build_scratch_backbone(ScratchConfig())
    sa2va.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    state: dict[str, torch.Tensor] = {}
    for key, value in sa2va.state_dict().items():
        legacy = key.replace("model.language_model.", "model.").replace("model.visual.", "visual.")
        state["model." + legacy] = value.clone()
    from actors.model.sam2_bridge import build_sam2

    sam = build_sam2(config.sam2).sam
    for key, value in sam.state_dict().items():
        state["grounding_encoder.sam2_model." + key.replace(".gamma", ".g_weight")] = value + 1.0
    for index, shape in ((0, (64, 64)), (2, (64, 64))):
        state[f"text_hidden_fcs.{index}.weight"] = torch.full(shape, 0.01 * (index + 1))
        state[f"text_hidden_fcs.{index}.bias"] = torch.full(shape[:1], 0.5)
    if misspell:
        key = "model.model.layers.0.mlp.gate_proj.weight"
        state["model.model.layers.0.mlp.gate_proj.wieght"] = state.pop(key)
    directory = root / "sa2va"
    directory.mkdir()
    safetensors.torch.save_file(state, str(directory / "model.safetensors"))
    tokenizer.save_pretrained(directory)
    return root / "backbone", directory, state


def test_sa2va_mapping_loads_every_part(tmp_path: Path):
    backbone, sa2va, state = _sa2va_directory(tmp_path)
    config = load_config(ModelConfig, TINY_YAML, [f"mllm.backbone={backbone}", f"mllm.sa2va_uri={sa2va}"])
    model = build_model(config)
    hf = model.mllm.hf_model
    assert torch.equal(
        hf.model.language_model.layers[1].mlp.up_proj.weight, state["model.model.layers.1.mlp.up_proj.weight"]
    )
    assert torch.equal(
        hf.model.visual.blocks[0].attn.qkv.weight, state["model.visual.blocks.0.attn.qkv.weight"]
    )
    gammas = [k for k in model.sam2.sam.state_dict() if k.endswith(".gamma")]
    assert gammas
    for key in gammas:
        assert torch.equal(
            model.sam2.sam.state_dict()[key],
            state["grounding_encoder.sam2_model." + key.replace(".gamma", ".g_weight")],
        )
    assert torch.equal(model.mllm.seg_proj[2].weight, state["text_hidden_fcs.2.weight"])
    seg_id = model.mllm.processor.tokenizer.convert_tokens_to_ids("[SEG]")
    assert torch.equal(
        hf.get_input_embeddings().weight[seg_id], state["model.model.embed_tokens.weight"][seg_id]
    )


def test_sa2va_mapping_reports_a_wrong_key_by_name(tmp_path: Path):
    backbone, sa2va, _ = _sa2va_directory(tmp_path, misspell=True)
    config = load_config(ModelConfig, TINY_YAML, [f"mllm.backbone={backbone}", f"mllm.sa2va_uri={sa2va}"])
    with pytest.raises(CheckpointError) as error:
        build_model(config)
    assert "model.language_model.layers.0.mlp.gate_proj.wieght" in str(error.value)
    assert "model.language_model.layers.0.mlp.gate_proj.weight" in str(error.value)


class _Exploit:
    def __reduce__(self):  # noqa: ANN204 - the payload a malicious checkpoint would carry
        return (os.system, (f"touch {os.environ['VRSEG_EXPLOIT_MARKER']}",))


def test_pickle_that_would_run_code_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("VRSEG_EXPLOIT_MARKER", str(marker))
    torch.save({"seg_proj.0.weight": _Exploit()}, tmp_path / "heads.pt")
    config = load_config(ModelConfig, TINY_YAML, [f"mllm.heads_uri={tmp_path / 'heads.pt'}"])
    with pytest.raises(CheckpointError, match="refusing to load"):
        build_model(config)
    assert not marker.exists()


def test_directory_needing_remote_code_is_refused(tmp_path: Path):
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "qwen2_5_vl", "auto_map": {"AutoModel": "x.Y"}})
    )
    config = load_config(
        ModelConfig, TINY_YAML, [f"mllm.backbone={tmp_path}", "sam2.checkpoint=/absent/sam2.pt"]
    )
    with pytest.raises(CheckpointError, match="remote code"):
        build_model(config)


def test_misspelled_config_key_fails_before_any_weights(tmp_path: Path):
    with pytest.raises(ConfigError, match="find_dimm"):
        load_config(ModelConfig, TINY_YAML, ["mllm.find_dimm=3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(TINY_YAML).read_text().replace("suffix_batch:", "sufix_batch:"))
    with pytest.raises(ConfigError, match="sufix_batch"):
        load_config(ModelConfig, bad)
    with pytest.raises(ConfigError, match="backbone"):
        load_config(ModelConfig, "configs/model/qwen2_5vl-3b_sam2.1-l.yaml")
    with pytest.raises(ConfigError, match="sam2.checkpoint is not set"):
        load_config(ModelConfig, "configs/model/sa2va-qwen2_5vl-3b.yaml", ["mllm.backbone=/m/qwen"])
    for name in ("qwen2_5vl-3b_sam2.1-l", "qwen2_5vl-7b_sam2.1-l", "sa2va-qwen2_5vl-3b"):
        config = load_config(
            ModelConfig,
            f"configs/model/{name}.yaml",
            ["mllm.backbone=s3://m/qwen", "sam2.checkpoint=s3://m/sam2.pt"],
        )
        assert config.mllm.backbone == "s3://m/qwen"
