"""``vrseg train`` survives a hard kill: the command runs as a subprocess with its own Ray (own temporary
session directory, never the session's ``ray_local``), is SIGKILLed with its whole process group once its
first checkpoint is in the moto S3 bucket (and before Ray Train registers it), and the same command re-run
continues from the last checkpoint (step counter, loss history and AdamW state carried over) and exports a
model the labeling loader reads."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from ray.train.v2._internal.constants import CHECKPOINT_MANAGER_SNAPSHOT_FILENAME
from test_train import _optimizer_steps, corpus, tiny_config

from actors.model.checkpoints import build_model, load_exported
from pipelines.train import STATE_FILE, STEP_PREFIX, TrainState, parse_state
from pipelines.train_config import load_model_config

__all__ = ["corpus"]  # the fixture, imported for pytest
pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
MAX_STEPS = 6
CHECKPOINT_EVERY = 2
RUN_TIMEOUT = 240.0
# what a checkpoint directory holds once Ray Train has uploaded all of it (S3 puts each object atomically)
CHECKPOINT_FILES = frozenset({STATE_FILE, "optimizer.pt", "scheduler.pt", "model/heads.safetensors",
                              "model/sam2_decoder.safetensors", "model/adapter/adapter_config.json",
                              "model/adapter/adapter_model.safetensors"})


def _overrides(corpus_root: Path, storage_path: str) -> list[str]:
    """``data.fixed_pool=4``: every step's 4 samples (both tasks) reach every trained part, so each AdamW
    parameter state counts every step."""
    return [f"data_root={corpus_root}", f"storage_path={storage_path}", f"max_steps={MAX_STEPS}",
            f"checkpoint_every={CHECKPOINT_EVERY}", "keep_checkpoints=null", "data.fixed_pool=4"]


@pytest.fixture()
def ray_temp() -> Iterator[Path]:
    """A short private ``RAY_TMPDIR`` (Ray's socket paths must stay short); whatever Ray process still runs
    from it at the end is killed by pid, then it is removed."""
    root = Path(tempfile.mkdtemp(prefix="vrk-", dir="/tmp"))
    yield root
    for process in _ray_processes_of(root):
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    shutil.rmtree(root, ignore_errors=True)


def _ray_processes_of(root: Path) -> list[psutil.Process]:
    """Live processes whose command line or environment names the private Ray temp dir ``root``."""
    found = []
    for process in psutil.process_iter(["cmdline", "environ", "status"]):
        info = process.info
        if info["status"] == psutil.STATUS_ZOMBIE:
            continue
        text = " ".join(info["cmdline"] or []) + " " + str((info["environ"] or {}).get("RAY_TMPDIR", ""))
        if str(root) in text:
            found.append(process)
    return found


def _train_env(ray_tmpdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # never join another cluster
    env.update(RAY_TMPDIR=str(ray_tmpdir), PYTHONUNBUFFERED="1")
    return env


def _start_train(overrides: list[str], ray_tmpdir: Path, log: Path) -> subprocess.Popen:
    ray_tmpdir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pipelines.cli", "train", "--config", "configs/train/tiny.yaml", *overrides]
    with log.open("wb") as out:
        return subprocess.Popen(command, cwd=REPO, env=_train_env(ray_tmpdir), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _tail(log: Path, lines: int = 60) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _complete_checkpoints(s3, run: str) -> dict[str, TrainState]:
    """``step_<N>`` directory name -> its ``train_state.json``, for every fully uploaded checkpoint."""
    fs = s3.filesystem()
    fs.invalidate_cache()
    root = s3.uri(run)[len("s3://"):]
    files: dict[str, set[str]] = {}
    for path in fs.find(root):
        step, _, rest = path[len(root) + 1:].partition("/")
        if step.startswith(STEP_PREFIX):
            files.setdefault(step, set()).add(rest)
    return {step: parse_state(fs.cat_file(f"{root}/{step}/{STATE_FILE}"))
            for step, held in files.items() if CHECKPOINT_FILES <= held}


def _kill_group(process: subprocess.Popen, ray_tmpdir: Path) -> None:
    """SIGKILL the process group of ``process`` and every Ray process it started; wait until all are gone."""
    started = []
    with contextlib.suppress(psutil.NoSuchProcess):
        started = psutil.Process(process.pid).children(recursive=True)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    leftovers = {p.pid: p for p in started + _ray_processes_of(ray_tmpdir)}
    for leftover in leftovers.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            leftover.kill()
    _, alive = psutil.wait_procs(list(leftovers.values()), timeout=30)
    assert not alive, f"processes survived the kill: {alive}"


def test_hard_killed_run_resumes_from_its_last_checkpoint(corpus: Path, s3, ray_temp: Path,
                                                          tmp_path: Path) -> None:
    run = "runs/tiny"
    overrides = _overrides(corpus, s3.uri("runs"))
    config = tiny_config(corpus, *overrides[1:])

    # 1. first run, SIGKILLed (whole group) as soon as its first checkpoint is in the bucket
    first_log = tmp_path / "first.log"
    first = _start_train(overrides, ray_temp / "first", first_log)
    deadline = time.monotonic() + RUN_TIMEOUT
    try:
        while not _complete_checkpoints(s3, run):
            assert first.poll() is None, f"the run ended before its first checkpoint:\n{_tail(first_log)}"
            assert time.monotonic() < deadline, f"no checkpoint after {RUN_TIMEOUT} s:\n{_tail(first_log)}"
            time.sleep(0.2)
    finally:
        _kill_group(first, ray_temp / "first")
    assert first.returncode == -signal.SIGKILL
    assert not _ray_processes_of(ray_temp / "first")
    killed = _complete_checkpoints(s3, run)
    last_name = max(killed)
    last = killed[last_name]
    assert 0 < last.step < MAX_STEPS, f"the run was not killed mid-way: {sorted(killed)}"
    assert _optimizer_steps(s3, s3.uri(run, last_name)) == {last.step}
    assert not s3.filesystem().exists(s3.uri(run, "model")[len("s3://"):])
    # Ray Train registers a checkpoint (its run snapshot) a moment after the upload; the kill may land on
    # either side. Pin the harder side: the bucket as a kill just before registration leaves it.
    assert len(killed) == 1
    with contextlib.suppress(FileNotFoundError):
        s3.filesystem().rm_file(s3.uri(run, CHECKPOINT_MANAGER_SNAPSHOT_FILENAME)[len("s3://"):])

    # 2. the same command again runs to completion, continuing from the last checkpoint
    second_log = tmp_path / "second.log"
    second = _start_train(overrides, ray_temp / "second", second_log)
    try:
        assert second.wait(timeout=RUN_TIMEOUT) == 0, f"re-run failed:\n{_tail(second_log)}"
    finally:
        if second.poll() is None:
            _kill_group(second, ray_temp / "second")
    second_output = second_log.read_text(errors="replace")
    assert f"step {MAX_STEPS}/{MAX_STEPS}" in second_output
    assert f"step {last.step}/{MAX_STEPS}" not in second_output, "the re-run repeated steps already done"

    final_name = f"{STEP_PREFIX}{MAX_STEPS:08d}"
    states = _complete_checkpoints(s3, run)
    assert final_name in states, sorted(states)
    final = states[final_name]
    assert final.step == MAX_STEPS and final.samples == MAX_STEPS * config.samples_per_step()
    assert [m["step"] for m in final.history] == list(range(1, MAX_STEPS + 1))
    assert final.history[:last.step] == last.history  # the killed run's steps, carried over unchanged
    assert _optimizer_steps(s3, s3.uri(run, final_name)) == {MAX_STEPS}  # AdamW state restored, not reset

    # 3. the exported model loads for labeling and scores moments differently from the untrained model
    export_uri = s3.uri(run, "model")
    trained = load_exported(export_uri, s3.storage_options)
    untrained = build_model(load_model_config(config))
    frames = np.random.default_rng(0).integers(0, 255, (8, 56, 56, 3), dtype=np.uint8)
    expressions = ["the red circle", "the blue square moves left"]
    with torch.no_grad():
        scores = [model.mllm.moment_scores(frames, expressions) for model in (trained, untrained)]
    assert scores[0].shape == (2, 8) and not torch.allclose(scores[0], scores[1], atol=1e-3)
