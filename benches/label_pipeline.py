"""Throughput of ``vrseg label`` on Ray Data vs the engine in a plain loop, and with 1 vs 2 actors per stage.

On one procedural corpus (local files, tiny model, CPU):

- ``loop``: ``actors.engine.VideoLabeler.label`` over the videos one after the other in this process
  (model loaded once), with as many torch threads as the pipelines' Ray instance has CPUs (``CPUS``): both
  sides get the same CPUs;
- ``pipeline_1``: ``pipelines.label.label`` with one actor per stage (``configs/label/tiny.yaml``);
- ``pipeline_2``: two actors per stage, each actor with half the CPUs;
- ``pipeline_fused``: ``stages=fused``, one actor holding both model halves (``pools.label``).

Each figure is measured the same way on both sides: videos per second over the whole run including start-up
(``*_vps``: the loop's includes loading the model, the pipeline's starting its actors and loading the models
in them), and in steady state (``*_steady_vps``: the videos finished after the first one, over the time from
the first one's end to the last one's; a pipeline's ends are its commit markers' times). The pipelines' masks
are checked equal to the loop's (same outputs). ``ratio`` = pipeline_1 steady / loop steady throughput.

Usage: ``python benches/label_pipeline.py [--videos 8] [--frames 24]``
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch

from actors.config import load_config
from actors.decode import VideoDecoder
from actors.engine import ExpressionQuery, VideoLabeler
from actors.mllm import load_inference_model
from pipelines.label import InputSpec, label
from pipelines.label_config import load_label_config
from pipelines.storage import COMMIT_DIR
from pipelines.synthetic_cli import SynthConfig, write_corpus

CONFIG = "configs/label/tiny.yaml"
CPUS = 2  # the Ray instance's CPUs, and the loop's torch threads
TWO_ACTORS = ["pools.decode.size=2", "pools.decode.num_cpus=0.05", "pools.mllm.size=2", "pools.mllm.num_cpus=0.4",
              "pools.propagate.size=2", "pools.propagate.num_cpus=0.45", "pools.write.size=2",
              "pools.write.num_cpus=0.05"]


def corpus(root: Path, videos: int, frames: int) -> list[dict]:
    overrides = [f"num_videos={videos}", f"scene.num_frames={frames}", "text.per_kind=1",
                 "output.layouts=[mp4,manifest]"]
    write_corpus(load_config(SynthConfig, "configs/synth/tiny.yaml", overrides), str(root))
    return [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines() if line.strip()]


def steady_vps(ends: list[float]) -> float:
    """Videos finished after the first one, per second from the first one's end to the last one's."""
    ends = sorted(ends)
    return (len(ends) - 1) / max(ends[-1] - ends[0], 1e-9)


def plain_loop(rows: list[dict]) -> tuple[float, float, dict]:
    """Wall seconds including the model load, steady videos/s, and the masks."""
    torch.set_num_threads(CPUS)
    start = time.perf_counter()
    config, model = load_label_config(CONFIG)
    network = load_inference_model(model)
    labeler = VideoLabeler(network.mllm, network.sam2, config.engine)
    masks, ends = {}, []
    for row in rows:
        with VideoDecoder(row["video_uri"]) as video:
            labels = labeler.label(video, [ExpressionQuery(e["expr_id"], e["text"]) for e in row["expressions"]])
        for e in labels.expressions:
            masks[(row["video_id"], e.expr_id)] = [r["counts"] for r in e.rles]
        ends.append(time.perf_counter())
    return time.perf_counter() - start, steady_vps(ends), masks


def pipeline(manifest: str, output: Path, overrides: list[str]) -> tuple[float, float, dict]:
    config, model = load_label_config(CONFIG, overrides)
    start = time.perf_counter()
    result = label(InputSpec(manifest=manifest), str(output), config, model, progress=False)
    wall = time.perf_counter() - start
    assert result.failed == 0 and not result.errors, result.errors
    steady = steady_vps([os.path.getmtime(p) for p in (output / COMMIT_DIR).iterdir()])
    masks = {}
    for file in (output / "masks").iterdir():
        table = pq.read_table(io.BytesIO(file.read_bytes())).to_pydict()
        for video_id, expr_id, rle in zip(table["video_id"], table["expr_id"], table["rle"], strict=True):
            masks.setdefault((video_id, expr_id), []).append(rle)
    return wall, steady, masks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--frames", type=int, default=24)
    args = parser.parse_args()
    import ray

    ray.init(num_cpus=CPUS, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory(prefix="vrseg-bench-label-") as tmp:
        root = Path(tmp)
        rows = corpus(root / "corpus", args.videos, args.frames)
        manifest = str(root / "corpus" / "manifest.jsonl")
        loop_seconds, loop_steady, reference = plain_loop(rows)
        print(f"loop: {len(rows) / loop_seconds:.2f} videos/s overall ({loop_seconds:.1f}s), {loop_steady:.2f} "
              f"videos/s steady; {CPUS} torch threads", flush=True)
        figures = {"videos": len(rows), "frames": args.frames, "expressions": len(reference), "cpus": CPUS,
                   "loop_vps": round(len(rows) / loop_seconds, 3), "loop_steady_vps": round(loop_steady, 3)}
        for name, overrides in (("pipeline_1", []), ("pipeline_2", TWO_ACTORS), ("pipeline_fused", ["stages=fused"])):
            wall, steady, masks = pipeline(manifest, root / name, overrides)
            assert masks == reference, f"{name}: masks differ from the engine's plain loop"
            print(f"{name}: {len(rows) / wall:.2f} videos/s overall ({wall:.1f}s), {steady:.2f} videos/s steady; "
                  f"masks equal to the loop's", flush=True)
            figures[f"{name}_vps"] = round(len(rows) / wall, 3)
            figures[f"{name}_steady_vps"] = round(steady, 3)
    ray.shutdown()
    figures["two_vs_one_actors_steady"] = round(figures["pipeline_2_steady_vps"] / figures["pipeline_1_steady_vps"], 3)
    figures["fused_vs_split_steady"] = round(figures["pipeline_fused_steady_vps"] / figures["pipeline_1_steady_vps"], 3)
    figures["ratio"] = round(figures["pipeline_1_steady_vps"] / loop_steady, 3)
    figures["ratio_with_startup"] = round(figures["pipeline_1_vps"] / figures["loop_vps"], 3)
    print("RESULT " + json.dumps(figures))


if __name__ == "__main__":
    main()
