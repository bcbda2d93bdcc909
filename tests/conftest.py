"""Shared fixtures: a real S3 endpoint (moto's server on 127.0.0.1), a real local Ray instance."""

from __future__ import annotations

import os
import socket
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One intra-op thread per process: tests share 2 cores with Ray workers, and OpenMP threads spinning
# against each other made torch several times slower than a single thread on these machines.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class S3Endpoint:
    """A running moto S3 server with one empty bucket; ``storage_options`` reach it explicitly."""

    endpoint_url: str
    bucket: str = "vrseg-test"
    storage_options: dict[str, Any] = field(default_factory=dict)

    def uri(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", *(p.strip("/") for p in parts)])

    def filesystem(self):  # noqa: ANN201 - s3fs.S3FileSystem
        import s3fs

        return s3fs.S3FileSystem(**self.storage_options)


@pytest.fixture(scope="session")
def _moto_server() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture()
def s3(_moto_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Endpoint]:
    """A fresh bucket on the session's moto server (state reset before each test).

    The AWS variables point at the server too, so code that relies on the environment (as a user's
    would) reaches it; tests should still pass ``storage_options`` explicitly where an API takes them.
    """
    import boto3
    import s3fs

    urllib.request.urlopen(urllib.request.Request(f"{_moto_server}/moto-api/reset", method="POST")).read()
    for key, value in {
        "AWS_ENDPOINT_URL": _moto_server,
        "AWS_ACCESS_KEY_ID": "testing-key-id",
        "AWS_SECRET_ACCESS_KEY": "testing-secret-value",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    endpoint = S3Endpoint(
        endpoint_url=_moto_server,
        storage_options={
            "key": "testing-key-id",
            "secret": "testing-secret-value",
            "client_kwargs": {"endpoint_url": _moto_server, "region_name": "us-east-1"},
        },
    )
    boto3.client("s3", endpoint_url=_moto_server, region_name="us-east-1").create_bucket(Bucket=endpoint.bucket)
    s3fs.S3FileSystem.clear_instance_cache()
    yield endpoint
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """A real local Ray instance with 2 CPUs, shared by the session's tests."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()
