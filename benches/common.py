"""Helpers shared by the engine benches: tiny models, procedural mp4 videos, fresh-process runs, RESULT line.

- ``build_labeler``: the tiny network of ``configs/model/tiny.yaml`` (``checkpoints.build_model``, seeded)
  wrapped in a ``VideoLabeler`` with small-frame engine settings (``bench_engine_config``).
- ``write_procedural_video``: a ``pipelines.synthetic`` scene encoded with ``pipelines.video_io.write_mp4``
  and its first ``num_expressions`` expressions as ``ExpressionQuery`` objects.
- ``run_fresh``: run ``python <bench> --child ...`` in a new interpreter and read back the JSON it prints
  last (peak RSS must not include what earlier runs in this process allocated).
- ``peak_rss_mb`` / ``rss_mb``: ``ru_maxrss`` of this process and its current resident set.
- ``print_result``: the single closing ``RESULT {json}`` line every bench ends with.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from actors.config import load_config
from actors.engine import EngineConfig, ExpressionQuery, VideoLabeler
from actors.model.checkpoints import build_model
from actors.model.config import ModelConfig
from pipelines.synthetic import SceneConfig, generate_video
from pipelines.synthetic_text import TextConfig
from pipelines.video_io import write_mp4

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = ROOT / "configs" / "model" / "tiny.yaml"
# Enough candidates that every scene yields at least 8 expressions (2 no-target ones always exist).
BENCH_TEXT = TextConfig(per_kind=3, no_target=2, moments=0)


def bench_engine_config(**overrides: Any) -> EngineConfig:  # noqa: ANN401 - EngineConfig field values
    """Engine settings sized for the tiny model: 56 px low-res frames (2x2 tokens), 112 px key frames."""
    settings: dict[str, Any] = {"keyframe_side": 112, "lowres_side": 56, "lowres_frames": 16}
    settings.update(overrides)
    return EngineConfig(**settings)


def build_labeler(config: EngineConfig | None = None, seed: int = 0) -> VideoLabeler:
    """A ``VideoLabeler`` on the tiny network (``configs/model/tiny.yaml``); the same seed, the same weights."""
    torch.manual_seed(seed)
    model = build_model(load_config(ModelConfig, TINY_MODEL))
    return VideoLabeler(model.mllm, model.sam2, config or bench_engine_config())


@dataclass
class BenchVideo:
    path: str
    num_frames: int
    height: int
    width: int
    queries: list[ExpressionQuery]


def write_procedural_video(path: str | Path, index: int, num_frames: int, height: int, width: int,
                           num_expressions: int = 8, seed: int = 0) -> BenchVideo:
    """Procedural video ``index`` of corpus ``seed`` as an mp4 at ``path`` with its first expressions."""
    scene = SceneConfig(num_frames=num_frames, height=height, width=width)
    video = generate_video(f"bench{index}", seed, index, scene, BENCH_TEXT)
    if len(video.expressions) < num_expressions:
        raise ValueError(f"video bench{index}: {len(video.expressions)} expressions, {num_expressions} wanted")
    write_mp4(video.simulation.iter_frames(), str(path), video.fps)
    queries = [ExpressionQuery(e.expr_id, e.text) for e in video.expressions[:num_expressions]]
    return BenchVideo(str(path), num_frames, height, width, queries)


def rss_mb() -> float:
    """Current resident set of this process in MiB."""
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def peak_rss_mb() -> float:
    """Peak resident set of this process so far in MiB (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_fresh(script: str | Path, *args: str) -> dict[str, Any]:
    """Run ``python script --child *args`` in a new interpreter; return the JSON object it printed last."""
    out = subprocess.run([sys.executable, str(script), "--child", *args], check=False, capture_output=True,
                         text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"{Path(script).name} --child {' '.join(args)} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def print_result(figures: dict[str, Any]) -> None:
    """The closing line of a bench: ``RESULT {json}`` (``figures`` must hold ``"ratio"``)."""
    if "ratio" not in figures:
        raise ValueError("a bench RESULT needs a 'ratio'")
    print("RESULT " + json.dumps(figures), flush=True)
