"""``make real-shape-check``: the real model sizes on CPU, with random weights in the published layouts (issue 13).

The layout writers: stand-ins for the published checkpoints, loaded through the shipped configs, so every
key name, shape, file name and token id a real download would bring is exercised without a model hub:

- ``write_qwen_directory``: a Qwen2.5-VL-3B-Instruct Hugging Face directory: the published ``config.json``
  (``QWEN2_5_VL_3B_CONFIG``, transformers < 4.52 flat layout), bfloat16 weights under the published key names
  (``model.layers.*``, ``model.embed_tokens.weight``, ``model.norm.weight``, ``visual.*``; no ``lm_head``, the
  3B ties it to the embeddings) in ``model-0000i-of-0000N.safetensors`` shards of at most 4 GB named by
  ``model.safetensors.index.json``, ``generation_config.json``, and tokenizer + processor files built offline
  (``offline_qwen_tokenizer``: Qwen's 151,665 token ids, its 22 special tokens at their published ids).
- ``write_sam2_checkpoint``: ``sam2.1_hiera_large.pt`` as published: ``torch.save({"model": state_dict})`` of
  the package's ``SAM2Base`` built from ``configs/sam2.1/sam2.1_hiera_l.yaml`` (float32).
- ``write_sa2va_directory``: a Sa2VA-Qwen2.5-VL-3B release directory: ``model.*`` (the Qwen2.5-VL in the same
  legacy layout, untied: its own ``model.lm_head.weight``), ``grounding_encoder.sam2_model.*`` (the original
  SAM2 hiera-L, layer-scale ``gamma`` saved as ``g_weight``), ``text_hidden_fcs.{0,2}.*`` (2048 -> 2048 -> 256),
  bfloat16 shards of at most 5 GB with their index, the tokenizer with Sa2VA's added tokens (``[SEG]``, ...)
  and a ``config.json`` naming the remote-code classes the release ships (vrseg never reads it).

Weights are seeded random: matrices N(0, 0.02), norm scales 1, biases 0 (SAM2: the package's own init), so
activations stay finite through 36 layers; they show shapes, memory and time, never quality. Shards are
planned from the shapes of a model built on the meta device and written one at a time, so writing holds
one shard in memory, never the model.

The check (``python infra/real_shape_check.py``, ``make real-shape-check``), each stage a fresh process at
``nice 19`` (``RAY_ADDRESS=local``) whose wall time and peak RSS (its whole process tree, Ray workers included)
are printed, in a directory under /tmp deleted at the end (``--keep`` keeps it): write the Qwen directory and
the SAM2.1-L checkpoint; a one-video corpus (16 frames of 640x360, 2 expressions); build each model through its
shipped labeling config in the shipped dtype (bfloat16); write the Sa2VA directory; then, in the compute dtype
``compute_dtype`` measures (the shipped bfloat16 where this CPU multiplies it faster than float32, as CPUs with
AMX / AVX-512 BF16 do; else float32: without them a bfloat16 matmul ran ~100x slower), ``vrseg label`` with
``configs/label/qwen2_5vl-3b_sam2.1-l.yaml``, the MLLM's per-component times, 2 steps of ``vrseg train
--config configs/train/joint_3b.yaml`` (one step with a checkpoint, then a second run that must resume from
it), ``vrseg label`` with the Sa2VA config; then ``benches/expression_amortization_real.py`` (SAM2.1-L parts,
vrseg beside the stock predictor) and the tiny model's P1 (``benches/expression_amortization.py``). It ends
with the per-stage table, the per-component times, P1 at real sizes for 8 expressions projected from them
beside the tiny model's measured P1, and ``RESULT {json}``. A stage running the 3B waits (up to ``MEMORY_WAIT_S``)
for ``MODEL_STAGE_GB`` of available memory in its compute dtype, and every stage asks the OOM killer to take it first: on a shared
machine the check, not the other work, gives way.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import decord
import psutil
import safetensors.torch
import torch
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Tokenizer,
)
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

from actors.config import load_config
from actors.decode import fit_within
from actors.engine import resize_frames
from actors.model.checkpoints import build_model
from actors.model.config import read_model_config
from actors.model.sam2_bridge import Sam2Config, build_sam2_model
from actors.model.scratch_backbone import QWEN_SPECIAL_TOKENS, QWEN_VL_CHAT_TEMPLATE, build_tokenizer
from pipelines.label_config import LabelConfig
from pipelines.synthetic_cli import SynthConfig, write_corpus

# config.json of Qwen/Qwen2.5-VL-3B-Instruct (the published file, flat pre-v5 layout).
QWEN2_5_VL_3B_CONFIG: dict[str, Any] = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "vision_token_id": 151654,
    "image_token_id": 151655,
    "video_token_id": 151656,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 11008,
    "max_position_embeddings": 128000,
    "max_window_layers": 70,
    "model_type": "qwen2_5_vl",
    "num_attention_heads": 16,
    "num_hidden_layers": 36,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.41.2",
    "use_cache": True,
    "use_sliding_window": False,
    "vision_config": {
        "depth": 32,
        "hidden_act": "silu",
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "in_chans": 3,
        "out_hidden_size": 2048,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "spatial_patch_size": 14,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "tokens_per_second": 2,
        "temporal_patch_size": 2,
    },
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vocab_size": 151936,
}

# generation_config.json of Qwen2.5-VL-3B-Instruct.
QWEN2_5_VL_GENERATION_CONFIG: dict[str, Any] = {
    "bos_token_id": 151643,
    "pad_token_id": 151643,
    "do_sample": True,
    "eos_token_id": [151645, 151643],
    "repetition_penalty": 1.05,
    "temperature": 0.1,
    "top_p": 0.001,
    "top_k": 1,
    "transformers_version": "4.41.2",
}

# Qwen2.5's special tokens after its 151,643 BPE tokens, in id order (151643 ... 151664).
QWEN_ADDED_TOKENS = (
    *QWEN_SPECIAL_TOKENS,
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
QWEN_BPE_SIZE = 151643
# The tokens Sa2VA adds to the Qwen tokenizer (its region, image-context and [SEG] tokens).
SA2VA_ADDED_TOKENS = ("<img>", "</img>", "<IMG_CONTEXT>", "<p>", "</p>", "<vp>", "</vp>", "[SEG]")
SA2VA_CONFIG: dict[str, Any] = {
    "architectures": ["Sa2VAChatModel"],
    "auto_map": {
        "AutoConfig": "configuration_sa2va_chat.Sa2VAChatConfig",
        "AutoModel": "modeling_sa2va_qwen.Sa2VAChatModel",
        "AutoModelForCausalLM": "modeling_sa2va_qwen.Sa2VAChatModel",
    },
    "model_type": "sa2va_chat",
    "template": "qwen_chat",
    "torch_dtype": "bfloat16",
}
SA2VA_PROMPT_DIM = 256  # text_hidden_fcs' output: SAM2's prompt width
# Qwen2.5-VL's preprocessor_config.json values (the rest are the processor classes' defaults).
QWEN_MIN_PIXELS, QWEN_MAX_PIXELS = 3136, 12845056

QWEN_SHARD_BYTES = 4 * 10**9
SA2VA_SHARD_BYTES = 5 * 10**9
INDEX_FILE = "model.safetensors.index.json"
SAM2_L_CONFIG = Sam2Config(config_name="configs/sam2.1/sam2.1_hiera_l.yaml")
SA2VA_SAM2_CONFIG = Sam2Config(config_name="configs/sam2/sam2_hiera_l.yaml")

Shapes = dict[str, tuple[int, ...]]
TensorMaker = Callable[[str, tuple[int, ...]], torch.Tensor]


# ---------------------------------------------------------------------------------------- tokenizer
def offline_qwen_tokenizer(added: tuple[str, ...] = ()) -> Qwen2Tokenizer:
    """A ``Qwen2Tokenizer`` with Qwen2.5's ids: the tiny offline BPE (``scratch_backbone.build_tokenizer``)
    padded with unused placeholder tokens to Qwen's 151,643 BPE ids, Qwen's 22 special tokens at 151643 ...
    151664 (so ``config.json``'s token ids are right), then ``added`` (e.g. Sa2VA's) after them."""
    bpe = json.loads(build_tokenizer("tiny").backend_tokenizer.to_str())["model"]
    vocab: dict[str, int] = dict(bpe["vocab"])
    vocab.update({f"<|vrseg_unused_{i}|>": i for i in range(len(vocab), QWEN_BPE_SIZE)})
    vocab.update({token: QWEN_BPE_SIZE + i for i, token in enumerate(QWEN_ADDED_TOKENS)})
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=[tuple(m) for m in bpe["merges"]],
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=list(QWEN_ADDED_TOKENS),
    )
    if added:
        tokenizer.add_special_tokens({"additional_special_tokens": list(added)}, replace_extra_special_tokens=False)
    tokenizer.chat_template = QWEN_VL_CHAT_TEMPLATE
    return tokenizer


def offline_qwen_processor(config: dict[str, Any], tokenizer: Qwen2Tokenizer) -> Qwen2_5_VLProcessor:
    """The Qwen2.5-VL processor of ``config``'s vision sizes and Qwen's pixel bounds around ``tokenizer``."""
    vision = config["vision_config"]
    sizes = {
        "patch_size": vision["patch_size"],
        "merge_size": vision["spatial_merge_size"],
        "temporal_patch_size": vision["temporal_patch_size"],
        "min_pixels": QWEN_MIN_PIXELS,
        "max_pixels": QWEN_MAX_PIXELS,
    }
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**sizes),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**sizes),
        chat_template=QWEN_VL_CHAT_TEMPLATE,
    )


# ---------------------------------------------------------------------------------------- shapes
def legacy_qwen_key(key: str) -> str:
    """transformers' current Qwen2.5-VL key -> the published (< 4.52) one: ``model.language_model.X`` ->
    ``model.X``, ``model.visual.X`` -> ``visual.X``."""
    if key.startswith("model.language_model."):
        return "model." + key[len("model.language_model.") :]
    if key.startswith("model.visual."):
        return key[len("model.") :]
    return key


def qwen_shapes(config: dict[str, Any], tied: bool) -> Shapes:
    """The published key names and shapes of the Qwen2.5-VL ``config`` describes, in module order (built on
    the meta device: no memory); ``lm_head.weight`` left out when ``tied``."""
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(Qwen2_5_VLConfig.from_dict(copy.deepcopy(config)))
    shapes = {legacy_qwen_key(k): tuple(v.shape) for k, v in model.state_dict().items()}
    if tied:
        shapes.pop("lm_head.weight", None)
    return shapes


def random_weight(generator: torch.Generator, dtype: torch.dtype) -> TensorMaker:
    """Seeded random values by name: norm scales 1, other vectors 0, matrices N(0, 0.02)."""

    def make(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        if len(shape) == 1:
            fill = 1.0 if "norm" in name or ".ln_" in name else 0.0
            return torch.full(shape, fill, dtype=dtype)
        return torch.randn(shape, generator=generator, dtype=dtype).mul_(0.02)  # no float32 copy of a 1 GB matrix

    return make


# ---------------------------------------------------------------------------------------- shards
def plan_shards(shapes: Shapes, element_bytes: int, max_shard_bytes: int) -> list[list[str]]:
    """Keys per shard in order, each shard at most ``max_shard_bytes`` (a larger tensor alone), as
    ``save_pretrained`` splits."""
    shards: list[list[str]] = [[]]
    size = 0
    for key, shape in shapes.items():
        nbytes = element_bytes * int(torch.Size(shape).numel())
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += nbytes
    return shards


def shard_name(index: int, count: int) -> str:
    """Hugging Face's shard file name: ``model-00001-of-00002.safetensors``."""
    return f"model-{index + 1:05d}-of-{count:05d}.safetensors"


def write_shards(directory: Path, shapes: Shapes, make: TensorMaker, dtype: torch.dtype, max_shard_bytes: int) -> int:
    """Write ``shapes``' tensors (values from ``make``) as safetensors shards with their index, one shard in
    memory at a time; returns the total bytes."""
    element = torch.empty((), dtype=dtype).element_size()
    shards = plan_shards(shapes, element, max_shard_bytes)
    weight_map: dict[str, str] = {}
    total = 0
    for i, keys in enumerate(shards):
        name = shard_name(i, len(shards))
        tensors = {key: make(key, shapes[key]).contiguous() for key in keys}
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        safetensors.torch.save_file(tensors, str(directory / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(keys, name))
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (directory / INDEX_FILE).write_text(json.dumps(index, indent=2))
    return total


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")


# ---------------------------------------------------------------------------------------- the three layouts
def write_qwen_directory(
    directory: Path, config: dict[str, Any] = QWEN2_5_VL_3B_CONFIG, seed: int = 0,
    max_shard_bytes: int = QWEN_SHARD_BYTES,
) -> int:
    """The Qwen2.5-VL-3B-Instruct directory (module docstring) for ``config``; returns its weight bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    processor = offline_qwen_processor(config, offline_qwen_tokenizer())
    processor.save_pretrained(str(directory))
    _write_json(directory / "config.json", config)
    _write_json(directory / "generation_config.json", QWEN2_5_VL_GENERATION_CONFIG)
    generator = torch.Generator().manual_seed(seed)
    shapes = qwen_shapes(config, tied=bool(config.get("tie_word_embeddings")))
    return write_shards(directory, shapes, random_weight(generator, torch.bfloat16), torch.bfloat16, max_shard_bytes)


def write_sam2_checkpoint(path: Path, config: Sam2Config = SAM2_L_CONFIG) -> int:
    """An official-layout SAM2 checkpoint (``{"model": state_dict}``, float32) of the package's model built
    from ``config`` with its own seeded initialisation; returns its weight bytes."""
    state = build_sam2_model(config).state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state}, str(path))
    return sum(t.numel() * t.element_size() for t in state.values())


def sa2va_sam2_key(key: str) -> str:
    """A SAM2 package key as a Sa2VA checkpoint stores it (layer-scale ``gamma`` as ``g_weight``)."""
    name = key[: -len(".gamma")] + ".g_weight" if key.endswith(".gamma") else key
    return "grounding_encoder.sam2_model." + name


def write_sa2va_directory(
    directory: Path, qwen_config: dict[str, Any] = QWEN2_5_VL_3B_CONFIG, sam2_config: Sam2Config = SA2VA_SAM2_CONFIG,
    seed: int = 0, max_shard_bytes: int = SA2VA_SHARD_BYTES,
) -> int:
    """The Sa2VA-Qwen2.5-VL release directory (module docstring); returns its weight bytes. The SAM2 part
    holds the package's seeded initialisation, the rest ``random_weight`` values."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = offline_qwen_tokenizer(SA2VA_ADDED_TOKENS)
    offline_qwen_processor(qwen_config, tokenizer).save_pretrained(str(directory))
    _write_json(directory / "config.json", {**SA2VA_CONFIG, "text_config": qwen_config})
    _write_json(directory / "generation_config.json", QWEN2_5_VL_GENERATION_CONFIG)
    sam2_state = {sa2va_sam2_key(k): v for k, v in build_sam2_model(sam2_config).state_dict().items()}
    hidden = int(qwen_config["hidden_size"])
    shapes: Shapes = {"model." + k: s for k, s in qwen_shapes(qwen_config, tied=False).items()}
    shapes.update({k: tuple(v.shape) for k, v in sam2_state.items()})
    shapes.update({
        "text_hidden_fcs.0.weight": (hidden, hidden),
        "text_hidden_fcs.0.bias": (hidden,),
        "text_hidden_fcs.2.weight": (SA2VA_PROMPT_DIM, hidden),
        "text_hidden_fcs.2.bias": (SA2VA_PROMPT_DIM,),
    })
    generator = torch.Generator().manual_seed(seed)
    qwen_values = random_weight(generator, torch.bfloat16)

    def make(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        if name in sam2_state:
            return sam2_state[name].to(torch.bfloat16)
        return qwen_values(name, shape)

    return write_shards(directory, shapes, make, torch.bfloat16, max_shard_bytes)


# ---------------------------------------------------------------------------------------- the check
ROOT = Path(__file__).resolve().parents[1]
PYTHON = ROOT / ".venv" / "bin" / "python"
VRSEG = ROOT / ".venv" / "bin" / "vrseg"
QWEN_DIR, SAM2_FILE, SA2VA_DIR = "Qwen2.5-VL-3B-Instruct", "sam2.1_hiera_large.pt", "Sa2VA-Qwen2_5-VL-3B"
LABEL_QWEN = "configs/label/qwen2_5vl-3b_sam2.1-l.yaml"
LABEL_SA2VA = "configs/label/sa2va-qwen2_5vl-3b.yaml"
TRAIN_3B = "configs/train/joint_3b.yaml"
# The 8 expressions the projection is for (issue 13); the labeled video carries the first ``EXPRESSIONS``.
PROJECTED_EXPRESSIONS = 8
# Memory a stage running the 3B needs in each compute dtype (weights 15 GB in float32, 7.5 GB in bfloat16;
# activations, SAM2, Ray; training: LoRA r128's float32 parameters, gradients and AdamW moments), and how long to
# wait for it on a shared machine.
MODEL_STAGE_GB = {"float32": 17.0, "bfloat16": 12.0}
LOAD_STAGE_GB = 10.0  # the 3B in its shipped bfloat16 and SAM2
MEMORY_WAIT_S = 1200
EXPRESSIONS = 2
VIDEO_FRAMES, VIDEO_HEIGHT, VIDEO_WIDTH = 16, 360, 640
DTYPE_FILE = "compute_dtype.txt"  # the parent's measured choice, read by every stage
# Pools sized for 2 CPUs without GPUs.
CPU_POOLS = (
    "pools.decode.size=1", "pools.decode.num_cpus=0.1",
    "pools.mllm.num_gpus=0", "pools.mllm.num_cpus=0.8", "pools.mllm.torch_threads=2",
    "pools.propagate.num_gpus=0", "pools.propagate.num_cpus=0.9", "pools.propagate.torch_threads=2",
    "pools.label.num_gpus=0", "pools.label.num_cpus=1.7", "pools.label.torch_threads=2", "pools.label.size=1",
    "pools.write.size=1", "pools.write.num_cpus=0.1", "decoder.num_threads=1", "ray.num_cpus=2",
)


@dataclass
class StageRun:
    """One stage's outcome: wall seconds, peak RSS of its process tree (sum over processes, sampled), the
    largest single process' peak, and the JSON a Python stage printed last (empty for commands)."""

    seconds: float
    peak_tree_mb: float
    peak_process_mb: float
    output: dict[str, Any]


def tree_rss_mb(process: psutil.Process) -> tuple[float, float]:
    """(sum, max) of the resident sets of ``process`` and its descendants, in MiB."""
    sizes = []
    for member in (process, *process.children(recursive=True)):
        with contextlib.suppress(psutil.Error):
            sizes.append(member.memory_info().rss / 2**20)
    return sum(sizes), max(sizes, default=0.0)


def make_first_oom_victim() -> None:
    """In a stage's process (and so in every process it starts): ask the kernel's OOM killer to pick it
    first, so that a stage holding the 3B on a shared machine is what dies if memory runs out."""
    Path("/proc/self/oom_score_adj").write_text("1000")


def wait_for_memory(name: str, needed_gb: float) -> None:
    """Wait (up to ``MEMORY_WAIT_S``) until ``needed_gb`` of memory is available for stage ``name``; an error
    naming the stage and both figures if it never is."""
    deadline = time.monotonic() + MEMORY_WAIT_S
    while (available := psutil.virtual_memory().available / 2**30) < needed_gb:
        if time.monotonic() > deadline:
            raise RuntimeError(f"stage {name} needs {needed_gb} GiB of available memory; only {available:.1f} GiB "
                               f"were after waiting {MEMORY_WAIT_S} s (other work holds the rest)")
        print(f"   {name}: waiting for {needed_gb} GiB of memory ({available:.1f} GiB available)", flush=True)
        time.sleep(30)


def run_stage(name: str, command: list[str], log: Path, needed_gb: float = 0.0) -> StageRun:
    """Run ``command`` at ``nice 19`` with ``RAY_ADDRESS=local``, its output appended to ``log``, sampling the
    RSS of its process tree twice a second, once ``needed_gb`` of memory is available; a failure stops the
    check naming the stage and the log."""
    wait_for_memory(name, needed_gb)
    print(f"== {name}: {' '.join(command)}", flush=True)
    env = {**os.environ, "RAY_ADDRESS": "local", "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    with log.open("a") as out:
        out.write(f"\n== {name}: {' '.join(command)}\n")
        out.flush()
        process = subprocess.Popen(["nice", "-n", "19", *command], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                   stderr=out, text=True, preexec_fn=make_first_oom_victim)
        watched = psutil.Process(process.pid)
        peak_tree = peak_process = 0.0
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
        reader.start()
        while process.poll() is None:
            total, largest = tree_rss_mb(watched)
            peak_tree, peak_process = max(peak_tree, total), max(peak_process, largest)
            time.sleep(0.5)
        reader.join()
        out.write("".join(lines))
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"stage {name} failed (exit status {process.returncode}); see {log}")
    output = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    print(f"   {name}: {seconds:.0f} s, peak RSS {peak_tree:.0f} MiB (largest process {peak_process:.0f} MiB) "
          f"{json.dumps(output) if output else ''}", flush=True)
    return StageRun(round(seconds, 1), round(peak_tree, 1), round(peak_process, 1), output)


def compute_dtype(size: int = 1024, repeats: int = 5) -> str:
    """``bfloat16`` (the shipped dtype) when this CPU multiplies two ``size`` x ``size`` bfloat16 matrices
    faster than float32 ones (one thread, best of ``repeats``), else ``float32``."""
    seconds: dict[str, float] = {}
    with torch.inference_mode():
        for name in ("float32", "bfloat16"):
            a = torch.randn(size, size).to(getattr(torch, name))
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                a @ a
                times.append(time.perf_counter() - started)
            seconds[name] = min(times)
    return "bfloat16" if seconds["bfloat16"] < seconds["float32"] else "float32"


def model_dtype(root: Path) -> list[str]:
    """The model override of the check's compute dtype (written by the parent into ``root``)."""
    return [f"mllm.dtype={(root / DTYPE_FILE).read_text().strip()}"]


def model_stage_gb(root: Path) -> float:
    """``MODEL_STAGE_GB`` of the check's compute dtype."""
    return MODEL_STAGE_GB[(root / DTYPE_FILE).read_text().strip()]


def python_stage(stage: str, root: Path) -> list[str]:
    """The command running ``stage`` of this script in a fresh interpreter."""
    return [str(PYTHON), str(Path(__file__).resolve()), "--stage", stage, "--root", str(root)]


def bench_result(log_text: str, bench: str) -> dict[str, Any]:
    """The ``RESULT {json}`` line of a bench's output."""
    for line in reversed(log_text.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"{bench} printed no RESULT line")


# ---------------------------------------------------------------------------------------- stages (children)
def stage_write_qwen(root: Path) -> dict[str, Any]:
    """The Qwen2.5-VL-3B-Instruct directory and the SAM2.1 hiera-L checkpoint."""
    qwen_bytes = write_qwen_directory(root / QWEN_DIR)
    sam2_bytes = write_sam2_checkpoint(root / SAM2_FILE)
    return {"qwen_gb": round(qwen_bytes / 1e9, 3), "sam2_gb": round(sam2_bytes / 1e9, 3),
            "qwen_files": sorted(p.name for p in (root / QWEN_DIR).iterdir())}


def stage_write_sa2va(root: Path) -> dict[str, Any]:
    """The Sa2VA-Qwen2.5-VL-3B release directory."""
    written = write_sa2va_directory(root / SA2VA_DIR)
    return {"sa2va_gb": round(written / 1e9, 3), "sa2va_files": sorted(p.name for p in (root / SA2VA_DIR).iterdir())}


def stage_corpus(root: Path) -> dict[str, Any]:
    """A one-video procedural corpus (16 frames, 640x360; mp4, MeViS, ReVOS, Charades-STA) and a manifest of
    its first ``EXPRESSIONS`` expressions."""
    corpus = root / "corpus"
    overrides = [
        "num_videos=1", f"scene.num_frames={VIDEO_FRAMES}", f"scene.height={VIDEO_HEIGHT}",
        f"scene.width={VIDEO_WIDTH}", "scene.min_objects=2", "scene.max_objects=2", "output.revos_split=train",
    ]
    write_corpus(load_config(SynthConfig, ROOT / "configs" / "synth" / "tiny.yaml", overrides), str(corpus))
    rows = [json.loads(line) for line in (corpus / "manifest.jsonl").read_text().splitlines() if line.strip()]
    for row in rows:
        row["expressions"] = row["expressions"][:EXPRESSIONS]
    (root / "manifest.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return {"videos": len(rows), "expressions": [e["text"] for e in rows[0]["expressions"]]}


class CallTimer:
    """CPU seconds of every forward call of some modules, in call order, while the block runs (forward
    hooks: the model's own code path is timed, nothing re-implemented)."""

    def __init__(self, modules: dict[str, torch.nn.Module]) -> None:
        self.calls: dict[str, list[float]] = {name: [] for name in modules}
        self._modules = modules
        self._handles: list[Any] = []
        self._started = 0.0

    def __enter__(self) -> CallTimer:
        for name, module in self._modules.items():
            self._handles.append(module.register_forward_pre_hook(lambda *_: self._start()))
            self._handles.append(module.register_forward_hook(lambda *_, n=name: self._stop(n)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()

    def _start(self) -> None:
        self._started = time.process_time()

    def _stop(self, name: str) -> None:
        self.calls[name].append(time.process_time() - self._started)


def stage_mllm_components(root: Path) -> dict[str, Any]:
    """CPU seconds (one torch thread, as the SAM2 bench) of the MLLM's parts at the labeling config's input
    sizes, on the 3B built through the shipped configs, for ``PROJECTED_EXPRESSIONS`` expressions: per pass
    ([FIND] on the 16 low-res frames, [SEG] on k key frames) the vision tower, the LLM's video prefix (its
    first call) and the batched suffixes (its second call), whose share per expression is the suffix cost."""
    torch.set_num_threads(1)
    label = load_config(LabelConfig, ROOT / LABEL_QWEN)
    engine = label.engine
    config = read_model_config(label.model.uri(), [*label.model.all_overrides(), *weight_overrides(root),
                                                   *model_dtype(root)])
    loading = time.perf_counter()
    mllm = build_model(config).eval().mllm
    load_seconds = time.perf_counter() - loading
    video = decord.VideoReader(str(next((root / "corpus" / "videos").glob("*.mp4"))))
    frames = video.get_batch(list(range(len(video)))).asnumpy()
    lowres = resize_frames(frames, fit_within(VIDEO_HEIGHT, VIDEO_WIDTH, engine.lowres_side))
    step = max(1, len(frames) // engine.sampling.k)
    keys = resize_frames(frames[::step][: engine.sampling.k], fit_within(VIDEO_HEIGHT, VIDEO_WIDTH, engine.keyframe_side))
    texts = [f"the {colour} shape moving left" for colour in ("red", "green", "blue", "yellow", "purple", "orange",
                                                              "cyan", "white")][:PROJECTED_EXPRESSIONS]
    hf = mllm.hf_model.model
    figures: dict[str, Any] = {"load_wall_s": round(load_seconds, 1), "key_frames": len(keys)}
    passes = {"find": lambda: mllm.moment_scores(lowres, texts, float(video.get_avg_fps())),
              "seg": lambda: mllm.seg_prompts(keys, texts)}
    for name, run in passes.items():
        with CallTimer({"vision": hf.visual, "llm": hf.language_model}) as timer:
            run()
        prefix, suffixes = timer.calls["llm"]
        figures.update({f"{name}_vision_s": round(sum(timer.calls["vision"]), 2), f"{name}_prefix_s": round(prefix, 2),
                        f"{name}_suffix_s": round(suffixes / len(texts), 2)})
    figures["find_video_tokens"] = int(mllm.visual_inputs(lowres_video=lowres).video_grid_thw.prod()) // mllm.merge_size**2
    figures["seg_image_tokens"] = int(mllm.visual_inputs(key_frames=keys).image_grid_thw.prod(dim=-1).sum()) // mllm.merge_size**2
    return figures


def stage_load(root: Path, label_config: str, weights: list[str]) -> dict[str, Any]:
    """Build the model of the shipped ``label_config`` with ``weights`` and nothing else changed (the shipped
    dtype, bfloat16): every key, shape and token the loaders map at real size, in half the memory of the
    float32 runs. Parameter counts and the load's wall seconds."""
    label = load_config(LabelConfig, ROOT / label_config)
    config = read_model_config(label.model.uri(), [*label.model.all_overrides(), *weights])
    started = time.perf_counter()
    model = build_model(config)
    seconds = time.perf_counter() - started
    tokenizer = model.mllm.processor.tokenizer
    return {"load_wall_s": round(seconds, 1), "dtype": str(next(model.mllm.hf_model.parameters()).dtype),
            "mllm_params": sum(p.numel() for p in model.mllm.hf_model.parameters()),
            "sam2_params": sum(p.numel() for p in model.sam2.parameters()),
            "vocabulary": len(tokenizer), "seg_token_id": tokenizer.convert_tokens_to_ids("[SEG]")}


def stage_load_qwen(root: Path) -> dict[str, Any]:
    """``stage_load`` of the Qwen2.5-VL-3B + SAM2.1-L labeling config."""
    return stage_load(root, LABEL_QWEN, weight_overrides(root))


def stage_load_sa2va(root: Path) -> dict[str, Any]:
    """``stage_load`` of the Sa2VA labeling config."""
    return stage_load(root, LABEL_SA2VA, sa2va_overrides(root))


def sa2va_overrides(root: Path) -> list[str]:
    """The model-config overrides naming the Qwen directory (architecture, processor) and the Sa2VA one."""
    return [f"mllm.backbone={root / QWEN_DIR}", f"mllm.sa2va_uri={root / SA2VA_DIR}"]


def weight_overrides(root: Path) -> list[str]:
    """The model-config overrides naming the written Qwen directory and SAM2 checkpoint."""
    return [f"mllm.backbone={root / QWEN_DIR}", f"sam2.checkpoint={root / SAM2_FILE}"]


STAGES: dict[str, Callable[[Path], dict[str, Any]]] = {
    "write_qwen": stage_write_qwen,
    "write_sa2va": stage_write_sa2va,
    "corpus": stage_corpus,
    "mllm_components": stage_mllm_components,
    "load_qwen": stage_load_qwen,
    "load_sa2va": stage_load_sa2va,
}


# ---------------------------------------------------------------------------------------- commands (parent)
def label_command(root: Path, config: str, output: str, weights: list[str]) -> list[str]:
    """``vrseg label`` of the manifest with the shipped ``config``, ``weights`` as model overrides, CPU pools."""
    model = "model.overrides=[" + ",".join([*weights, *model_dtype(root)]) + "]"
    return [str(VRSEG), "label", "--manifest", str(root / "manifest.jsonl"), "--output", str(root / output),
            "--config", config, "--no-progress", model, *CPU_POOLS]


def train_command(root: Path, max_steps: int) -> list[str]:
    """``vrseg train`` of ``joint_3b`` on the corpus: LoRA as shipped (rank 128), 1 CPU worker, reduced frame
    counts and sizes; every source reads the corpus (Ref-YouTube-VOS through its MeViS layout, ActivityNet
    through its Charades-STA file: the corpus has neither layout)."""
    corpus, videos = root / "corpus", root / "corpus" / "videos"
    model = "model_overrides=[" + ",".join(
        ["mllm.lora.rank=128", "mllm.lora.alpha=256", *weight_overrides(root), *model_dtype(root)]) + "]"
    sources = [
        f"sources.mevis.uri={corpus}", f"sources.mevis.videos_uri={videos}",
        f"sources.revos.uri={corpus}", f"sources.revos.videos_uri={videos}",
        "sources.refytvos.format=mevis", "sources.refytvos.split=null", f"sources.refytvos.uri={corpus}",
        f"sources.refytvos.videos_uri={videos}",
        f"sources.charades.uri={corpus / 'charades_sta.txt'}", f"sources.charades.videos_uri={videos}",
        "sources.activitynet.format=charades-sta", f"sources.activitynet.uri={corpus / 'charades_sta.txt'}",
        f"sources.activitynet.videos_uri={videos}",
    ]
    reduced = [
        f"max_steps={max_steps}", "num_workers=1", "checkpoint_every=1", f"storage_path={root / 'runs'}",
        f"export_uri={root / 'export'}", "data.lowres_frames=8", "data.key_frames=2", "data.keyframe_size=[224,224]",
        "data.decode_actors=1", "data.cpus_per_actor=0.5", "optim.batch_size=1", "optim.warmup_steps=1",
        "scaling.use_gpu=false", "scaling.cpus_per_worker=1", "scaling.torch_threads=2",
    ]
    return [str(VRSEG), "train", "--config", TRAIN_3B, model, *sources, *reduced]


def bench_command(script: str, *args: str) -> list[str]:
    """The command running ``benches/<script>`` with ``args``."""
    return [str(PYTHON), str(ROOT / "benches" / script), *args]


def projected_p1(mllm: dict[str, Any], sam2: dict[str, Any], frames: int, key_frames: int, n: int) -> dict[str, float]:
    """Seconds to label one ``frames``-frame video with ``n`` expressions in one engine pass and as ``n``
    single-expression runs, from the measured parts, and their ratio (P1).

    All in single-thread CPU seconds. MLLM ([FIND] and [SEG] passes): vision + prefix once per pass, a suffix
    per expression. SAM2: the image
    encoder on every frame and key frame once per pass; per tracked frame the first object's memory
    attention, mask decoder and memory encoder, plus the measured per-object slope for every further one
    (steady-state memory, vrseg's session)."""
    parts = {f"{name}_{part}": mllm[f"{name}_{part}_s"] for name in ("find", "seg") for part in ("vision", "prefix", "suffix")}
    components = sam2["components_cpu_s"]
    encoder = components["image_encoder"]["1"]
    first_object = sum(c["1"] for name, c in components.items() if name != "image_encoder")
    extra_object = sam2["steady_per_object_cpu_s"]

    def one_pass(objects: int) -> float:
        mllm_part = sum(parts[f"{p}_vision"] + parts[f"{p}_prefix"] + objects * parts[f"{p}_suffix"]
                        for p in ("find", "seg"))
        sam2_part = (frames + key_frames) * encoder + frames * (first_object + (objects - 1) * extra_object)
        return mllm_part + sam2_part

    engine, loop = one_pass(n), n * one_pass(1)
    return {**{k: round(v, 2) for k, v in parts.items()}, "sam2_encoder_s": round(encoder, 2),
            "sam2_first_object_s": round(first_object, 2), "sam2_extra_object_s": round(extra_object, 3),
            "engine_s": round(engine, 1), "loop_s": round(loop, 1), "p1": round(loop / engine, 2)}


def run_check(root: Path, log: Path) -> dict[str, Any]:
    """Every stage in order (module docstring); the figures."""
    runs: dict[str, StageRun] = {}
    dtype = compute_dtype()
    (root / DTYPE_FILE).write_text(dtype)
    print(f"compute dtype: {dtype}", flush=True)
    runs["write_qwen"] = run_stage("write_qwen", python_stage("write_qwen", root), log)
    runs["corpus"] = run_stage("corpus", python_stage("corpus", root), log)
    runs["load_qwen"] = run_stage("load_qwen", python_stage("load_qwen", root), log, LOAD_STAGE_GB)
    runs["write_sa2va"] = run_stage("write_sa2va", python_stage("write_sa2va", root), log)
    runs["load_sa2va"] = run_stage("load_sa2va", python_stage("load_sa2va", root), log, LOAD_STAGE_GB)
    runs["label_qwen"] = run_stage("label_qwen", label_command(root, LABEL_QWEN, "labels_qwen", weight_overrides(root)), log, model_stage_gb(root))
    runs["mllm_components"] = run_stage("mllm_components", python_stage("mllm_components", root), log, model_stage_gb(root))
    runs["train_step_1"] = run_stage("train_step_1", train_command(root, 1), log, model_stage_gb(root))
    shutil.rmtree(root / "export", ignore_errors=True)
    runs["train_resume_step_2"] = run_stage("train_resume_step_2", train_command(root, 2), log, model_stage_gb(root))
    resumed = "resumed from" in log.read_text().split("== train_resume_step_2")[-1]
    if not resumed:
        raise RuntimeError(f"the second training run did not resume from the first one's checkpoint; see {log}")
    shutil.rmtree(root / "export", ignore_errors=True)
    runs["label_sa2va"] = run_stage("label_sa2va", label_command(root, LABEL_SA2VA, "labels_sa2va", sa2va_overrides(root)),
                                    log, model_stage_gb(root))
    shutil.rmtree(root / SA2VA_DIR)
    shutil.rmtree(root / QWEN_DIR)
    runs["sam2_bench"] = run_stage("sam2_bench", bench_command("expression_amortization_real.py"), log)
    sam2 = bench_result(log.read_text().split("== sam2_bench")[-1], "expression_amortization_real.py")
    runs["tiny_p1_bench"] = run_stage("tiny_p1_bench", bench_command("expression_amortization.py", "--videos", "1",
                                                                     "--repeats", "1"), log)
    tiny = bench_result(log.read_text().split("== tiny_p1_bench")[-1], "expression_amortization.py")
    label = load_config(LabelConfig, ROOT / LABEL_QWEN)
    projection = projected_p1(runs["mllm_components"].output, sam2, VIDEO_FRAMES, label.engine.sampling.k,
                              PROJECTED_EXPRESSIONS)
    return {
        "stages": {name: {"seconds": r.seconds, "peak_rss_mb": r.peak_tree_mb, "largest_process_mb": r.peak_process_mb}
                   for name, r in runs.items()},
        "written": {**runs["write_qwen"].output, **runs["write_sa2va"].output},
        "mllm_components_s": runs["mllm_components"].output,
        "sam2_bench": sam2,
        "projection_8_expressions": projection,
        "tiny_p1": tiny["ratio"],
        "compute_dtype": dtype,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=sorted(STAGES), help="(internal) run one stage in this process")
    parser.add_argument("--root", help="(internal) the check's working directory")
    parser.add_argument("--keep", action="store_true", help="keep the working directory (written models, logs)")
    args = parser.parse_args()
    if args.stage:
        if not args.root:
            parser.error("--stage needs --root")
        print(json.dumps(STAGES[args.stage](Path(args.root))), flush=True)
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a stopped check still deletes its directory
    started = time.perf_counter()
    print(f"load average at start: {os.getloadavg()}", flush=True)
    root = Path(tempfile.mkdtemp(prefix="vrseg-real-shape-", dir="/tmp"))
    log = Path(tempfile.mkstemp(prefix="vrseg-real-shape-", suffix=".log", dir="/tmp")[1])
    print(f"working directory {root}, log {log}", flush=True)
    try:
        figures = run_check(root, log)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    figures["wall_s"] = round(time.perf_counter() - started, 1)
    figures["load_average"] = [round(x, 2) for x in os.getloadavg()]
    print_summary(figures)
    print("RESULT " + json.dumps(figures), flush=True)


def print_summary(figures: dict[str, Any]) -> None:
    """The per-stage table, the per-component times and the projected P1 beside the tiny model's."""
    print("\nstage                    wall s   peak RSS MiB (largest process)")
    for name, stage in figures["stages"].items():
        print(f"{name:<24} {stage['seconds']:>7.0f}   {stage['peak_rss_mb']:>8.0f} ({stage['largest_process_mb']:.0f})")
    mllm, sam2, p1 = figures["mllm_components_s"], figures["sam2_bench"], figures["projection_8_expressions"]
    print(f"\nMLLM (3B, {figures['compute_dtype']}, CPU s of one thread): [FIND] vision tower {mllm['find_vision_s']} "
          f"({mllm['find_video_tokens']} video tokens), video prefix {mllm['find_prefix_s']}, per-expression suffix "
          f"{mllm['find_suffix_s']}; [SEG] vision tower {mllm['seg_vision_s']} ({mllm['seg_image_tokens']} image "
          f"tokens), prefix {mllm['seg_prefix_s']}, suffix {mllm['seg_suffix_s']}")
    print(f"SAM2.1-L at 1024 px (CPU s): image encoder {p1['sam2_encoder_s']} per frame; per object per frame "
          f"{sam2['components_cpu_s']}; per extra object vrseg {sam2['vrseg_per_object_s_per_frame']}, stock "
          f"{sam2['stock_per_object_s_per_frame']}")
    print(f"P1 at real sizes, 8 expressions, {VIDEO_FRAMES} frames (projected): {p1['p1']}x "
          f"(engine {p1['engine_s']} s vs 8 single runs {p1['loop_s']} s); tiny model measured: {figures['tiny_p1']}x")


if __name__ == "__main__":
    main()
