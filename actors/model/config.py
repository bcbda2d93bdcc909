"""``ModelConfig``: the schema of ``configs/model/*.yaml`` (the MLLM, the SAM2 side, the loss weights).

Weight locations are fsspec URIs (plain path, ``file://``, ``s3://``); ``"tiny"`` as the backbone builds
the tiny Qwen2.5-VL of ``tiny_factory``. Load with ``actors.config.load_config(ModelConfig, path, overrides)``:
unknown keys and bad values fail there, before any weights are read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from actors.model.losses import LossConfig
from actors.model.sam2_bridge import Sam2Config

TINY_BACKBONE = "tiny"
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
class TDAConfig:
    """VRS-HQ temporal dynamic aggregation of per-frame ``<SEG>`` into ``<TAK>`` (Eq. 2)."""

    enabled: bool = False
    alpha: float = 0.1


@dataclass
class DecoupleConfig:
    """DeSa2VA decoupled text/visual prompts (Sec. 3.2)."""

    enabled: bool = False
    grl_scale: float = 1.0
    club_hidden: int = 128


@dataclass
class MLLMConfig:
    """The Qwen2.5-VL side.

    backbone (required): ``"tiny"`` or the URI of a Hugging Face Qwen2.5-VL directory (config, safetensors, tokenizer,
        processor files).
    sa2va_uri: a Sa2VA-Qwen2.5-VL checkpoint directory mapped key by key onto the backbone, SAM2 and the
        ``[SEG]`` projection (its tokenizer, carrying ``[SEG]``, replaces the backbone's).
    adapter_uri: a PEFT adapter directory (LoRA + the new token rows); heads_uri: ``heads.safetensors``.
    video_tokens_per_frame: LLM tokens per temporal token of the low-res video (MomentSeg: <= 16).
    image_max_tokens: LLM tokens per high-res key frame.
    video_fps: frame rate of the low-res frames handed in, for Qwen2.5-VL's temporal position ids.
    suffix_batch: expressions run together on one shared prefix.
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
    image_max_tokens: int = 256
    video_fps: float = 2.0
    suffix_batch: int = 16
    gradient_checkpointing: bool = False
    lora: LoraConfigSection = field(default_factory=LoraConfigSection)
    tda: TDAConfig = field(default_factory=TDAConfig)
    decouple: DecoupleConfig = field(default_factory=DecoupleConfig)

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ValueError(f"mllm.dtype must be one of {_DTYPES}, got '{self.dtype}'")
        for name in ("find_dim", "video_tokens_per_frame", "image_max_tokens", "suffix_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"mllm.{name} must be >= 1, got {getattr(self, name)}")
        if self.find_tau <= 0 or self.video_fps <= 0:
            raise ValueError("mllm.find_tau and mllm.video_fps must be > 0")


@dataclass
class ModelConfig:
    """The whole network: ``mllm`` (this file), ``sam2`` (``actors.model.sam2_bridge.Sam2Config``), ``losses``.

    ``sam2_decoder_uri``: fine-tuned SAM2 mask-decoder weights (``sam2_decoder.safetensors``, SAM2 key names)
    loaded over ``sam2.checkpoint``.
    """

    mllm: MLLMConfig = field(default_factory=MLLMConfig)
    sam2: Sam2Config = field(default_factory=Sam2Config)
    sam2_decoder_uri: str | None = None
    losses: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self) -> None:
        if (
            self.mllm.backbone != TINY_BACKBONE
            and self.mllm.sa2va_uri is None
            and self.sam2.checkpoint is None
        ):
            raise ValueError(
                "sam2.checkpoint is not set: a real backbone needs real SAM2 weights "
                "(randomly initialised SAM2 is for the tiny model only)"
            )
