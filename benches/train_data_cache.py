"""CPU cost of the training-sample builder with the decoded-frame cache off (baseline) and on.

Builds samples ``0 .. N-1`` of a training config's data section (default ``configs/train/procedural_refer.yaml``:
16 low-res frames at 84x112 and 4 key frames at 192x256 per RefVOS sample, 16 low-res frames per TSG sample)
in this process with one ``pipelines.train_data.SampleBuilder``, as one decode actor of ``vrseg train`` does,
with ``data.frame_cache_mb=0`` and with the cache (the config's budget, or ``--cache-mb``), the two builders
taking turns by blocks of ``--block`` samples so that both see the same load of the machine. The corpus is
generated first (``configs/synth/<synth>.yaml`` with ``--videos`` videos) unless ``--data-root`` names one.
The cache starts cold, so its figures include the first decode of every video; the second half's figures
show the steady state.

Prints samples/s, CPU seconds per sample (``time.process_time``: every thread of this process, decord's
included), the cache's hits, misses and bytes, and whether the two builders built the same bytes, block by
block; the ratio is CPU seconds per sample without the cache / with it (how many times less CPU the data
process needs).

    .venv/bin/python benches/train_data_cache.py [--samples 200] [--videos 24] [--config ...] [--data-root ...]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

import numpy as np  # noqa: E402
import ray  # noqa: E402

from actors.config import load_config  # noqa: E402
from pipelines.synthetic_cli import SynthConfig, write_corpus  # noqa: E402
from pipelines.train_config import TrainConfig, load_train_config  # noqa: E402
from pipelines.train_data import SampleBuilder, read_catalog  # noqa: E402


@dataclass
class Tally:
    """Wall and CPU seconds of one builder, over every block and over the second half of the samples."""

    wall: float = 0.0
    cpu: float = 0.0
    late_cpu: float = 0.0
    late_samples: int = 0


def build_block(builder: SampleBuilder, indices: range, tally: Tally, late: bool) -> list[dict[str, Any]]:
    """Samples ``indices`` from ``builder``, their seconds added to ``tally``."""
    wall, cpu = time.perf_counter(), time.process_time()
    rows = [builder({"index": index}) for index in indices]
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    tally.wall, tally.cpu = tally.wall + wall, tally.cpu + cpu
    if late:
        tally.late_cpu, tally.late_samples = tally.late_cpu + cpu, tally.late_samples + len(indices)
    return rows


def same_rows(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    """Every array of every row equal byte for byte (dtype and shape included)."""
    def same(x: object, y: object) -> bool:
        x, y = np.asarray(x), np.asarray(y)
        return x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
    return all(r.keys() == s.keys() and all(same(r[k], s[k]) for k in r) for r, s in zip(a, b, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/train/procedural_refer.yaml")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--synth", default="procedural_refer", help="configs/synth/<name>.yaml for the corpus")
    parser.add_argument("--videos", type=int, default=24, help="videos of the generated corpus")
    parser.add_argument("--data-root", default=None, help="an existing corpus instead of a generated one")
    parser.add_argument("--block", type=int, default=20, help="samples per alternating off / on block")
    parser.add_argument("--cache-mb", type=int, default=None, help="data.frame_cache_mb (default: the config's)")
    args = parser.parse_args()
    if args.block < 1 or args.samples < 2 * args.block:
        parser.error("--samples must be at least two --block of samples")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    with tempfile.TemporaryDirectory(prefix="vrseg-cache-bench-") as tmp:
        root = args.data_root
        if root is None:
            root = os.path.join(tmp, "corpus")
            started = time.perf_counter()
            write_corpus(load_config(SynthConfig, f"configs/synth/{args.synth}.yaml", [
                f"num_videos={args.videos}", "output.layouts=[mp4,mevis,charades]"]), root)
            print(f"corpus: {args.videos} videos of configs/synth/{args.synth}.yaml in "
                  f"{time.perf_counter() - started:.0f} s")

        def config(*overrides: str) -> TrainConfig:
            return load_train_config(args.config, [f"data_root={root}", f"storage_path={tmp}/runs", *overrides])

        cached = config(*([f"data.frame_cache_mb={args.cache_mb}"] if args.cache_mb is not None else []))
        print(f"{args.config}: {args.samples} samples, objective {cached.objective}, "
              f"frame cache {cached.data.frame_cache_mb} MiB")
        catalog = ray.put(read_catalog(cached))
        builders = {name: SampleBuilder([catalog], train.data, train.seed, train.objective)
                    for name, train in (("off", config("data.frame_cache_mb=0")), ("on", cached))}
        tallies = {name: Tally() for name in builders}
        identical = True
        for start in range(0, args.samples, args.block):  # alternating blocks: both see the same machine load
            indices = range(start, min(start + args.block, args.samples))
            late = start >= args.samples // 2
            rows = {name: build_block(builder, indices, tallies[name], late) for name, builder in builders.items()}
            identical = identical and same_rows(rows["off"], rows["on"])
    cache = builders["on"].cache
    assert cache is not None
    stats = cache.stats()
    figures: dict[str, float] = {}
    for name, tally in tallies.items():
        figures[f"samples_per_s_{name}"] = args.samples / tally.wall
        figures[f"cpu_ms_per_sample_{name}"] = 1000 * tally.cpu / args.samples
        figures[f"late_cpu_ms_per_sample_{name}"] = 1000 * tally.late_cpu / tally.late_samples
        print(f"cache {name:3}: {figures[f'samples_per_s_{name}']:.1f} samples/s, "
              f"{figures[f'cpu_ms_per_sample_{name}']:.1f} ms CPU per sample "
              f"({figures[f'late_cpu_ms_per_sample_{name}']:.1f} ms over the second half)")
    print(f"cache: {stats.hits} hits, {stats.misses} misses, {stats.evictions} evictions, {stats.oversize} oversize, "
          f"{stats.bytes_held / 2**20:.0f} MiB held")
    print(f"rows identical with and without the cache: {identical}")
    ratio = figures["cpu_ms_per_sample_off"] / figures["cpu_ms_per_sample_on"]
    late_ratio = figures["late_cpu_ms_per_sample_off"] / figures["late_cpu_ms_per_sample_on"]
    speed = figures["samples_per_s_on"] / figures["samples_per_s_off"]
    print(f"CPU per sample, off / on: {ratio:.2f}x ({late_ratio:.2f}x over the second half); "
          f"samples/s, on / off: {speed:.2f}x")
    print("RESULT " + json.dumps({"ratio": round(ratio, 3), "late_ratio": round(late_ratio, 3), "identical": identical,
                                  "samples": args.samples, "cache_mb": cached.data.frame_cache_mb,
                                  **{k: round(v, 2) for k, v in figures.items()}, "hits": stats.hits,
                                  "misses": stats.misses, "evictions": stats.evictions}), flush=True)

if __name__ == "__main__":
    main()
