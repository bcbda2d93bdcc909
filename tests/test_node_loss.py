"""Jobs on a Ray cluster of several nodes lose a whole worker node mid-job and finish: ``vrseg label`` with every
(video, expression, frame) exactly once, ``vrseg train`` from its last checkpoint (real raylets on this
machine, real moto S3, the commands run as they would on a cluster: drivers joining by address)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from label_corpus import upload_corpus, write_manifest
from label_runs import assert_every_expression_once, markers, wait_for_first_commit
from ray_cluster import LocalCluster
from test_train import _optimizer_steps, corpus

from pipelines.train import STATE_FILE, TrainState, latest_checkpoint, parse_state
from pipelines.train_config import TrainConfig, load_train_config

__all__ = ["corpus"]  # the fixture, imported for pytest
pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
WORKER_NODES = 3
NODE_CPUS = 2
# Stage actors that cannot share a 2-CPU node: the MLLM and the Propagator run on different nodes, and the
# third node has room for whichever of them loses its node.
SPREAD_POOLS = ["pools.mllm.num_cpus=1.5", "pools.propagate.num_cpus=1.5"]
# SAM2's tracking objective (stage 1 of a model trained from scratch): its restart from a checkpoint is tested
# here; the joint objective's exact resume is test_train.py's and test_train_stages.py's
TRAIN_CONFIG = "configs/train/tiny_sam2.yaml"
MAX_STEPS = 4
CHECKPOINT_EVERY = 2
# Two training workers that cannot share a node; the third node takes the one whose node is lost.
SPREAD_TRAINING = ["num_workers=2", "scaling.cpus_per_worker=1.5", "max_failures=1"]
WAIT_BOUND_S = 300.0  # a bound against a hang, never reached by a run that works


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """A head node and ``WORKER_NODES`` worker nodes, shared by the module's tests (each tops it up again)."""
    local = LocalCluster(worker_cpus=NODE_CPUS)
    try:
        yield local
    finally:
        local.shutdown()


def _driver(command: list[str], log: Path, address: str) -> subprocess.Popen:
    """``python -m <command>`` from the repository joining the cluster at ``address``, output to ``log``."""
    # every worker line in the log: Ray's deduplication would fold a restarted rank 0's first lines into those
    # of the rank 0 before it
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": address,
           "RAY_DEDUP_LOGS": "0"}
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", *command], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env=env)


def test_label_loses_a_worker_node_mid_job(cluster: LocalCluster, s3, tmp_path: Path) -> None:  # noqa: ANN001
    cluster.top_up(WORKER_NODES)
    rows = upload_corpus(s3)
    manifest, output = write_manifest(s3, rows), s3.uri("out")
    log = tmp_path / "label.log"
    driver = _driver(["pipelines.label", "--manifest", manifest, "--output", output, "--config",
                      "configs/label/tiny.yaml", "--no-progress", "--address", cluster.address,
                      f"decoder.scratch_dir={tmp_path}", *SPREAD_POOLS], log, cluster.address)
    try:
        wait_for_first_commit(s3, output, lambda: driver.poll() is None)
        propagating, prompting = cluster.nodes_running("Propagator"), cluster.nodes_running("MLLMWorker")
        assert len(propagating) == 1 and len(prompting) == 1 and propagating != prompting, "stages not spread"
        victims = cluster.pids_running(propagating[0], "Propagator")
        cluster.lose(propagating[0])
        assert len(markers(s3, output)) < len(rows), "the job finished before the node was lost"
        assert driver.wait(timeout=600) == 0, log.read_text(errors="replace")
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()

    record = json.loads(s3.filesystem().cat_file(f"{output.removeprefix('s3://')}/run.json"))
    counts = record["counts"]
    assert (counts["done"], counts["failed"], counts["skipped_committed"]) == (len(rows), 0, 0)
    assert len(markers(s3, output)) == len(rows)
    assert_every_expression_once(s3, output)
    # the lost Propagator's frame store and mask spool were deleted by the actor that replaced it
    assert not [p for pid in victims for p in tmp_path.glob(f"vrseg-*-{pid}-*")]


def _flat(options: Mapping[str, Any], prefix: str) -> list[str]:
    """``{"a": {"b": 1}}`` -> ``["<prefix>.a.b=1"]``: a mapping as config overrides."""
    out = []
    for key, value in options.items():
        out += _flat(value, f"{prefix}.{key}") if isinstance(value, Mapping) else [f"{prefix}.{key}={value}"]
    return out


def _steps(lines: list[str]) -> list[int]:
    """The optimizer steps rank 0 reported in ``lines`` of a ``vrseg train`` log, in order, each once (on a
    cluster of raylets sharing one machine a worker's line can reach the driver twice)."""
    return list(dict.fromkeys(int(m.group(1)) for line in lines if (m := re.search(r"vrseg train: step (\d+)/", line))))


def _wait_for_checkpoint(config: TrainConfig, alive: Callable[[], bool]) -> TrainState:
    """The run's first complete checkpoint in storage, as soon as it is there."""
    deadline = time.monotonic() + WAIT_BOUND_S
    while (found := latest_checkpoint(config)) is None:
        assert alive(), "the run ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.2)
    return found[1]


def test_train_loses_a_worker_node_and_resumes_from_its_checkpoint(cluster: LocalCluster, corpus: Path, s3,  # noqa: ANN001
                                                                   tmp_path: Path) -> None:
    cluster.top_up(WORKER_NODES)
    # the bucket's options in the config: the workers reach it without the test's environment
    overrides = [f"data_root={corpus}", f"storage_path={s3.uri('runs')}", f"max_steps={MAX_STEPS}",
                 f"checkpoint_every={CHECKPOINT_EVERY}", "keep_checkpoints=null", "data.fixed_pool=4",
                 *SPREAD_TRAINING, *_flat(s3.storage_options, "storage_options")]
    config = load_train_config(TRAIN_CONFIG, overrides)
    log = tmp_path / "train.log"
    driver = _driver(["pipelines.cli", "train", "--config", TRAIN_CONFIG, *overrides], log,
                     cluster.address)
    try:
        before_loss = _wait_for_checkpoint(config, lambda: driver.poll() is None)
        training = cluster.nodes_running("RayTrainWorker")
        assert len(training) == 2, "the two workers do not run on two nodes"
        cluster.lose(training[0])
        assert driver.wait(timeout=600) == 0, log.read_text(errors="replace")
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()

    # the log: steps 1..k, the restart after the loss, then the steps after the checkpoint it resumed from
    lines = log.read_text(errors="replace").splitlines()
    restarts = [i for i, line in enumerate(lines) if "vrseg train: resumed from" in line]
    assert restarts, "no restart after the loss"
    resumed_at = {int(re.search(r"at step (\d+)", lines[i]).group(1)) for i in restarts}
    assert len(resumed_at) == 1, f"more than one restart: {resumed_at}"
    restart = resumed_at.pop()
    before, after = _steps(lines[:restarts[0]]), _steps(lines[restarts[0]:])
    assert before == list(range(1, len(before) + 1)) and after == list(range(restart + 1, MAX_STEPS + 1))
    # from the newest checkpoint when the node was lost (the one before it if the loss came while the step's
    # checkpoint was being written), never from step 0
    assert restart % CHECKPOINT_EVERY == 0 and before_loss.step <= restart
    assert before[-1] - CHECKPOINT_EVERY <= restart <= before[-1]

    final = latest_checkpoint(config)
    assert final is not None and final[1].step == MAX_STEPS
    assert [m["step"] for m in final[1].history] == list(range(1, MAX_STEPS + 1))
    fs = s3.filesystem()
    restored = parse_state(fs.cat_file(f"{s3.uri('runs', config.name)[len('s3://'):]}/step_{restart:08d}/{STATE_FILE}"))
    assert final[1].history[:restart] == restored.history  # the steps before the loss, carried over
    # AdamW state restored, not reset (a reset at the restart would count at most MAX_STEPS - restart steps);
    # parameters of a prompt kind no clip of a step drew get no gradient, and AdamW leaves their count behind
    assert max(_optimizer_steps(s3, final[0])) == MAX_STEPS
