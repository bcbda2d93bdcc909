"""SAM2 tracker quality of an exported model on held-out procedural clips (issue 11): does it follow a prompt,
and does it follow its memory?

For every object visible (over ``--min-area`` pixels) on the first frame of an ``--frames``-frame clip of each of
``--videos`` held-out videos (``vrseg synth`` world of ``--synth-config`` at ``--seed``, rendered directly):
- the IoU of SAM2's mask on a single frame prompted with one positive click (``point_prompt``) and with the
  object's box (``box_prompt``);
- the IoU on each later frame when frame 0 gets the object's ground-truth mask (SAM2's mask prompt) and the
  tracker follows it through memory (``Sam2TrackingObjective.track``, SAM2's own tracking steps).

Baseline, measured in the same run: the IoU of the union of every object on the frame, the mask of a model that
segments every salient object whatever the prompt (where SAM2 trained from scratch with its high-resolution
features stalled, 0.30). Ratios above 1 mean the model follows the prompt or memory.

    python benches/tracker_quality.py --model runs/procedural/procedural-sam2/model
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actors.config import load_config  # noqa: E402
from actors.model.checkpoints import load_exported  # noqa: E402
from actors.model.sam2_video_training import Sam2TrackingObjective, TrackingClip  # noqa: E402
from pipelines.metrics import jaccard  # noqa: E402
from pipelines.synthetic import generate_video  # noqa: E402
from pipelines.synthetic_cli import SynthConfig  # noqa: E402


def held_out_clips(synth_config: str, seed: int, videos: int, frames: int, start: int,
                   min_area: int) -> list[tuple[TrackingClip, np.ndarray]]:
    """(mask-prompted clip of one object, every object's union per frame (T, H, W) bool) for each object visible
    on the first frame of frames ``start .. start + frames - 1`` of each video."""
    synth = load_config(SynthConfig, synth_config)
    clips = []
    for index in range(videos):
        video = generate_video("held", seed, index, synth.scene, synth.text)
        rendered = [video.simulation.render(t) for t in range(start, start + frames)]
        images = np.stack([frame for frame, _ in rendered])
        union = np.stack([np.any([m for m in masks.values()], axis=0) for _, masks in rendered])
        for obj in video.simulation.obj_ids:
            masks = np.stack([m.get(obj, np.zeros(images.shape[1:3], bool)) for _, m in rendered]).astype(np.uint8)
            if masks[0].sum() > min_area:
                clips.append((TrackingClip(images, masks, 0, "mask"), union))
    if not clips:
        raise ValueError(f"no object over {min_area} px on frame {start} of {videos} videos of {synth_config}")
    return clips


def measure(objective: Sam2TrackingObjective, clips: list[tuple[TrackingClip, np.ndarray]]) -> dict[str, float]:
    """Mean IoUs of the model (point, box, tracking on frames 1..) and of the every-object union."""
    point, box, tracked, union_first, union_later = [], [], [], [], []
    with torch.no_grad():
        for index, (clip, union) in enumerate(clips):
            targets = (objective.targets(clip) > 0).numpy()
            unions = (objective.targets(TrackingClip(clip.frames, union.astype(np.uint8), 0, "mask")) > 0).numpy()
            for kind, scores in (("points", point), ("box", box)):
                single = TrackingClip(clip.frames[:1], clip.masks[:1], 0, kind, seed=index)
                scores.append(jaccard((objective.track(single)[0].mask_logits > 0).numpy(), targets[0]))
            for frame in objective.track(clip)[1:]:
                tracked.append(jaccard((frame.mask_logits > 0).numpy(), targets[frame.frame_idx]))
                union_later.append(jaccard(unions[frame.frame_idx], targets[frame.frame_idx]))
            union_first.append(jaccard(unions[0], targets[0]))
    return {"point": float(np.mean(point)), "box": float(np.mean(box)), "tracking": float(np.mean(tracked)),
            "every_object_first": float(np.mean(union_first)), "every_object_later": float(np.mean(union_later))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="an exported model directory (model.yaml)")
    parser.add_argument("--synth-config", default="configs/synth/procedural_train.yaml")
    parser.add_argument("--seed", type=int, default=500, help="held-out: not a training corpus seed")
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--start", type=int, default=10)
    parser.add_argument("--min-area", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    bridge = load_exported(args.model).sam2.eval()
    clips = held_out_clips(args.synth_config, args.seed, args.videos, args.frames, args.start, args.min_area)
    result = measure(Sam2TrackingObjective(bridge), clips)
    print(f"tracker quality of {args.model} on {len(clips)} held-out objects ({args.synth_config}, seed {args.seed})")
    print(f"  point prompt IoU   {result['point']:.3f}  every-object mask {result['every_object_first']:.3f}  "
          f"ratio {result['point'] / result['every_object_first']:.2f}")
    print(f"  box prompt IoU     {result['box']:.3f}  every-object mask {result['every_object_first']:.3f}  "
          f"ratio {result['box'] / result['every_object_first']:.2f}")
    print(f"  tracking IoU (frames 1-{args.frames - 1} after a frame-0 mask) {result['tracking']:.3f}  "
          f"every-object mask {result['every_object_later']:.3f}  "
          f"ratio {result['tracking'] / result['every_object_later']:.2f}")


if __name__ == "__main__":
    main()
