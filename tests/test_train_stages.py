"""``vrseg train``'s stages for a model trained from scratch, end to end on Ray Train with the tiny model and a
procedural corpus: SAM2's tracking objective (every SAM2 module trains, nothing else), then full-parameter
joint TSG + RefVOS training started from the first stage's exported ``model.yaml``; both checkpoint what they
train and export a directory the next stage and labeling load, and the joint stage resumes exactly (a run
restarted from its step-4 checkpoint repeats its steps 5-8). The tracking stage's restart from a checkpoint is
``test_node_loss.py``'s; its samples are functions of their index (``test_train_data.py``)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from train_corpus import write_train_corpus

from actors.config import ConfigError, load_config
from actors.model.checkpoints import build_model, load_exported
from actors.model.config import ModelConfig
from actors.model.sam2_video_training import TrackingClip
from pipelines.model_release import release
from pipelines.train import run_training, training_network
from pipelines.train_config import TrainConfig, load_train_config

TRACK_PARTS = ("track_focal", "track_dice", "track_iou", "track_object")
JOINT_PARTS = ("lm", "find", "mask_bce", "mask_dice")
SAM2_TRAINED_MODULES = ("image_encoder.", "memory_attention.", "memory_encoder.", "sam_mask_decoder.")
ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = str(ROOT / "configs" / "model" / "tiny.yaml")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_train_corpus(tmp_path_factory.mktemp("corpus"))


def _config(path: str, corpus: Path, *overrides: str) -> TrainConfig:
    return load_train_config(ROOT / path, [f"data_root={corpus}", *overrides])


def _falls(history: list[dict[str, float]], parts: tuple[str, ...], ratio: float) -> None:
    first = {p: history[0][p] for p in parts}
    last = {p: float(np.mean([m[p] for m in history[-3:]])) for p in parts}
    for part in parts:
        assert last[part] < ratio * first[part], (part, first, last)


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], prefix: str) -> bool:
    keys = [k for k in before if k.startswith(prefix)]
    assert keys, prefix
    return any(not torch.equal(before[k], after[k]) for k in keys)


def _without_time(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in m.items() if k != "time"} for m in history]


def _resumes_exactly(config: TrainConfig, whole: list[dict[str, float]], resumed_root: Path) -> None:
    """A run of ``config`` restarted from its step-4 checkpoint (copied, as if the run had been killed after it)
    repeats the uninterrupted run: the trained parts, AdamW and the schedule are all restored."""
    stage = Path(config.storage_path) / config.name
    shutil.copytree(stage / "step_00000004", resumed_root / config.name / "step_00000004")
    resumed = run_training(dataclasses.replace(config, storage_path=str(resumed_root)))
    assert [m["step"] for m in resumed.state.history] == list(range(1, 9))
    assert _without_time(resumed.state.history) == _without_time(whole)


def test_the_procedural_recipe_chains_each_stage_from_the_previous_export() -> None:
    stages = next(line for line in (ROOT / "Makefile").read_text().splitlines() if line.startswith("MODEL_STAGES"))
    configs = [load_train_config(ROOT / path) for path in stages.split("=", 1)[1].split()]
    assert [c.name for c in configs] == ["procedural-prompts", "procedural-sam2", "procedural-refer", "procedural-joint",
                                         "procedural-tracker"]
    assert configs[0].model_config == "configs/model/procedural.yaml"
    for previous, stage in zip(configs, configs[1:], strict=False):
        assert stage.model_config == f"{previous.storage_path}/{previous.name}/model/model.yaml", stage.name
    prompts, tracking = configs[0], configs[1]
    assert prompts.objective == tracking.objective == "sam2_tracking"
    assert prompts.data.clip_frames == 1 and prompts.data.clip_prompts["mask"] == 0
    assert tracking.data.clip_frames > 1 and tracking.data.clip_prompts["mask"] > 0
    refined = configs[-1]  # the tracker again, after the stages that trained the prompted path on its image features
    assert refined.objective == "sam2_tracking" and refined.sam2_frozen == ["image_encoder"]
    assert refined.data.clip_frames > tracking.data.clip_frames and refined.data.clip_cond_frames > 1


def test_sam2_frozen_keeps_named_modules_while_the_tracker_trains(corpus: Path) -> None:
    """``sam2_frozen: [image_encoder]`` (the tracker stage of a model whose prompted path reads the image
    features): an AdamW step on the tracking objective moves memory attention and leaves the encoder as it was."""
    config = _config("configs/train/tiny_sam2.yaml", corpus, "sam2_frozen=[image_encoder]", "optim.lr=1e-2")
    model = build_model(load_config(ModelConfig, TINY_MODEL))
    network = training_network(model, load_config(ModelConfig, TINY_MODEL), config)
    before = {k: v.clone() for k, v in model.sam2.sam.state_dict().items()}
    trainable = [p for p in network.parameters() if p.requires_grad]
    assert not any(p.requires_grad for p in model.sam2.sam.image_encoder.parameters())
    assert not any(p.requires_grad for p in model.mllm.parameters())
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (4, 64, 64, 3), dtype=np.uint8)
    masks = np.zeros((4, 64, 64), np.uint8)
    masks[:, 20:40, 10:30] = 1
    frames[masks.astype(bool)] = (230, 40, 40)
    network([TrackingClip(frames, masks, 0, "box", cond_frames=(2,))])["loss"].backward()
    optimizer.step()
    after = model.sam2.sam.state_dict()
    assert not _changed(before, after, "image_encoder.")
    assert _changed(before, after, "memory_attention.") and _changed(before, after, "sam_mask_decoder.")
    with pytest.raises(ConfigError, match=r"sam2_frozen names \['vision'\]: not SAM2 modules"):
        _config("configs/train/tiny_sam2.yaml", corpus, "sam2_frozen=[vision]")
    with pytest.raises(ConfigError, match="sam2_frozen applies to the sam2_tracking objective, not 'joint'"):
        _config("configs/train/tiny.yaml", corpus, "sam2_frozen=[image_encoder]")


def test_tsg_sources_are_refused_by_the_tracking_objective(corpus: Path) -> None:
    with pytest.raises(ConfigError, match="sources.procedural_tsg: a charades-sta source has no masks"):
        _config("configs/train/tiny.yaml", corpus, "objective=sam2_tracking")
    with pytest.raises(ConfigError, match="mode must be one of"):
        _config("configs/train/tiny.yaml", corpus, "mode=partial")


def test_tracking_stage_then_full_joint_stage_from_its_export(corpus: Path, tmp_path: Path, ray_local: None,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Chained as the recipe chains them, with a storage path relative to the working directory (Ray Train runs
    its workers elsewhere: the export and the next stage's model_config must still meet there)."""
    monkeypatch.chdir(tmp_path)
    common = ("optim.warmup_steps=0", "num_workers=1", "storage_path=runs", "checkpoint_every=4", "max_steps=8")
    first = _config("configs/train/tiny_sam2.yaml", corpus, *common, "data.fixed_pool=2", f"model_config={TINY_MODEL}")
    tracking = run_training(first)
    assert tracking.export_uri == str(tmp_path / "runs" / "tiny-sam2" / "model")
    _falls(tracking.state.history, TRACK_PARTS, 0.8)
    assert {p.name for p in (tmp_path / "runs" / "tiny-sam2" / "step_00000008" / "model").iterdir()} == {
        "sam2.safetensors"}

    # every SAM2 module trained, the MLLM did not
    untrained = build_model(load_config(ModelConfig, TINY_MODEL))
    stage1 = load_exported(tracking.export_uri)
    before, after = untrained.sam2.sam.state_dict(), stage1.sam2.sam.state_dict()
    assert all(_changed(before, after, prefix) for prefix in SAM2_TRAINED_MODULES)
    mllm_before, mllm_after = untrained.mllm.hf_model.state_dict(), stage1.mllm.hf_model.state_dict()
    assert all(torch.equal(mllm_before[k], mllm_after[k]) for k in mllm_before)

    # stage 2 starts from stage 1's model.yaml: every MLLM parameter trains, SAM2 outside its decoder stays;
    # the [SEG] projection is calibrated on the first batch of the fresh run (not again when it resumes)
    second = _config("configs/train/tiny.yaml", corpus, *common, "data.fixed_pool=4", "mode=full", "optim.lr=3e-3",
                     "model_config=runs/tiny-sam2/model/model.yaml", "prompt_calibration.batches=4")
    joint = run_training(second)
    _falls(joint.state.history, JOINT_PARTS, 0.9)
    files = {p.name for p in (tmp_path / "runs" / "tiny" / "step_00000008" / "model").iterdir()}
    assert files == {"mllm.safetensors", "heads.safetensors", "sam2_decoder.safetensors"}
    assert not (Path(joint.export_uri) / "adapter").exists()
    stage2 = load_exported(joint.export_uri)
    final = stage2.sam2.sam.state_dict()
    assert not _changed(after, final, "image_encoder.") and not _changed(after, final, "memory_encoder.")
    assert _changed(after, final, "sam_mask_decoder.")
    trained_backbone = stage2.mllm.hf_model.state_dict()
    assert _changed(mllm_after, trained_backbone, "model.visual.")
    assert _changed(mllm_after, trained_backbone, "model.language_model.layers.")

    # the release: the last stage's model, both stages' record, loss curves and the model card
    record = release([first, second], tmp_path / "released")  # relative storage: from the same directory
    assert [(s["name"], s["steps"], len(s["history"])) for s in record["stages"]] == [("tiny-sam2", 8, 8), ("tiny", 8, 8)]
    assert record["parameters"]["sam2"] == sum(p.numel() for p in stage2.sam2.parameters())
    assert (tmp_path / "released" / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"SAM2 {record['parameters']['sam2']:,}" in (tmp_path / "released" / "README.md").read_text()
    released = load_exported(str(tmp_path / "released")).sam2.sam.state_dict()
    assert all(torch.equal(final[k], released[k]) for k in final)

    # a killed run resumes where it left off (the tracking stage's restart: test_node_loss.py)
    _resumes_exactly(second, joint.state.history, tmp_path / "resumed")
