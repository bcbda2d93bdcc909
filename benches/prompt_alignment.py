"""Does SAM2's mask decoder learn to follow the ``[SEG]`` prompt? The from-scratch saddle of issue 11.

Two arms train the same network from the same weights on the same RefVOS samples, step for step, with the
MLLM frozen (``SegModel.enable_training("heads")``: the heads and SAM2's mask decoder train) and the joint
objective's mask losses (``lm`` and ``find`` weighted 0, the model config's ``mask_*`` weights):

- ``default``: the projection as built (Sa2VA's ``text_hidden_fcs`` initialisation);
- ``calibrated``: ``actors.model.prompt_calibration`` on the first ``--calibration-batches`` batches.

Every ``--every`` steps, on held-out samples (another synth seed): IoU of the key-frame masks decoded as
labeling decodes them (eval mode: masks with a negative object score are gated to empty) and ungated (train
mode), the prompts' spread across samples and the swap sensitivity (mask logits when each sample gets the
next sample's prompt; ``actors.model.prompt_diagnostics``). A decoder that ignores its prompt has swap 0
and an IoU near 1 / (objects per frame): it segments every salient object.

The samples are built by ``vrseg train``'s own ``SampleBuilder`` (``configs/train/procedural_joint.yaml``'s
data section) from a corpus written by ``vrseg synth`` (``configs/synth/procedural_train.yaml``) in a
temporary folder: ``--videos`` training videos (seed 1, as the recipe) and ``--held-videos`` held-out ones
(seed 1000). ``--model``: the model YAML to start from (default ``configs/model/procedural.yaml``, random
SAM2; give a tracking stage's export, ``runs/procedural/procedural-sam2/model/model.yaml``, to start from a
trained SAM2).

Prints a line per evaluation and ends with ``RESULT {json}``; ``ratio`` = the calibrated arm's final ungated
held-out IoU over the default arm's.
Usage: ``python benches/prompt_alignment.py [--steps 600] [--videos 24] [--model M]`` (about 2 s a step on
2 free cores; smoke run: ``--steps 4 --every 2 --videos 2 --held-videos 1``).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from common import ROOT, load_average, print_result

from actors.config import load_config
from actors.model.checkpoints import build_model
from actors.model.prompt_calibration import calibrate_seg_projection
from actors.model.prompt_diagnostics import prompt_spread, swap_sensitivity
from actors.model.segmllm import SegModel, TrainSample
from pipelines.synthetic_cli import SynthConfig, write_corpus
from pipelines.train import train_samples
from pipelines.train_config import load_model_config, load_train_config
from pipelines.train_data import SampleBuilder, read_catalog


def refvos_samples(folder: Path, seed: int, videos: int, count: int) -> list[TrainSample]:
    """``count`` RefVOS training samples of a fresh procedural corpus (synth seed ``seed``), without their
    ``[FIND]`` labels (the bench trains masks only, so the TSG turn is not run)."""
    synth = load_config(SynthConfig, ROOT / "configs/synth/procedural_train.yaml", [f"seed={seed}",
                                                                                  f"num_videos={videos}"])
    write_corpus(synth, str(folder))
    config = load_train_config(ROOT / "configs/train/procedural_joint.yaml",
                               [f"data_root={folder}", "sources.procedural_tsg.weight=1e-9"])
    builder = SampleBuilder([ray.put(read_catalog(config))], config.data, seed=seed, objective="joint")
    rows = [row for row in (builder({"index": i}) for i in range(4 * count)) if row["task"] == "refvos"][:count]
    samples = train_samples({key: [row[key] for row in rows] for key in rows[0]})
    return [dataclasses.replace(s, frame_labels=None, frame_valid=None) for s in samples]  # RefVOS turn only


def _iou(logits: torch.Tensor, masks: torch.Tensor) -> float:
    predicted, target = logits > 0, masks > 0
    union = (predicted | target).flatten(1).sum(1)
    return float(((predicted & target).flatten(1).sum(1) / union.clamp(min=1)).mean())


@torch.no_grad()
def held_out(model: SegModel, samples: list[TrainSample]) -> dict[str, float]:
    """Gated and ungated IoU, prompt spread and swap sensitivity on ``samples``."""
    prompts = torch.cat([model.mllm.train_outputs(s)[0].seg.prompts for s in samples])
    figures: dict[str, list[float]] = {"iou_gated": [], "iou": [], "swap": []}

    def decode(frames: np.ndarray, prompt: torch.Tensor) -> torch.Tensor:
        return model.sam2.decode_masks(frames, prompt, location_map=model.mllm.location_map).mask_logits

    for index, sample in enumerate(samples):
        frames = len(sample.key_frames)
        own, other = prompts[index].expand(frames, -1), prompts[(index + 1) % len(samples)].expand(frames, -1)
        model.eval()
        figures["iou_gated"].append(_iou(decode(sample.key_frames, own), sample.masks))
        model.train()
        logits = decode(sample.key_frames, own)
        figures["iou"].append(_iou(logits, sample.masks))
        figures["swap"].append(swap_sensitivity(logits, decode(sample.key_frames, other)))
    return {**{k: round(float(np.mean(v)), 4) for k, v in figures.items()}, "spread": round(prompt_spread(prompts), 4)}


def train_arm(name: str, model: SegModel, train: list[TrainSample], held: list[TrainSample],
              args: argparse.Namespace) -> list[dict[str, Any]]:
    """Train one arm for ``args.steps`` steps; the held-out figures every ``args.every`` steps."""
    rng = np.random.default_rng(0)
    model.enable_training("heads")
    model.losses.lm, model.losses.find = 0.0, 0.0
    if name == "calibrated":
        calibrate_seg_projection(model, train[: args.calibration_batches * args.batch], args.shrinkage)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    curve, started = [], time.perf_counter()
    for step in range(args.steps + 1):
        if step % args.every == 0:
            curve.append({"step": step, "seconds": round(time.perf_counter() - started), **held_out(model, held)})
            print(name, curve[-1], flush=True)
        if step == args.steps:
            break
        model.train()
        parts = model.forward_train([train[i] for i in rng.integers(0, len(train), args.batch)])
        optimizer.zero_grad()
        parts["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
    return curve


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "configs/model/procedural.yaml"))
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--videos", type=int, default=24)
    parser.add_argument("--held-videos", type=int, default=8)
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--held-samples", type=int, default=32)
    parser.add_argument("--calibration-batches", type=int, default=8)
    parser.add_argument("--shrinkage", type=float, default=1.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        train = refvos_samples(Path(tmp) / "train", 1, args.videos, args.samples)
        held = refvos_samples(Path(tmp) / "held", 1000, args.held_videos, args.held_samples)
    ray.shutdown()
    torch.manual_seed(0)
    model_config = load_model_config(load_train_config(ROOT / "configs/train/procedural_joint.yaml",
                                                       [f"model_config={args.model}", "data_root=."]))
    base = build_model(model_config)
    curves = {arm: train_arm(arm, copy.deepcopy(base), train, held, args) for arm in ("default", "calibrated")}
    final = {arm: curve[-1] for arm, curve in curves.items()}
    print_result({"steps": args.steps, "batch": args.batch, "train_samples": len(train),
                  "held_samples": len(held), "load_average": load_average(), "final": final, "curves": curves,
                  "ratio": round(final["calibrated"]["iou"] / max(final["default"]["iou"], 1e-6), 3)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
