"""``ModelConfig``: the schema of ``configs/model/*.yaml`` (the MLLM, the SAM2 side, the loss weights).

Weight locations are fsspec URIs (plain path, ``file://``, ``s3://``); ``"tiny"`` as the backbone builds
the tiny Qwen2.5-VL and ``"scratch"`` the one sized by ``mllm.scratch``, both with seeded random weights
(``actors.model.scratch_backbone``). Load a model YAML with ``read_model_config(uri, overrides,
storage_options)``: the file may live at any fsspec URI, and relative weight locations written in it are
resolved against its directory (an exported ``model.yaml`` names its weights that way); unknown keys and
bad values fail there, before any weights are read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

from omegaconf import MISSING, OmegaConf

from actors.config import ConfigError, load_config, read_yaml, resolve_config_location
from actors.model.losses import LossConfig, TrackingLossConfig
from actors.model.sam2_bridge import Sam2Config
from actors.uri import filesystem_for, is_relative, join, parent

TINY_BACKBONE = "tiny"
SCRATCH_BACKBONE = "scratch"
VOCABULARIES = ("tiny", "procedural")  # the offline vocabularies of actors.model.scratch_backbone
BUILT_BACKBONES = (TINY_BACKBONE, SCRATCH_BACKBONE)
TRAINING_MODES = ("lora", "full", "heads")  # what joint training updates (``SegModel.enable_training``)
WEIGHT_LOCATIONS = (
    "mllm.backbone",
    "mllm.sa2va_uri",
    "mllm.adapter_uri",
    "mllm.heads_uri",
    "sam2.checkpoint",
    "sam2_decoder_uri",
)
_DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class LoraConfigSection:
    """LoRA on the LLM's linear layers (peft). ``target_modules``: projection names inside the decoder layers."""

    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"mllm.lora.rank must be >= 1, got {self.rank}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"mllm.lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("mllm.lora.target_modules is empty")


@dataclass
class ScratchConfig:
    """A Qwen2.5-VL built from a config with seeded random weights (``mllm.backbone: scratch``; the defaults
    are the tiny model's sizes, which ``backbone: tiny`` always uses).

    ``vocabulary``: ``tiny`` or ``procedural`` (``actors.model.scratch_backbone``). LLM: ``hidden_size``,
    ``intermediate_size``, ``num_layers``, ``num_heads`` / ``num_kv_heads`` (grouped-query attention). Vision
    tower: ``vision_*`` sizes, ``patch_size``, ``merge_size`` (2x2 patches -> one LLM token),
    ``temporal_patch_size``. ``seed``: the initialisation.
    """

    vocabulary: str = "tiny"
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    vision_depth: int = 2
    vision_hidden_size: int = 32
    vision_intermediate_size: int = 64
    vision_heads: int = 2
    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2
    seed: int = 1234

    def __post_init__(self) -> None:
        if self.vocabulary not in VOCABULARIES:
            raise ValueError(f"mllm.scratch.vocabulary must be one of {list(VOCABULARIES)}, got '{self.vocabulary}'")
        for name in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "vision_depth",
                     "vision_hidden_size", "vision_intermediate_size", "vision_heads", "patch_size", "merge_size",
                     "temporal_patch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"mllm.scratch.{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError("mllm.scratch: hidden_size must divide by num_heads, num_heads by num_kv_heads")
        if (self.hidden_size // self.num_heads) % 4 or self.vision_hidden_size % self.vision_heads:
            raise ValueError("mllm.scratch: the LLM head size must divide by 4 (mRoPE), vision_hidden_size by "
                             "vision_heads")


@dataclass
class SegNormConfig:
    """Running standardisation of the ``[SEG]`` states before the projection
    (``actors.model.heads.RunningStandardization``): for training from scratch, off for pretrained models."""

    enabled: bool = False
    momentum: float = 0.01
    shrinkage: float = 0.1

    def __post_init__(self) -> None:
        if not 0 < self.momentum <= 1 or self.shrinkage <= 0:
            raise ValueError(f"mllm.seg_norm needs 0 < momentum <= 1 and shrinkage > 0, got momentum "
                             f"{self.momentum} and shrinkage {self.shrinkage}")


@dataclass
class LocationMapConfig:
    """The dense SAM2 prompt grounded by the ``[SEG]`` prompt (``actors.model.heads.LocationMap``): for
    training from scratch, off for pretrained models. ``level``: the map's grid, of stride 4 * 2^level
    on SAM2's input (0: stride 4, SAM2's finest feature level and its mask prompt's grid; 1: 8; 2: 16);
    ``hidden``: the key network's width; ``pixels``: the key network also reads the frame's normalised
    pixels, each grid cell's block of them as channels (space-to-depth); ``residual``: the map is also added to SAM2's low-resolution mask logits, so the
    decoder refines it instead of having to learn to read it from the dense prompt; ``dilations``: one 3x3
    convolution of the key network per entry, with that dilation (its receptive field grows with their sum)."""

    enabled: bool = False
    level: int = 1
    hidden: int = 64
    pixels: bool = False
    residual: bool = False
    dilations: list[int] = field(default_factory=lambda: [1, 1])

    def __post_init__(self) -> None:
        if self.level not in (0, 1, 2) or self.hidden < 1:
            raise ValueError(f"mllm.location_map needs level 0, 1 or 2 and hidden >= 1, got level {self.level} and "
                             f"hidden {self.hidden}")
        if not self.dilations or any(d < 1 for d in self.dilations):
            raise ValueError(f"mllm.location_map.dilations must be a non-empty list of integers >= 1, got "
                             f"{self.dilations}")


@dataclass
class TDAConfig:
    """VRS-HQ temporal dynamic aggregation of per-frame ``<SEG>`` into ``<TAK>`` (Eq. 2)."""

    enabled: bool = False
    alpha: float = 0.1


@dataclass
class DecoupleConfig:
    """DeSa2VA decoupled text/visual prompts (Sec. 3.2), trained in a single joint phase.

    DeSa2VA trains in two phases: text pre-training of a separate text decoder (ground-truth labels turned
    into point prompts), then decoupling with that decoder frozen. vrseg implements neither the separate
    text decoder nor the pre-training phase: both prompts are decoded by the one SAM2 mask decoder and
    trained together with the decoupler in one phase ("single-phase decoupling"), so it is DeSa2VA's
    decoupling and fusion without its text pre-training (the paper's "without pre-training" rows).
    Inference fuses and optionally re-prompts with the same two prompts (``segmllm.decode_seg_prompts``).
    """

    enabled: bool = False
    grl_scale: float = 1.0
    club_hidden: int = 128


@dataclass
class MLLMConfig:
    """The Qwen2.5-VL side.

    backbone (required): ``"tiny"``, ``"scratch"`` (built from ``scratch``) or the URI of a Hugging Face Qwen2.5-VL directory (config, safetensors, tokenizer,
        processor files).
    sa2va_uri: a Sa2VA-Qwen2.5-VL checkpoint directory mapped key by key onto the backbone, SAM2 and the
        ``[SEG]`` projection (its tokenizer, carrying ``[SEG]``, replaces the backbone's).
    adapter_uri: a PEFT adapter directory (LoRA + the new token rows); heads_uri: ``heads.safetensors``.
    video_tokens_per_frame: LLM tokens per temporal token of the low-res video (MomentSeg: <= 16).
    video_token_pooling: ``none``, or ``mean``: each temporal token's visual tokens mean-pooled into one
    (VideoLISA's sparse frames, ``extract_video_feats``), at the position of its temporal index.
    image_max_tokens: LLM tokens per high-res key frame.
    video_fps: frame rate of the low-res frames handed in, for Qwen2.5-VL's temporal position ids.
    suffix_batch: expressions run together on one shared prefix.
    seg_norm: running standardisation of the ``[SEG]`` states (training from scratch).
    location_map: the ``[SEG]``-grounded dense SAM2 prompt (training from scratch).
    text_prompt: add the projected mean token embedding of the expression to the ``[SEG]`` prompt
        (``actors.model.heads.TextPrompt``; training from scratch).
    scratch: the sizes of a ``"scratch"`` backbone.
    """

    backbone: str = MISSING
    sa2va_uri: str | None = None
    adapter_uri: str | None = None
    heads_uri: str | None = None
    storage_options: dict[str, Any] = field(default_factory=dict)
    dtype: str = "float32"
    find_dim: int = 256
    find_tau: float = 0.07
    video_tokens_per_frame: int = 16
    video_token_pooling: str = "none"
    image_max_tokens: int = 256
    video_fps: float = 2.0
    suffix_batch: int = 16
    gradient_checkpointing: bool = False
    lora: LoraConfigSection = field(default_factory=LoraConfigSection)
    scratch: ScratchConfig = field(default_factory=ScratchConfig)
    seg_norm: SegNormConfig = field(default_factory=SegNormConfig)
    location_map: LocationMapConfig = field(default_factory=LocationMapConfig)
    text_prompt: bool = False
    tda: TDAConfig = field(default_factory=TDAConfig)
    decouple: DecoupleConfig = field(default_factory=DecoupleConfig)

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ValueError(f"mllm.dtype must be one of {_DTYPES}, got '{self.dtype}'")
        for name in ("find_dim", "video_tokens_per_frame", "image_max_tokens", "suffix_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"mllm.{name} must be >= 1, got {getattr(self, name)}")
        if self.video_token_pooling not in ("none", "mean"):
            raise ValueError(f"mllm.video_token_pooling must be 'none' or 'mean', got '{self.video_token_pooling}'")
        if self.find_tau <= 0 or self.video_fps <= 0:
            raise ValueError("mllm.find_tau and mllm.video_fps must be > 0")


@dataclass
class ModelConfig:
    """The whole network: ``mllm`` (this file), ``sam2`` (``actors.model.sam2_bridge.Sam2Config``), ``losses``
    (the joint objective's weights) and ``tracking_losses`` (SAM2's tracking objective, ``vrseg train``'s
    ``objective: sam2_tracking``).

    ``sam2_decoder_uri``: fine-tuned SAM2 mask-decoder weights (``sam2_decoder.safetensors``, SAM2 key names)
    loaded over ``sam2.checkpoint``.
    """

    mllm: MLLMConfig = field(default_factory=MLLMConfig)
    sam2: Sam2Config = field(default_factory=Sam2Config)
    sam2_decoder_uri: str | None = None
    losses: LossConfig = field(default_factory=LossConfig)
    tracking_losses: TrackingLossConfig = field(default_factory=TrackingLossConfig)

    def weight_locations(self) -> list[str]:
        """The weight locations that are set (``WEIGHT_LOCATIONS`` order; the backbone even if built)."""
        return [value for value in attrgetter(*WEIGHT_LOCATIONS)(self) if value is not None]

    def __post_init__(self) -> None:
        if (
            self.mllm.backbone not in BUILT_BACKBONES
            and self.mllm.sa2va_uri is None
            and self.sam2.checkpoint is None
        ):
            raise ValueError(
                "sam2.checkpoint is not set: a real backbone needs real SAM2 weights "
                "(randomly initialised SAM2 is for models built from scratch only)"
            )


def _relative_location(key: str, value: Any) -> bool:  # noqa: ANN401 - any YAML value
    """Whether ``value`` written at ``key`` is a weight location to resolve against the file's directory."""
    if not isinstance(value, str) or value == MISSING or "${" in value:
        return False  # not set, "???" (required), or an interpolation resolved after the merge
    return is_relative(value) and not (key == "mllm.backbone" and value in BUILT_BACKBONES)


def read_model_config(
    uri: str, overrides: Sequence[str] = (), storage_options: Mapping[str, Any] | None = None
) -> ModelConfig:
    """The ``ModelConfig`` of the model YAML at ``uri`` (local path, ``file://``, ``s3://``, ...) with
    ``overrides`` (``key=value``) on top.

    Location rule: a weight location (``WEIGHT_LOCATIONS``) written in the file as a plain relative path
    is resolved against the file's directory (``actors.uri.parent`` + ``actors.uri.join``; local
    directories made absolute) and must exist. Absolute paths, URIs with a scheme, the built backbones
    (``BUILT_BACKBONES``: ``"tiny"``, ``"scratch"``), ``???`` and ``${...}`` interpolations, and every
    location given in ``overrides`` are kept as given (so a relative override is relative to the working directory).
    ``storage_options`` (with the environment, as in ``actors.uri.filesystem_for``) read the file and
    become ``mllm.storage_options`` (the weights' reads, and the existence checks) unless the file or an
    override sets those. ``ConfigError`` names the file and, for a location, the key and where it
    resolved to. A relative ``uri`` missing from the working directory is read from the project root
    (``actors.config.resolve_config_location``), so shipped configs load from anywhere.
    """
    uri = resolve_config_location(uri)
    layer = OmegaConf.to_container(read_yaml(uri, storage_options))
    resolved: dict[str, tuple[str, str]] = {}  # key -> (as written, resolved location)
    for key in WEIGHT_LOCATIONS:
        *sections, name = key.split(".")
        section: Any = layer
        for part in sections:
            section = section.get(part) if isinstance(section, dict) else None
        value = section.get(name) if isinstance(section, dict) else None
        if _relative_location(key, value):
            section[name] = join(parent(uri), value)
            resolved[key] = (value, section[name])
    config = load_config(ModelConfig, layer, overrides, source=uri)
    if not config.mllm.storage_options:
        config.mllm.storage_options = dict(storage_options or {})
    for key, (value, location) in resolved.items():
        if attrgetter(key)(config) != location:
            continue  # an override replaced it
        fs, path = filesystem_for(location, config.mllm.storage_options)
        if not fs.exists(path):
            raise ConfigError(f"{uri}: {key}: '{value}' (relative to the file's directory) is {location}, "
                              "which does not exist")
    return config
