"""The layout writers of ``make real-shape-check`` (``infra/real_shape_check.py``) at a tiny scale: file names,
key names, shapes and token ids as published, and each layout loads through vrseg's loaders. The 3B itself is
never built here; its key names and shapes come from the same code run on the meta device."""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from actors.config import load_config
from actors.model.checkpoints import load_backbone, load_sa2va
from actors.model.config import ModelConfig
from actors.model.sam2_bridge import build_sam2_model, read_state_dict

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("real_shape_check", ROOT / "infra" / "real_shape_check.py")
rsc = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = rsc  # its dataclasses look their module up by name
_spec.loader.exec_module(rsc)

TINY_SAM2 = load_config(ModelConfig, ROOT / "configs" / "model" / "tiny.yaml").sam2


def tiny_qwen_config(tied: bool = True) -> dict:
    """The published config.json with tiny sizes (the vocabulary and token ids stay Qwen's)."""
    config = copy.deepcopy(rsc.QWEN2_5_VL_3B_CONFIG)
    config.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, tie_word_embeddings=tied, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]})
    config["vision_config"].update(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                                   fullatt_block_indexes=[1])
    return config


def index_of(directory: Path) -> dict:
    return json.loads((directory / rsc.INDEX_FILE).read_text())


def file_keys(directory: Path) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for name in sorted(set(index_of(directory)["weight_map"].values())):
        with safe_open(str(directory / name), "pt") as handle:
            shapes.update({k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()})
    return shapes


def test_3b_config_matches_transformers_reading_of_the_published_file():
    config = rsc.Qwen2_5_VLConfig.from_dict(copy.deepcopy(rsc.QWEN2_5_VL_3B_CONFIG))
    text, vision = config.get_text_config(), config.vision_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads,
            text.intermediate_size, text.vocab_size) == (2048, 36, 16, 2, 11008, 151936)
    assert (vision.depth, vision.hidden_size, vision.out_hidden_size, vision.fullatt_block_indexes) == (
        32, 1280, 2048, [7, 15, 23, 31])
    assert config.tie_word_embeddings


def test_3b_published_key_names_and_parameter_count():
    shapes = rsc.qwen_shapes(rsc.QWEN2_5_VL_3B_CONFIG, tied=True)
    assert "lm_head.weight" not in shapes
    assert shapes["model.embed_tokens.weight"] == (151936, 2048)
    assert shapes["model.layers.35.self_attn.k_proj.weight"] == (256, 2048)
    assert shapes["visual.blocks.31.attn.qkv.weight"] == (3840, 1280)
    assert shapes["visual.merger.mlp.2.weight"] == (2048, 5120)
    assert all(k.startswith(("model.layers.", "model.embed_tokens.", "model.norm.", "visual.")) for k in shapes)
    params = sum(torch.Size(s).numel() for s in shapes.values())
    assert 3.7e9 < params < 3.8e9  # Qwen2.5-VL-3B: 3.75 B parameters
    shards = rsc.plan_shards(shapes, 2, rsc.QWEN_SHARD_BYTES)
    assert len(shards) == 2  # model-00001-of-00002 and model-00002-of-00002, as published


def test_offline_tokenizer_has_qwen_ids():
    tokenizer = rsc.offline_qwen_tokenizer(rsc.SA2VA_ADDED_TOKENS)
    ids = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                                            "<|image_pad|>", "<|video_pad|>", "<|file_sep|>"])
    assert ids == [151643, 151644, 151645, 151652, 151655, 151656, 151664]
    assert len(tokenizer) == 151665 + len(rsc.SA2VA_ADDED_TOKENS)
    assert tokenizer.convert_tokens_to_ids("[SEG]") >= 151665


def test_qwen_directory_layout_and_load(tmp_path):
    config = tiny_qwen_config()
    rsc.write_qwen_directory(tmp_path, config, max_shard_bytes=8 * 2**20)
    index = index_of(tmp_path)
    names = sorted(set(index["weight_map"].values()))
    assert len(names) >= 2 and names == [rsc.shard_name(i, len(names)) for i in range(len(names))]
    assert {"config.json", "generation_config.json", rsc.INDEX_FILE, "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in tmp_path.iterdir()}
    assert json.loads((tmp_path / "config.json").read_text()) == config
    shapes = file_keys(tmp_path)
    assert shapes == rsc.qwen_shapes(config, tied=True)
    assert index["metadata"]["total_size"] == sum(2 * torch.Size(s).numel() for s in shapes.values())
    model, processor = load_backbone(str(tmp_path))
    with safe_open(str(tmp_path / index["weight_map"]["model.layers.1.mlp.up_proj.weight"]), "pt") as handle:
        written = handle.get_tensor("model.layers.1.mlp.up_proj.weight")
    assert torch.equal(model.model.language_model.layers[1].mlp.up_proj.weight, written.float())
    assert processor.tokenizer.convert_tokens_to_ids("<|video_pad|>") == model.config.video_token_id


def test_sam2_checkpoint_layout(tmp_path):
    path = tmp_path / "sam2.1_hiera_large.pt"
    rsc.write_sam2_checkpoint(path, TINY_SAM2)
    raw = torch.load(str(path), weights_only=True)
    assert list(raw) == ["model"]
    assert set(raw["model"]) == set(build_sam2_model(TINY_SAM2).state_dict())
    assert set(read_state_dict(str(path))) == set(raw["model"])


def test_sa2va_directory_layout_and_load(tmp_path):
    config = tiny_qwen_config(tied=True)
    rsc.write_sa2va_directory(tmp_path, config, TINY_SAM2, max_shard_bytes=8 * 2**20)
    keys = file_keys(tmp_path)
    assert keys["model.lm_head.weight"] == (151936, 64)  # untied, its own head
    assert keys["text_hidden_fcs.2.weight"] == (rsc.SA2VA_PROMPT_DIM, 64)
    assert any(k.startswith("model.model.layers.") for k in keys) and any(k.startswith("model.visual.") for k in keys)
    sam_keys = [k for k in keys if k.startswith("grounding_encoder.sam2_model.")]
    assert len(sam_keys) == len(build_sam2_model(TINY_SAM2).state_dict())
    assert set(keys) == {k for k in keys if k.startswith(("model.", "grounding_encoder.sam2_model.", "text_hidden_fcs."))}
    assert "auto_map" in json.loads((tmp_path / "config.json").read_text())  # as released; vrseg never reads it
    untied = copy.deepcopy(config) | {"tie_word_embeddings": False}
    qwen = rsc.Qwen2_5_VLForConditionalGeneration._from_config(rsc.Qwen2_5_VLConfig.from_dict(untied))
    sam = build_sam2_model(TINY_SAM2)
    seg_proj, tokenizer = load_sa2va(str(tmp_path), qwen, sam)
    assert set(seg_proj) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert "[SEG]" in tokenizer.get_vocab()


def test_plan_shards_keeps_order_and_bound():
    shapes = {"a": (4,), "b": (4,), "c": (10,), "d": (1,)}
    assert rsc.plan_shards(shapes, 1, 8) == [["a", "b"], ["c"], ["d"]]


@pytest.mark.parametrize("key,legacy", [("model.language_model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.up_proj.weight"),
                                        ("model.visual.merger.ln_q.weight", "visual.merger.ln_q.weight"),
                                        ("lm_head.weight", "lm_head.weight")])
def test_legacy_qwen_key(key, legacy):
    assert rsc.legacy_qwen_key(key) == legacy
