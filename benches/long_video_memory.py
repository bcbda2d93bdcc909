"""P2: peak RSS of the engine labeling a 2,000-frame video vs a 200-frame one at the same resolution (issue 4).

Two procedural videos (``pipelines.synthetic``, ``--height`` x ``--width``, same scene seed) are encoded to
mp4 by the parent. Each is labeled in a fresh subprocess: build the tiny network
(``configs/model/tiny.yaml``), open a ``VideoDecoder``, run ``VideoLabeler.label`` with ``--expressions``
queries and keep its output (the per-frame RLEs are the job's result, so they count). The child reports
``ru_maxrss`` at the end (peak RSS), its RSS after building the model, RSS sampled every ``--sample-ms``
by a background thread (to see when the peak happens), the stage times and the decoder's
``counters.summary()`` (codec frames decoded per frame of video). With ``--trace`` the child also runs
tracemalloc and prints the largest Python allocation sites at the peak.

``ratio`` = peak RSS (long) / peak RSS (short); target <= 1.3.

Usage: ``python benches/long_video_memory.py [--short 200] [--long 2000] [--expressions 4]``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import torch
from common import (
    build_labeler,
    load_average,
    peak_rss_mb,
    print_result,
    rss_mb,
    run_fresh,
    write_procedural_video,
)

from actors.decode import VideoDecoder
from actors.engine import ExpressionQuery


class RssSampler(threading.Thread):
    """Samples this process's RSS every ``interval`` seconds; ``trace`` holds (seconds, MiB) pairs."""

    def __init__(self, interval: float) -> None:
        super().__init__(daemon=True)
        self.interval, self.trace = interval, []
        self.stopped = threading.Event()
        self.start_time = time.perf_counter()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.trace.append((round(time.perf_counter() - self.start_time, 2), round(rss_mb(), 1)))


def child(path: str, queries_json: str, sample_ms: int, trace: bool) -> None:
    torch.set_num_threads(1)
    queries = [ExpressionQuery(q["expr_id"], q["text"]) for q in json.loads(queries_json)]
    labeler = build_labeler()
    after_build = rss_mb()
    if trace:
        tracemalloc.start(8)
    sampler = RssSampler(sample_ms / 1000)
    sampler.start()
    started = time.perf_counter()
    with VideoDecoder(path) as source:
        out = labeler.label(source, queries)
        decode = source.counters.summary()
    seconds = time.perf_counter() - started
    sampler.stopped.set()
    sampler.join()
    figures = {
        "frames": out.num_frames, "peak_rss_mb": round(peak_rss_mb(), 1), "rss_after_build_mb": round(after_build, 1),
        "rss_end_mb": round(rss_mb(), 1), "seconds": round(seconds, 1),
        "stage_s": {k: round(v, 2) for k, v in out.timings.items()}, "decode": decode,
        "rss_samples": sampler.trace[:: max(1, len(sampler.trace) // 40)],
        "output_rle_chars": sum(len(r["counts"]) for e in out.expressions for r in e.rles),
    }
    if trace:
        current, peak = tracemalloc.get_traced_memory()
        top = tracemalloc.take_snapshot().statistics("traceback")[:8]
        figures["tracemalloc"] = {
            "current_mb": round(current / 2**20, 2), "peak_mb": round(peak / 2**20, 2),
            "top": [{"mb": round(s.size / 2**20, 2), "at": s.traceback.format()[-4:]} for s in top],
        }
    print(json.dumps(figures))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", type=int, default=200)
    parser.add_argument("--long", type=int, default=2000)
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--expressions", type=int, default=4)
    parser.add_argument("--sample-ms", type=int, default=200)
    parser.add_argument("--trace", action="store_true", help="tracemalloc in the children (slower)")
    args = parser.parse_args()
    print(f"load average at start: {load_average()}", flush=True)
    runs = {}
    with tempfile.TemporaryDirectory(prefix="vrseg-bench-") as tmp:
        for name, frames in (("short", args.short), ("long", args.long)):
            video = write_procedural_video(Path(tmp) / f"{name}.mp4", 0, frames, args.height, args.width,
                                           args.expressions)
            queries = json.dumps([{"expr_id": q.expr_id, "text": q.text} for q in video.queries])
            extra = ["--trace"] if args.trace else []
            runs[name] = run_fresh(__file__, video.path, queries, str(args.sample_ms), *extra)
            figures = runs[name]
            print(
                f"{frames:>5} frames x {args.expressions} expressions: peak RSS {figures['peak_rss_mb']} MB "
                f"(after model build {figures['rss_after_build_mb']} MB, at end {figures['rss_end_mb']} MB), "
                f"{figures['seconds']} s, stages {figures['stage_s']}", flush=True
            )
            print(f"  decoder: {figures['decode']}")
            print(f"  RSS samples (s, MB): {figures['rss_samples']}")
            if "tracemalloc" in figures:
                traced = figures["tracemalloc"]
                print(f"  tracemalloc (Python allocations only): {traced['current_mb']} MB at end, "
                      f"{traced['peak_mb']} MB peak; largest sites:")
                for site in traced["top"]:
                    print(f"    {site['mb']} MB  {' | '.join(line.strip() for line in site['at'])}")
    short, long = runs["short"], runs["long"]
    growth = (short["peak_rss_mb"] - short["rss_after_build_mb"], long["peak_rss_mb"] - long["rss_after_build_mb"])
    ratio = long["peak_rss_mb"] / short["peak_rss_mb"]
    print(f"labeling growth over the built model: {growth[0]:.1f} MB (short) vs {growth[1]:.1f} MB (long)")
    print(f"codec frames decoded per frame: {short['decode']['codec_per_frame']:.2f} (short), "
          f"{long['decode']['codec_per_frame']:.2f} (long)")
    print(f"peak RSS ratio {ratio:.3f} (target <= 1.3: {'met' if ratio <= 1.3 else 'MISSED'}); "
          f"load average {load_average()}")
    for figures in runs.values():
        figures.pop("rss_samples")
        figures.pop("tracemalloc", None)
    print_result({
        "bench": "long_video_memory", "ratio": round(ratio, 3), "target": 1.3,
        "size": [args.height, args.width], "expressions": args.expressions,
        "short": short, "long": long, "load_average": load_average(),
    })


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]), "--trace" in sys.argv[5:])
    else:
        main()
