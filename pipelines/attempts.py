"""Poison videos: a video whose processing kills its worker is tried at most ``max_attempts`` times, then
becomes an error row of kind ``worker_died``, and the job goes on.

Ray Data restarts a dead actor and retries its batch without limit, so a video that crashes its worker every
time (a decoder crash in native code, a video too large for the worker's memory) would be retried forever.
Each guarded stage actor (``guarded``) runs the videos of a batch one at a time between
``AttemptLedger.begin`` and ``AttemptLedger.end``: a begin without an end is an attempt that killed its
worker. The ledger is one actor on the driver's node, for one run (a re-run starts counting again); it holds
only the videos being processed or that crashed, not the corpus.

``max_memory_bytes`` (per pool, optional) is a memory limit for each actor of the pool: a thread watches
the process's peak resident memory and, once above the limit, logs the video being processed and kills the
process (SIGKILL, as the kernel's OOM killer would), so that one huge video cannot take the node's memory.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from actors.video_rows import VIDEO_ROW_SCHEMA, Failure

WORKER_DIED = "worker_died"
WATCH_INTERVAL_S = 0.02
logger = logging.getLogger(__name__)


class AttemptLedger:
    """Attempts begun and not ended, per ``stage/video_id`` key (a Ray actor, see ``attempt_ledger``)."""

    def __init__(self) -> None:
        self.open: dict[str, int] = {}

    def begin(self, key: str) -> int:
        """Record an attempt at ``key``; the attempts before it that never ended (their worker died)."""
        crashed = self.open.get(key, 0)
        self.open[key] = crashed + 1
        return crashed

    def end(self, key: str) -> None:
        """``key`` was processed (or given up): forget it."""
        self.open.pop(key, None)


@dataclass(frozen=True)
class Attempts:
    """What guarded stages need: the run's ledger (a Ray actor handle) and ``max_attempts``."""

    ledger: Any
    max_attempts: int


def on_driver_node(actor_class: type, *args: Any) -> Any:  # noqa: ANN401 - a Ray actor handle
    """``actor_class(*args)`` as a Ray actor on this (the driver's) node, reserving no CPU: run-scoped
    bookkeeping that lives and dies with the driver."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return ray.remote(actor_class).options(num_cpus=0, scheduling_strategy=here).remote(*args)


@contextmanager
def attempt_ledger(max_attempts: int) -> Iterator[Attempts]:
    """A ledger actor for one run, on this (the driver's) node, killed when the run ends."""
    import ray

    ledger = on_driver_node(AttemptLedger)
    try:
        yield Attempts(ledger, max_attempts)
    finally:
        ray.kill(ledger)


def peak_rss_bytes() -> int:
    """This process's peak resident memory (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class MemoryWatchdog:
    """Kills this process once its peak resident memory exceeds ``limit`` bytes, logging what it was doing."""

    def __init__(self, limit: int, pool: str) -> None:
        if peak_rss_bytes() > limit:
            raise ValueError(f"pools.{pool}.max_memory_bytes={limit} is below the actor's memory once loaded "
                             f"({peak_rss_bytes()} bytes)")
        self.limit, self.pool, self.current = limit, pool, ""
        threading.Thread(target=self._watch, name="vrseg-memory-watchdog", daemon=True).start()

    def _watch(self) -> None:
        while True:
            self.check()
            time.sleep(WATCH_INTERVAL_S)

    def check(self) -> None:
        """Kill this process if its peak memory is above the limit (also called as a video ends, so that the
        video that went above is the one blamed)."""
        if peak_rss_bytes() <= self.limit:
            return
        logger.error("vrseg: %s worker above pools.%s.max_memory_bytes=%d (peak %d bytes) while processing %s: "
                     "killed", self.pool, self.pool, self.limit, peak_rss_bytes(), self.current or "no video")
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)


class AttemptGuard:
    """A stage actor (``stage_class``, built from ``stage_kwargs``) whose videos are counted in the ledger
    (see the module docstring); rows that failed earlier pass to the stage untouched."""

    stage_class: type
    stage: str

    def __init__(self, attempts: Attempts, pool: str, max_memory_bytes: int | None,
                 stage_kwargs: Mapping[str, Any]) -> None:
        self.inner = self.stage_class(**stage_kwargs)
        self.attempts = attempts
        self.watchdog = MemoryWatchdog(max_memory_bytes, pool) if max_memory_bytes is not None else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        if batch.num_rows == 0:
            return self.inner(batch)
        return pa.concat_tables([self.one(batch.slice(i, 1)) for i in range(batch.num_rows)])

    def one(self, row: pa.Table) -> pa.Table:
        import ray

        video_id = row["video_id"][0].as_py()
        if row["failure"][0].as_py():
            return self.inner(row)
        key, ledger = f"{self.stage}/{video_id}", self.attempts.ledger
        crashed = ray.get(ledger.begin.remote(key))
        if crashed >= self.attempts.max_attempts:
            ray.get(ledger.end.remote(key))
            return self.given_up(row, crashed)
        if self.watchdog is not None:
            self.watchdog.current = f"video {video_id}"
        out = self.inner(row)
        if self.watchdog is not None:
            self.watchdog.check()
        ray.get(ledger.end.remote(key))
        return out

    def given_up(self, row: pa.Table, crashed: int) -> pa.Table:
        video_id = row["video_id"][0].as_py()
        message = (f"the {self.stage} worker died {crashed} times processing this video (max_attempts="
                   f"{self.attempts.max_attempts}): out of memory (see pools.*.max_memory_bytes) or a crash in "
                   f"native code; the worker logs tell which")
        logger.error("vrseg %s: video %s: %s", self.stage, video_id, message)
        failure = Failure(self.stage, WORKER_DIED, message).to_json()
        return pa.Table.from_pylist([{**row.to_pylist()[0], "failure": failure, "payload": b""}],
                                    schema=VIDEO_ROW_SCHEMA)


def guarded(stage_class: type, stage: str) -> type:
    """``AttemptGuard`` around ``stage_class``, under its name (Ray names the actor processes after it)."""
    return type(stage_class.__name__, (AttemptGuard,), {"stage_class": stage_class, "stage": stage,
                                                        "__qualname__": stage_class.__name__})
