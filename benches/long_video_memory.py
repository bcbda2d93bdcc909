"""P2: memory a long video adds above the loaded model, vrseg's engine vs stock SAM2 on the same videos (issue 14).

Two procedural videos (``pipelines.synthetic``, same scene seed) of ``--short`` and ``--long`` frames at
``--height`` x ``--width`` (default 480 x 854: a realistic source, larger than SAM2's input) are encoded to mp4
once. Each video is then processed by two programs, each in a fresh subprocess:

- ``vrseg``: the tiny network (``configs/model/tiny.yaml``), a ``VideoDecoder`` on the mp4 and
  ``VideoLabeler.label`` with ``--expressions`` queries: ``[FIND]`` and ``[SEG]``, then SAM2 on frames at its
  input size from the frame store, BAP in both directions. The per-frame RLEs are the job's result and are kept.
- ``stock``: ``sam2.build_sam2_video_predictor`` with the same SAM2 (config, overrides and weights),
  ``init_state`` on the same mp4 (the package's decord loader resizes every frame to SAM2's input size), one
  mask prompt per expression on the middle frame (distinct boxes: the memory does not depend on what is
  tracked), ``propagate_in_video`` forward then backward from it (BAP's order). Every yielded mask is
  binarised and dropped, as a writer would after encoding it.

Each child reports its RSS once its model is built and loaded, and its peak RSS (``ru_maxrss``) at the end;
``growth`` = peak - loaded. The stock predictor keeps every frame (float32 at SAM2's input size) and every
frame's outputs in RSS; vrseg keeps its frames in a scratch file read with ``pread`` (page cache, not the
process's RSS), whose size is printed beside its growth, and its growth includes the RLEs ``label`` returns
(the labeling job streams them from the spool to Parquet instead; with the tiny model's random weights the
masks are noisy and their RLEs large), so the comparison does not flatter vrseg.

``RESULT``: ``ratio`` = vrseg's growth / stock's growth on the long video (lower is better);
``vrseg_length_ratio`` and ``stock_length_ratio`` = each program's growth on the long video / on the short
one (1.0: memory bounded in the video's length).

Usage: ``python benches/long_video_memory.py [--short 200] [--long 2000] [--expressions 4]``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from common import (
    TINY_MODEL,
    build_labeler,
    load_average,
    peak_rss_mb,
    print_result,
    rss_mb,
    run_fresh,
    write_procedural_video,
)

from actors.config import load_config
from actors.decode import VideoDecoder
from actors.engine import ExpressionQuery
from actors.model.config import ModelConfig

PROGRAMS = ("vrseg", "stock")


def vrseg_child(path: str, queries_json: str) -> dict:
    """Label the video with the engine; figures of this process."""
    queries = [ExpressionQuery(q["expr_id"], q["text"]) for q in json.loads(queries_json)]
    labeler = build_labeler()
    loaded = rss_mb()
    started = time.perf_counter()
    with VideoDecoder(path) as source:
        out = labeler.label(source, queries)
        store_height, store_width = labeler.mask_stage.source_size(source.height, source.width)
    return {
        "frames": out.num_frames, "loaded_rss_mb": round(loaded, 1), "peak_rss_mb": round(peak_rss_mb(), 1),
        "seconds": round(time.perf_counter() - started, 1),
        "scratch_store_mb": round(out.num_frames * store_height * store_width * 3 / 2**20, 1),
        "result_rle_mb": round(sum(len(r["counts"]) for e in out.expressions for r in e.rles) / 2**20, 1),
    }


def stock_child(path: str, num_objects: int) -> dict:
    """Track ``num_objects`` boxes from the middle frame with the stock ``SAM2VideoPredictor``; figures."""
    from sam2.build_sam import build_sam2_video_predictor

    from actors.model.sam2_bridge import build_sam2

    sam2 = load_config(ModelConfig, TINY_MODEL).sam2
    predictor = build_sam2_video_predictor(sam2.config_name, device="cpu", hydra_overrides_extra=list(sam2.overrides))
    predictor.load_state_dict(build_sam2(sam2).sam.state_dict())
    loaded = rss_mb()
    started = time.perf_counter()
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # hole filling needs the CUDA extension; stock skips it with a warning
        state = predictor.init_state(path)
        frames, height, width = state["num_frames"], state["video_height"], state["video_width"]
        anchor = frames // 2
        for k in range(num_objects):
            box = np.zeros((height, width), dtype=bool)
            top, left = (k * height) // (2 * num_objects), (k * width) // (num_objects + 1)
            box[top:top + height // 4, left:left + width // (num_objects + 1)] = True
            predictor.add_new_mask(state, anchor, k, box)
        visits = 0
        for reverse in (False, True):
            for _, _, masks in predictor.propagate_in_video(state, start_frame_idx=anchor, reverse=reverse):
                del masks
                visits += 1
    return {"frames": frames, "loaded_rss_mb": round(loaded, 1), "peak_rss_mb": round(peak_rss_mb(), 1),
            "seconds": round(time.perf_counter() - started, 1), "frame_visits": visits}


def child(program: str, path: str, queries_json: str) -> None:
    torch.set_num_threads(1)
    figures = (vrseg_child(path, queries_json) if program == "vrseg"
               else stock_child(path, len(json.loads(queries_json))))
    figures["growth_mb"] = round(figures["peak_rss_mb"] - figures["loaded_rss_mb"], 1)
    print(json.dumps(figures))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", type=int, default=200)
    parser.add_argument("--long", type=int, default=2000)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=854)
    parser.add_argument("--expressions", type=int, default=4)
    args = parser.parse_args()
    print(f"load average at start: {load_average()}", flush=True)
    runs: dict[str, dict[str, dict]] = {program: {} for program in PROGRAMS}
    with tempfile.TemporaryDirectory(prefix="vrseg-bench-") as tmp:
        for name, frames in (("short", args.short), ("long", args.long)):
            video = write_procedural_video(Path(tmp) / f"{name}.mp4", 0, frames, args.height, args.width,
                                           args.expressions)
            queries = json.dumps([{"expr_id": q.expr_id, "text": q.text} for q in video.queries])
            for program in PROGRAMS:
                figures = runs[program][name] = run_fresh(__file__, program, video.path, queries)
                extra = (f"; frame store file {figures['scratch_store_mb']} MB, returned RLEs {figures['result_rle_mb']} MB"
                         if program == "vrseg" else "")
                print(f"{program:>5} {frames:>5} frames x {args.expressions} objects at {args.height}x{args.width}: "
                      f"growth {figures['growth_mb']} MB above the loaded model ({figures['loaded_rss_mb']} MB; "
                      f"peak {figures['peak_rss_mb']} MB), {figures['seconds']} s{extra}", flush=True)
    vrseg, stock = runs["vrseg"], runs["stock"]
    ratio = vrseg["long"]["growth_mb"] / stock["long"]["growth_mb"]
    length_ratios = {program: runs[program]["long"]["growth_mb"] / runs[program]["short"]["growth_mb"]
                     for program in PROGRAMS}
    print(f"growth on the long video: vrseg {vrseg['long']['growth_mb']} MB / stock {stock['long']['growth_mb']} MB "
          f"= {ratio:.3f}")
    print(f"growth long / short: vrseg {length_ratios['vrseg']:.3f}, stock {length_ratios['stock']:.3f}; "
          f"load average {load_average()}")
    print_result({
        "bench": "long_video_memory", "ratio": round(ratio, 3), "vrseg_length_ratio": round(length_ratios["vrseg"], 3),
        "stock_length_ratio": round(length_ratios["stock"], 3), "size": [args.height, args.width],
        "expressions": args.expressions, "vrseg": vrseg, "stock": stock, "load_average": load_average(),
    })


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        main()
