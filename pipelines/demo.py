"""``python -m pipelines.demo``: the main job end to end on one machine, nothing to download.

1. start an S3-compatible server (moto) on 127.0.0.1 at a free port, with one bucket;
2. upload a procedural corpus (``pipelines.synthetic_cli.write_corpus``: a few short videos of moving shapes
   with referring expressions, as mp4 + a labeling manifest + the MeViS annotation layout);
3. ``vrseg label`` it with the embedded default model (``configs/label/default.yaml``: the procedural model
   ``make model`` trains from scratch, shipped in ``models/procedural/``) on a local Ray instance, from S3 to
   S3, with overlay videos;
4. ``vrseg evaluate`` the labels against the corpus' MeViS annotations;
5. copy the report, the overlays and the run record to ``./out/demo/`` and print where they are.

The corpus is held out from the model's training corpora (seed 2000; they use seeds 1 and 2), at their frame
size (240x320). ``--config configs/label/tiny.yaml`` runs the randomly initialised tiny model instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time
from pathlib import Path

from actors.config import load_config
from actors.uri import join
from pipelines.evaluate import EvalConfig, RayConfig, evaluate
from pipelines.label import InputSpec, label, summary_line
from pipelines.label_config import DEFAULT_LABEL_CONFIG, load_label_config
from pipelines.synthetic_cli import SynthConfig, write_corpus

BUCKET = "vrseg-demo"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "demo-key", "AWS_SECRET_ACCESS_KEY": "demo-secret", "AWS_DEFAULT_REGION": "us-east-1"}
SYNTH_OVERRIDES = ["seed=2000", "prefix=demo", "num_videos=4", "scene.num_frames=32", "text.per_kind=1",
                   "text.no_target=1", "output.layouts=[mp4,mevis,manifest]"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_s3() -> tuple[object, str]:
    """A moto S3 server on 127.0.0.1 with the demo bucket; the AWS variables point at it (Ray's workers,
    started afterwards, inherit them)."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update({**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint})
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=BUCKET)
    return server, endpoint


def run_demo(out_dir: Path, overlays: int, config_path: str) -> int:
    start = time.perf_counter()
    server, endpoint = start_s3()
    options = {"client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
    try:
        corpus, labels = f"s3://{BUCKET}/corpus", f"s3://{BUCKET}/labels"
        print(f"[demo] S3 server at {endpoint}; writing the procedural corpus to {corpus}", flush=True)
        synth = load_config(SynthConfig, "configs/synth/default.yaml", SYNTH_OVERRIDES)
        synth.output.storage_options = options
        record = write_corpus(synth, corpus)
        print(f"[demo] {record['num_videos']} videos, {record['num_frames']} frames", flush=True)

        config, model = load_label_config(config_path)
        config.storage_options = options
        command = ["vrseg", "label", "--manifest", f"{corpus}/manifest.jsonl", "--output", labels,
                   "--config", config_path, "--overlays", str(overlays)]
        print(f"[demo] {' '.join(command)}", flush=True)
        result = label(InputSpec(manifest=f"{corpus}/manifest.jsonl"), labels, config, model, overlays=overlays,
                       argv=command)
        print(summary_line(result), flush=True)

        print(f"[demo] vrseg evaluate --format mevis --annotations {corpus} --predictions {labels} --out {out_dir}",
              flush=True)
        report = evaluate("mevis", corpus, labels, str(out_dir), options,
                          EvalConfig(ray=RayConfig(concurrency=1), storage_options=options))

        import s3fs

        fs = s3fs.S3FileSystem(**options)
        for name in ("run.json", "errors"):
            fs.get(join(labels, name).removeprefix("s3://"), str(out_dir / name), recursive=True)
        if result.overlays:
            fs.get(join(labels, "overlays").removeprefix("s3://") + "/", str(out_dir / "overlays") + "/", recursive=True)
    finally:
        server.stop()
    print(f"[demo] J&F {100 * report['J&F']:.1f} over {report['num_expressions']} expressions ({config_path})")
    print(f"[demo] report:   {(out_dir / 'report.html').resolve()}")
    print(f"[demo] overlays: {(out_dir / 'overlays').resolve()} ({len(result.overlays)} videos)")
    print(f"[demo] run record: {(out_dir / 'run.json').resolve()}; done in {time.perf_counter() - start:.0f}s")
    return 0 if not result.errors else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/demo", help="local folder for the report, overlays and run record")
    parser.add_argument("--overlays", type=int, default=4, help="overlay videos to write")
    parser.add_argument("--config", default=str(DEFAULT_LABEL_CONFIG), help="labeling config (default: the embedded model)")
    args = parser.parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    return run_demo(out_dir, args.overlays, args.config)


if __name__ == "__main__":
    sys.exit(main())
