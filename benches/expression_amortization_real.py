"""Expression amortization at real sizes: vrseg's SAM2 session against the stock ``SAM2VideoPredictor``, SAM2.1
hiera-L (random weights) at 1024 px, on the same frames and objects in the same run (issue 13).

A procedural 640x360 video of ``--frames`` frames; ``--objects`` distinct box masks seed frame 0. Four runs,
each tracking frames 1 .. frames-1 from that seed:

- stock, 1 object and all objects: ``init_state`` on the mp4, ``add_new_mask`` per object,
  ``propagate_in_video`` (the package's own per-object loop; only image features are shared);
- vrseg, 1 object and all objects: ``Sam2VideoSession`` over the decoded frames, ``add_masks``, ``propagate``
  (objects batched: one encoder, memory attention per memory shape, one decoder and memory-encoder pass).

Per run the time per tracked frame is the mean interval between consecutive yielded frames after the first
(seeding and the stock predictor's preflight excluded), as CPU time of this process (the machine is shared:
other work adds wall time, not CPU time) and as wall time. torch runs ``--threads`` threads (default 1: on an
oversubscribed machine a second OpenMP thread spin-waits for the first, which inflates CPU time too). The per-object cost per frame is (t(all) - t(1)) / (objects - 1).

Components of vrseg's tracked frame, at the memory a long video reaches (``num_maskmem`` memory frames and the
full object-pointer window: what a few frames on CPU do not reach), each timed at 1 and at all objects
(best of ``--repeats``): the image encoder (once per frame whatever the objects), memory attention
(``attend_memory`` on (7 x 4096 + 64) memory tokens per object), the mask decoder (``decode_tracked_masks``)
and the memory encoder. Their per-object slopes give the steady-state per-object cost and the steady-state
amortization 8 x t(1) / t(8) projected from them.

``ratio`` = vrseg's amortization of all objects in the end-to-end runs: objects x t(1) / t(all) (CPU time);
``stock_amortization`` the same for the stock predictor. Goal (issue 13): the whole engine labels 8
expressions >= 6x faster than 8 single-expression runs, which needs each extra object to cost well under 1 s
per frame here; when it does not, the components say where the per-object time goes.

Usage: ``python benches/expression_amortization_real.py [--frames 3] [--objects 8] [--threads 1] [--repeats 1]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import decord
import numpy as np
import torch
from common import load_average, print_result, write_procedural_video
from PIL import Image
from sam2.build_sam import build_sam2_video_predictor
from sam2.sam2_video_predictor import SAM2VideoPredictor

from actors.model.sam2_bridge import ImageFeatures, Sam2Bridge, Sam2Config, build_sam2
from actors.model.sam2_session import Sam2VideoSession
from actors.model.sam2_tracking import attend_memory, decode_tracked_masks

SAM2_L = Sam2Config(config_name="configs/sam2.1/sam2.1_hiera_l.yaml")
HEIGHT, WIDTH = 360, 640
GOAL_AMORTIZATION = 6.0


@dataclass
class FrameTimes:
    """Per tracked frame: CPU seconds and wall seconds (means over the frames after the first yielded)."""

    cpu: float
    wall: float


def box_masks(count: int, height: int, width: int) -> list[np.ndarray]:
    """``count`` distinct boxes on a (height, width) frame, in two rows."""
    masks = []
    columns = (count + 1) // 2
    for k in range(count):
        row, column = divmod(k, columns)
        mask = np.zeros((height, width), dtype=bool)
        top, left = row * height // 2 + height // 8, column * width // columns + width // (4 * columns)
        mask[top : top + height // 4, left : left + width // (2 * columns)] = True
        masks.append(mask)
    return masks


def intervals(frames: Iterable[object]) -> FrameTimes:
    """Consume ``frames`` (a propagation); mean CPU and wall time between consecutive yields after the
    first (the seed frame's output)."""
    stamps = []
    for _ in frames:
        stamps.append((time.process_time(), time.perf_counter()))
    if len(stamps) < 2:
        raise ValueError(f"a propagation yielded {len(stamps)} frames; at least 2 are needed (--frames >= 2)")
    count = len(stamps) - 1
    return FrameTimes((stamps[-1][0] - stamps[0][0]) / count, (stamps[-1][1] - stamps[0][1]) / count)


def run_stock(predictor: SAM2VideoPredictor, path: str, masks: list[np.ndarray]) -> FrameTimes:
    """The stock predictor from frame 0 with one mask prompt per object."""
    with torch.inference_mode():
        state = predictor.init_state(path)
        for obj_id, mask in enumerate(masks):
            predictor.add_new_mask(state, 0, obj_id, mask)
        return intervals(predictor.propagate_in_video(state, start_frame_idx=0))


def run_session(bridge: Sam2Bridge, frames: np.ndarray, masks: list[np.ndarray]) -> FrameTimes:
    """vrseg's session from frame 0 with the same masks as one batch of objects."""
    session = Sam2VideoSession(bridge, frames)
    session.add_masks(0, dict(enumerate(masks)))
    return intervals(session.propagate(0))


def best_of(repeats: int, call: Callable[[], object]) -> float:
    """Smallest CPU time of ``repeats`` calls (other work on a shared machine only adds time)."""
    times = []
    for _ in range(repeats):
        started = time.process_time()
        call()
        times.append(time.process_time() - started)
    return min(times)


def steady_memory(sam: torch.nn.Module, batch: int, features: ImageFeatures) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Random (N, batch, mem_dim) memory and its encoding of the size a long video reaches: ``num_maskmem``
    frames of h x w tokens and ``max_obj_ptrs_in_encoder`` object pointers split into mem_dim-wide tokens."""
    height, width = features.feat_sizes[-1]
    mem_dim = sam.mem_dim
    pointer_tokens = sam.max_obj_ptrs_in_encoder * (sam.hidden_dim // mem_dim)
    tokens = sam.num_maskmem * height * width + pointer_tokens
    generator = torch.Generator().manual_seed(0)
    memory = torch.randn(tokens, batch, mem_dim, generator=generator)
    return memory, torch.randn(tokens, batch, mem_dim, generator=generator), pointer_tokens


def component_times(bridge: Sam2Bridge, frame: np.ndarray, objects: int, repeats: int) -> dict[str, dict[str, float]]:
    """CPU seconds of each part of a tracked frame at 1 and at ``objects`` objects (steady-state memory)."""
    sam = bridge.sam
    out: dict[str, dict[str, float]] = {}
    with torch.inference_mode():
        features = bridge.encode_images(frame[None])
        encoder = best_of(repeats, lambda: bridge.encode_images(frame[None]))
        out["image_encoder"] = {"1": encoder, str(objects): encoder}
        height, width = features.feat_sizes[-1]
        for batch in (1, objects):
            memory, memory_pos, pointer_tokens = steady_memory(sam, batch, features)
            out.setdefault("memory_attention", {})[str(batch)] = best_of(repeats, lambda m=memory, p=memory_pos, n=pointer_tokens: attend_memory(
                sam.memory_attention, features.vision_feats[-1], features.vision_pos[-1], m, p, n))
            conditioned = torch.randn(batch, sam.hidden_dim, height, width)
            out.setdefault("mask_decoder", {})[str(batch)] = best_of(
                repeats, lambda c=conditioned: decode_tracked_masks(sam, c, features.high_res_maps()))
            heads = decode_tracked_masks(sam, conditioned, features.high_res_maps())
            expanded = features.expand(batch)
            out.setdefault("memory_encoder", {})[str(batch)] = best_of(repeats, lambda e=expanded, h=heads: sam._encode_new_memory(
                current_vision_feats=e.vision_feats, feat_sizes=e.feat_sizes, pred_masks_high_res=h.high_res,
                object_score_logits=h.object_score_logits, is_mask_from_pts=False))
    return out


def per_object(one: float, many: float, objects: int) -> float:
    """The cost of each object beyond the first: (t(objects) - t(1)) / (objects - 1)."""
    return (many - one) / (objects - 1)


def write_jpeg_frames(directory: Path, count: int) -> np.ndarray:
    """The first ``count`` frames of a procedural 640x360 video as the stock loader's JPEG folder
    (``00000.jpg``, ...) in ``directory``; returns them as read back, (T, H, W, 3) uint8, so both programs
    see the same pixels."""
    video = write_procedural_video(directory / "video.mp4", 0, max(count, 8), HEIGHT, WIDTH, 1)
    decoded = decord.VideoReader(video.path).get_batch(list(range(count))).asnumpy()
    (directory / "video.mp4").unlink()
    for i, frame in enumerate(decoded):
        Image.fromarray(frame).save(directory / f"{i:05d}.jpg", quality=95)
    return np.stack([np.asarray(Image.open(directory / f"{i:05d}.jpg").convert("RGB")) for i in range(count)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--objects", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    if args.frames < 3:
        parser.error(f"--frames must be >= 3 (one seed frame and two tracked ones), got {args.frames}")
    if args.objects < 2:
        parser.error(f"--objects must be >= 2, got {args.objects}")
    torch.set_num_threads(args.threads)
    print(f"load average at start: {load_average()}", flush=True)
    bridge = build_sam2(SAM2_L)
    predictor = build_sam2_video_predictor(SAM2_L.config_name, device="cpu")
    predictor.load_state_dict(bridge.sam.state_dict())
    masks = box_masks(args.objects, HEIGHT, WIDTH)
    runs: dict[str, FrameTimes] = {}
    with tempfile.TemporaryDirectory(prefix="vrseg-bench-") as tmp:
        frames = write_jpeg_frames(Path(tmp), args.frames)
        for count in (1, args.objects):
            runs[f"stock_{count}"] = run_stock(predictor, tmp, masks[:count])
            print(f"  stock {count} object(s): {runs[f'stock_{count}']}", flush=True)
            runs[f"vrseg_{count}"] = run_session(bridge, frames, masks[:count])
            print(f"  vrseg {count} object(s): {runs[f'vrseg_{count}']}", flush=True)
    components = component_times(bridge, frames[0], args.objects, args.repeats)
    report(args, runs, components)


def report(args: argparse.Namespace, runs: dict[str, FrameTimes], components: dict[str, dict[str, float]]) -> None:
    """Print the figures and the RESULT line."""
    n = args.objects
    figures: dict[str, object] = {"bench": "expression_amortization_real", "frames": args.frames, "objects": n,
                                  "size": [HEIGHT, WIDTH], "sam2": SAM2_L.config_name, "threads": args.threads}
    for program in ("stock", "vrseg"):
        one, many = runs[f"{program}_1"], runs[f"{program}_{n}"]
        figures[f"{program}_s_per_frame_1"] = {"cpu": round(one.cpu, 2), "wall": round(one.wall, 2)}
        figures[f"{program}_s_per_frame_{n}"] = {"cpu": round(many.cpu, 2), "wall": round(many.wall, 2)}
        figures[f"{program}_per_object_s_per_frame"] = {"cpu": round(per_object(one.cpu, many.cpu, n), 3),
                                                        "wall": round(per_object(one.wall, many.wall, n), 3)}
        figures[f"{program}_amortization"] = round(n * one.cpu / many.cpu, 3)
        print(f"{program}: 1 object {one.cpu:.2f} s CPU/frame ({one.wall:.2f} s wall), {n} objects {many.cpu:.2f} s "
              f"CPU/frame ({many.wall:.2f} s wall); per extra object {per_object(one.cpu, many.cpu, n):.3f} s CPU/frame; "
              f"amortization {n * one.cpu / many.cpu:.2f}x", flush=True)
    steady_one = sum(c["1"] for c in components.values())
    steady_many = sum(c[str(n)] for c in components.values())
    figures["components_cpu_s"] = {name: {k: round(v, 3) for k, v in c.items()} for name, c in components.items()}
    figures["components_per_object_cpu_s"] = {name: round(per_object(c["1"], c[str(n)], n), 3)
                                              for name, c in components.items()}
    figures["steady_per_object_cpu_s"] = round(per_object(steady_one, steady_many, n), 3)
    figures["steady_amortization"] = round(n * steady_one / steady_many, 3)
    for name, c in components.items():
        print(f"  {name:>16}: 1 object {c['1']:.3f} s, {n} objects {c[str(n)]:.3f} s, per extra object "
              f"{per_object(c['1'], c[str(n)], n):.3f} s (CPU, steady-state memory)")
    print(f"steady state: per extra object {figures['steady_per_object_cpu_s']} s CPU/frame, amortization "
          f"{figures['steady_amortization']}x; goal >= {GOAL_AMORTIZATION}x for the whole engine")
    figures["ratio"] = figures.pop("vrseg_amortization")
    figures["load_average"] = load_average()
    print_result(figures)


if __name__ == "__main__":
    main()
