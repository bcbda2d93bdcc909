"""Build the network from a ``ModelConfig`` and load/save its weights, locally or through any fsspec URI.

Sources (``ModelConfig``): a Hugging Face Qwen2.5-VL directory (safetensors, no remote code) or the tiny
model; a Sa2VA-Qwen2.5-VL checkpoint mapped key by key; a PEFT adapter directory; ``heads.safetensors``;
a SAM2 checkpoint (``sam2_bridge``) and fine-tuned SAM2 mask-decoder weights. Remote directories are
downloaded to a temporary directory first.

Safety: ``trust_remote_code`` is never set; a directory whose config asks for remote code (``auto_map``)
or whose model type is not ``qwen2_5_vl`` is refused; weights are read from safetensors, and a
``.bin``/``.pt`` file only through ``torch.load(weights_only=True)``, which refuses any pickle that would
need to run code (``CheckpointError``).

Exported model directory (``export_model``), openable by transformers and peft::

    backbone/            Qwen2.5-VL (config.json, model.safetensors, tokenizer + processor files; vocabulary
                         already holds the added tokens; base weights, no LoRA merged in)
    adapter/             PEFT adapter (LoRA + the added token rows), ``PeftModel.from_pretrained(backbone, adapter)``;
                         absent after full-parameter training (the backbone holds the trained weights)
    heads.safetensors    ``seg_proj.*``, ``find_head.*`` (+ ``decoupler.*``)
    sam2.safetensors     the whole SAM2 (package key names)
    model.yaml           the ModelConfig, weight locations relative to the directory (``read_model_config``
                         resolves them, for ``load_exported`` and for ``model.config=.../model.yaml``)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from omegaconf import OmegaConf
from peft import PeftModel, load_peft_weights, set_peft_model_state_dict
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Tokenizer,
)

from actors.config import to_plain
from actors.model.config import SCRATCH_BACKBONE, TINY_BACKBONE, ModelConfig, ScratchConfig, read_model_config
from actors.model.sam2_bridge import CheckpointError, build_sam2, read_state_dict
from actors.model.scratch_backbone import build_scratch_backbone
from actors.model.segmllm import SegMLLM, SegModel
from actors.uri import filesystem_for, join, protocol_of

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
_PEFT_KEY_PARTS = ("lora_", "trainable_tokens_delta", "trainable_tokens_original")

HEADS_FILE = "heads.safetensors"
SAM2_FILE = "sam2.safetensors"
SAM2_DECODER_FILE = "sam2_decoder.safetensors"
SAM2_DECODER_PREFIX = "sam_mask_decoder."
MLLM_FILE = "mllm.safetensors"
MODEL_YAML = "model.yaml"


# ---------------------------------------------------------------------------------------- file access
@contextlib.contextmanager
def local_directory(uri: str, storage_options: Mapping[str, Any] | None = None) -> Iterator[Path]:
    """A local path holding the directory ``uri`` (itself if local, else a temporary download)."""
    fs, path = filesystem_for(uri, storage_options)
    if protocol_of(uri) == "file":
        if not Path(path).is_dir():
            raise CheckpointError(f"{uri}: not a directory")
        yield Path(path)
        return
    if not fs.isdir(path):
        raise CheckpointError(f"{uri}: not a directory")
    with tempfile.TemporaryDirectory(prefix="vrseg-ckpt-") as tmp:
        for remote in fs.find(path):
            target = Path(tmp) / os.path.relpath(remote, path)
            target.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(remote, str(target))
        yield Path(tmp)


@contextlib.contextmanager
def _writable_directory(uri: str, storage_options: Mapping[str, Any] | None) -> Iterator[Path]:
    """A local directory whose files end up at ``uri`` when the block exits without error."""
    fs, path = filesystem_for(uri, storage_options)
    if protocol_of(uri) == "file":
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="vrseg-save-") as tmp:
        yield Path(tmp)
        for local in sorted(Path(tmp).rglob("*")):
            if local.is_file():
                fs.put_file(str(local), f"{path.rstrip('/')}/{local.relative_to(tmp).as_posix()}")


def read_tensors(uri: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """Tensors of one file: safetensors, or ``.bin``/``.pt`` through ``torch.load(weights_only=True)``."""
    if uri.endswith(".bin"):  # the torch format under Hugging Face's name; ``read_state_dict`` wants .pt
        fs, path = filesystem_for(uri, storage_options)
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / (Path(path).stem + ".pt")
            fs.get_file(path, str(local))
            return read_state_dict(str(local))
    return read_state_dict(uri, storage_options)


def _directory_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory: its safetensors shards, else its torch files (tensors only)."""
    files = sorted(directory.glob("*.safetensors")) or sorted(
        p for p in directory.iterdir() if p.suffix in _PICKLE_SUFFIXES
    )
    if not files:
        raise CheckpointError(f"{directory}: no .safetensors (or tensor-only .bin/.pt) weight files")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(read_tensors(str(file)))
    return state


def _refuse_remote_code(directory: Path, uri: str) -> dict[str, Any]:
    """The directory's config.json; refuses configs that need code from the checkpoint."""
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{uri}: no config.json")
    config = json.loads(config_path.read_text())
    if "auto_map" in config:
        raise CheckpointError(
            f"{uri}: config.json needs remote code (auto_map {sorted(config['auto_map'])}); "
            "refusing: vrseg never runs code shipped with a checkpoint"
        )
    if config.get("model_type") != "qwen2_5_vl":
        raise CheckpointError(f"{uri}: model_type '{config.get('model_type')}' is not qwen2_5_vl")
    return config


# ---------------------------------------------------------------------------------------- backbone
def load_backbone(
    uri: str,
    dtype: str = "float32",
    storage_options: Mapping[str, Any] | None = None,
    with_weights: bool = True,
    scratch: ScratchConfig | None = None,
) -> tuple[Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor]:
    """Qwen2.5-VL and its processor from ``"tiny"``, ``"scratch"`` (sized by ``scratch``) or a Hugging Face
    directory (local or fsspec URI).

    ``with_weights=False`` builds the architecture from config.json only (the weights come from elsewhere,
    e.g. a Sa2VA checkpoint).
    """
    if uri in (TINY_BACKBONE, SCRATCH_BACKBONE):
        sizes = scratch if uri == SCRATCH_BACKBONE and scratch is not None else ScratchConfig()
        model, processor = build_scratch_backbone(sizes)
        return model.to(_DTYPES[dtype]), processor
    with local_directory(uri, storage_options) as directory:
        _refuse_remote_code(directory, uri)
        if with_weights:
            if not list(directory.glob("*.safetensors")):
                raise CheckpointError(
                    f"{uri}: Hugging Face directories are read from safetensors only; none found"
                )
            model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
                directory, dtype=_DTYPES[dtype], use_safetensors=True, trust_remote_code=False
            )
        else:
            config = Qwen2_5_VLConfig.from_pretrained(directory, trust_remote_code=False)
            model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=_DTYPES[dtype])
        processor = Qwen2_5_VLProcessor.from_pretrained(directory, trust_remote_code=False)
    return model.eval(), processor


# ---------------------------------------------------------------------------------------- Sa2VA mapping
_LEGACY_QWEN_KEYS = (
    (re.compile(r"^model\.(layers|embed_tokens|norm)\."), r"model.language_model.\1."),
    (re.compile(r"^visual\."), "model.visual."),
)


@dataclasses.dataclass
class Sa2VAParts:
    """A Sa2VA-Qwen2.5-VL state dict split into our parts (keys in each part's own naming)."""

    qwen: dict[str, torch.Tensor]
    sam2: dict[str, torch.Tensor]
    seg_proj: dict[str, torch.Tensor]
    unexpected: list[str]


def map_sa2va_state_dict(state: Mapping[str, torch.Tensor]) -> Sa2VAParts:
    """``model.*`` -> Qwen2.5-VL (transformers < 4.52 layouts normalised to the current one),
    ``grounding_encoder.sam2_model.*`` -> SAM2 (``g_weight`` -> layer-scale ``gamma``),
    ``text_hidden_fcs.{0,2}.*`` -> ``[SEG]`` projection; anything else is reported as unexpected."""
    parts = Sa2VAParts({}, {}, {}, [])
    for key, value in state.items():
        if key.startswith("model."):
            name = key[len("model.") :]
            for pattern, replacement in _LEGACY_QWEN_KEYS:
                name = pattern.sub(replacement, name)
            parts.qwen[name] = value
        elif key.startswith("grounding_encoder.sam2_model."):
            name = key[len("grounding_encoder.sam2_model.") :]
            parts.sam2[re.sub(r"\.g_weight$", ".gamma", name)] = value
        elif re.match(r"^text_hidden_fcs\.[02]\.", key):
            parts.seg_proj[key[len("text_hidden_fcs.") :]] = value
        else:
            parts.unexpected.append(key)
    return parts


def _load_exact(
    module: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    what: str,
    optional: frozenset[str] = frozenset(),
) -> None:
    """Load ``state`` into ``module``; any missing, unexpected or mis-shaped key is an error naming it."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state) - optional)
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if own[k].shape != state[k].shape
    )
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"{what}: missing keys {missing}; unexpected keys {unexpected}; shape mismatches {mismatched}"
        )
    module.load_state_dict(dict(state), strict=False)


def load_sa2va(
    uri: str,
    qwen: Qwen2_5_VLForConditionalGeneration,
    sam2: torch.nn.Module,
    storage_options: Mapping[str, Any] | None = None,
) -> tuple[dict[str, torch.Tensor], Qwen2Tokenizer]:
    """Load a Sa2VA-Qwen2.5-VL directory into ``qwen`` and ``sam2`` (a ``SAM2Base``); return the ``[SEG]``
    projection's state dict and the checkpoint's tokenizer (which holds ``[SEG]``)."""
    with local_directory(uri, storage_options) as directory:
        parts = map_sa2va_state_dict(_directory_tensors(directory))
        tokenizer = Qwen2Tokenizer.from_pretrained(directory, trust_remote_code=False)
    if parts.unexpected:
        raise CheckpointError(
            f"{uri}: keys outside model.*, grounding_encoder.sam2_model.*, "
            f"text_hidden_fcs.{{0,2}}.*: {sorted(parts.unexpected)}"
        )
    embed = parts.qwen.get("model.language_model.embed_tokens.weight")
    if embed is not None and embed.shape[0] != qwen.get_input_embeddings().weight.shape[0]:
        qwen.resize_token_embeddings(embed.shape[0], mean_resizing=False)
    tied = _tied_keys(qwen)
    _load_exact(qwen, parts.qwen, f"{uri} (model.*)", optional=tied)
    _load_exact(sam2, parts.sam2, f"{uri} (grounding_encoder.sam2_model.*)")
    return parts.seg_proj, tokenizer


# ---------------------------------------------------------------------------------------- build / load
HEADS_SEED = 0


def build_model(config: ModelConfig) -> SegModel:
    """The network of ``config``: backbone (or tiny), Sa2VA mapping, adapter, heads, SAM2 and its decoder.

    Parts the config gives no weights for (the tiny model's heads, new token rows) are initialised under a
    fixed seed, so every process that builds the same config holds the same network; the global RNG is
    left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(HEADS_SEED)
        return _build_model(config)


def _build_model(config: ModelConfig) -> SegModel:
    mllm_config, options = config.mllm, config.mllm.storage_options
    qwen, processor = load_backbone(
        mllm_config.backbone, mllm_config.dtype, options, with_weights=mllm_config.sa2va_uri is None,
        scratch=mllm_config.scratch,
    )
    sam2 = build_sam2(config.sam2, options)
    seg_proj_state = None
    if mllm_config.sa2va_uri is not None:
        seg_proj_state, processor.tokenizer = load_sa2va(mllm_config.sa2va_uri, qwen, sam2.sam, options)
    mllm = SegMLLM(qwen, processor, mllm_config, sam2.prompt_dim)
    if seg_proj_state is not None:
        _load_exact(mllm.seg_proj, seg_proj_state, f"{mllm_config.sa2va_uri} (text_hidden_fcs)")
    if mllm_config.adapter_uri is not None:
        with local_directory(mllm_config.adapter_uri, options) as directory:
            mllm.attach_adapter(str(directory))
    if mllm_config.heads_uri is not None:
        _load_exact(mllm.heads(), read_tensors(mllm_config.heads_uri, options), mllm_config.heads_uri)
    if config.sam2_decoder_uri is not None:
        load_sam2_decoder(sam2.sam, config.sam2_decoder_uri, options)
    return SegModel(mllm, sam2, config.losses).eval()


def load_sam2_decoder(
    sam: torch.nn.Module, uri: str, storage_options: Mapping[str, Any] | None = None
) -> None:
    """Mask-decoder weights (``sam_mask_decoder.*`` keys) into a ``SAM2Base``."""
    state = read_tensors(uri, storage_options)
    wrong = sorted(k for k in state if not k.startswith(SAM2_DECODER_PREFIX))
    if wrong:
        raise CheckpointError(f"{uri}: not mask-decoder keys: {wrong}")
    _load_exact(sam.sam_mask_decoder, {k[len(SAM2_DECODER_PREFIX) :]: v for k, v in state.items()}, uri)


def load_exported(
    uri: str, storage_options: Mapping[str, Any] | None = None, overrides: list[str] | None = None
) -> SegModel:
    """A model directory written by ``export_model`` (local or fsspec URI)."""
    return build_model(exported_config(uri, storage_options, overrides))


def exported_config(
    uri: str, storage_options: Mapping[str, Any] | None = None, overrides: list[str] | None = None
) -> ModelConfig:
    """The ``ModelConfig`` of an exported directory: its ``model.yaml`` read by ``read_model_config``, which
    resolves the relative weight locations written there against ``uri``."""
    return read_model_config(join(uri, MODEL_YAML), overrides or [], storage_options)


# ---------------------------------------------------------------------------------------- save
def _save_tensors(tensors: Mapping[str, torch.Tensor], file: Path) -> None:
    safetensors.torch.save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(file))


TRAINED_PARTS = ("adapter", "heads", "sam2_decoder", "mllm", "sam2")
_PART_FILES = {
    "adapter": ("adapter/adapter_config.json", "adapter/adapter_model.safetensors"),
    "heads": (HEADS_FILE,),
    "sam2_decoder": (SAM2_DECODER_FILE,),
    "mllm": (MLLM_FILE,),
    "sam2": (SAM2_FILE,),
}


def trained_files(parts: Sequence[str]) -> frozenset[str]:
    """The files ``save_trainable`` writes for ``parts`` (relative to its directory)."""
    unknown = sorted(set(parts) - set(TRAINED_PARTS))
    if unknown:
        raise ValueError(f"unknown trained parts {unknown}; known: {list(TRAINED_PARTS)}")
    return frozenset(f for part in parts for f in _PART_FILES[part])


def save_trainable(
    model: SegModel, uri: str, parts: Sequence[str], storage_options: Mapping[str, Any] | None = None
) -> None:
    """The trained ``parts`` (training checkpoints): ``adapter`` (PEFT: LoRA + new token rows), ``heads``,
    ``sam2_decoder`` (SAM2's mask decoder), ``mllm`` (the whole Qwen2.5-VL, full-parameter training),
    ``sam2`` (the whole SAM2, tracking training)."""
    trained_files(parts)
    if "adapter" in parts and not isinstance(model.mllm.qwen, PeftModel):
        raise ValueError("model has no PEFT adapter to save (call enable_training or load an adapter first)")
    with _writable_directory(uri, storage_options) as directory:
        if "adapter" in parts:
            model.mllm.qwen.save_pretrained(str(directory / "adapter"), save_embedding_layers=False)
        if "heads" in parts:
            _save_tensors(model.mllm.heads().state_dict(), directory / HEADS_FILE)
        if "sam2_decoder" in parts:
            decoder = model.sam2.sam.sam_mask_decoder.state_dict()
            _save_tensors({SAM2_DECODER_PREFIX + k: v for k, v in decoder.items()}, directory / SAM2_DECODER_FILE)
        if "mllm" in parts:
            _save_tensors(_base_state_dict(model.mllm), directory / MLLM_FILE)
        if "sam2" in parts:
            _save_tensors(model.sam2.sam.state_dict(), directory / SAM2_FILE)


def load_trainable(
    model: SegModel, uri: str, parts: Sequence[str], storage_options: Mapping[str, Any] | None = None
) -> None:
    """Restore what ``save_trainable`` wrote for ``parts`` into a model built from the same config (resume)."""
    trained_files(parts)
    if "adapter" in parts and not isinstance(model.mllm.qwen, PeftModel):
        raise ValueError("model has no PEFT adapter to load into (call enable_training first)")
    with local_directory(uri, storage_options) as directory:
        if "adapter" in parts:
            result = set_peft_model_state_dict(model.mllm.qwen, load_peft_weights(str(directory / "adapter")))
            if result.unexpected_keys:
                raise CheckpointError(f"{uri}/adapter: unexpected keys {sorted(result.unexpected_keys)}")
        if "heads" in parts:
            _load_exact(model.mllm.heads(), read_tensors(str(directory / HEADS_FILE)), f"{uri}/{HEADS_FILE}")
        if "sam2_decoder" in parts:
            load_sam2_decoder(model.sam2.sam, str(directory / SAM2_DECODER_FILE))
        if "mllm" in parts:
            _load_exact(model.mllm.hf_model, read_tensors(str(directory / MLLM_FILE)), f"{uri}/{MLLM_FILE}",
                        optional=_tied_keys(model.mllm.hf_model))
        if "sam2" in parts:
            _load_exact(model.sam2.sam, read_tensors(str(directory / SAM2_FILE)), f"{uri}/{SAM2_FILE}")


def _tied_keys(qwen: Qwen2_5_VLForConditionalGeneration) -> frozenset[str]:
    return frozenset({"lm_head.weight"}) if qwen.config.tie_word_embeddings else frozenset()


def _base_state_dict(mllm: SegMLLM) -> dict[str, torch.Tensor]:
    """The backbone's own weights (peft wrappers unwrapped, adapters left out), in transformers' key names."""
    state = {}
    for key, value in mllm.hf_model.state_dict().items():
        if any(part in key for part in _PEFT_KEY_PARTS):
            continue
        state[key.replace(".token_adapter.base_layer.", ".").replace(".base_layer.", ".")] = value
    return state


def export_model(
    model: SegModel, config: ModelConfig, uri: str, storage_options: Mapping[str, Any] | None = None
) -> None:
    """Write the model directory described in the module docstring (the inverse of ``load_exported``): the
    backbone's own weights (trained ones after full-parameter training), the PEFT adapter when there is
    one, the heads and the whole SAM2 as it is now (its trained mask decoder included)."""
    peft = isinstance(model.mllm.qwen, PeftModel)
    save_trainable(model, uri, ("adapter", "heads", "sam2") if peft else ("heads", "sam2"), storage_options)
    with _writable_directory(uri, storage_options) as directory:
        backbone = directory / "backbone"
        model.mllm.hf_model.save_pretrained(
            str(backbone), state_dict=_base_state_dict(model.mllm), safe_serialization=True
        )
        model.mllm.processor.save_pretrained(str(backbone))
        plain = to_plain(config)
        plain["mllm"].update(
            backbone="backbone",
            sa2va_uri=None,
            adapter_uri="adapter" if peft else None,
            heads_uri=HEADS_FILE,
            storage_options={},
        )
        plain["sam2"]["checkpoint"] = SAM2_FILE
        plain["sam2_decoder_uri"] = None
        OmegaConf.save(OmegaConf.create(plain), directory / MODEL_YAML)
