"""``TrainConfig``: the schema of ``configs/train/*.yaml`` for ``vrseg train``.

Load with ``load_train_config(path, overrides)``: unknown keys, wrong types and bad values fail there,
naming the key and its source, before any dataset is read or any worker starts. ``max_steps``,
``num_workers`` and ``storage_path`` are top-level keys so they can be overridden as ``key=value``.
Source locations are parameters: ``sources.<name>.uri=...`` (``???`` in a YAML means "must be given").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from actors.config import ConfigError, load_config
from actors.model.config import TRAINING_MODES, ModelConfig, read_model_config
from actors.model.sam2_video_training import PROMPT_KINDS

REFVOS_FORMATS = ("mevis", "revos", "refytvos")
TSG_FORMATS = ("charades-sta", "activitynet")
STRATEGIES = ("ddp", "fsdp")
OBJECTIVES = ("joint", "sam2_tracking")
CLIP_PROMPT_FRAMES = ("first", "any")
SAM2_MODULES = ("image_encoder", "mask_downsample", "memory_attention", "memory_encoder", "sam_prompt_encoder",
                "sam_mask_decoder", "obj_ptr_proj", "obj_ptr_tpos_proj")  # SAM2Base's child modules


@dataclass
class SourceConfig:
    """One dataset of the mixture.

    ``format``: a RefVOS reader (``mevis``, ``revos``, ``refytvos``) or a TSG reader (``charades-sta``,
    ``activitynet``) of ``pipelines.formats``; ``uri``: what that reader opens (split folder or
    annotation file); ``split``: for revos/refytvos. ``videos_uri``: a folder of ``<video_id><video_ext>``
    files decoded with decord; required for TSG sources, optional for RefVOS sources (without it their
    JPEG frame folders are read). ``weight``: relative probability that a sample comes from this source.
    ``kinds``: a RefVOS source's expressions of these kinds only (``Expression.kind``, e.g. the synthetic
    corpus' ``static``; a curriculum stage), every expression when unset. ``no_target``: keep a RefVOS
    source's expressions that name no object (MeViS' no-target expressions): their key frames are a random
    window, their masks empty, so the mask losses push every pixel out and ``mask_object`` teaches SAM2's
    presence head "absent" (without them it never sees an absent target at a prompted frame).
    """

    format: str = "mevis"
    uri: str = "???"
    split: str | None = None
    videos_uri: str | None = None
    video_ext: str = ".mp4"
    weight: float = 1.0
    kinds: list[str] | None = None
    no_target: bool = True
    storage_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.format not in REFVOS_FORMATS + TSG_FORMATS:
            raise ValueError(f"format must be one of {list(REFVOS_FORMATS + TSG_FORMATS)}, got '{self.format}'")
        if self.weight <= 0:
            raise ValueError(f"weight must be > 0, got {self.weight}")
        if self.kinds is not None and (self.task != "refvos" or not self.kinds):
            raise ValueError(f"kinds selects a RefVOS source's expressions: a non-empty list, got {self.kinds} "
                             f"for a {self.format} source")

    @property
    def task(self) -> str:
        """``refvos`` or ``tsg``."""
        return "tsg" if self.format in TSG_FORMATS else "refvos"


@dataclass
class SampleConfig:
    """What one training sample holds (MomentSeg 3.2.1) and how the Ray Data pipeline makes it.

    ``lowres_frames`` L uniformly sampled frames at ``lowres_size`` (h, w) (temporal tokens; even, since
    Qwen2.5-VL pairs frames into temporal tokens); ``key_frames`` N consecutive high-resolution frames at
    ``keyframe_size`` (H, W) around a frame where the target is present, with their masks.
    ``decode_actors`` CPU actors decode and resize, each reserving ``cpus_per_actor`` CPUs.
    ``rows_per_block`` sample indices per Ray Data input block. ``fixed_pool``: when set, sample index
    i is drawn as index ``i % fixed_pool`` (the same few samples over and over: overfitting checks).
    ``preserve_order``: samples reach the training workers in index order and are split among them the
    same way in every run (Ray Data's ``preserve_order``), so a run, and a run resumed from its checkpoint,
    repeat exactly; ``false`` hands blocks on as the decode actors finish them (possibly more throughput when
    decode times vary; no difference measured on the tiny corpus), and which worker trains on which sample
    then depends on timing.

    ``refvos_find``: RefVOS samples also train ``[FIND]`` (Eq. 5) with the frames where the target is visible
    as the positives, so the relevance that drives MCS and BAP at inference is learnt for referring
    expressions too, not only for TSG queries (a choice beyond MomentSeg, which trains ``[FIND]`` on TSG data
    only; it needs nothing but the RefVOS masks, so it works with any RefVOS reader).

    Sizes are boxes: with ``keep_aspect`` (the default) each video's frames are scaled to fit within the box
    [h, w] with their aspect kept and never enlarged (``train_data.fitted_size``), as inference sizes them
    (the engine's ``*_side`` and Qwen2.5-VL's processor keep the aspect); ``keep_aspect: false`` squashes
    every video to exactly the box (the behaviour before it existed).

    SAM2 tracking samples (``objective: sam2_tracking``): ``clip_frames`` consecutive frames at ``clip_size``
    (H, W) of one annotated object, with its masks; the prompt on the clip's first frame where the object is
    visible is drawn from ``clip_prompts`` (relative weights of ``mask``, ``box``, ``points``; a YAML mapping is
    merged into the default, so a kind it leaves out keeps its default weight). A clip tracks up to
    ``clip_objects`` objects of its video, each with its own prompt: the sampled one and others visible on the
    clip's first frame (SAM2 training's ``max_num_objects``), all read from one encoding of the frames.
    ``clip_cond_frames``: at most this many conditioning frames per clip (the prompt's and 0 to n - 1 extra
    ones given their ground-truth masks, uniform: SAM2.1's ``num_init_cond_frames_for_train`` with
    ``rand_init_cond_frames_for_train``), which teaches the tracker the key-frame masks anchor updating feeds it.
    ``clip_prompt_frame``: ``first`` (SAM2 training's: the prompt on the clip's first frame, tracked forward)
    or ``any`` (the prompt on any visible frame of the object, the clip around it, tracked forward and backward
    from it: what BAP's backward pass and a mid-video anchor need, ``train_data.clip_window_around``).

    ``frame_cache_mb``: MiB of decoded frames each decode actor keeps (``pipelines.frame_cache``; 0: off), so a
    video is decoded about once per output size, source and actor instead of once per sample; samples are the
    same pixels either way. An entry is a whole video at one size (T x h x w x 3 bytes); memory grows to the
    corpus' entries or the budget, whichever is smaller, per actor (``decode_actors`` x ``frame_cache_mb`` in
    all). Under uniform sampling about ``budget / corpus`` of the reads hit, and a miss decodes the whole video
    (2-3x the CPU of the few frames a sample reads): a corpus several times larger than the budget costs more
    CPU with the cache than without it (measured with ``benches/train_data_cache.py``: 0.83x at 1 GiB for
    ``procedural_refer``), so it is off by default (real corpora such as MeViS are far larger than any budget)
    and the procedural recipe turns it on: 3072 holds those corpora whole (``procedural_train``: 96 videos of
    64 frames at 192x256, 0.86 GiB; ``procedural_refer``: 240 videos at 84x112 and 192x256, 2.9 GiB) and leaves
    room beside two training workers of ~3.5 GB on a 24 GiB machine.
    """

    lowres_frames: int = 8
    lowres_size: list[int] = field(default_factory=lambda: [56, 56])
    key_frames: int = 2
    keyframe_size: list[int] = field(default_factory=lambda: [112, 112])
    decode_actors: int = 1
    cpus_per_actor: float = 1.0
    rows_per_block: int = 16
    fixed_pool: int | None = None
    preserve_order: bool = True
    seed: int = 0
    refvos_find: bool = False
    clip_frames: int = 8
    clip_size: list[int] = field(default_factory=lambda: [256, 256])
    clip_prompts: dict[str, float] = field(default_factory=lambda: {"mask": 0.5, "box": 0.25, "points": 0.25})
    clip_objects: int = 1
    clip_cond_frames: int = 1
    clip_prompt_frame: str = "first"
    keep_aspect: bool = True
    frame_cache_mb: int = 0

    def __post_init__(self) -> None:
        if self.lowres_frames < 2 or self.lowres_frames % 2:
            raise ValueError(f"data.lowres_frames must be even and >= 2, got {self.lowres_frames}")
        if self.key_frames < 1:
            raise ValueError(f"data.key_frames must be >= 1, got {self.key_frames}")
        if self.clip_frames < 1:
            raise ValueError(f"data.clip_frames must be >= 1, got {self.clip_frames}")
        if self.clip_objects < 1:
            raise ValueError(f"data.clip_objects must be >= 1, got {self.clip_objects}")
        if self.clip_prompt_frame not in CLIP_PROMPT_FRAMES:
            raise ValueError(f"data.clip_prompt_frame must be one of {list(CLIP_PROMPT_FRAMES)}, "
                             f"got '{self.clip_prompt_frame}'")
        if not 1 <= self.clip_cond_frames <= self.clip_frames:
            raise ValueError(f"data.clip_cond_frames must be in [1, data.clip_frames = {self.clip_frames}], "
                             f"got {self.clip_cond_frames}")
        unknown = sorted(set(self.clip_prompts) - set(PROMPT_KINDS))
        if unknown or not self.clip_prompts or min(self.clip_prompts.values()) < 0 or sum(self.clip_prompts.values()) <= 0:
            raise ValueError(f"data.clip_prompts must weigh {list(PROMPT_KINDS)} with weights >= 0 and a positive "
                             f"sum, got {dict(self.clip_prompts)}")
        if self.clip_frames == 1 and self.clip_prompts.get("mask", 0) > 0:
            raise ValueError(f"data.clip_prompts gives mask prompts weight {self.clip_prompts['mask']} with "
                             "data.clip_frames 1: SAM2 outputs a prompted mask as it is (use_mask_input_as_output_"
                             "without_sam), so a one-frame clip with a mask prompt has no gradient; weigh mask 0")
        for name in ("lowres_size", "keyframe_size", "clip_size"):
            size = getattr(self, name)
            if len(size) != 2 or min(size) < 1:
                raise ValueError(f"data.{name} must be [height, width] with positive sides, got {size}")
        if self.decode_actors < 1 or self.rows_per_block < 1 or self.cpus_per_actor < 0:
            raise ValueError("data.decode_actors and data.rows_per_block must be >= 1, data.cpus_per_actor >= 0")
        if self.fixed_pool is not None and self.fixed_pool < 1:
            raise ValueError(f"data.fixed_pool must be >= 1 or null, got {self.fixed_pool}")
        if isinstance(self.frame_cache_mb, bool) or not isinstance(self.frame_cache_mb, int) or self.frame_cache_mb < 0:
            raise ValueError(f"data.frame_cache_mb must be an int >= 0 (MiB per decode actor, 0: off), "
                             f"got {self.frame_cache_mb!r}")


@dataclass
class OptimConfig:
    """AdamW with linear warmup then cosine decay to ``min_lr_ratio * lr``; per-worker micro-batches of
    ``batch_size`` samples, ``grad_accum`` micro-batches per optimizer step, gradient-norm clipping.

    ``backbone_lr_scale``: the MLLM backbone's parameters (``model.mllm.qwen``: LLM, vision tower, embeddings,
    LoRA) train at ``backbone_lr_scale * lr``, everything else (heads, SAM2) at ``lr``. For a backbone
    trained from scratch: its ``[SEG]`` states differ between expressions by a few percent of their norm at
    initialisation, and full-rate AdamW steps move their common part by more than that, so the prompts stop
    telling expressions apart before SAM2's decoder has learnt to read them (``mllm.seg_norm``)."""

    lr: float = 1e-4
    backbone_lr_scale: float = 1.0
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    batch_size: int = 1
    grad_accum: int = 1
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.weight_decay < 0 or self.grad_clip <= 0:
            raise ValueError("optim.lr and optim.grad_clip must be > 0, optim.weight_decay >= 0")
        if not 0 < self.backbone_lr_scale <= 1:
            raise ValueError(f"optim.backbone_lr_scale must be in (0, 1], got {self.backbone_lr_scale}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas must be two values in [0, 1), got {self.betas}")
        if self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("optim.warmup_steps must be >= 0 and optim.min_lr_ratio in [0, 1]")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("optim.batch_size and optim.grad_accum must be >= 1")


@dataclass
class ScalingSection:
    """Ray Train workers: CPU + gloo (tests) or one GPU each + NCCL (``use_gpu``); DDP or FSDP.

    ``cpus_per_worker`` is what each training worker reserves; keep it below the node's CPUs so the
    decode actors of Ray Data get theirs (the trainer must not starve the data pipeline).
    ``bf16``: autocast a float32 backbone to bfloat16 (GPU only; ignored on CPU). A backbone loaded in
    half precision (``mllm.dtype``) always runs under autocast, trainable parameters in float32
    (``pipelines.train.keep_trainable_in_float32``). ``torch_threads``: intra-op threads of each
    worker's torch (None: ``max(1, int(cpus_per_worker))``).
    """

    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    torch_threads: int | None = None
    strategy: str = "ddp"
    bf16: bool = True

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"scaling.strategy must be one of {list(STRATEGIES)}, got '{self.strategy}'")
        if self.cpus_per_worker < 0:
            raise ValueError(f"scaling.cpus_per_worker must be >= 0, got {self.cpus_per_worker}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"scaling.torch_threads must be >= 1 or null, got {self.torch_threads}")

    def threads(self) -> int:
        return self.torch_threads if self.torch_threads is not None else max(1, int(self.cpus_per_worker))


@dataclass
class PromptCalibrationConfig:
    """``actors.model.prompt_calibration`` before the first step: ``batches`` per worker (0: off), the
    whitening's ``shrinkage`` (x the mean eigenvalue of the ``[SEG]`` states' covariance)."""

    batches: int = 0
    shrinkage: float = 1.0

    def __post_init__(self) -> None:
        if self.batches < 0:
            raise ValueError(f"prompt_calibration.batches must be >= 0, got {self.batches}")
        if self.shrinkage <= 0:
            raise ValueError(f"prompt_calibration.shrinkage must be > 0, got {self.shrinkage}")


@dataclass
class TrainConfig:
    """``vrseg train`` configuration.

    ``name`` + ``storage_path`` identify the run: re-running with the same pair resumes from the latest
    checkpoint under ``<storage_path>/<name>``. ``model_config`` is the model the run starts from: a
    ``configs/model/*.yaml`` or a previous run's exported ``model.yaml``, a local path or fsspec URI whose
    relative weight locations are relative to its directory (``actors.model.config.read_model_config``),
    with ``model_overrides`` on top (e.g. ``losses.find=2.0``). ``export_uri`` receives the finished model
    (default ``<storage_path>/<name>/model``). ``data_root`` is free for interpolation in source URIs
    (``${data_root}/...``).

    ``objective``: ``joint`` (MomentSeg's joint TSG + RefVOS training of the MLLM, its heads and SAM2's mask
    decoder) or ``sam2_tracking`` (SAM2's own video objective on RefVOS clips: every SAM2 module trains,
    ``actors.model.sam2_video_training``). ``mode`` (``joint`` only): ``lora`` (LoRA + new token rows, the
    default for pretrained backbones), ``full`` (every MLLM parameter, vision tower included: training
    from scratch) or ``heads`` (the MLLM frozen, only the heads and SAM2's mask decoder: prompt alignment).
    ``sam2_frozen`` (``sam2_tracking`` only): SAM2 modules (children of ``SAM2Base``, e.g. ``image_encoder``)
    kept as they are while the rest of the tracker trains. Freezing the image encoder refines the tracker of
    a model whose prompted path (the MLLM's location map and mask decoder, trained on those image features)
    is already trained, without invalidating it.
    ``prompt_calibration`` (``joint``, a fresh run only): the data-dependent ``[SEG]`` projection
    initialisation of ``actors.model.prompt_calibration`` on the first ``batches`` batches of each worker.
    """

    name: str = "vrseg-train"
    objective: str = "joint"
    mode: str = "lora"
    storage_path: str = MISSING
    storage_options: dict[str, Any] = field(default_factory=dict)
    model_config: str = "configs/model/tiny.yaml"
    model_overrides: list[str] = field(default_factory=list)
    max_steps: int = 100
    num_workers: int = 1
    checkpoint_every: int = 50
    keep_checkpoints: int | None = 2
    max_failures: int = 0
    export_uri: str | None = None
    seed: int = 0
    data_root: str | None = None
    sources: dict[str, SourceConfig] = field(default_factory=dict)
    data: SampleConfig = field(default_factory=SampleConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scaling: ScalingSection = field(default_factory=ScalingSection)
    prompt_calibration: PromptCalibrationConfig = field(default_factory=PromptCalibrationConfig)
    sam2_frozen: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"name must be non-empty without '/', got '{self.name}'")
        for key in ("max_steps", "num_workers", "checkpoint_every"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.keep_checkpoints is not None and self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be >= 1 or null, got {self.keep_checkpoints}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {list(OBJECTIVES)}, got '{self.objective}'")
        if self.mode not in TRAINING_MODES:
            raise ValueError(f"mode must be one of {list(TRAINING_MODES)}, got '{self.mode}'")
        if not self.sources:
            raise ValueError("sources is empty: give at least one dataset")
        for name, source in self.sources.items():
            if source.task == "tsg" and self.objective == "sam2_tracking":
                raise ValueError(f"sources.{name}: a {source.format} source has no masks; the sam2_tracking "
                                 "objective trains on RefVOS sources only")
            if source.task == "tsg" and source.videos_uri is None:
                raise ValueError(f"sources.{name}.videos_uri is required for a {source.format} source "
                                 "(its annotations name videos only)")
        if self.prompt_calibration.batches and self.objective != "joint":
            raise ValueError("prompt_calibration calibrates the [SEG] projection of the joint objective; "
                             f"set prompt_calibration.batches=0 for objective '{self.objective}'")
        if 0 < self.prompt_calibration.batches * self.optim.batch_size < 2:
            raise ValueError("prompt_calibration needs >= 2 samples per worker (batches x optim.batch_size), got "
                             f"{self.prompt_calibration.batches} x {self.optim.batch_size}")
        unknown = sorted(set(self.sam2_frozen) - set(SAM2_MODULES))
        if unknown:
            raise ValueError(f"sam2_frozen names {unknown}: not SAM2 modules (one of {list(SAM2_MODULES)})")
        if self.sam2_frozen and self.objective != "sam2_tracking":
            raise ValueError(f"sam2_frozen applies to the sam2_tracking objective, not '{self.objective}'")
        if self.max_failures < -1:
            raise ValueError(f"max_failures must be >= -1, got {self.max_failures}")

    def samples_per_step(self) -> int:
        """Samples one optimizer step consumes over all workers."""
        return self.optim.batch_size * self.optim.grad_accum * self.num_workers


def load_train_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """The validated ``TrainConfig`` (``ConfigError`` names the key and its source)."""
    return load_config(TrainConfig, path, list(overrides))


def load_model_config(config: TrainConfig) -> ModelConfig:
    """The model configuration the run trains (``actors.model.config.read_model_config`` with the run's
    ``storage_options``); a bad file or override is a ``ConfigError`` naming it."""
    try:
        return read_model_config(config.model_config, config.model_overrides, config.storage_options)
    except ConfigError as exc:
        raise ConfigError(f"model_config / model_overrides: {exc}") from None


__all__ = ["ConfigError", "OptimConfig", "SampleConfig", "ScalingSection", "SourceConfig", "TrainConfig",
           "load_model_config", "load_train_config"]
