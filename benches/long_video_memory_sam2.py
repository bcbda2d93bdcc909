"""Peak memory of a multi-object SAM2 session on a long video vs a short one (issue 3, last "Done when").

Each length runs in a fresh subprocess: build the tiny SAM2 (the sam2 section of configs/model/tiny.yaml), open a
``Sam2VideoSession`` on a procedural frame source (moving discs drawn on demand, nothing stored), seed
8 objects at the middle frame, propagate forward to the end and backward to the start (BAP's order),
and turn every yielded mask into a boolean array that is dropped right away (as a writer would after
RLE-encoding it). The child reports its peak RSS (``ru_maxrss``) and its RSS after the model was built.

RESULT "ratio" = the session's growth above the built model (peak RSS - RSS after the build) at 2,000 frames /
the same at 200 frames (target <= 1.3). The ratio of the peaks would hide the growth behind the model and the
libraries; ``benches/long_video_memory.py`` compares the whole engine with the stock ``SAM2VideoPredictor``.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHORT, LONG = 200, 2000
NUM_OBJECTS = 8
FRAME_SIZE = (128, 128)


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def disc_frame(frame_idx: int) -> np.ndarray:
    """Frame ``frame_idx`` of the procedural video: NUM_OBJECTS discs on a moving texture."""
    height, width = FRAME_SIZE
    yy, xx = np.mgrid[0:height, 0:width]
    frame = (60 + 30 * np.sin(xx / 9.0 + frame_idx / 3.0)[..., None] * np.array([1.0, 0.5, 0.2])).astype(np.uint8)
    for k in range(NUM_OBJECTS):
        frame[disc_mask(frame_idx, k, yy, xx)] = [200, (40 + 27 * k) % 256, 40]
    return frame


def disc_mask(frame_idx: int, k: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    cx = 64 + 44 * np.cos(frame_idx / 25.0 + k * 0.8)
    cy = 64 + 44 * np.sin(frame_idx / 31.0 + k * 0.8)
    return (xx - cx) ** 2 + (yy - cy) ** 2 < (7 + k % 3) ** 2


def child(num_frames: int) -> None:
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT))
    from actors.config import load_config
    from actors.model.config import ModelConfig
    from actors.model.sam2_bridge import build_sam2
    from actors.model.sam2_session import Sam2VideoSession

    bridge = build_sam2(load_config(ModelConfig, ROOT / "configs" / "model" / "tiny.yaml").sam2)
    baseline = rss_mb()
    session = Sam2VideoSession(bridge, disc_frame, num_frames=num_frames)
    anchor = num_frames // 2
    yy, xx = np.mgrid[0 : FRAME_SIZE[0], 0 : FRAME_SIZE[1]]
    for k in range(NUM_OBJECTS):
        session.add_mask(f"expr-{k}", anchor, disc_mask(anchor, k, yy, xx))
    visits = 0
    started = time.perf_counter()
    for reverse in (False, True):
        for result in session.propagate(anchor, reverse=reverse):
            masks = (result.mask_logits > 0).numpy()
            del masks
            visits += 1
    seconds = time.perf_counter() - started
    held = max(len(session.memory_frames(o)[1]) for o in session.obj_ids)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({
        "frames": num_frames, "peak_rss_mb": round(peak, 1), "rss_after_build_mb": round(baseline, 1),
        "frame_visits": visits, "seconds": round(seconds, 2), "frames_per_s": round(visits / seconds, 1),
        "tracked_frames_held_per_object": held,
    }))


def run_child(num_frames: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(num_frames)], check=True, capture_output=True, text=True, cwd=ROOT
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    short, long = run_child(SHORT), run_child(LONG)
    for figures in (short, long):
        print(
            f"{figures['frames']:>5} frames x {NUM_OBJECTS} objects: peak RSS {figures['peak_rss_mb']} MB "
            f"(after build {figures['rss_after_build_mb']} MB), {figures['frames_per_s']} frames/s, "
            f"tracked frames held per object {figures['tracked_frames_held_per_object']}"
        )
    growth_short = short["peak_rss_mb"] - short["rss_after_build_mb"]
    growth_long = long["peak_rss_mb"] - long["rss_after_build_mb"]
    ratio = growth_long / growth_short
    print(f"session growth over the built model: {growth_short:.1f} MB vs {growth_long:.1f} MB: ratio {ratio:.3f}")
    print("RESULT " + json.dumps({
        "bench": "long_video_memory_sam2", "objects": NUM_OBJECTS, "frame_size": list(FRAME_SIZE),
        "short": short, "long": long, "growth_mb": [round(growth_short, 1), round(growth_long, 1)],
        "ratio": round(ratio, 3), "target": 1.3,
    }))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(int(sys.argv[2]))
    else:
        main()
