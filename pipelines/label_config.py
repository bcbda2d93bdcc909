"""``LabelConfig``: the schema of ``configs/label/*.yaml`` (``vrseg label``).

Sections: ``model`` (which ``configs/model/*.yaml`` to build, with overrides), ``stages`` (``split``: the
MLLM and SAM2 halves in two actor pools that scale independently; ``fused``: one pool holding both, which
decodes every frame at most twice whatever the video's keyframe interval, see
``actors.fused_labeler``), ``engine``
(``actors.engine.EngineConfig``: sampling, BAP, frame sizes), ``decoder`` (``actors.decode.DecoderConfig``
keys), ``inputs`` (limits that turn a manifest entry into an error row), ``pools`` (one fixed-size actor
pool per stage: actors, batch size, CPUs / GPUs per actor, torch threads), ``ray`` (the local instance
started when no cluster address is given), ``tracks`` (the per-track table: which calibration gives the
tracks their confidence) and ``storage_options`` (object-store access for every URI; the standard AWS
environment variables fill in what is not set here).

Loaded with ``actors.config.load_config``; the model config it names (local or fsspec URI, e.g. the
``model.yaml`` a ``vrseg train`` run exported) is loaded and validated by ``LabelConfig.model_config()``
before any work starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from actors.config import load_config
from actors.decode import DecoderConfig
from actors.engine import EngineConfig
from actors.model.config import ModelConfig, read_model_config
from actors.track_calibration import TrackCalibration
from actors.track_confidence import FEATURE_NAMES
from actors.uri import is_relative
from pipelines.manifest import InputLimits

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_LABEL_CONFIG = PROJECT_ROOT / "configs" / "label" / "default.yaml"  # the embedded default: models/procedural


@dataclass
class ModelSection:
    """``config``: a model YAML, a ``configs/model/*.yaml`` or an exported ``model.yaml``, at a local path
    (relative paths are tried from the working directory, then from the project root) or any fsspec URI;
    relative weight locations written in it are relative to its directory
    (``actors.model.config.read_model_config``). ``overrides``: ``key=value`` strings applied to it (weight
    URIs; relative ones are relative to the working directory). ``inference``: ``key=value`` strings this
    labeling config needs of the model at inference (e.g. the tokens per frame of its ``[FIND]`` frames),
    applied before ``overrides``, so that a command line's ``model.overrides=[...]``, which replaces that
    list, keeps them."""

    config: str = MISSING
    inference: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)

    def all_overrides(self) -> list[str]:
        """``inference``, then ``overrides``."""
        return [*self.inference, *self.overrides]

    def uri(self) -> str:
        """Where ``config`` is read from."""
        if not is_relative(self.config) or Path(self.config).exists():
            return self.config
        return str(PROJECT_ROOT / self.config)


@dataclass
class PoolConfig:
    """One stage's fixed actor pool: ``size`` actors, ``batch_size`` videos per call, resources per actor.

    ``torch_threads``: intra-op threads each actor gives torch (None: ``max(1, int(num_cpus))``); more
    threads than the CPUs an actor owns make every actor on the node slower. ``max_memory_bytes``: each
    actor's memory limit (None: none), above which it is killed (``pipelines.attempts``).
    """

    size: int = 1
    batch_size: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    torch_threads: int | None = None
    max_memory_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.max_memory_bytes is not None and self.max_memory_bytes < 1:
            raise ValueError(f"pool max_memory_bytes must be >= 1 or null, got {self.max_memory_bytes}")
        if self.size < 1 or self.batch_size < 1:
            raise ValueError(f"pool size and batch_size must be >= 1, got {self.size}, {self.batch_size}")
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ValueError(f"pool num_cpus and num_gpus must be >= 0, got {self.num_cpus}, {self.num_gpus}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"pool torch_threads must be >= 1, got {self.torch_threads}")

    def threads(self) -> int:
        return self.torch_threads if self.torch_threads is not None else max(1, int(self.num_cpus))


@dataclass
class PoolsConfig:
    """decode (low-res frames, CPU) -> mllm ([FIND], sampling, [SEG]) -> propagate (SAM2, BAP) -> write;
    with ``stages: fused``, one ``label`` pool holding both models replaces mllm and propagate."""

    decode: PoolConfig = field(default_factory=lambda: PoolConfig(num_cpus=0.25))
    mllm: PoolConfig = field(default_factory=PoolConfig)
    propagate: PoolConfig = field(default_factory=PoolConfig)
    label: PoolConfig = field(default_factory=PoolConfig)
    write: PoolConfig = field(default_factory=lambda: PoolConfig(num_cpus=0.25))


STAGES = ("split", "fused")


@dataclass
class RayConfig:
    """How the driver joins Ray: ``num_cpus`` of the local instance started when neither ``--address`` nor
    ``RAY_ADDRESS`` names a cluster; ``log_to_driver``: worker logs (warnings, internal errors with their
    tracebacks) printed by the driver, deduplicated by Ray; ``false`` silences them."""

    num_cpus: int | None = None
    log_to_driver: bool = True

    def __post_init__(self) -> None:
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ValueError(f"ray.num_cpus must be >= 1 or null, got {self.num_cpus}")


@dataclass
class TracksSection:
    """The ``tracks/`` table of the output (``pipelines.formats.track_parquet``). ``calibration``: a track
    calibration JSON (``actors.track_calibration``, fitted on held-out labeled tracks by ``vrseg calibrate``)
    at a local path (relative paths are tried from the working directory, then from the project root) or any
    fsspec URI; it gives every track its ``confidence`` and, when it holds a no-target rule (version 2),
    decides which tracks are no-target, whose masks are then written empty. Unset (the default):
    ``confidence`` is null, never a guess, and a track is no-target only when the engine found its object on
    no frame."""

    calibration: str | None = None

    def calibration_uri(self) -> str | None:
        """Where ``calibration`` is read from (None when unset)."""
        if self.calibration is None or not is_relative(self.calibration) or Path(self.calibration).exists():
            return self.calibration
        return str(PROJECT_ROOT / self.calibration)


@dataclass
class LabelConfig:
    """``vrseg label`` configuration (see the module docstring).

    ``max_attempts``: how many times a video whose processing kills its worker is tried before it becomes an
    error row ``worker_died`` (``pipelines.attempts``).

    ``decoder`` holds ``actors.decode.DecoderConfig`` keys (a plain mapping because that dataclass is
    frozen, which OmegaConf cannot merge into); unknown keys are rejected at load time.
    """

    model: ModelSection = field(default_factory=ModelSection)
    stages: str = "split"
    max_attempts: int = 2
    engine: EngineConfig = field(default_factory=EngineConfig)
    decoder: dict[str, Any] = field(default_factory=dict)
    inputs: InputLimits = field(default_factory=InputLimits)
    pools: PoolsConfig = field(default_factory=PoolsConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    tracks: TracksSection = field(default_factory=TracksSection)
    storage_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.stages not in STAGES:
            raise ValueError(f"stages must be one of {list(STAGES)}, got '{self.stages}'")
        self.decoder_config()

    def decoder_config(self) -> DecoderConfig:
        try:
            return DecoderConfig(**self.decoder)
        except TypeError as exc:
            raise ValueError(f"decoder: {exc}") from None

    def track_calibration(self, storage_options: Mapping[str, Any] | None = None) -> TrackCalibration | None:
        """The calibration ``tracks.calibration`` names, checked against the tracks' features, or None when
        unset; ``CalibrationError`` naming the file and the problem when it is unusable. ``storage_options``:
        the resolved ones (default: this config's)."""
        uri = self.tracks.calibration_uri()
        if uri is None:
            return None
        calibration = TrackCalibration.load(uri, self.storage_options if storage_options is None else storage_options)
        calibration.require_features(FEATURE_NAMES, uri)
        return calibration

    def model_config(self) -> ModelConfig:
        """The model config this labeling config names, read with ``storage_options`` (``ConfigError`` naming
        the file, and the key if one is invalid)."""
        return read_model_config(self.model.uri(), self.model.all_overrides(), self.storage_options)


def load_label_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> tuple[LabelConfig, ModelConfig]:
    """The labeling config at ``path`` with ``overrides``, and the model config it names, both validated."""
    config = load_config(LabelConfig, path, overrides)
    return config, config.model_config()
