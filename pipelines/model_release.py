"""``python -m pipelines.model_release``: make the shipped model directory out of a recipe's finished stages.

``make model`` runs the recipe (``vrseg synth`` of the training corpus, then ``vrseg train`` once per stage,
each stage starting from the previous one's export) and then this module, which:

1. copies the last stage's exported model directory (``backbone/``, ``heads.safetensors``, ``sam2.safetensors``,
   ``model.yaml``; ``actors.model.checkpoints.export_model``) to ``--out``;
2. writes ``training_record.json`` beside it: for every stage the configuration as run, its seed, steps,
   samples, training time and per-step loss history (read from the stage's newest checkpoint), the recipe's
   wall time, the package versions and the git commit;
3. plots every stage's loss parts per step into ``loss_curves.png``;
4. writes the model card ``README.md``: data, recipe, parameter counts, the evaluation numbers (``--evaluation``:
   the ``RESULT {json}`` line of ``benches/evidence.py``) and the limits.

Running it again (e.g. once the evaluation exists) rewrites all four.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend is chosen first

from actors.config import to_plain  # noqa: E402
from actors.model.checkpoints import load_exported  # noqa: E402
from actors.uri import join  # noqa: E402
from pipelines.train import (  # noqa: E402
    LOSS_PARTS,
    TrainState,
    export_location,
    latest_checkpoint,
    with_absolute_locations,
)
from pipelines.train_config import TrainConfig, load_train_config  # noqa: E402

PACKAGES = ("torch", "transformers", "peft", "sam2", "ray", "decord", "numpy")
RECORD_FILE = "training_record.json"
CURVES_FILE = "loss_curves.png"
CARD_FILE = "README.md"
RESULT_PREFIX = "RESULT "
UNUSABLE_R05 = 0.1  # below it the card warns that [FIND] moments are not usable


def stage_record(config: TrainConfig) -> tuple[dict[str, Any], TrainState]:
    """A finished stage's configuration and its newest checkpoint's state; an unfinished stage is an error."""
    config = with_absolute_locations(config)
    latest = latest_checkpoint(config)
    if latest is None or latest[1].step < config.max_steps:
        done = 0 if latest is None else latest[1].step
        raise RuntimeError(f"stage {config.name}: {done} of {config.max_steps} steps done; run its vrseg train first")
    uri, state = latest
    seconds = state.history[-1]["time"] if state.history else 0.0
    return {"name": config.name, "objective": config.objective, "mode": config.mode, "seed": config.seed,
            "steps": state.step, "samples": state.samples, "train_seconds": seconds, "checkpoint": uri,
            "export": export_location(config), "config": to_plain(config), "history": state.history}, state


def plot_losses(stages: list[dict[str, Any]], path: Path) -> None:
    """One panel per stage: each loss part (and the weighted total) per optimizer step, log scale."""
    figure, axes = plt.subplots(1, len(stages), figsize=(6 * len(stages), 4), squeeze=False)
    for axis, stage in zip(axes[0], stages, strict=True):
        steps = [m["step"] for m in stage["history"]]
        for part in (*LOSS_PARTS, "loss"):
            values = [m.get(part) for m in stage["history"]]
            if any(v is not None for v in values):
                axis.plot(steps, values, label=part, linewidth=1.5 if part == "loss" else 0.8)
        axis.set_yscale("log")
        axis.set_xlabel("optimizer step")
        axis.set_title(f"{stage['name']} ({stage['objective']}, {stage['steps']} steps)")
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def read_evaluation(path: Path | None) -> dict[str, Any] | None:
    """The last ``RESULT {json}`` line of a bench's output, if given."""
    if path is None:
        return None
    lines = [line for line in path.read_text().splitlines() if line.startswith(RESULT_PREFIX)]
    if not lines:
        raise ValueError(f"{path}: no line starting with '{RESULT_PREFIX}'")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def parameter_counts(model_dir: Path) -> dict[str, int]:
    """Parameters of the shipped network by part: LLM, vision tower, SAM2, heads."""
    model = load_exported(str(model_dir))
    qwen = model.mllm.hf_model
    vision = sum(p.numel() for n, p in qwen.named_parameters() if ".visual." in f".{n}")
    llm = sum(p.numel() for p in qwen.parameters()) - vision
    return {"llm": llm, "vision": vision, "sam2": sum(p.numel() for p in model.sam2.parameters()),
            "heads": sum(p.numel() for p in model.mllm.heads().parameters())}


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def scores_section(evaluation: dict[str, Any] | None) -> str:
    """The card's scores: the headline figures of ``benches/evidence.py``'s RESULT (all of it is in the record)."""
    if evaluation is None:
        return "not measured yet (run `make model`, which ends with `benches/evidence.py`)"
    main, split = evaluation["main"], evaluation["split"]
    refvos, tsg = main["refvos"], main["tsg"]
    kinds = ", ".join(f"{kind} {values['J&F']:.3f}" for kind, values in sorted(refvos["kinds"].items()))
    samplers = ", ".join(f"{name} {value:.3f}" for name, value in evaluation["samplers"].items() if value is not None)
    modes = ", ".join(f"{row['row']} {row['J&F']:.3f}" for row in evaluation["modes"])
    return (f"Held-out split: seed {split['seed']}, {split['videos']} videos of {split['frames']} frames, "
            f"{split['expressions']} expressions; setting {' + '.join(main['setting'])} "
            f"(`configs/label/default.yaml`).\n\n"
            f"- RefVOS J&F {refvos['J&F']:.3f} (J {refvos['J']:.3f}, F {refvos['F']:.3f}); per kind: {kinds}\n"
            f"- TSG from `[FIND]`: R@0.3 {tsg['R@0.3']:.3f}, R@0.5 {tsg['R@0.5']:.3f}, R@0.7 {tsg['R@0.7']:.3f}, "
            f"mIoU {tsg['mIoU']:.3f} over {tsg['num_queries']} queries\n"
            f"- samplers on late-target expressions (J&F): {samplers}\n"
            f"- propagation (MomentSeg Table 9 rows, J&F): {modes}\n"
            f"- against Sa2VA's inference ({' + '.join(evaluation['baseline'])}, J&F "
            f"{evaluation['baseline J&F']:.3f}): ratio {evaluation['ratio']}\n\n"
            f"Everything the bench printed: `{RECORD_FILE}` (`evaluation`)."
            + (f"\n\n`[FIND]` does not ground queries yet (R@0.5 {tsg['R@0.5']:.3f}): do not use its moments."
               if tsg["R@0.5"] < UNUSABLE_R05 else ""))


def _card(record: dict[str, Any]) -> str:
    counts = record["parameters"]
    stages = "\n".join(f"{i + 1}. `{s['name']}` ({s['objective']}{', ' + s['mode'] if s['objective'] == 'joint' else ''}): "
                       f"{s['steps']} steps, {s['samples']} samples, {s['train_seconds'] / 60:.1f} min of training"
                       for i, s in enumerate(record["stages"]))
    corpora = "\n".join(f"- `{root}`: {facts}" for root, facts in record["corpora"].items())
    wall = "wall" if record["wall_measured"] else "of training, the stages' sum"
    return f"""# vrseg procedural model

The embedded default (`configs/label/default.yaml`, which `vrseg label` without `--config` and `make demo` use):
Qwen2.5-VL and SAM2.1 (the real `transformers` and `sam2` classes) sized for `vrseg synth`'s procedural world
of moving shapes and trained from scratch on 2 CPU cores by `make model`. Weights: `backbone/` (Hugging Face
directory), `heads.safetensors`, `sam2.safetensors`, `sam2_decoder.safetensors`; `model.yaml` names them relative
to this directory.

## Size
LLM {counts['llm']:,} parameters, vision tower {counts['vision']:,}, SAM2 {counts['sam2']:,}, heads {counts['heads']:,}
(float32). Vocabulary: the procedural grammar, every word one token (`actors/model/scratch_backbone.py`).

## Data
The recipe's corpora (`vrseg synth`, `configs/synth/procedural_*.yaml`):
{corpora}

Evaluation uses held-out splits with other seeds (`benches/evidence.py`), never seen in training.

## Recipe (`make model`, {record['wall_seconds'] / 60:.1f} min {wall} on this machine)
{stages}

Loss curves: `{CURVES_FILE}`; configurations, seeds, histories and versions: `{RECORD_FILE}`.

## Scores
{scores_section(record.get("evaluation"))}

## Limits
It knows only the procedural world: 5 shapes, 8 colours, 240x320 frames of flat colours, the synthetic grammar
of expressions and grounding queries. Real videos, other words or other frame sizes are out of its world. SAM2
runs at 256 px, so mask boundaries are coarse (upsampled from 64x64 logits). Expressions that name a shape alone
("the diamond") are its weakest static ones; its SAM2 tracker (trained on 6-frame clips, then refined on 12-frame
clips with conditioning frames and prompts anywhere in the clip) still drifts over 32-64 frames, so it labels with
`one_token_seg_all` (every frame decoded from the `[SEG]` prompt) rather than BAP.
"""


def release(configs: list[TrainConfig], out: Path, evaluation: Path | None = None,
            started: float | None = None) -> dict[str, Any]:
    """Copy the last stage's export to ``out`` and write the training record, loss curves and model card."""
    stages = [stage_record(config)[0] for config in configs]
    export = Path(stages[-1]["export"])
    if not (export / "model.yaml").is_file():
        raise RuntimeError(f"{export}: no exported model.yaml (stage {stages[-1]['name']} did not finish)")
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(export, out)
    corpora = {}
    for root in dict.fromkeys(config.data_root for config in configs if config.data_root):
        corpus_record = Path(join(root, "synth_run.json"))
        if corpus_record.is_file():
            written = json.loads(corpus_record.read_text())
            corpora[root] = {k: written[k] for k in ("num_videos", "num_frames", "late_videos", "expressions",
                                                     "moments")}
    record = {
        "stages": stages,
        "corpora": corpora,
        "wall_seconds": (time.time() - started) if started else sum(s["train_seconds"] for s in stages),
        "wall_measured": started is not None,
        "parameters": parameter_counts(out),
        "versions": {"python": platform.python_version(),
                     **{name: importlib.metadata.version(name) for name in PACKAGES}},
        "git_commit": _git_commit(),
        "evaluation": read_evaluation(evaluation),
    }
    (out / RECORD_FILE).write_text(json.dumps(record, indent=1))
    plot_losses(stages, out / CURVES_FILE)
    (out / CARD_FILE).write_text(_card(record))
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.model_release", description=__doc__.splitlines()[0])
    parser.add_argument("--stages", nargs="+", required=True, help="the recipe's configs/train/*.yaml, in order")
    parser.add_argument("--out", required=True, help="the shipped model directory (replaced)")
    parser.add_argument("--evaluation", type=Path, help="output of benches/evidence.py (its RESULT line)")
    parser.add_argument("--started", type=float, help="the recipe's start (epoch seconds) for its wall time")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides applied to every stage's config")
    args = parser.parse_args(argv)
    configs = [load_train_config(path, args.overrides) for path in args.stages]
    record = release(configs, Path(args.out), args.evaluation, args.started)
    print(f"model_release: {args.out}: {sum(record['parameters'].values()):,} parameters, "
          f"{record['wall_seconds'] / 60:.1f} min wall")
    return 0


if __name__ == "__main__":
    sys.exit(main())
