"""Watching a ``vrseg label`` run from outside, as its tests do: the commit markers in its output, the first
commit, the end of its stage actors, and the check that every (video, expression, frame) was written once."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psutil
from label_corpus import engine_masks, read_masks

from pipelines.storage import COMMIT_DIR

STAGE_ACTORS = ("LowresDecoder", "MLLMWorker", "Propagator", "VideoWriter")


def markers(s3: Any, output: str) -> list[str]:  # noqa: ANN401 - the conftest S3Endpoint
    """The commit markers under ``output`` now (the listing cache dropped first)."""
    fs = s3.filesystem()
    fs.invalidate_cache()
    directory = f"{output.removeprefix('s3://')}/{COMMIT_DIR}"
    return fs.ls(directory) if fs.exists(directory) else []


def wait_for_first_commit(s3: Any, output: str, alive: Callable[[], bool], timeout: float = 300.0) -> None:  # noqa: ANN401
    """As soon as one video is committed under ``output`` (``timeout`` bounds a hang, never a working run)."""
    deadline = time.monotonic() + timeout
    while not markers(s3, output):
        assert alive(), "the job ended before committing anything"
        assert time.monotonic() < deadline, "no video committed in time"
        time.sleep(0.1)


def assert_every_expression_once(s3: Any, output: str) -> None:  # noqa: ANN401
    """Every (video, expression) of the corpus has each of its frames once, equal to the engine's masks."""
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


def wait_for_actors_gone(names: tuple[str, ...] = STAGE_ACTORS, timeout: float = 600.0) -> None:
    """Until no worker process of this session runs an actor named in ``names`` (a bound only against a hang)."""
    deadline = time.monotonic() + timeout
    while any(_worker_processes(name) for name in names):
        assert time.monotonic() < deadline, f"actors {names} still alive"
        time.sleep(0.1)
