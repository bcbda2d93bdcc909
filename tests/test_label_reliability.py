"""``vrseg label`` survives a SIGKILLed driver (real Ray, real moto S3); a lost worker actor, with the whole node
it ran on, is ``test_node_loss.py``'s."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import ray
from label_corpus import engine_masks, label_cli, read_masks, upload_corpus, write_manifest

from pipelines.storage import COMMIT_DIR

ROOT = Path(__file__).resolve().parents[1]
STAGE_ACTORS = ("LowresDecoder", "MLLMWorker", "Propagator", "VideoWriter")


def _markers(s3, output: str) -> list[str]:  # noqa: ANN001
    fs = s3.filesystem()
    fs.invalidate_cache()
    directory = f"{output.removeprefix('s3://')}/{COMMIT_DIR}"
    return fs.ls(directory) if fs.exists(directory) else []


def _wait_for_first_commit(s3, output: str, alive, timeout: float = 300.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not _markers(s3, output):
        assert alive(), "the job ended before committing anything"
        assert time.monotonic() < deadline, "no video committed in time"
        time.sleep(0.1)


def _assert_every_expression_once(s3, output: str) -> None:  # noqa: ANN001
    masks = read_masks(s3, output)
    reference = engine_masks()
    assert set(masks) == set(reference)
    for key, frames in masks.items():
        assert [f for f, _ in frames] == list(range(len(reference[key]))), key
        assert [r for _, r in frames] == reference[key], key


def _worker_processes(name: str) -> list[psutil.Process]:
    """This test session's Ray worker processes running a ``name`` actor (workers are children of our raylet)."""
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if name in " ".join(process.cmdline()):
                found.append(process)
        except psutil.Error:
            continue
    return found


def _wait_for_actors_gone(names: tuple[str, ...], timeout: float = 600.0) -> None:
    """Until no worker process of this session runs an actor named in ``names`` (a bound only against a hang)."""
    deadline = time.monotonic() + timeout
    while any(_worker_processes(name) for name in names):
        assert time.monotonic() < deadline, f"actors {names} still alive"
        time.sleep(0.1)


def test_driver_killed_mid_job_then_rerun_finishes_only_the_rest(s3, ray_local) -> None:  # noqa: ANN001
    rows = upload_corpus(s3)
    manifest, output = write_manifest(s3, rows), s3.uri("out")
    command = ["--manifest", manifest, "--output", output, "--config", "configs/label/tiny.yaml", "--no-progress"]
    driver = subprocess.Popen(
        [sys.executable, "-m", "pipelines.label", *command, "--address", ray.get_runtime_context().gcs_address],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        _wait_for_first_commit(s3, output, lambda: driver.poll() is None)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    _wait_for_actors_gone(STAGE_ACTORS)  # Ray tears down the dead driver's actors: no commit after this
    committed_at_kill = len(_markers(s3, output))
    assert 1 <= committed_at_kill < len(rows), "the driver finished before it could be killed mid-job"

    assert label_cli(command) == 0
    record = json.loads(s3.filesystem().cat_file(f"{output.removeprefix('s3://')}/run.json"))
    counts = record["counts"]
    assert counts["skipped_committed"] >= committed_at_kill
    assert counts["done"] + counts["skipped_committed"] == len(rows) and counts["failed"] == 0
    _assert_every_expression_once(s3, output)
