"""``vrseg label`` survives a SIGKILLed driver (real Ray, real moto S3); a lost worker actor, with the whole node
it ran on, is ``test_node_loss.py``'s."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import ray
from label_corpus import label_cli, upload_corpus, write_manifest
from label_runs import assert_every_expression_once, markers, wait_for_actors_gone, wait_for_first_commit

ROOT = Path(__file__).resolve().parents[1]


def test_driver_killed_mid_job_then_rerun_finishes_only_the_rest(s3, ray_local) -> None:  # noqa: ANN001
    rows = upload_corpus(s3)
    manifest, output = write_manifest(s3, rows), s3.uri("out")
    command = ["--manifest", manifest, "--output", output, "--config", "configs/label/tiny.yaml", "--no-progress"]
    driver = subprocess.Popen(
        [sys.executable, "-m", "pipelines.label", *command, "--address", ray.get_runtime_context().gcs_address],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        wait_for_first_commit(s3, output, lambda: driver.poll() is None)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    wait_for_actors_gone()  # Ray tears down the dead driver's actors: no commit after this
    committed_at_kill = len(markers(s3, output))
    assert 1 <= committed_at_kill < len(rows), "the driver finished before it could be killed mid-job"

    assert label_cli(command) == 0
    record = json.loads(s3.filesystem().cat_file(f"{output.removeprefix('s3://')}/run.json"))
    counts = record["counts"]
    assert counts["skipped_committed"] >= committed_at_kill
    assert counts["done"] + counts["skipped_committed"] == len(rows) and counts["failed"] == 0
    assert_every_expression_once(s3, output)
