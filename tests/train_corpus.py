"""The procedural corpus and tiny training config shared by the training tests."""

from __future__ import annotations

from pathlib import Path

from actors.config import load_config
from pipelines.synthetic_cli import SynthConfig, write_corpus
from pipelines.train_config import TrainConfig, load_train_config


def write_train_corpus(root: Path) -> Path:
    """``configs/synth/tiny.yaml`` as mp4s, the MeViS layout and Charades-STA text under ``root``."""
    write_corpus(load_config(SynthConfig, "configs/synth/tiny.yaml", ["output.layouts=[mp4,mevis,charades]"]),
                 str(root))
    return root


def tiny_config(corpus: Path, *overrides: str) -> TrainConfig:
    return load_train_config("configs/train/tiny.yaml", [f"data_root={corpus}", *overrides])
