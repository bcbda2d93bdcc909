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
    load_sa2va,
    load_trainable,
    save_trainable,
)
from actors.model.config import ModelConfig, ScratchConfig
from actors.model.sam2_bridge import CheckpointError, build_sam2
from actors.model.scratch_backbone import build_processor, build_scratch_backbone, qwen_config
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
    adapter_config = json.loads((tmp_path / "export" / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(tmp_path / "export" / "backbone")
    assert model.mllm.qwen.peft_config["default"].base_model_name_or_path != adapter_config["base_model_name_or_path"]


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


_LEGACY = "legacy"  # transformers < 4.52 key layout: model.model.layers.*, model.visual.*
_RELEASE = "release"  # Sa2VA-Qwen2.5-VL release: model.model.language_model.*, model.model.visual.*, model.lm_head
EMBED_VALUE, HEAD_VALUE = 1.0, 2.0


def _sa2va_key(layout: str, key: str) -> str:
    """The Sa2VA checkpoint key of the Qwen2.5-VL (transformers v5) parameter ``key`` in ``layout``."""
    if layout == _LEGACY:
        key = key.replace("model.language_model.", "model.").replace("model.visual.", "visual.")
    return "model." + key


def _sa2va_state(layout: str, tokenizer_size: int) -> dict[str, torch.Tensor]:
    """A synthetic Sa2VA state dict: a tiny Qwen2.5-VL whose embeddings are all ``EMBED_VALUE`` and whose
    separately trained head is all ``HEAD_VALUE``, SAM2 with layer-scale as ``g_weight``, ``text_hidden_fcs``."""
    sa2va, _ = build_scratch_backbone(ScratchConfig())
    sa2va.resize_token_embeddings(tokenizer_size, mean_resizing=False)
    with torch.no_grad():
        sa2va.get_input_embeddings().weight.fill_(EMBED_VALUE)
        sa2va.get_output_embeddings().weight.fill_(HEAD_VALUE)
    state = {_sa2va_key(layout, key): value.clone() for key, value in sa2va.state_dict().items()}
    sam = build_sam2(load_config(ModelConfig, TINY_YAML).sam2).sam
    for key, value in sam.state_dict().items():
        state["grounding_encoder.sam2_model." + key.replace(".gamma", ".g_weight")] = value + 1.0
    for index, shape in ((0, (64, 64)), (2, (64, 64))):
        state[f"text_hidden_fcs.{index}.weight"] = torch.full(shape, 0.01 * (index + 1))
        state[f"text_hidden_fcs.{index}.bias"] = torch.full(shape[:1], 0.5)
    return state


def _write_shards(state: dict[str, torch.Tensor], directory: Path, shards: int) -> list[str]:
    """``state`` as ``model.safetensors`` (one shard) or ``shards`` files named by an index, as Hugging Face
    writes them; the shard file names."""
    if shards == 1:
        safetensors.torch.save_file(state, str(directory / "model.safetensors"))
        return ["model.safetensors"]
    names = [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
    keys = sorted(state)
    weight_map = {key: names[i * shards // len(keys)] for i, key in enumerate(keys)}
    for name in names:
        safetensors.torch.save_file({k: state[k] for k in keys if weight_map[k] == name}, str(directory / name))
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return names


def _sa2va_directory(
    root: Path, layout: str = _LEGACY, misspell: bool = False, shards: int = 1, tied_backbone: bool = False
) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    """A tiny Qwen2.5-VL backbone directory (its config.json tied when ``tied_backbone``, as
    Qwen2.5-VL-3B-Instruct's) and a synthetic Sa2VA directory with Sa2VA's key names in ``layout``."""
    backbone, processor = build_scratch_backbone(ScratchConfig())
    backbone.save_pretrained(root / "backbone")
    processor.save_pretrained(root / "backbone")
    if tied_backbone:
        config = json.loads((root / "backbone" / "config.json").read_text())
        config["tie_word_embeddings"] = True
        config["text_config"]["tie_word_embeddings"] = True
        (root / "backbone" / "config.json").write_text(json.dumps(config))
    tokenizer = processor.tokenizer
    tokenizer.add_special_tokens({"additional_special_tokens": ["[SEG]"]}, replace_extra_special_tokens=False)
    state = _sa2va_state(layout, len(tokenizer))
    if misspell:
        key = _sa2va_key(layout, "model.language_model.layers.0.mlp.gate_proj.weight")
        state[key.replace(".weight", ".wieght")] = state.pop(key)
    directory = root / "sa2va"
    directory.mkdir()
    _write_shards(state, directory, shards)
    tokenizer.save_pretrained(directory)
    return root / "backbone", directory, state


def _assert_sa2va_loaded(model: SegModel, state: dict[str, torch.Tensor], layout: str) -> None:
    """Every part of ``model`` holds the Sa2VA ``state`` of ``layout``; embeddings and head apart."""
    hf = model.mllm.hf_model
    assert torch.equal(
        hf.model.language_model.layers[1].mlp.up_proj.weight,
        state[_sa2va_key(layout, "model.language_model.layers.1.mlp.up_proj.weight")],
    )
    assert torch.equal(
        hf.model.visual.blocks[0].attn.qkv.weight, state[_sa2va_key(layout, "model.visual.blocks.0.attn.qkv.weight")]
    )
    gammas = [k for k in model.sam2.sam.state_dict() if k.endswith(".gamma")]
    assert gammas
    for key in gammas:
        assert torch.equal(
            model.sam2.sam.state_dict()[key],
            state["grounding_encoder.sam2_model." + key.replace(".gamma", ".g_weight")],
        )
    assert torch.equal(model.mllm.seg_proj[2].weight, state["text_hidden_fcs.2.weight"])
    rows = state[_sa2va_key(layout, "model.language_model.embed_tokens.weight")].shape[0]
    assert model.mllm.processor.tokenizer.convert_tokens_to_ids("[SEG]") == rows - 1
    assert torch.all(hf.get_input_embeddings().weight[:rows] == EMBED_VALUE)  # rows past it: tokens vrseg adds
    assert torch.all(hf.get_output_embeddings().weight[:rows] == HEAD_VALUE)


@pytest.mark.parametrize(
    ("layout", "shards", "tied_backbone"), [(_LEGACY, 1, False), (_RELEASE, 1, True), (_RELEASE, 3, True)]
)
def test_sa2va_mapping_loads_every_part(layout: str, shards: int, tied_backbone: bool, tmp_path: Path):
    """Both key layouts load; a backbone config.json saying ``tie_word_embeddings: true`` (as
    Qwen2.5-VL-3B-Instruct's does) still gives Sa2VA's own head, apart from the embeddings; an index naming
    several shards loads them all."""
    backbone, sa2va, state = _sa2va_directory(tmp_path, layout, shards=shards, tied_backbone=tied_backbone)
    config = load_config(ModelConfig, TINY_YAML, [f"mllm.backbone={backbone}", f"mllm.sa2va_uri={sa2va}"])
    model = build_model(config)
    assert model.mllm.hf_model.config.tie_word_embeddings is False
    _assert_sa2va_loaded(model, state, layout)


def test_sa2va_loads_shard_by_shard_from_s3(tmp_path: Path, s3):
    backbone, sa2va, state = _sa2va_directory(tmp_path, _RELEASE, shards=2, tied_backbone=True)
    s3.filesystem().put(str(sa2va), f"{s3.bucket}/models/sa2va", recursive=True)
    config = load_config(ModelConfig, TINY_YAML, [f"mllm.backbone={backbone}",
                                                   f"mllm.sa2va_uri={s3.uri('models/sa2va')}"])
    config.mllm.storage_options.update(s3.storage_options)
    _assert_sa2va_loaded(build_model(config), state, _RELEASE)


def test_sa2va_head_differing_from_tied_embeddings_is_an_error_naming_both_keys(tmp_path: Path):
    """Loading Sa2VA's untied head into a model built tied would overwrite its embeddings: refused."""
    _, sa2va, _ = _sa2va_directory(tmp_path, _RELEASE, shards=2)
    processor = build_processor(ScratchConfig())
    tied_config = qwen_config(ScratchConfig(), processor.tokenizer)
    tied_config.tie_word_embeddings = True
    tied = Qwen2_5_VLForConditionalGeneration(tied_config)
    assert tied.get_output_embeddings().weight.data_ptr() == tied.get_input_embeddings().weight.data_ptr()
    sam = build_sam2(load_config(ModelConfig, TINY_YAML).sam2).sam
    with pytest.raises(CheckpointError) as error:
        load_sa2va(str(sa2va), tied, sam)
    message = str(error.value)
    assert "model.lm_head.weight" in message
    assert "model.model.language_model.embed_tokens.weight" in message
    assert ".safetensors" in message and str(sa2va) in message


def test_sa2va_shard_missing_from_an_index_is_an_error_naming_it(tmp_path: Path):
    backbone, sa2va, _ = _sa2va_directory(tmp_path, _RELEASE, shards=3)
    (sa2va / "model-00002-of-00003.safetensors").unlink()
    config = load_config(ModelConfig, TINY_YAML, [f"mllm.backbone={backbone}", f"mllm.sa2va_uri={sa2va}"])
    with pytest.raises(CheckpointError, match=r"missing: \['model-00002-of-00003.safetensors'\]"):
        build_model(config)


def test_sa2va_pickle_fallback_reads_only_known_file_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``pytorch_model.bin`` is read (tensors only); a foreign ``.bin`` beside it is never opened, and one
    alone is not taken for weights."""
    backbone, sa2va, state = _sa2va_directory(tmp_path, _RELEASE)
    (sa2va / "model.safetensors").unlink()
    torch.save(state, sa2va / "pytorch_model.bin")
    marker = tmp_path / "pwned"
    monkeypatch.setenv("VRSEG_EXPLOIT_MARKER", str(marker))
    torch.save({"x": _Exploit()}, sa2va / "training_args.bin")
    config = load_config(ModelConfig, TINY_YAML, [f"mllm.backbone={backbone}", f"mllm.sa2va_uri={sa2va}"])
    _assert_sa2va_loaded(build_model(config), state, _RELEASE)
    (sa2va / "pytorch_model.bin").rename(sa2va / "weights.bin")
    with pytest.raises(CheckpointError, match="no weights"):
        build_model(config)
    assert not marker.exists()


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
