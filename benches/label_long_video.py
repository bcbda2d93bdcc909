"""P5: peak RSS of the ``vrseg label`` Ray workers on a 2,000-frame video vs a 200-frame one (issue 5).

The engine's bounded memory on long videos (``benches/long_video_memory.py``) must survive the pipeline.
Two procedural videos (``pipelines.synthetic``, ``--height`` x ``--width``, same scene seed, ``--expressions``
expressions each) are encoded to mp4 by the parent with a one-row JSONL manifest each. Each is labeled by
the real pipeline (``pipelines.label.label``, ``configs/label/tiny.yaml``: tiny model, CPU, one actor per
stage) in a fresh subprocess with its own local Ray (``num_cpus=2``), so the driver and every Ray worker
start empty. In the child a thread samples, every ``--sample-ms``, the ``VmHWM`` (peak resident set) and
current RSS of every Ray worker of the session (descendants of the driver whose title starts with
``ray::``), read once more after ``label`` returns and before ``ray.shutdown`` (stage actors are killed
when the dataset finishes, so their last sample stands for their peak). Workers are grouped by the
pipeline stage they host (``ray::MapWorker(MapBatches(Propagator))`` -> ``Propagator``); Ray's own actors,
read tasks and idle workers are ``other``. The child also reports its own ``VmHWM`` (the driver) and the
raylet's (it holds the object store), and checks the run labeled every frame: the committed masks Parquet
has frames x expressions rows (a failed run cannot pass).

Figures per run: frames, wall seconds of ``label``, peak RSS per worker group (MB), the maximum over the
workers, the driver's peak (and its peak before ``label``: imports and Ray start), the raylet's peak, the
pipeline's per-stage seconds and a coarse trace of each group's current RSS.

``ratio`` = max worker peak RSS (long) / max worker peak RSS (short); target <= 1.3. ``group_ratios``: the
same per group (the Propagator's is the one whose work grows with the video; the others' are noise).

Usage: ``python benches/label_long_video.py [--short 200] [--long 2000] [--expressions 4]``
"""

from __future__ import annotations

import argparse
import io
import json
import re
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
from common import load_average, print_result, run_fresh, write_procedural_video

from pipelines.label import InputSpec, label
from pipelines.label_config import load_label_config
from pipelines.label_writer import MASKS_DIR

CONFIG = "configs/label/tiny.yaml"
TARGET = 1.3
OTHER = "other"
STAGE_UDF = re.compile(r"MapBatches\((\w+)\)")


def status_mb(pid: int | str, field: str) -> float:
    """A ``kB`` field of ``/proc/<pid>/status`` (``VmHWM``, ``VmRSS``) in MiB; raises OSError if the process is gone."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise OSError(f"/proc/{pid}/status has no {field}")


def stage_of(title: str) -> str | None:
    """The group of a Ray worker title: the stage UDF(s) of a Ray Data map actor, None when idle, else ``other``."""
    if title.startswith("ray::MapWorker("):
        return "->".join(STAGE_UDF.findall(title)) or OTHER
    return None if title.startswith("ray::IDLE") else OTHER


class WorkerSampler(threading.Thread):
    """Samples the Ray workers under this process every ``interval`` seconds (see the module docstring).

    ``peaks``: pid -> last ``VmHWM`` seen (MiB); ``groups``: pid -> group (a stage seen once wins over
    ``other``; a worker only ever seen idle is ``idle``); ``trace``: (seconds, {group: summed current RSS}).
    """

    def __init__(self, interval: float) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.peaks: dict[int, float] = {}
        self.groups: dict[int, str] = {}
        self.trace: list[tuple[float, dict[str, float]]] = []
        self.raylet_peak_mb = 0.0
        self.stopped = threading.Event()
        self.start_time = time.perf_counter()
        self.lock = threading.Lock()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        current: dict[str, float] = {}
        with self.lock:
            for proc in psutil.Process().children(recursive=True):
                try:
                    title = " ".join(proc.cmdline()).strip()
                    if Path(title.split(" ", 1)[0]).name == "raylet":
                        self.raylet_peak_mb = max(self.raylet_peak_mb, status_mb(proc.pid, "VmHWM"))
                        continue
                    if not title.startswith("ray::"):
                        continue
                    peak, rss = status_mb(proc.pid, "VmHWM"), status_mb(proc.pid, "VmRSS")
                except (psutil.Error, OSError):
                    continue
                stage = stage_of(title)
                known = self.groups.get(proc.pid)
                if stage is not None and (known in (None, "idle", OTHER)):
                    self.groups[proc.pid] = stage
                elif known is None:
                    self.groups[proc.pid] = "idle"
                self.peaks[proc.pid] = peak
                group = self.groups[proc.pid]
                current[group] = current.get(group, 0.0) + rss
            self.trace.append((round(time.perf_counter() - self.start_time, 1),
                               {k: round(v, 1) for k, v in sorted(current.items())}))

    def stop(self) -> None:
        self.stopped.set()
        self.join()
        self.sample()

    def by_group(self) -> dict[str, dict[str, float]]:
        """Per group: how many worker processes, and the largest peak RSS among them (MiB)."""
        out: dict[str, dict[str, float]] = {}
        for pid, peak in self.peaks.items():
            entry = out.setdefault(self.groups[pid], {"processes": 0, "peak_rss_mb": 0.0})
            entry["processes"] += 1
            entry["peak_rss_mb"] = round(max(entry["peak_rss_mb"], peak), 1)
        return dict(sorted(out.items()))


def masks_rows(output: Path) -> int:
    """Rows of every committed masks Parquet file under ``output``."""
    return sum(pq.read_metadata(io.BytesIO(f.read_bytes())).num_rows for f in (output / MASKS_DIR).glob("*.parquet"))


def child(manifest: str, output: str, frames: int, expressions: int, sample_ms: int) -> None:
    """One labeling run in this (fresh) process; prints its figures as one JSON line."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    config, model = load_label_config(CONFIG)
    driver_before = status_mb("self", "VmHWM")
    sampler = WorkerSampler(sample_ms / 1000)
    sampler.start()
    started = time.perf_counter()
    result = label(InputSpec(manifest=manifest), output, config, model, progress=False)
    wall = time.perf_counter() - started
    sampler.stop()
    driver_peak = status_mb("self", "VmHWM")
    ray.shutdown()
    if result.failed or result.errors or result.done != 1:
        raise RuntimeError(f"the labeling run failed: done={result.done} failed={result.failed} {result.errors}")
    rows = masks_rows(Path(output))
    if rows != frames * expressions:
        raise RuntimeError(f"masks hold {rows} rows, {frames} frames x {expressions} expressions expected")
    groups = sampler.by_group()
    if not groups:
        raise RuntimeError("no Ray worker process was sampled")
    workers = {name: g for name, g in groups.items() if name not in (OTHER, "idle")} or groups
    largest = max(workers, key=lambda name: workers[name]["peak_rss_mb"])
    trace = sampler.trace[:: max(1, len(sampler.trace) // 30)]
    print(json.dumps({
        "frames": frames, "expressions": expressions, "mask_rows": rows, "wall_s": round(wall, 1),
        "groups": groups, "max_worker_peak_mb": max(g["peak_rss_mb"] for g in groups.values()),
        "max_stage": largest, "driver_peak_mb": round(driver_peak, 1),
        "driver_peak_before_label_mb": round(driver_before, 1),
        "raylet_peak_mb": round(sampler.raylet_peak_mb, 1),
        "stage_s": {k: round(v, 1) for k, v in result.stage_seconds.items()}, "rss_trace": trace,
    }))


def write_manifest(path: Path, video_id: str, video_path: str, queries: list[dict[str, str]]) -> None:
    row = {"video_id": video_id, "video_uri": video_path, "expressions": queries}
    path.write_text(json.dumps(row) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", type=int, default=200)
    parser.add_argument("--long", type=int, default=2000)
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--expressions", type=int, default=4)
    parser.add_argument("--sample-ms", type=int, default=250)
    parser.add_argument("--child", action="store_true", help="set by common.run_fresh for the --one runs")
    parser.add_argument("--one", metavar="MANIFEST", help="label this manifest in this process (child mode)")
    parser.add_argument("--output", help="output folder of the --one run")
    parser.add_argument("--frames", type=int, help="frames of the --one run's video (checked)")
    args = parser.parse_args()
    if args.one is not None:
        child(args.one, args.output, args.frames, args.expressions, args.sample_ms)
        return
    print(f"load average at start: {load_average()}", flush=True)
    runs = {}
    with tempfile.TemporaryDirectory(prefix="vrseg-bench-label-long-") as tmp:
        for name, frames in (("short", args.short), ("long", args.long)):
            video = write_procedural_video(Path(tmp) / f"{name}.mp4", 0, frames, args.height, args.width,
                                           args.expressions)
            manifest = Path(tmp) / f"{name}.jsonl"
            write_manifest(manifest, name, video.path, [{"expr_id": q.expr_id, "text": q.text} for q in video.queries])
            runs[name] = run_fresh(__file__, "--one", str(manifest), "--output", str(Path(tmp) / f"out-{name}"),
                                   "--frames", str(frames), "--expressions", str(args.expressions),
                                   "--sample-ms", str(args.sample_ms))
            figures = runs[name]
            groups = ", ".join(f"{k} {g['peak_rss_mb']} MB ({g['processes']} proc)" for k, g in figures["groups"].items())
            print(f"{frames:>5} frames x {args.expressions} expressions: {figures['wall_s']} s; "
                  f"peak RSS per group: {groups}; max worker {figures['max_worker_peak_mb']} MB; "
                  f"driver {figures['driver_peak_mb']} MB ({figures['driver_peak_before_label_mb']} MB before label); "
                  f"raylet {figures['raylet_peak_mb']} MB", flush=True)
            print(f"  stage seconds: {figures['stage_s']}")
            print(f"  current RSS per group (s, MB): {figures['rss_trace']}")
    short, long = runs["short"], runs["long"]
    ratio = long["max_worker_peak_mb"] / short["max_worker_peak_mb"]
    extra_frames = (long["frames"] - short["frames"]) / 1000
    group_ratios = {}
    for group in sorted(set(short["groups"]) & set(long["groups"])):
        peaks = long["groups"][group]["peak_rss_mb"], short["groups"][group]["peak_rss_mb"]
        group_ratios[group] = round(peaks[0] / peaks[1], 3)
        growth = peaks[0] - peaks[1]
        print(f"  {group}: {growth:+.1f} MB peak ({growth / extra_frames:+.1f} MB per 1,000 frames), "
              f"ratio {group_ratios[group]}")
    driver_growth = long["driver_peak_mb"] - short["driver_peak_mb"]
    print(f"  driver: {driver_growth:+.1f} MB peak ({driver_growth / extra_frames:+.1f} MB per 1,000 frames)")
    print(f"max worker peak RSS ratio {ratio:.3f} (target <= {TARGET}: {'met' if ratio <= TARGET else 'MISSED'}); "
          f"load average {load_average()}")
    for figures in runs.values():
        figures.pop("rss_trace")
    print_result({
        "bench": "label_long_video", "ratio": round(ratio, 3), "target": TARGET, "group_ratios": group_ratios,
        "size": [args.height, args.width], "expressions": args.expressions,
        "short": short, "long": long, "load_average": load_average(),
    })


if __name__ == "__main__":
    main()
