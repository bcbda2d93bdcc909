"""A Ray cluster of several nodes on this machine for the node-loss tests: ``ray.cluster_utils.Cluster``
starts one raylet (with its object store and worker processes) per node; a node is lost by killing all of
its processes at once.

The head node has no CPUs, so every actor of a job runs on a worker node while the driver (which attaches to
the head node), Ray Train's controller and the labeling attempt ledger stay on the head and survive.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
from ray._common.utils import get_ray_address_file
from ray._private import ray_constants
from ray._private.node import Node
from ray.cluster_utils import Cluster
from ray.experimental import internal_kv

# A killed node is declared dead after 3 missed health checks 1 s apart (sooner than with Ray's defaults).
FAST_HEALTH_CHECKS = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}


@contextmanager
def _this_process_keeps_its_gcs() -> Iterator[None]:
    """Starting a ``ray._private.node.Node`` in this process points the process-wide internal KV client at that
    node's GCS; put back the test session's own, or its later Ray Train runs talk to the cluster's GCS after it
    is killed (the driver then exits after 60 s of retries, as a whole-suite run did)."""
    session_client = internal_kv.internal_kv_get_gcs_client()
    try:
        yield
    finally:
        if session_client is None:
            internal_kv._internal_kv_reset()
        else:
            internal_kv._initialize_internal_kv(session_client)


class LocalCluster:
    """A head node without CPUs and worker nodes of ``worker_cpus`` CPUs each, with their session files in a
    private temp dir (short, as Ray's socket paths must be)."""

    def __init__(self, worker_cpus: int) -> None:
        self.temp_dir = Path(tempfile.mkdtemp(prefix="vrc-", dir="/tmp"))
        self.worker_cpus = worker_cpus
        with _this_process_keeps_its_gcs():
            self.cluster = Cluster(initialize_head=True, head_node_args={
                "num_cpus": 0, "include_dashboard": False, "temp_dir": str(self.temp_dir),
                "_system_config": FAST_HEALTH_CHECKS})

    @property
    def address(self) -> str:
        """The GCS address a driver joins with (``--address`` / ``RAY_ADDRESS``)."""
        return self.cluster.address

    def top_up(self, workers: int) -> None:
        """Add worker nodes until ``workers`` of them are alive."""
        with _this_process_keeps_its_gcs():
            while len(self.cluster.worker_nodes) < workers:
                self.cluster.add_node(num_cpus=self.worker_cpus, temp_dir=str(self.temp_dir))
            self.cluster.wait_for_nodes()

    def nodes_running(self, actor: str) -> list[Node]:
        """The worker nodes with a worker process running an ``actor`` (its name in the process title)."""
        return [node for node in self.cluster.worker_nodes if self.pids_running(node, actor)]

    @staticmethod
    def pids_running(node: Node, actor: str) -> list[int]:
        """The worker processes of ``node`` running an ``actor``."""
        return [pid for pid, title in _workers(node) if actor in title]

    def lose(self, node: Node) -> None:
        """Kill every process of worker node ``node`` at once (SIGKILL, as a machine that vanishes)."""
        self.cluster.remove_node(node, allow_graceful=False)

    def shutdown(self) -> None:
        """Kill every node's processes, the head's last, and delete the temp dir and the address file that
        ``Cluster`` wrote for ``ray.init(address="auto")`` (``Cluster.shutdown`` would also reset this process's
        connection to the test session's own Ray instance)."""
        for node in list(self.cluster.worker_nodes):
            self.cluster.remove_node(node, allow_graceful=False)
        address = self.address
        self.cluster.remove_node(self.cluster.head_node, allow_graceful=False)
        address_file = Path(get_ray_address_file(None))
        if address_file.is_file() and address_file.read_text().strip() == address:
            address_file.unlink()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _workers(node: Node) -> list[tuple[int, str]]:
    """``(pid, command line)`` of the processes under ``node``'s raylet (Ray titles its workers ``ray::<actor>``)."""
    raylet = psutil.Process(node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid)
    found = []
    for process in raylet.children(recursive=True):
        try:
            found.append((process.pid, " ".join(process.cmdline())))
        except psutil.Error:
            continue
    return found
