"""Sa2VA loading memory: peak RSS growth while a Sa2VA directory is loaded into the model built beforehand,
shard by shard (``checkpoints.load_sa2va``) against the old read-everything approach (every shard read into
one state dict, then copied in), each in a fresh process on the same files (issue 13).

The parent writes, with random float32 weights, a Sa2VA release layout: a Qwen2.5-VL of a few hundred MB
(``--hidden`` x ``--layers``, the ``procedural`` vocabulary plus ``[SEG]``) under ``model.model.language_model.*``,
``model.model.visual.*`` and an untied ``model.lm_head.weight``, the tiny SAM2 under
``grounding_encoder.sam2_model.*`` (layer-scale as ``g_weight``), ``text_hidden_fcs.{0,2}.*``, split into
``--shards`` safetensors files named by ``model.safetensors.index.json``, and the tokenizer. Each child builds
the untied model (Qwen2.5-VL + SAM2), resets the kernel's peak-RSS mark (``/proc/self/clear_refs``), loads,
and reports the growth of the peak over the RSS before loading, the model's size and a checksum of the loaded
weights (both ways must load the same values).

Figures: per way, peak growth and peak / model (the model included; target <= 1.2 for shard-wise loading);
``ratio`` = old peak / shard-wise peak (model included; above 1 means shard-wise loading holds less).

Usage: ``python benches/sa2va_load_memory.py [--hidden 1024] [--layers 8] [--shards 4]``
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
from pathlib import Path

import safetensors.torch
import torch
from common import ROOT, load_average, print_result, run_fresh
from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer

from actors.config import load_config
from actors.model.checkpoints import load_sa2va, read_tensors, sa2va_key, sa2va_weight_files
from actors.model.config import ModelConfig, ScratchConfig
from actors.model.sam2_bridge import build_sam2
from actors.model.scratch_backbone import build_processor, qwen_config
from actors.uri import filesystem_for, join

TINY_MODEL = ROOT / "configs" / "model" / "tiny.yaml"
WAYS = ("shards", "whole")


def sizes(hidden: int, layers: int) -> ScratchConfig:
    """The bench's Qwen2.5-VL: ``layers`` decoder layers of width ``hidden`` (MLP 4x), a 4-block vision tower."""
    return ScratchConfig(vocabulary="procedural", hidden_size=hidden, intermediate_size=4 * hidden,
                         num_layers=layers, num_heads=8, num_kv_heads=2, vision_depth=4, vision_hidden_size=256,
                         vision_intermediate_size=1024, vision_heads=4)


def build_skeleton(directory: Path, hidden: int, layers: int) -> tuple[Qwen2_5_VLForConditionalGeneration,
                                                                        torch.nn.Module]:
    """The untied Qwen2.5-VL sized for the directory's tokenizer (random, seeded) and the tiny SAM2."""
    tokenizer = Qwen2Tokenizer.from_pretrained(directory)
    torch.manual_seed(0)
    qwen = Qwen2_5_VLForConditionalGeneration(qwen_config(sizes(hidden, layers), tokenizer)).eval()
    return qwen, build_sam2(load_config(ModelConfig, TINY_MODEL).sam2).sam


def write_sa2va(directory: Path, hidden: int, layers: int, shards: int) -> int:
    """The Sa2VA directory described in the module docstring; its weight bytes."""
    tokenizer = build_processor(sizes(hidden, layers)).tokenizer
    tokenizer.add_special_tokens({"additional_special_tokens": ["[SEG]"]}, replace_extra_special_tokens=False)
    tokenizer.save_pretrained(directory)
    qwen, sam = build_skeleton(directory, hidden, layers)
    state = {"model." + key: value for key, value in qwen.state_dict().items()}
    state.update({"grounding_encoder.sam2_model." + key.replace(".gamma", ".g_weight"): value
                  for key, value in sam.state_dict().items()})
    state.update({"text_hidden_fcs.0.weight": torch.randn(hidden, hidden), "text_hidden_fcs.0.bias": torch.randn(hidden),
                  "text_hidden_fcs.2.weight": torch.randn(64, hidden), "text_hidden_fcs.2.bias": torch.randn(64)})
    names = [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
    keys = sorted(state)
    weight_map = {key: names[i * shards // len(keys)] for i, key in enumerate(keys)}
    for name in names:
        safetensors.torch.save_file({k: state[k].contiguous() for k in keys if weight_map[k] == name},
                                    str(directory / name))
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return sum(value.numel() * value.element_size() for value in state.values())


def _status_mb(field: str) -> float:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in MiB."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def load_whole(directory: Path, qwen: torch.nn.Module, sam: torch.nn.Module) -> None:
    """The old way: every shard read into one state dict, then each tensor copied into its place."""
    fs, root = filesystem_for(str(directory))
    state: dict[str, torch.Tensor] = {}
    for name in sa2va_weight_files(fs, root, str(directory)):
        state.update(read_tensors(join(str(directory), name)))
    targets = {"qwen": qwen.state_dict(), "sam2": sam.state_dict()}
    with torch.no_grad():
        for key, value in state.items():
            part, own = sa2va_key(key)  # type: ignore[misc] - the bench writes known keys only
            if part != "seg_proj":
                targets[part][own].copy_(value)


def child(way: str, directory: Path, hidden: int, layers: int) -> dict[str, float]:
    """Build the model, load ``directory`` the ``way`` given; peak growth, model size, checksum."""
    torch.set_num_threads(1)
    qwen, sam = build_skeleton(directory, hidden, layers)
    model_mb = sum(t.numel() * t.element_size() for m in (qwen, sam) for t in m.state_dict().values()) / 2**20
    gc.collect()
    before = _status_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the peak-RSS mark restarts at the current RSS
    if way == "shards":
        load_sa2va(str(directory), qwen, sam)
    else:
        load_whole(directory, qwen, sam)
    growth = _status_mb("VmHWM") - before
    checksum = float(sum(t.double().sum() for m in (qwen, sam) for t in m.state_dict().values()))
    return {"model_mb": round(model_mb, 1), "growth_mb": round(growth, 1), "checksum": checksum}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--shards", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vrseg-sa2va-bench-") as tmp:
        directory = Path(tmp)
        file_mb = write_sa2va(directory, args.hidden, args.layers, args.shards) / 2**20
        runs = {way: run_fresh(__file__, way, str(directory), str(args.hidden), str(args.layers)) for way in WAYS}
    if runs["shards"]["checksum"] != runs["whole"]["checksum"]:
        raise RuntimeError(f"the two ways loaded different weights: {runs}")
    model_mb = runs["shards"]["model_mb"]
    peak = {way: (model_mb + runs[way]["growth_mb"]) / model_mb for way in WAYS}
    figures = {
        "model_mb": model_mb,
        "files_mb": round(file_mb, 1),
        "shards": args.shards,
        **{f"{way}_growth_mb": runs[way]["growth_mb"] for way in WAYS},
        **{f"{way}_peak_over_model": round(peak[way], 3) for way in WAYS},
        "load_average": load_average(),
        "ratio": round(peak["whole"] / peak["shards"], 3),
    }
    for way in WAYS:
        print(f"{way:>6}: peak growth {runs[way]['growth_mb']:8.1f} MiB, peak / model {peak[way]:.3f}")
    print_result(figures)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        way, directory, hidden, layers = sys.argv[2:6]
        print(json.dumps(child(way, Path(directory), int(hidden), int(layers))))
    else:
        main()
