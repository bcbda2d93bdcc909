"""``vrseg train`` end to end: tiny model, 2 CPU workers (gloo), real Ray Data decoding of a procedural
corpus, checkpoints in a moto S3 bucket, resume, export loaded by the labeling model loader."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from train_corpus import tiny_config, write_train_corpus

from actors.config import ConfigError
from actors.model.checkpoints import build_model, load_exported
from actors.model.segmllm import TrainSample
from pipelines.train import (
    LOSS_PARTS,
    STEP_PREFIX,
    autocast_dtype,
    checkpoint_files,
    latest_checkpoint,
    learning_rate_factor,
    make_optimizer,
    parse_state,
    run_training,
    training_network,
)
from pipelines.train_config import load_model_config

PARTS = ("lm", "find", "mask_bce", "mask_dice")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_train_corpus(tmp_path_factory.mktemp("corpus"))



def test_learning_rate_warms_up_then_decays_to_the_floor() -> None:
    factors = [learning_rate_factor(s, 2, 10, 0.1) for s in range(11)]
    assert factors[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert all(a >= b for a, b in zip(factors[2:], factors[3:], strict=False))
    assert factors[10] == pytest.approx(0.1)


def test_backbone_trains_at_its_fraction_of_the_learning_rate(corpus: Path) -> None:
    """``optim.backbone_lr_scale``: the MLLM backbone's parameters in their own AdamW group (found by name under a
    wrapper's prefix, as DDP's ``module.``), both groups on the same schedule; at 1, one group as before."""
    model = build_model(load_model_config(tiny_config(corpus)))
    model.enable_training("full")
    wrapped = torch.nn.ModuleDict({"module": model})  # the names DDP gives: module.mllm.qwen.*
    backbone = {id(p) for p in model.mllm.qwen.parameters() if p.requires_grad}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert backbone and trainable - backbone
    optimizer, scheduler = make_optimizer(wrapped, tiny_config(corpus, "optim.backbone_lr_scale=0.1",
                                                               "optim.warmup_steps=2"))
    heads, body = optimizer.param_groups
    assert {id(p) for p in body["params"]} == backbone and {id(p) for p in heads["params"]} == trainable - backbone
    assert scheduler.get_last_lr() == pytest.approx([1e-2 / 3, 1e-3 / 3])  # tiny.yaml: lr 1e-2, warming up
    single, _ = make_optimizer(wrapped, tiny_config(corpus))
    assert len(single.param_groups) == 1 and {id(p) for p in single.param_groups[0]["params"]} == trainable
    with pytest.raises(ConfigError, match=r"optim.backbone_lr_scale must be in \(0, 1\]"):
        tiny_config(corpus, "optim.backbone_lr_scale=0")


def test_a_half_precision_backbone_trains_float32_master_weights_under_autocast(corpus: Path) -> None:
    """A bfloat16 backbone (the real configs' ``mllm.dtype``): the frozen weights stay bfloat16, every trainable
    parameter is float32, the forward autocasts to bfloat16, and a small AdamW step changes the ``[FIND]``
    head where most of the same update, applied to bfloat16 weights, would round away."""
    config = tiny_config(corpus, "model_overrides=[mllm.dtype=bfloat16]", "optim.lr=1e-4", "optim.warmup_steps=0")
    model_config = load_model_config(config)
    model = build_model(model_config)
    network = training_network(model, model_config, config)
    trainable = {n: p for n, p in network.named_parameters() if p.requires_grad}
    assert trainable and all(p.dtype == torch.float32 for p in trainable.values())
    frozen = [p for n, p in network.named_parameters() if not p.requires_grad and n.startswith("mllm.qwen.")]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    assert autocast_dtype(model_config, config) == torch.bfloat16
    assert autocast_dtype(load_model_config(tiny_config(corpus)), tiny_config(corpus)) is None  # float32 on CPU

    frames = np.random.default_rng(0).integers(0, 256, (6, 56, 56, 3), dtype=np.uint8)
    key_frames = np.random.default_rng(1).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    masks = torch.zeros(2, 64, 64)
    masks[:, 10:40, 20:50] = 1
    samples = [TrainSample("red circle", frames, key_frames=key_frames, masks=masks),
               TrainSample("blue square", frames, frame_labels=torch.tensor([0, 0, 1, 1, 1, 0.0]),
                           frame_valid=torch.ones(6, dtype=torch.bool))]
    optimizer, _ = make_optimizer(network, config)
    head = network.mllm.find_head
    before = [p.detach().clone() for p in head.parameters()]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        parts = network.forward_train(samples)
    assert all(torch.isfinite(v) for v in parts.values())
    parts["loss"].backward()
    optimizer.step()
    updates = [(p.detach() - b) for p, b in zip(head.parameters(), before, strict=True)]
    moved = sum(int((u != 0).sum()) for u in updates)
    total = sum(u.numel() for u in updates)
    assert moved > 0.9 * total
    kept_in_bfloat16 = sum(int(((b.bfloat16() + u.bfloat16()) != b.bfloat16()).sum()) for b, u in zip(before, updates, strict=True))
    assert kept_in_bfloat16 < 0.5 * moved


def test_resume_picks_the_newest_complete_checkpoint(corpus: Path, tmp_path: Path) -> None:
    """A checkpoint killed mid-upload (a file missing) is skipped for the one before it, whatever Ray Train's
    own record says: the storage listing alone decides (``latest_checkpoint``)."""
    config = tiny_config(corpus, f"storage_path={tmp_path}")
    assert latest_checkpoint(config) is None
    for step, missing in ((2, None), (4, None), (6, "optimizer.pt")):
        directory = tmp_path / config.name / f"{STEP_PREFIX}{step:08d}"
        for name in checkpoint_files(config) - {missing}:
            (directory / name).parent.mkdir(parents=True, exist_ok=True)
            (directory / name).write_text(json.dumps({"step": step, "samples": 2 * step, "history": []}))
    (tmp_path / config.name / "model").mkdir()
    uri, state = latest_checkpoint(config)
    assert uri == str(tmp_path / config.name / f"{STEP_PREFIX}00000004") and (state.step, state.samples) == (4, 8)


def test_malformed_config_and_missing_paths_fail_before_any_worker(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="optim.learning_rate"):
        tiny_config(corpus, "optim.learning_rate=0.1")
    with pytest.raises(ConfigError, match="num_workers must be >= 1"):
        tiny_config(corpus, "num_workers=0")
    with pytest.raises(ConfigError, match=r"model_config .*mllm.lora.rank must be >= 1"):
        load_model_config(tiny_config(corpus, "model_overrides=[mllm.lora.rank=0]"))
    storage = tmp_path / "runs"
    missing = tmp_path / "no_such_corpus"
    for override, key in ((f"sources.procedural_refvos.uri={missing}", "sources.procedural_refvos.uri"),
                          (f"sources.procedural_tsg.videos_uri={missing}/videos", "sources.procedural_tsg.videos_uri")):
        with pytest.raises(ConfigError, match=f"{key}: {missing}.* does not exist"):
            run_training(tiny_config(corpus, override, f"storage_path={storage}"))
    assert not storage.exists()  # nothing started, nothing written


def _bucket_files(s3, prefix: str) -> set[str]:  # noqa: ANN001 - the conftest S3Endpoint
    root = s3.uri(prefix)[len("s3://"):]
    return {p[len(root) + 1:] for p in s3.filesystem().find(root)}


def _optimizer_steps(s3, checkpoint: str) -> set[int]:  # noqa: ANN001
    with s3.filesystem().open(f"{checkpoint[len('s3://'):]}/optimizer.pt", "rb") as handle:
        state = torch.load(io.BytesIO(handle.read()), weights_only=True)
    return {int(entry["step"]) for entry in state["state"].values()}


def _without_time(result) -> list[dict[str, float]]:  # noqa: ANN001 - TrainResult
    return [{k: v for k, v in m.items() if k != "time"} for m in result.state.history]


def test_overfit_to_s3_resumed_run_repeats_the_uninterrupted_run_and_exports(corpus: Path, s3,  # noqa: ANN001
                                                                           ray_local: None) -> None:
    """Two workers, checkpoints in S3, LoRA dropout on. A run restarted from the step-6 checkpoint of another
    run (copied, as if that run had been killed after it) repeats the uninterrupted run's steps 7-12 exactly on
    both workers: the same samples in the same order on the same worker, weights, AdamW and schedule state, and
    dropout noise."""

    def config(storage: str):  # noqa: ANN202 - TrainConfig
        # a pool of 4 expressions with targets (no-target samples have their own test in test_train_data)
        run = tiny_config(corpus, "data.fixed_pool=4", "optim.warmup_steps=0", "checkpoint_every=3",
                          "keep_checkpoints=3", "max_steps=12", f"storage_path={s3.uri(storage)}",
                          "sources.procedural_refvos.no_target=false")
        run.model_overrides = ["mllm.lora.dropout=0.1"]
        run.storage_options = s3.storage_options
        return run

    whole = run_training(config("runs"))
    assert whole.state.step == 12 and whole.checkpoint_uri == s3.uri("runs/tiny/step_00000012")
    files = _bucket_files(s3, "runs/tiny/step_00000012")
    assert {"model/adapter/adapter_model.safetensors", "model/adapter/adapter_config.json",
            "model/heads.safetensors", "model/sam2_decoder.safetensors", "optimizer.pt", "scheduler.pt",
            "train_state.json"} <= files
    assert _optimizer_steps(s3, whole.checkpoint_uri) == {12}
    kept = {p.rsplit("/", 1)[-1] for p in s3.filesystem().ls(s3.uri("runs/tiny")[len("s3://"):])}
    assert {"step_00000006", "step_00000009", "step_00000012"} <= kept and "step_00000003" not in kept

    fs = s3.filesystem()
    fs.copy(s3.uri("runs/tiny/step_00000006")[len("s3://"):], s3.uri("resumed/tiny/step_00000006")[len("s3://"):],
            recursive=True)
    resumed = run_training(config("resumed"))
    assert resumed.state.step == 12 and resumed.state.samples == 12 * config("resumed").samples_per_step()
    assert [m["step"] for m in resumed.state.history] == list(range(1, 13))
    assert _without_time(resumed) == _without_time(whole)
    assert _optimizer_steps(s3, resumed.checkpoint_uri) == {12}  # AdamW state restored, not reset
    state = parse_state(fs.cat_file(f"{resumed.checkpoint_uri[len('s3://'):]}/train_state.json"))
    assert state.step == 12

    # a fixed pool of 4 samples is overfit: every loss part falls clearly
    history = whole.state.history
    assert set(PARTS) <= set(history[0]) and set(PARTS) <= set(LOSS_PARTS)
    first_values = {p: history[0][p] for p in PARTS}
    last_values = {p: float(np.mean([m[p] for m in history[-3:]])) for p in PARTS}
    assert last_values["lm"] < first_values["lm"] - 0.5, (first_values, last_values)
    assert last_values["find"] < 0.5 * first_values["find"], (first_values, last_values)
    assert last_values["mask_bce"] < 0.3 * first_values["mask_bce"], (first_values, last_values)
    assert last_values["mask_dice"] < 0.8 * first_values["mask_dice"], (first_values, last_values)

    # the exported directory loads as a labeling model and its outputs differ from the untrained model's
    assert resumed.export_uri == s3.uri("resumed/tiny/model")
    trained = load_exported(resumed.export_uri, s3.storage_options)
    untrained = build_model(load_model_config(config("resumed")))
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (8, 56, 56, 3), dtype=np.uint8)
    expressions = ["the red circle", "the blue square moves left"]
    with torch.no_grad():
        scores = [m.mllm.moment_scores(frames, expressions) for m in (trained, untrained)]
        prompts = [m.mllm.seg_prompts(frames[:2], expressions).prompts for m in (trained, untrained)]
    assert scores[0].shape == (2, 8) and not torch.allclose(scores[0], scores[1], atol=1e-3)
    assert not torch.allclose(prompts[0], prompts[1], atol=1e-3)
