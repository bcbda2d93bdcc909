"""Build the network from a ``ModelConfig`` and load/save its weights, locally or through any fsspec URI.

Sources (``ModelConfig``): a Hugging Face Qwen2.5-VL directory (safetensors, no remote code) or the tiny
model; a Sa2VA-Qwen2.5-VL checkpoint mapped key by key; a PEFT adapter directory; ``heads.safetensors``;
a SAM2 checkpoint (``sam2_bridge``) and fine-tuned SAM2 mask-decoder weights. Remote directories are
downloaded to a temporary directory first, except a Sa2VA directory's weights: those are read shard by shard
(one shard on local disk at a time) and copied tensor by tensor into the model built beforehand, so loading
holds little more than the final model in memory.

Safety: ``trust_remote_code`` is never set; a directory whose config asks for remote code (``auto_map``)
or whose model type is not ``qwen2_5_vl`` is refused; weights are read from safetensors, and a
``.bin``/``.pt`` file only through ``torch.load(weights_only=True)``, which refuses any pickle that would
need to run code (``CheckpointError``); a Sa2VA directory's pickle fallback reads only the Hugging Face weight
file names (``pytorch_model.bin`` or the shards its index names), never any other file in the folder.

Exported model directory (``export_model``), openable by transformers and peft::

    backbone/            Qwen2.5-VL (config.json, model.safetensors, tokenizer + processor files; vocabulary
                         already holds the added tokens; base weights, no LoRA merged in)
    adapter/             PEFT adapter (LoRA + the added token rows), ``PeftModel.from_pretrained(backbone, adapter)``;
                         its ``base_model_name_or_path`` is ``backbone/``'s URI; absent after full-parameter
                         training (the backbone holds the trained weights)
    heads.safetensors    ``seg_proj.*``, ``find_head.*`` (+ ``seg_norm.*``, ``location_map.*``, ``text_prompt.*``,
                         ``decoupler.*``)
    sam2.safetensors     the whole SAM2 (package key names)
    sam2_decoder.safetensors   with ``sam2.prompt_heads: separate``: the language-prompted path's own mask
                         decoder (``sam_mask_decoder.*``, + ``sam_prompt_encoder.mask_downscaling.*``); the
                         tracker's are in ``sam2.safetensors``
    model.yaml           the ModelConfig, weight locations relative to the directory (``read_model_config``
                         resolves them, for ``load_exported`` and for ``model.config=.../model.yaml``)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import struct
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem
from omegaconf import OmegaConf
from peft import PeftModel, load_peft_weights, set_peft_model_state_dict
from safetensors import safe_open
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Tokenizer,
)

from actors.config import to_plain
from actors.model.config import SCRATCH_BACKBONE, TINY_BACKBONE, ModelConfig, ScratchConfig, read_model_config
from actors.model.heads import LocationMap, build_location_map
from actors.model.sam2_bridge import CheckpointError, Sam2Bridge, build_sam2, read_state_dict
from actors.model.scratch_backbone import build_scratch_backbone
from actors.model.segmllm import SegMLLM, SegModel
from actors.uri import filesystem_for, is_relative, join, protocol_of

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_PEFT_KEY_PARTS = ("lora_", "trainable_tokens_delta", "trainable_tokens_original")

HEADS_FILE = "heads.safetensors"
LOCATION_MAP_PREFIX = "location_map."  # the location map head's keys in heads.safetensors
SAM2_FILE = "sam2.safetensors"
SAM2_DECODER_FILE = "sam2_decoder.safetensors"
SAM2_DECODER_PREFIX = "sam_mask_decoder."
SAM2_MASK_PROMPT_PREFIX = "sam_prompt_encoder.mask_downscaling."  # trained with mllm.location_map
MLLM_FILE = "mllm.safetensors"
MODEL_YAML = "model.yaml"


# ---------------------------------------------------------------------------------------- file access
@contextlib.contextmanager
def local_directory(
    uri: str, storage_options: Mapping[str, Any] | None = None, skip_suffixes: tuple[str, ...] = ()
) -> Iterator[Path]:
    """A local path holding the directory ``uri`` (itself if local, else a temporary download of its files
    except those ending in ``skip_suffixes``)."""
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
            if remote.endswith(skip_suffixes):
                continue
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

    ``with_weights=False`` builds the architecture from config.json only, untied (``lm_head`` apart from
    ``embed_tokens`` whatever config.json says): the weights come from elsewhere, a Sa2VA checkpoint, whose
    exporter writes ``tie_word_embeddings=False`` and ships a separately trained ``lm_head``; the
    directory's weight files are not read (nor downloaded).
    """
    if uri in (TINY_BACKBONE, SCRATCH_BACKBONE):
        sizes = scratch if uri == SCRATCH_BACKBONE and scratch is not None else ScratchConfig()
        model, processor = build_scratch_backbone(sizes)
        return model.to(_DTYPES[dtype]), processor
    with local_directory(uri, storage_options, () if with_weights else _WEIGHT_SUFFIXES) as directory:
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
            config.tie_word_embeddings = False  # both levels: v5 re-ties from a pre-v5 text_config's flag
            config.get_text_config().tie_word_embeddings = False
            model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=_DTYPES[dtype])
        processor = Qwen2_5_VLProcessor.from_pretrained(directory, trust_remote_code=False)
    return model.eval(), processor


# ---------------------------------------------------------------------------------------- Sa2VA mapping
_LEGACY_QWEN_KEYS = (
    (re.compile(r"^model\.(layers|embed_tokens|norm)\."), r"model.language_model.\1."),
    (re.compile(r"^visual\."), "model.visual."),
)
# The Hugging Face weight file names, in the order they are looked for: (index, single file).
_SA2VA_WEIGHT_NAMES = (
    ("model.safetensors.index.json", "model.safetensors"),
    ("pytorch_model.bin.index.json", "pytorch_model.bin"),
)
# A ``safe_open`` handle keeps every page it served resident until it closes; it is reopened after serving
# this many bytes, so loading holds at most this much (or one larger tensor) of a shard beside the model.
_MAPPED_BYTES = 32 * 2**20


def sa2va_key(key: str) -> tuple[str, str] | None:
    """The part (``qwen``, ``sam2`` or ``seg_proj``) a Sa2VA-Qwen2.5-VL key belongs to and its name there:
    ``model.*`` -> Qwen2.5-VL (transformers < 4.52 layouts normalised to the current one),
    ``grounding_encoder.sam2_model.*`` -> SAM2 (``g_weight`` -> layer-scale ``gamma``),
    ``text_hidden_fcs.{0,2}.*`` -> ``[SEG]`` projection; None for anything else."""
    if key.startswith("model."):
        name = key[len("model.") :]
        for pattern, replacement in _LEGACY_QWEN_KEYS:
            name = pattern.sub(replacement, name)
        return "qwen", name
    if key.startswith("grounding_encoder.sam2_model."):
        return "sam2", re.sub(r"\.g_weight$", ".gamma", key[len("grounding_encoder.sam2_model.") :])
    if re.match(r"^text_hidden_fcs\.[02]\.", key):
        return "seg_proj", key[len("text_hidden_fcs.") :]
    return None


def sa2va_weight_files(fs: AbstractFileSystem, root: str, uri: str) -> list[str]:
    """The weight file names of the Sa2VA directory ``root`` (on ``fs``; ``uri`` for messages), by the
    Hugging Face names only: the shards ``model.safetensors.index.json`` names, else ``model.safetensors``,
    else (tensor-only pickles) the shards ``pytorch_model.bin.index.json`` names, else ``pytorch_model.bin``.
    A shard an index names that the directory lacks is an error naming it."""
    for index_name, single in _SA2VA_WEIGHT_NAMES:
        if fs.isfile(f"{root}/{index_name}"):
            with fs.open(f"{root}/{index_name}", "rb") as handle:
                weight_map = json.load(handle).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f"{uri}/{index_name}: no weight_map")
            shards = sorted(set(weight_map.values()))
            foreign = [name for name in shards if "/" in name or name.startswith(".")]
            if foreign:
                raise CheckpointError(f"{uri}/{index_name}: shard names outside the directory: {foreign}")
            absent = [name for name in shards if not fs.isfile(f"{root}/{name}")]
            if absent:
                raise CheckpointError(f"{uri}: shards named by {index_name} are missing: {absent}")
            return shards
        if fs.isfile(f"{root}/{single}"):
            return [single]
    raise CheckpointError(
        f"{uri}: no weights (looked for {[name for pair in _SA2VA_WEIGHT_NAMES for name in pair]})"
    )


def _shard_shapes(
    fs: AbstractFileSystem, path: str, uri: str, storage_options: Mapping[str, Any] | None
) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the weight file ``path`` (``uri``): a safetensors file's header only (its tensors are
    not read), a tensor-only pickle through ``read_tensors``."""
    if not path.endswith(".safetensors"):
        return {key: tuple(value.shape) for key, value in read_tensors(uri, storage_options).items()}
    try:
        with fs.open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        return {key: tuple(entry["shape"]) for key, entry in header.items() if key != "__metadata__"}
    except (struct.error, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{uri}: not a valid safetensors file: {exc}") from None


@contextlib.contextmanager
def _local_file(fs: AbstractFileSystem, path: str) -> Iterator[str]:
    """A local path holding the file ``path`` of ``fs``: itself if local, else a temporary download."""
    if isinstance(fs, LocalFileSystem):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="vrseg-shard-") as tmp:
        local = str(Path(tmp) / Path(path).name)
        fs.get_file(path, local)
        yield local


def _shard_tensors(
    fs: AbstractFileSystem, path: str, uri: str, storage_options: Mapping[str, Any] | None
) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors of the weight file ``path`` (``uri``), one at a time. A safetensors file is read with
    ``safe_open`` from local disk (a remote one is downloaded alone first), its handle reopened after every
    ``_MAPPED_BYTES`` served; a tensor-only pickle is read whole (memory-mapped when local)."""
    if not path.endswith(".safetensors"):
        yield from read_tensors(uri, storage_options).items()
        return
    with _local_file(fs, path) as local:
        with safe_open(local, "pt") as handle:
            keys = list(handle.keys())
        position = 0
        while position < len(keys):
            served = 0
            with safe_open(local, "pt") as handle:
                while position < len(keys) and served < _MAPPED_BYTES:
                    tensor = handle.get_tensor(keys[position])
                    served += tensor.numel() * tensor.element_size()
                    yield keys[position], tensor
                    position += 1


def _check_keys(
    own: Mapping[str, torch.Tensor],
    incoming: Mapping[str, tuple[int, ...]],
    what: str,
    optional: frozenset[str] = frozenset(),
) -> None:
    """Any key of ``own`` missing from ``incoming`` (but ``optional``), any unexpected key and any shape
    mismatch is an error naming it."""
    missing = sorted(set(own) - set(incoming) - optional)
    unexpected = sorted(set(incoming) - set(own))
    mismatched = sorted(
        f"{k} {tuple(incoming[k])} vs {tuple(own[k].shape)}"
        for k in set(own) & set(incoming)
        if tuple(own[k].shape) != tuple(incoming[k])
    )
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"{what}: missing keys {missing}; unexpected keys {unexpected}; shape mismatches {mismatched}"
        )


def _copy_checked(
    target: torch.Tensor, value: torch.Tensor, key: str, source: str, written: dict[int, tuple[str, str]]
) -> None:
    """Copy ``value`` (``key`` of ``source``) into ``target``. ``written`` maps the storage each earlier key
    filled to that key and its source: a second tensor landing in the same storage (weights tied in the
    model) must hold the same values, else the first would be silently overwritten, which is an error."""
    place = target.data_ptr()
    earlier = written.get(place) if target.numel() else None
    if earlier is None:
        target.copy_(value)
        written[place] = (key, source)
    elif not torch.equal(target, value.to(target.dtype)):
        raise CheckpointError(
            f"{source}: '{key}' and '{earlier[0]}' (from {earlier[1]}) land in the same tensor of the model "
            "(its weights are tied) but hold different values; build the model untied to load both"
        )


def _load_exact(
    module: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    what: str,
    optional: frozenset[str] = frozenset(),
) -> None:
    """Load ``state`` into ``module``; any missing, unexpected or mis-shaped key, or two keys with different
    values landing in one tied tensor, is an error naming them."""
    own = module.state_dict()
    _check_keys(own, {key: tuple(value.shape) for key, value in state.items()}, what, optional)
    written: dict[int, tuple[str, str]] = {}
    with torch.no_grad():
        for key, value in state.items():
            _copy_checked(own[key], value, key, what, written)


def load_sa2va(
    uri: str,
    qwen: Qwen2_5_VLForConditionalGeneration,
    sam2: torch.nn.Module,
    storage_options: Mapping[str, Any] | None = None,
) -> tuple[dict[str, torch.Tensor], Qwen2Tokenizer]:
    """Load a Sa2VA-Qwen2.5-VL directory into ``qwen`` and ``sam2`` (a ``SAM2Base``); return the ``[SEG]``
    projection's state dict and the checkpoint's tokenizer (which holds ``[SEG]``).

    The keys and shapes of every weight file (``sa2va_weight_files``) are checked first, from the
    safetensors headers: an unknown, missing or mis-shaped key is an error naming it and nothing is written.
    Then the files are read one at a time and each tensor is copied into its place (``_shard_tensors``), so
    loading holds the model and a bounded part of one shard. ``qwen`` should be built untied (Sa2VA ships
    its own ``lm_head``): two tensors landing in one tied tensor with different values are an error."""
    fs, root = filesystem_for(uri, storage_options)
    root = root.rstrip("/")
    if not fs.isdir(root):
        raise CheckpointError(f"{uri}: not a directory")
    files = sa2va_weight_files(fs, root, uri)
    with local_directory(uri, storage_options, skip_suffixes=_WEIGHT_SUFFIXES) as directory:
        tokenizer = Qwen2Tokenizer.from_pretrained(directory, trust_remote_code=False)
    shapes: dict[str, dict[str, tuple[int, ...]]] = {"qwen": {}, "sam2": {}, "seg_proj": {}}
    unexpected: list[str] = []
    for name in files:
        for key, shape in _shard_shapes(fs, f"{root}/{name}", join(uri, name), storage_options).items():
            part = sa2va_key(key)
            if part is None:
                unexpected.append(key)
            else:
                shapes[part[0]][part[1]] = shape
    if unexpected:
        raise CheckpointError(
            f"{uri}: keys outside model.*, grounding_encoder.sam2_model.*, "
            f"text_hidden_fcs.{{0,2}}.*: {sorted(unexpected)}"
        )
    embed = shapes["qwen"].get("model.language_model.embed_tokens.weight")
    if embed is not None and embed[0] != qwen.get_input_embeddings().weight.shape[0]:
        qwen.resize_token_embeddings(embed[0], mean_resizing=False)
    targets = {"qwen": qwen.state_dict(), "sam2": sam2.state_dict()}
    _check_keys(targets["qwen"], shapes["qwen"], f"{uri} (model.*)", optional=_tied_keys(qwen))
    _check_keys(targets["sam2"], shapes["sam2"], f"{uri} (grounding_encoder.sam2_model.*)")
    seg_proj: dict[str, torch.Tensor] = {}
    written: dict[int, tuple[str, str]] = {}
    with torch.no_grad():
        for name in files:
            source = join(uri, name)
            for key, tensor in _shard_tensors(fs, f"{root}/{name}", source, storage_options):
                part, own = sa2va_key(key)  # type: ignore[misc] - every key was mapped above
                if part == "seg_proj":
                    seg_proj[own] = tensor.clone()
                else:
                    _copy_checked(targets[part][own], tensor, key, source, written)
    return seg_proj, tokenizer


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
    mllm = SegMLLM(qwen, processor, mllm_config, sam2.prompt_dim, sam2.feature_channels)
    if seg_proj_state is not None:
        _load_exact(mllm.seg_proj, seg_proj_state, f"{mllm_config.sa2va_uri} (text_hidden_fcs)")
    if mllm_config.adapter_uri is not None:
        with local_directory(mllm_config.adapter_uri, options) as directory:
            mllm.attach_adapter(str(directory))
    if mllm_config.heads_uri is not None:
        _load_exact(mllm.heads(), read_tensors(mllm_config.heads_uri, options), mllm_config.heads_uri)
    if config.sam2_decoder_uri is not None:
        load_sam2_decoder(sam2, config.sam2_decoder_uri, options)
    return SegModel(mllm, sam2, config.losses).eval()


def load_sam2_decoder(
    sam2: Sam2Bridge, uri: str, storage_options: Mapping[str, Any] | None = None
) -> None:
    """Mask-decoder weights (``sam_mask_decoder.*`` keys) into the bridge's language-prompted path, and the
    mask-prompt downscaling (``sam_prompt_encoder.mask_downscaling.*``) when the file has it (a model trained
    with ``mllm.location_map`` trains both). With ``sam2.prompt_heads: separate`` they go into the prompt
    heads' copies (made first from SAM2's own), else into SAM2's own."""
    state = read_tensors(uri, storage_options)
    wrong = sorted(k for k in state if not k.startswith((SAM2_DECODER_PREFIX, SAM2_MASK_PROMPT_PREFIX)))
    if wrong:
        raise CheckpointError(f"{uri}: not mask-decoder keys: {wrong}")
    sam2.separate_prompt_heads()
    for prefix, module in ((SAM2_DECODER_PREFIX, sam2.mask_decoder),
                           (SAM2_MASK_PROMPT_PREFIX, sam2.prompt_encoder.mask_downscaling)):
        part = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if part or prefix == SAM2_DECODER_PREFIX:
            _load_exact(module, part, uri)


def load_location_map(config: ModelConfig, feature_channels: list[int], prompt_dim: int) -> LocationMap | None:
    """The ``mllm.location_map`` head alone (``None`` when off), with its weights from ``heads_uri``: what the
    propagator, which holds SAM2 but not the MLLM, decodes key frames with."""
    mllm_config = config.mllm
    location_map = build_location_map(mllm_config.location_map, feature_channels, prompt_dim, _DTYPES[mllm_config.dtype])
    if location_map is not None and mllm_config.heads_uri is not None:
        heads = read_tensors(mllm_config.heads_uri, mllm_config.storage_options)
        state = {k[len(LOCATION_MAP_PREFIX) :]: v for k, v in heads.items() if k.startswith(LOCATION_MAP_PREFIX)}
        _load_exact(location_map, state, mllm_config.heads_uri)
    return location_map


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
    ``sam2_decoder`` (SAM2's mask decoder, with ``mllm.location_map`` also its mask-prompt downscaling), ``mllm`` (the whole Qwen2.5-VL, full-parameter training),
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
            sam2 = model.sam2
            tensors = {SAM2_DECODER_PREFIX + k: v for k, v in sam2.mask_decoder.state_dict().items()}
            if model.mllm.location_map is not None:
                downscaling = sam2.prompt_encoder.mask_downscaling.state_dict()
                tensors.update({SAM2_MASK_PROMPT_PREFIX + k: v for k, v in downscaling.items()})
            _save_tensors(tensors, directory / SAM2_DECODER_FILE)
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
            load_sam2_decoder(model.sam2, str(directory / SAM2_DECODER_FILE))
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


@contextlib.contextmanager
def _adapter_base(model: SegModel, base_uri: str) -> Iterator[None]:
    """Within the block, the active PEFT adapter (if any) names ``base_uri`` as its base model, which
    ``save_pretrained`` writes into ``adapter_config.json`` (``base_model_name_or_path``)."""
    qwen = model.mllm.qwen
    if not isinstance(qwen, PeftModel):
        yield
        return
    config = qwen.peft_config[qwen.active_adapter]
    previous, config.base_model_name_or_path = config.base_model_name_or_path, base_uri
    try:
        yield
    finally:
        config.base_model_name_or_path = previous


def export_model(
    model: SegModel, config: ModelConfig, uri: str, storage_options: Mapping[str, Any] | None = None
) -> None:
    """Write the model directory described in the module docstring (the inverse of ``load_exported``): the
    backbone's own weights (trained ones after full-parameter training), the PEFT adapter when there is
    one, the heads and the whole SAM2 as it is now (its trained mask decoder included; with ``separate``
    prompt heads SAM2's own decoder is the tracker's and the prompted path's is ``sam2_decoder.safetensors``)."""
    peft = isinstance(model.mllm.qwen, PeftModel)
    separate = model.sam2.prompt_heads is not None  # the prompted path's own decoder beside SAM2's
    parts = ("adapter", "heads", "sam2") if peft else ("heads", "sam2")
    backbone_uri = join(os.path.abspath(uri) if is_relative(uri) else uri, "backbone")
    with _adapter_base(model, backbone_uri):
        save_trainable(model, uri, (*parts, "sam2_decoder") if separate else parts, storage_options)
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
        plain["sam2_decoder_uri"] = SAM2_DECODER_FILE if separate else None
        OmegaConf.save(OmegaConf.create(plain), directory / MODEL_YAML)
