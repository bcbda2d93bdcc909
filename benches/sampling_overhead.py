"""P4: time spent in sampling and BAP bookkeeping as a share of the video's SAM2 propagation time.

For a T-frame video with E expressions: E relevance curves are sampled (MCS by default) and E BAP
policies are driven over every frame with per-frame tracking scores (the pure policy work the engine adds
on top of SAM2). The reference is the same video's propagation time with the tiny SAM2
(the ``sam2`` section of ``configs/model/tiny.yaml``, 128 px): all E objects of one ``Sam2VideoSession`` are seeded and
tracked over a short clip, and the measured seconds per frame are scaled to T frames. Target: ratio below
0.001 (MomentSeg reports MCS under 0.1% of latency).

Prints the figures and ends with one line ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from actors.bap import PropagationConfig, PropagationPolicy, run_propagation
from actors.config import load_config
from actors.model.config import ModelConfig
from actors.model.sam2_bridge import build_sam2
from actors.model.sam2_session import Sam2VideoSession
from actors.sampling import SamplingConfig, make_sampler

ARCHITECTURE_FRAMES_PER_SECOND = 60.0  # single-object tiny SAM2 at 128 px (ARCHITECTURE.md, measured facts)
TINY_MODEL = Path(__file__).resolve().parents[1] / "configs" / "model" / "tiny.yaml"


class ReplayedScores:
    """A propagation session that only hands back precomputed tracking scores (no SAM2 work)."""

    def __init__(self, scores: np.ndarray) -> None:
        self.scores = scores.tolist()

    def seed(self, frame: int, direction: int) -> None:
        pass

    def track(self, frame: int, direction: int) -> float:
        return self.scores[frame]

    def clear(self, frame: int, direction: int) -> None:
        pass


def policy_seconds(num_frames: int, expressions: int, k: int, method: str, rng: np.random.Generator) -> float:
    """Seconds to sample and run BAP bookkeeping for every expression of one video."""
    sampler = make_sampler(SamplingConfig(method=method, k=k))
    config = PropagationConfig()
    curves = []
    for _ in range(expressions):  # a noisy curve with one moment somewhere in the video
        centre = rng.integers(0, num_frames)
        frames = np.arange(num_frames)
        curves.append(
            6.0 * np.exp(-(((frames - centre) / (0.05 * num_frames)) ** 2))
            - 3.0
            + rng.normal(0, 0.5, num_frames)
        )
    tracking = [rng.uniform(0.9, 1.0, num_frames) for _ in range(expressions)]
    confidence = [rng.uniform(0.5, 1.0, num_frames) for _ in range(expressions)]
    start = time.perf_counter()
    for curve, scores, key_scores in zip(curves, tracking, confidence, strict=True):
        result = sampler.sample(curve, k)
        key_confidence = {int(f): float(key_scores[f]) for f in result.key_frames}
        policy = PropagationPolicy(num_frames, result.key_frames, result.anchor, key_confidence, config)
        run_propagation(policy, ReplayedScores(scores))
    return time.perf_counter() - start


def moving_squares(num_frames: int, objects: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(T, H, W, 3) uint8 frames with ``objects`` bright squares drifting over a wavy background, and the
    (objects, H, W) masks of frame 0."""
    yy, xx = np.mgrid[0:size, 0:size]
    frames = np.empty((num_frames, size, size, 3), np.uint8)
    first_masks = np.zeros((objects, size, size), bool)
    for t in range(num_frames):
        frames[t] = (70 + 40 * np.sin(xx / 7.0 + t / 4.0))[..., None].astype(np.uint8)
        for o in range(objects):
            x, y = (8 + 13 * o + 2 * t) % (size - 16), (10 + 29 * o + t) % (size - 16)
            square = (xx >= x) & (xx < x + 14) & (yy >= y) & (yy < y + 14)
            frames[t][square] = (220, (50 * o) % 256, 90)
            if t == 0:
                first_masks[o] = square
    return frames, first_masks


def sam2_seconds_per_frame(clip_frames: int, objects: int) -> float:
    """Measured tiny-SAM2 propagation time per frame with every object in one session (seeding excluded)."""
    bridge = build_sam2(load_config(ModelConfig, TINY_MODEL).sam2).eval()
    frames, masks = moving_squares(clip_frames + 1, objects, bridge.image_size)
    session = Sam2VideoSession(bridge, frames)
    for o in range(objects):
        session.add_mask(o, 0, masks[o])
    results = session.propagate(0)
    next(results)  # frame 0 returns the seeds
    start = time.perf_counter()
    tracked = sum(1 for _ in results)
    return (time.perf_counter() - start) / tracked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=2000, help="video length T")
    parser.add_argument("--expressions", type=int, default=8)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--method", default="mcs")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--clip-frames", type=int, default=40, help="frames of real SAM2 propagation measured"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)

    policy_runs = [
        policy_seconds(args.frames, args.expressions, args.k, args.method, rng) for _ in range(args.repeats)
    ]
    policy = statistics.median(policy_runs)
    per_frame = sam2_seconds_per_frame(args.clip_frames, args.expressions)
    video = per_frame * args.frames
    ratio = policy / video
    print(f"video: T={args.frames}, {args.expressions} expressions, K={args.k}, sampler={args.method}")
    print(f"sampling + BAP bookkeeping: {policy * 1e3:.2f} ms (median of {args.repeats})")
    print(
        f"tiny SAM2 (128 px, {args.expressions} objects in one session): {1 / per_frame:.1f} frames/s "
        f"-> {video:.1f} s for the video"
    )
    ratio_reference = policy / (args.frames / ARCHITECTURE_FRAMES_PER_SECOND)
    print(f"share: {100 * ratio:.4f}% (target < 0.1%)")
    print(f"share against the ARCHITECTURE's single-object 60 frames/s: {100 * ratio_reference:.4f}%")
    result = {
        "frames": args.frames,
        "expressions": args.expressions,
        "k": args.k,
        "method": args.method,
        "policy_seconds": round(policy, 6),
        "sam2_frames_per_second": round(1 / per_frame, 2),
        "sam2_video_seconds": round(video, 3),
        "ratio": ratio,
        "ratio_vs_60fps_single_object": ratio_reference,
        "target": 0.001,
        "ok": ratio < 0.001,
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
