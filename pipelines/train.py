"""``vrseg train``: joint TSG + RefVOS fine-tuning (MomentSeg 3.2.1, Eq. 4-5), or SAM2's own tracking objective,
on Ray Train V2, fed by Ray Data.

The driver validates everything before any worker starts (config keys, the model config, every dataset
location and video: ``pipelines.train_data.read_catalog``, the storage location), builds the sample
dataset, and runs a ``TorchTrainer`` whose workers each run ``train_loop``:

- the network is ``actors.model.checkpoints.build_model`` and what trains depends on ``objective`` and
  ``mode`` (``trained_parts``): ``joint`` + ``lora``: LoRA, new token rows, ``[SEG]``/``[FIND]`` heads, SAM2
  mask decoder (``SegModel.enable_training``); ``joint`` + ``full``: the whole MLLM instead of LoRA;
  ``joint`` + ``heads``: only the heads and the mask decoder (a fresh run may first calibrate the ``[SEG]``
  projection on its first batches, ``calibrated_prompts``);
  ``sam2_tracking``: every SAM2 module under SAM2's video objective on clips
  (``actors.model.sam2_video_training.Sam2TrackingObjective``). It is wrapped in DDP
  (``find_unused_parameters``: a TSG-only micro-batch does not reach the mask decoder) or FSDP with
  ``use_orig_params`` (LoRA: only some parameters of a flattened group train);
- each worker reads its shard (``ray.train.get_dataset_shard``) in micro-batches of ``optim.batch_size``;
  ``optim.grad_accum`` micro-batches (gradient sync only on the last) make one AdamW step with gradient-
  norm clipping and a linear-warmup + cosine schedule; autocast to a half-precision backbone's dtype (with
  float32 trainable parameters, ``keep_trainable_in_float32``), or to bf16 on GPU with ``scaling.bf16``;
- loss parts (``SegModel.forward_train``: ``lm``, ``find``, ``mask_bce``, ``mask_dice``, ...; the tracking
  objective's ``track_focal``, ``track_dice``, ``track_iou``, ``track_object``) weighted by the model
  config's ``losses`` / SAM2's training weights are averaged over micro-batches and workers and kept per
  step in the history;
- every ``checkpoint_every`` steps and at ``max_steps`` a checkpoint goes through ``ray.train.report`` to
  ``<storage_path>/<name>/step_<N>``: ``model/`` (the trained parts, ``checkpoints.save_trainable``),
  ``optimizer.pt``, ``scheduler.pt``, ``train_state.json`` (step, samples, loss history);
- the run resumes from its latest complete checkpoint in storage (every checkpoint file present, so one
  killed mid-upload is skipped; Ray Train's own record may lag a hard kill by the second it takes to write
  it) whenever Ray Train starts the workers: when the same command is re-run, and when Ray Train restarts
  them after a failure (a worker or a whole node lost; at most ``max_failures`` times). The dataset is a
  factory (``RemainingSamples``) called at every start, so the data begin at that checkpoint's step, and the
  workers restore that same checkpoint (nothing writes to storage while no worker runs);
- at the end rank 0 exports a model directory (``actors.model.checkpoints.export_model``) that labeling
  loads by config (``model.yaml`` inside it, or ``checkpoints.load_exported``) and that the next training
  stage names as its ``model_config``.

Choices: no RNG state is checkpointed. The data are deterministic by sample index, and the torch RNG
(dropout) is re-seeded at every optimizer step from ``(seed, step, rank)`` (``step_seed``), so a resumed run
draws the same dropout masks as an uninterrupted one. With ``data.preserve_order`` (the default) the
samples reach the workers in index order and are split among them the same way every time, so a resumed
run repeats the uninterrupted one exactly. The data pipeline is built for the remaining steps only.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs
import ray
import ray.train
import torch
from ray.train import Checkpoint, CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from actors.config import ConfigError
from actors.model.checkpoints import (
    build_model,
    export_model,
    load_trainable,
    local_directory,
    save_trainable,
    trained_files,
)
from actors.model.config import ModelConfig
from actors.model.prompt_calibration import calibrate_seg_projection
from actors.model.sam2_video_training import Sam2TrackingObjective, TrackingClip
from actors.model.segmllm import SegModel, TrainSample
from actors.uri import filesystem_for, is_relative, join, protocol_of, redact
from pipelines.formats import FormatError
from pipelines.train_config import PromptCalibrationConfig, TrainConfig, load_model_config, load_train_config
from pipelines.train_data import Catalog, read_catalog, sample_dataset

LOSS_PARTS = ("lm", "find", "mask_bce", "mask_dice", "mask_object", "mask_location", "adversarial", "club", "club_likelihood",
              "track_focal", "track_dice", "track_iou", "track_object")
STATE_FILE = "train_state.json"
MODEL_DIR = "model"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
STEP_PREFIX = "step_"


def trained_parts(config: TrainConfig) -> tuple[str, ...]:
    """What the run trains and checkpoints (``checkpoints.save_trainable`` parts) for its objective and mode."""
    if config.objective == "sam2_tracking":
        return ("sam2",)
    trained_mllm = {"full": ("mllm",), "lora": ("adapter",), "heads": ()}[config.mode]
    return (*trained_mllm, "heads", "sam2_decoder")


def checkpoint_files(config: TrainConfig) -> frozenset[str]:
    """Every file a complete checkpoint of the run holds (relative to its ``step_<N>`` directory)."""
    model_files = {f"{MODEL_DIR}/{name}" for name in trained_files(trained_parts(config))}
    return frozenset({STATE_FILE, OPTIMIZER_FILE, SCHEDULER_FILE, *model_files})


@dataclass
class TrainState:
    """Progress carried by every checkpoint: optimizer steps done, samples consumed, per-step metrics."""

    step: int = 0
    samples: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class TrainResult:
    """What a finished run leaves: its last metrics, state, latest checkpoint location and exported model."""

    metrics: dict[str, Any]
    state: TrainState
    checkpoint_uri: str | None
    export_uri: str


# ------------------------------------------------------------------------------------------ batches
def train_samples(batch: Mapping[str, np.ndarray]) -> list[TrainSample] | list[TrackingClip]:
    """A numpy batch of ``train_data.SampleBuilder`` rows -> ``TrainSample``s (RefVOS: key frames + masks, and
    per-frame ``[FIND]`` labels with ``data.refvos_find``; TSG: per-frame labels) or, for SAM2 tracking,
    ``TrackingClip``s (prompt on ``clip_prompt_frame``, ``clip_cond`` frames conditioned on their masks), one per
    object of a row, sharing its frames array."""
    if len(batch["task"]) and batch["task"][0] == "clip":
        clips = []
        for row in range(len(batch["index"])):
            frames = np.array(batch["clip_frames"][row])  # one array for the row's objects: encoded once
            kinds = str(batch["prompt"][row]).split(",")
            conditioning = tuple(int(t) for t in np.flatnonzero(batch["clip_cond"][row]))
            clips += [TrackingClip(frames=frames, masks=masks, prompt_frame=int(batch["clip_prompt_frame"][row]), prompt=kind,
                                   seed=int(batch["index"][row]) + (k << 32), cond_frames=conditioning)
                      for k, (masks, kind) in enumerate(zip(np.array(batch["clip_masks"][row]), kinds, strict=True))]
        return clips
    samples = []
    for row in range(len(batch["index"])):
        common = {"expression": str(batch["expression"][row]), "lowres_frames": np.array(batch["lowres"][row]),
                  "template": int(batch["template"][row]),
                  "frame_labels": torch.tensor(batch["frame_labels"][row]) if batch["find"][row] else None}
        if batch["task"][row] == "refvos":
            samples.append(TrainSample(**common, key_frames=np.array(batch["key_frames"][row]),
                                       masks=torch.tensor(batch["masks"][row])))
        else:
            samples.append(TrainSample(**common))
    return samples


# ------------------------------------------------------------------------------------------ optimisation
def step_seed(seed: int, step: int, rank: int) -> int:
    """The torch seed of optimizer step ``step`` on worker ``rank``: a function of the three only, so the
    step's dropout noise does not depend on whether the run was resumed before it."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1, dtype=np.uint64)[0])


def learning_rate_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Multiplier of the base learning rate at ``step``: linear warmup from 1/(warmup+1), then cosine decay
    from 1 to ``min_ratio`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


BACKBONE_PREFIX = "mllm.qwen."  # the MLLM backbone's parameters in ``SegModel`` (``optim.backbone_lr_scale``)


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> tuple[torch.optim.Optimizer,
                                                                        torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the trainable parameters and its warmup + cosine schedule. With ``optim.backbone_lr_scale``
    below 1 the MLLM backbone's parameters (named ``mllm.qwen.*`` under any DDP/FSDP wrapper prefix) form a
    second group at that fraction of the rate; the first group (heads, SAM2) is the one the log reports."""
    optim = config.optim
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    backbone = [p for name, p in named if f".{BACKBONE_PREFIX}" in f".{name}"]
    if optim.backbone_lr_scale == 1.0 or not backbone:
        groups = [{"params": [p for _, p in named], "lr": optim.lr}]
    else:
        groups = [{"params": [p for name, p in named if f".{BACKBONE_PREFIX}" not in f".{name}"], "lr": optim.lr},
                  {"params": backbone, "lr": optim.lr * optim.backbone_lr_scale}]
    optimizer = torch.optim.AdamW(groups, betas=tuple(optim.betas), weight_decay=optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate_factor(step, optim.warmup_steps, config.max_steps, optim.min_lr_ratio)
    )
    return optimizer, scheduler


def training_network(model: SegModel, model_config: ModelConfig, config: TrainConfig) -> torch.nn.Module:
    """The module the optimizer trains: ``model`` itself (joint; ``enable_training(mode)``) or SAM2's tracking
    objective (weighted by ``model_config.tracking_losses``) around ``model.sam2`` with every SAM2 parameter
    trainable but those of ``config.sam2_frozen`` (``sam2_tracking``)."""
    if config.objective == "sam2_tracking":
        model.requires_grad_(False)
        model.sam2.requires_grad_(True)
        for name in config.sam2_frozen:
            getattr(model.sam2.sam, name).requires_grad_(False)
        return Sam2TrackingObjective(model.sam2, model_config.tracking_losses).train()
    model.enable_training(config.mode)
    keep_trainable_in_float32(model)
    return model


def keep_trainable_in_float32(network: torch.nn.Module) -> None:
    """Mixed precision: every trainable parameter held in float32 (the optimizer's master copy) over a
    backbone loaded in bfloat16/float16, which ``autocast_dtype`` then runs under autocast. AdamW steps on half
    parameters are lost to rounding (an update below 2^-8 of a bfloat16 weight leaves it unchanged); the
    frozen weights keep their half dtype and memory."""
    for parameter in network.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()


def autocast_dtype(model_config: ModelConfig, config: TrainConfig) -> torch.dtype | None:
    """The dtype the training forward autocasts to: the backbone's when it is loaded in half precision (on
    any device: its frozen weights meet ``keep_trainable_in_float32``'s float32 ones), bfloat16 for a
    float32 backbone on GPU with ``scaling.bf16``, else none."""
    if model_config.mllm.dtype != "float32":
        return getattr(torch, model_config.mllm.dtype)
    if config.scaling.use_gpu and config.scaling.bf16:
        return torch.bfloat16
    return None


class ParallelModel:
    """The training network wrapped for data parallelism, and the strategy-specific state access."""

    def __init__(self, model: torch.nn.Module, strategy: str) -> None:
        self.model = model
        self.strategy = strategy
        kwargs = {"find_unused_parameters": True} if strategy == "ddp" else {"use_orig_params": True}
        self.wrapped = ray.train.torch.prepare_model(model, parallel_strategy=strategy,
                                                     parallel_strategy_kwargs=kwargs)

    def no_sync(self, skip: bool) -> contextlib.AbstractContextManager:
        """No gradient all-reduce for this micro-batch (gradient accumulation) when ``skip``."""
        if skip and hasattr(self.wrapped, "no_sync"):
            return self.wrapped.no_sync()
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def full_parameters(self) -> Iterator[None]:
        """Unsharded parameters on every rank inside the block (FSDP); a no-op for DDP. Collective."""
        if self.strategy != "fsdp":
            yield
            return
        from torch.distributed.fsdp import FullyShardedDataParallel

        with FullyShardedDataParallel.summon_full_params(self.wrapped, writeback=False):
            yield

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimizer state with full (unsharded) tensors. Collective under FSDP."""
        if self.strategy != "fsdp":
            return optimizer.state_dict()
        from torch.distributed.fsdp import FullyShardedDataParallel

        return FullyShardedDataParallel.optim_state_dict(self.wrapped, optimizer)

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        if self.strategy == "fsdp":
            from torch.distributed.fsdp import FullyShardedDataParallel

            state = FullyShardedDataParallel.optim_state_dict_to_load(self.wrapped, optimizer, state)
        optimizer.load_state_dict(state)


def _reduce_parts(sums: torch.Tensor, counts: torch.Tensor) -> dict[str, float]:
    """Mean of each loss part over micro-batches and workers (parts no worker saw are left out)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        packed = torch.stack([sums, counts])
        torch.distributed.all_reduce(packed)
        sums, counts = packed[0], packed[1]
    return {name: float(sums[i] / counts[i]) for i, name in enumerate((*LOSS_PARTS, "loss")) if counts[i] > 0}


# ------------------------------------------------------------------------------------------ checkpoints
def _save_checkpoint(directory: Path, model: SegModel, parts: tuple[str, ...], optimizer_state: dict[str, Any],
                     scheduler: torch.optim.lr_scheduler.LambdaLR, state: TrainState) -> None:
    save_trainable(model, str(directory / MODEL_DIR), parts)
    torch.save(optimizer_state, directory / OPTIMIZER_FILE)
    torch.save(scheduler.state_dict(), directory / SCHEDULER_FILE)
    (directory / STATE_FILE).write_text(json.dumps({"step": state.step, "samples": state.samples,
                                                    "history": state.history}))


def parse_state(text: str | bytes) -> TrainState:
    """The ``TrainState`` of a checkpoint's ``train_state.json``."""
    raw = json.loads(text)
    return TrainState(step=int(raw["step"]), samples=int(raw["samples"]), history=list(raw["history"]))


def _restore(model: SegModel, parts: tuple[str, ...], directory: Path
             ) -> tuple[TrainState, dict[str, Any], dict[str, Any]]:
    """Load the trained parts into ``model``; return the state and the optimizer/scheduler state dicts."""
    load_trainable(model, str(directory / MODEL_DIR), parts)
    optimizer_state = torch.load(directory / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    scheduler_state = torch.load(directory / SCHEDULER_FILE, map_location="cpu", weights_only=True)
    return parse_state((directory / STATE_FILE).read_text()), optimizer_state, scheduler_state


# ------------------------------------------------------------------------------------------ worker loop
def calibrated_prompts(model: SegModel, batches: Iterator[dict[str, np.ndarray]], config: PromptCalibrationConfig,
                       ) -> Iterator[dict[str, np.ndarray]]:
    """Calibrate the ``[SEG]`` projection on the first ``config.batches`` batches (every worker's, summed:
    ``actors.model.prompt_calibration``) and return the iterator with those batches still to train on."""
    first = list(itertools.islice(batches, config.batches))
    calibrate_seg_projection(model, [s for batch in first for s in train_samples(batch)], config.shrinkage)
    return itertools.chain(first, batches)


def train_loop(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker: build, restore, train to ``max_steps`` with checkpoints, export (rank 0)."""
    config: TrainConfig = loop_config["config"]
    model_config: ModelConfig = loop_config["model_config"]
    context = ray.train.get_context()
    rank = context.get_world_rank()
    torch.set_num_threads(config.scaling.threads())
    torch.manual_seed(config.seed)
    model = build_model(model_config)
    network = training_network(model, model_config, config)
    saved_parts = trained_parts(config)
    state, optimizer_state, scheduler_state = TrainState(), None, None
    resumed = latest_checkpoint(config)  # the checkpoint ``RemainingSamples`` started the data at
    if resumed is not None:
        with local_directory(resumed[0], config.storage_options) as directory:
            state, optimizer_state, scheduler_state = _restore(model, saved_parts, directory)
        if rank == 0:
            print(f"vrseg train: resumed from {redact(resumed[0])} at step {state.step}", flush=True)
    batches = iter(ray.train.get_dataset_shard("train").iter_batches(
        batch_size=config.optim.batch_size, batch_format="numpy", drop_last=True))
    if state.step == 0 and config.prompt_calibration.batches:
        batches = calibrated_prompts(model, batches, config.prompt_calibration)
    parallel = ParallelModel(network, config.scaling.strategy)
    optimizer, scheduler = make_optimizer(parallel.wrapped, config)
    if optimizer_state is not None:
        parallel.load_optimizer_state(optimizer, optimizer_state)
        scheduler.load_state_dict(scheduler_state)
    device = ray.train.torch.get_device()
    half = autocast_dtype(model_config, config)
    autocast = torch.autocast(device_type=device.type, dtype=half or torch.bfloat16, enabled=half is not None)
    trainable = [p for p in parallel.wrapped.parameters() if p.requires_grad]
    accum = config.optim.grad_accum
    started = time.perf_counter()
    while state.step < config.max_steps:
        torch.manual_seed(step_seed(config.seed, state.step, rank))
        sums = torch.zeros(len(LOSS_PARTS) + 1, device=device, dtype=torch.float64)
        counts = torch.zeros_like(sums)
        for micro in range(accum):
            batch = next(batches, None)
            if batch is None:
                raise RuntimeError(f"worker {rank}: the data shard ran out at step {state.step}")
            with parallel.no_sync(micro < accum - 1), autocast:
                parts = parallel.wrapped(train_samples(batch))
                (parts["loss"] / accum).backward()
            for i, name in enumerate((*LOSS_PARTS, "loss")):
                if name in parts:
                    sums[i] += float(parts[name].detach())
                    counts[i] += 1
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, config.optim.grad_clip)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.samples += config.samples_per_step()
        metrics = {"step": state.step, "samples": state.samples, "lr": lr, "grad_norm": float(grad_norm),
                   "time": time.perf_counter() - started, **_reduce_parts(sums, counts)}
        state.history.append(metrics)
        if rank == 0:
            parts_text = " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k in LOSS_PARTS or k == "loss")
            print(f"vrseg train: step {state.step}/{config.max_steps} {parts_text} lr {lr:.2e}", flush=True)
        if state.step % config.checkpoint_every == 0 or state.step == config.max_steps:
            _report_checkpoint(parallel, model, saved_parts, optimizer, scheduler, state, metrics, rank)
    with parallel.full_parameters():
        if rank == 0:
            export_model(model, model_config, export_location(config), config.storage_options)


def _report_checkpoint(parallel: ParallelModel, model: SegModel, parts: tuple[str, ...],
                       optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
                       state: TrainState, metrics: dict[str, float], rank: int) -> None:
    """Every worker reports (a barrier); rank 0 attaches the checkpoint directory."""
    optimizer_state = parallel.optimizer_state(optimizer)
    with tempfile.TemporaryDirectory(prefix="vrseg-train-ckpt-") as tmp:
        checkpoint = None
        with parallel.full_parameters():
            if rank == 0:
                _save_checkpoint(Path(tmp), model, parts, optimizer_state, scheduler, state)
                checkpoint = Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"{STEP_PREFIX}{state.step:08d}")


# ------------------------------------------------------------------------------------------ driver
def export_location(config: TrainConfig) -> str:
    """Where the finished model directory goes: ``export_uri`` or ``<storage_path>/<name>/model``."""
    return config.export_uri or join(config.storage_path, config.name, MODEL_DIR)


def run_storage(config: TrainConfig) -> tuple[str, pyarrow.fs.FileSystem | None]:
    """``RunConfig`` storage: an absolute local path, or a bucket path with its filesystem passed explicitly
    (``storage_options`` reach e.g. a custom S3 endpoint). Fails naming ``storage_path`` when its bucket is
    not reachable."""
    if protocol_of(config.storage_path) == "file":
        _, path = filesystem_for(config.storage_path)
        return os.path.abspath(path), None
    fs, path = filesystem_for(config.storage_path, config.storage_options)
    bucket = path.split("/", 1)[0]
    try:
        reachable = fs.exists(bucket)
    except (OSError, ValueError):
        reachable = False
    if not reachable:
        raise ConfigError(f"storage_path: {redact(config.storage_path)}: bucket '{bucket}' does not exist or "
                          "is not reachable")
    return path, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))


def latest_checkpoint(config: TrainConfig) -> tuple[str, TrainState] | None:
    """The newest complete checkpoint of the run (``step_<N>`` holding ``train_state.json``), if any."""
    run_uri = join(config.storage_path, config.name)
    fs, path = filesystem_for(run_uri, config.storage_options)
    fs.invalidate_cache(path)  # Ray Train deletes old checkpoints behind a listing cache's back
    if not fs.exists(path):
        return None
    steps = sorted((p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)), reverse=True)
    for name in steps:
        if not name.startswith(STEP_PREFIX):
            continue
        files = {os.path.relpath(f, f"{path}/{name}") for f in fs.find(f"{path}/{name}")}
        if not checkpoint_files(config) <= files:
            continue  # partly uploaded (killed mid-upload) or being deleted
        try:
            return join(run_uri, name), parse_state(fs.cat_file(f"{path}/{name}/{STATE_FILE}"))
        except FileNotFoundError:
            continue  # deleted meanwhile
    return None


@dataclass(frozen=True)
class RemainingSamples:
    """The run's samples from its latest complete checkpoint's step to ``max_steps``: a dataset factory that
    Ray Train calls each time it starts the workers (on the driver's node), so that a run restarted after a
    failure reads only the samples of the steps it has still to train."""

    catalog: Catalog
    config: TrainConfig

    def __call__(self) -> ray.data.Dataset:
        resumed = latest_checkpoint(self.config)
        start_step = resumed[1].step if resumed else 0
        remaining = max(self.config.max_steps - start_step, 1)
        per_step = self.config.samples_per_step()
        return sample_dataset(self.catalog, self.config.data, self.config.seed, start_step * per_step,
                              remaining * per_step, self.config.objective)


def build_trainer(config: TrainConfig, model_config: ModelConfig) -> TorchTrainer:
    """Validate the sources and storage and assemble the ``TorchTrainer`` (no worker has started yet).

    Raises ``ConfigError`` / ``FormatError`` naming the key or path for anything wrong."""
    catalog = read_catalog(config)
    storage_path, storage_fs = run_storage(config)
    scaling = ScalingConfig(
        num_workers=config.num_workers,
        use_gpu=config.scaling.use_gpu,
        resources_per_worker={"CPU": config.scaling.cpus_per_worker, **({"GPU": 1} if config.scaling.use_gpu else {})},
    )
    run_config = RunConfig(
        name=config.name,
        storage_path=storage_path,
        storage_filesystem=storage_fs,
        checkpoint_config=CheckpointConfig(num_to_keep=config.keep_checkpoints),
        failure_config=FailureConfig(max_failures=config.max_failures),
    )
    ingest = DataConfig.default_ingest_options()
    ingest.preserve_order = config.data.preserve_order
    return TorchTrainer(
        train_loop,
        train_loop_config={"config": config, "model_config": model_config},
        scaling_config=scaling,
        run_config=run_config,
        datasets={"train": RemainingSamples(catalog, config)},
        dataset_config=DataConfig(execution_options={"train": ingest}),
    )


def with_absolute_locations(config: TrainConfig) -> TrainConfig:
    """``config`` with a relative local ``storage_path`` / ``export_uri`` made absolute against the driver's
    working directory: Ray Train runs its workers in another directory, where the checkpoint to resume and the
    exported model would otherwise be read and written."""
    return dataclasses.replace(
        config,
        storage_path=os.path.abspath(config.storage_path) if is_relative(config.storage_path) else config.storage_path,
        export_uri=os.path.abspath(config.export_uri) if config.export_uri and is_relative(config.export_uri)
        else config.export_uri,
    )


def run_training(config: TrainConfig) -> TrainResult:
    """Validate, train (resuming if the run has checkpoints), export. Errors in config or data locations are
    raised before any worker starts."""
    config = with_absolute_locations(config)
    model_config = load_model_config(config)
    trainer = build_trainer(config, model_config)
    result = trainer.fit()
    latest = latest_checkpoint(config)
    state = latest[1] if latest else TrainState()
    return TrainResult(metrics=dict(result.metrics or {}), state=state,
                       checkpoint_uri=latest[0] if latest else None, export_uri=export_location(config))


def run(args: argparse.Namespace) -> int:
    try:
        config = load_train_config(args.config, args.overrides)
        result = run_training(config)  # Ray starts (or connects via RAY_ADDRESS) only after validation
    except (ConfigError, FormatError) as exc:
        print(f"vrseg train: {exc}", file=sys.stderr)
        return 2
    parts = " ".join(f"{k} {v:.4f}" for k, v in result.metrics.items() if k in LOSS_PARTS or k == "loss")
    print(f"vrseg train: step {result.state.step}, {result.state.samples} samples; {parts}; "
          f"checkpoint {redact(result.checkpoint_uri)}; model -> {redact(result.export_uri)}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="fine-tune the model (joint TSG + RefVOS) on Ray Train", description=__doc__.splitlines()[0],
    )
    parser.add_argument("--config", default="configs/train/tiny.yaml", help="YAML under configs/train/")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. max_steps=100 num_workers=2 storage_path=s3://bucket/runs")
    parser.set_defaults(func=run)
