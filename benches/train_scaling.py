"""Training throughput of ``vrseg train`` on the tiny model with 1 and 2 Ray Train workers (CPU, gloo).

Both runs use the same procedural corpus, the same per-worker micro-batch and the same Ray Data decode
pool; samples per second are measured inside the training loop from the step after ``--skip`` to the last
(start-up, model build and the first decodes left out). The ratio is 2-worker / 1-worker throughput
(ideal 2.0; on a 2-core machine the workers and the decoders share the same two cores).

    .venv/bin/python benches/train_scaling.py [--steps 10] [--skip 2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import ray  # noqa: E402

from actors.config import load_config  # noqa: E402
from pipelines.synthetic_cli import SynthConfig, write_corpus  # noqa: E402
from pipelines.train import TrainState, run_training  # noqa: E402
from pipelines.train_config import load_train_config  # noqa: E402


def throughput(state: TrainState, skip: int) -> float:
    """Samples per second between the end of step ``skip`` and the end of the last step."""
    start, end = state.history[skip - 1], state.history[-1]
    return (end["samples"] - start["samples"]) / (end["time"] - start["time"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--skip", type=int, default=2)
    args = parser.parse_args()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory(prefix="vrseg-train-bench-") as tmp:
        corpus = os.path.join(tmp, "corpus")
        write_corpus(load_config(SynthConfig, "configs/synth/tiny.yaml", ["output.layouts=[mp4,mevis,charades]"]),
                     corpus)
        rates = {}
        for workers in (1, 2):
            config = load_train_config("configs/train/tiny.yaml", [
                f"data_root={corpus}", f"storage_path={tmp}/runs", f"name=bench_{workers}",
                f"num_workers={workers}", f"max_steps={args.steps}", f"checkpoint_every={args.steps}",
            ])
            result = run_training(config)
            rates[workers] = throughput(result.state, args.skip)
            print(f"{workers} worker(s): {rates[workers]:.2f} samples/s "
                  f"({config.samples_per_step()} samples/step, steps {args.skip + 1}-{args.steps})")
    ratio = rates[2] / rates[1]
    print(f"2 workers / 1 worker: {ratio:.2f}x")
    print("RESULT " + json.dumps({"samples_per_s_1_worker": round(rates[1], 3),
                                  "samples_per_s_2_workers": round(rates[2], 3), "ratio": round(ratio, 3),
                                  "steps": args.steps, "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
