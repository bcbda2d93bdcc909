"""Corpus scale: ``vrseg label`` on a manifest of 100,000 and 1,000,000 rows, half of them already committed.

Each manifest's rows point at a few real tiny videos (``vrseg synth``'s procedural corpus), repeated under
distinct ids; every other row's video is already committed (its commit marker written directly, as a
finished run leaves it). ``vrseg label`` (``configs/label/tiny.yaml``) runs as a subprocess; this process
polls the driver's peak resident memory (``VmHWM``, the kernel's high-water mark of that one process: the
Ray workers and raylet are other processes) and the commit directory, and stops the job once the first NEW
video is committed (labeling a million videos is not the point).

Figures per size: ``driver_peak_rss_mb``, ``first_commit_s`` (from the command's start to the first new
marker), and the setup (manifest and markers written); ``import_floor_mb``: the peak RSS of a process that
only imports the driver's code, the part of the driver's peak no manifest causes. The 100k run is the baseline measured in the same
run: ``rss_growth_mb`` and ``first_commit_growth_s`` are 1M minus 100k, ``*_ratio`` 1M over 100k (flat
means the driver does not hold the corpus; ``ratio`` is ``rss_ratio``). Targets (issue 14): at 1M rows, driver peak RSS <= 1 GB and
the first new commit within 60 s.

Usage: ``python benches/corpus_scale.py [--sizes 100000 1000000] [--videos 4] [--timeout 600]``
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import print_result

from actors.config import load_config
from pipelines.storage import COMMIT_DIR, CommitRecord, _files_checksum, video_key
from pipelines.synthetic_cli import SynthConfig, write_corpus

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/label/tiny.yaml"
POLL_S = 0.05
TARGET_RSS_MB = 1024
TARGET_FIRST_COMMIT_S = 60.0


def tiny_videos(root: Path, count: int) -> list[dict]:
    """``count`` procedural mp4s and their manifest rows (``vrseg synth``, ``configs/synth/tiny.yaml``)."""
    overrides = [f"num_videos={count}", "text.per_kind=1", "output.layouts=[mp4,manifest]"]
    write_corpus(load_config(SynthConfig, str(ROOT / "configs/synth/tiny.yaml"), overrides), str(root))
    return [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines() if line.strip()]


def write_corpus_state(root: Path, rows: int, videos: list[dict]) -> tuple[Path, Path, int]:
    """A ``rows``-row manifest over ``videos`` (distinct ids) and an output whose every other video is
    committed; returns (manifest, output, committed markers)."""
    manifest, output = root / "manifest.jsonl", root / "out"
    markers = output / COMMIT_DIR
    markers.mkdir(parents=True)
    empty = _files_checksum(())
    committed = 0
    with manifest.open("w") as handle:
        for i in range(rows):
            video = videos[i % len(videos)]
            video_id = f"clip-{i:07d}"
            handle.write(json.dumps({**video, "video_id": video_id}) + "\n")
            if i % 2 == 0:
                key = video_key(video_id)
                record = CommitRecord(video_id, key, (), empty, {})
                (markers / f"{key}.json").write_bytes(record.to_json())
                committed += 1
    return manifest, output, committed


def peak_rss_mb(pid: int) -> float:
    """The process's resident high-water mark (``VmHWM``) in MiB; 0 once it has exited."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def new_marker(markers: Path, committed: int, last_mtime: int) -> tuple[bool, int]:
    """Whether a marker beyond the ``committed`` ones exists (listed only when the directory changed)."""
    mtime = os.stat(markers).st_mtime_ns
    if mtime == last_mtime:
        return False, mtime
    with os.scandir(markers) as entries:
        names = sum(1 for e in entries if e.name.endswith(".json") and not e.name.startswith("."))
    return names > committed, mtime


def stop(job: subprocess.Popen) -> None:
    """SIGINT the driver (it shuts its Ray instance down), then kill whatever of its session is left."""
    job.send_signal(signal.SIGINT)
    try:
        job.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(job.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    job.wait()


def import_floor_mb() -> float:
    """Peak RSS of a process that only imports the driver's code (``pipelines.label``: torch, transformers,
    Ray Data): the part of the driver's peak that no manifest causes."""
    script = "import pipelines.label, resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         check=True, capture_output=True, text=True).stdout
    return int(out.split()[-1]) / 1024


def run_size(rows: int, videos: list[dict], timeout: float) -> dict:
    """One size: write its state, run ``vrseg label``, measure until the first new commit, stop."""
    with tempfile.TemporaryDirectory(prefix=f"corpus-scale-{rows}-rows-") as scratch:
        start = time.perf_counter()
        manifest, output, committed = write_corpus_state(Path(scratch), rows, videos)
        setup_s = time.perf_counter() - start
        markers = output / COMMIT_DIR
        command = [sys.executable, "-m", "pipelines.label", "--manifest", str(manifest), "--output", str(output),
                   "--config", CONFIG, "--no-progress", f"decoder.scratch_dir={scratch}"]
        started = time.perf_counter()
        job = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=open(Path(scratch) / "stderr.txt", "wb"))
        first_commit_s, peak, mtime = None, 0.0, 0
        try:
            while first_commit_s is None:
                if job.poll() is not None:
                    tail = (Path(scratch) / "stderr.txt").read_text(errors="replace")[-6000:]
                    raise RuntimeError(f"vrseg label ended ({job.returncode}) before a new commit:\n{tail}")
                if time.perf_counter() - started > timeout:
                    raise RuntimeError(f"no new commit within {timeout:.0f} s")
                peak = max(peak, peak_rss_mb(job.pid))
                found, mtime = new_marker(markers, committed, mtime)
                if found:
                    first_commit_s = time.perf_counter() - started
                time.sleep(POLL_S)
            peak = max(peak, peak_rss_mb(job.pid))
        finally:
            stop(job)
    figures = {"rows": rows, "committed_before": committed, "setup_s": round(setup_s, 1),
               "driver_peak_rss_mb": round(peak, 1), "first_commit_s": round(first_commit_s, 1)}
    print(f"{rows:>9,} rows ({committed:,} committed): driver peak RSS {peak:7.1f} MB, first new commit "
          f"{first_commit_s:5.1f} s (setup {setup_s:.1f} s)", flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=[100_000, 1_000_000], metavar=("BASELINE", "LARGE"))
    parser.add_argument("--videos", type=int, default=4, help="distinct real videos the rows point at")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the first new commit")
    args = parser.parse_args()
    floor = import_floor_mb()
    print(f"driver imports alone (pipelines.label): peak RSS {floor:.1f} MB", flush=True)
    with tempfile.TemporaryDirectory(prefix="corpus-scale-videos-") as scratch:
        videos = tiny_videos(Path(scratch), args.videos)
        base, large = (run_size(rows, videos, args.timeout) for rows in args.sizes)
    growth = {
        "rss_growth_mb": round(large["driver_peak_rss_mb"] - base["driver_peak_rss_mb"], 1),
        "rss_ratio": round(large["driver_peak_rss_mb"] / base["driver_peak_rss_mb"], 3),
        "first_commit_growth_s": round(large["first_commit_s"] - base["first_commit_s"], 1),
        "first_commit_ratio": round(large["first_commit_s"] / base["first_commit_s"], 3),
        "import_floor_mb": round(floor, 1),
    }
    print(f"growth {args.sizes[0]:,} -> {args.sizes[1]:,} rows: driver peak RSS {growth['rss_growth_mb']:+.1f} MB "
          f"(x{growth['rss_ratio']}), first commit {growth['first_commit_growth_s']:+.1f} s "
          f"(x{growth['first_commit_ratio']}); baseline: the {args.sizes[0]:,}-row run")
    met = large["driver_peak_rss_mb"] <= TARGET_RSS_MB and large["first_commit_s"] <= TARGET_FIRST_COMMIT_S
    print(f"targets at {args.sizes[1]:,} rows: driver peak RSS <= {TARGET_RSS_MB} MB, first new commit <= "
          f"{TARGET_FIRST_COMMIT_S:.0f} s: {'met' if met else 'MISSED'}")
    print_result({"driver_peak_rss_mb": large["driver_peak_rss_mb"], "first_commit_s": large["first_commit_s"],
                  "ratio": growth["rss_ratio"], "baseline": base, "large": large, **growth, "targets_met": met})


if __name__ == "__main__":
    main()
