"""Scratch files of labeling workers on local disk, named after their owner so that what a killed worker
leaves behind is deleted by the next one.

A worker killed with SIGKILL (the OOM killer, a preempted node, Ray Data restarting a dead actor) runs no
cleanup, and its frame store alone can hold gigabytes (``actors.frame_store``). Every scratch entry a
worker creates is named ``vrseg-<kind>-<pid>-<random>``; ``remove_orphans``, which each labeling actor
runs when it starts, deletes the entries whose owning process no longer exists. A process id reused by a
live process only makes an orphan wait for a later sweep; a live owner's entries are never touched. The
scratch directory must therefore belong to one process namespace (one machine, or one pod: the KubeRay
templates give every pod its own ``emptyDir``), never be shared between hosts or containers.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile

PREFIX = "vrseg-"
_OWNED = re.compile(rf"^{re.escape(PREFIX)}[a-z]+-(\d+)-")


def scratch_prefix(kind: str) -> str:
    """The name prefix for this process's scratch entries of ``kind`` (``sweep``, ``masks``, ``decode``)."""
    return f"{PREFIX}{kind}-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # somebody else's live process
        return True
    return True


def remove_orphans(scratch_dir: str | None = None) -> list[str]:
    """Delete the scratch entries in ``scratch_dir`` (None: the system temporary directory) whose owner
    process is gone; returns their paths."""
    removed = []
    with os.scandir(scratch_dir or tempfile.gettempdir()) as entries:
        for entry in entries:
            owner = _OWNED.match(entry.name)
            if owner is None or _alive(int(owner.group(1))):
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                try:
                    os.remove(entry.path)
                except FileNotFoundError:
                    continue
            removed.append(entry.path)
    return removed
