"""A fault-injecting HTTP proxy on 127.0.0.1 in front of the moto S3 server, and the ``faulty_s3`` fixture.

Issue 5 ("Reliability"): transient errors from the object store (503, connection reset, timeouts) must
be retried with backoff so that nothing is lost. This proxy makes them happen on a real socket: every
request is read whole, then either forwarded to the upstream server unchanged (its reply relayed) or,
with probability ``FaultPlan.rate``, failed in one of four ways an object store fails:

- ``slowdown``: not forwarded; a ``503 SlowDown`` reply with S3's XML error body (HEAD: no body).
- ``reset``: not forwarded; the connection is reset (TCP RST, ``SO_LINGER`` 0) before any reply.
- ``truncate``: forwarded (the upstream applied it: a PUT is stored, the client does not know);
  the reply's status line and headers announce the full length, half the body follows, then a
  reset. On GETs this breaks a body mid-stream, which clients see only while reading it.
- ``timeout``: not forwarded; nothing is sent for ``hold_seconds`` (longer than the client's read
  timeout, see ``proxy_storage_options``), then the connection is reset.

Seeded: decisions are drawn from ``random.Random(seed)`` in the order requests arrive, so a client
that sends requests one at a time meets the same faults run after run; concurrent clients meet the
same sequence of decisions, assigned in arrival order. Faults are independent per request, as on
a real store: the same request may fail twice in a row.

Bounded: a ``timeout`` fault holds a connection for at most ``hold_seconds``, an idle kept-alive connection
is closed after 60 s; the proxy stops when its ``with`` block (the ``faulty_s3`` fixture's: the test) ends,
or, only if ``lifetime_seconds`` is set, by itself after that long (``ProxyStats.expired`` tells); stopping
closes every open connection, so a proxy never outlives its test however slow the machine is.
Counted: ``FaultProxy.stats()`` gives requests received, forwarded, and faults by kind and by method.

Use from tests: ``from fault_proxy import faulty_s3`` brings the fixture into a test module. It wraps
the ``s3`` fixture of ``conftest.py``: ``faulty_s3.storage_options`` and ``faulty_s3.endpoint_url``
reach the bucket through the proxy (``AWS_ENDPOINT_URL`` is pointed at it too, and ``environment()``
gives the variables for a subprocess), ``faulty_s3.direct`` reaches it without faults, for setting up
inputs and checking outputs. Fault settings: ``@pytest.mark.parametrize("faulty_s3", [{"rate": 0.2}],
indirect=True)`` overrides ``FaultPlan`` fields.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import socket
import struct
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

if TYPE_CHECKING:
    import s3fs
    from conftest import S3Endpoint

FAULT_KINDS = ("slowdown", "reset", "truncate", "timeout")
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade", "expect"})


@dataclass(frozen=True)
class FaultPlan:
    """Which requests fail and how: a fraction ``rate`` of the requests whose HTTP method is in ``methods``
    (None: all), kinds drawn with ``weights``, from ``seed``."""

    rate: float = 0.1
    seed: int = 0
    weights: Mapping[str, float] = field(
        default_factory=lambda: {"slowdown": 0.4, "reset": 0.25, "truncate": 0.2, "timeout": 0.15}
    )
    methods: frozenset[str] | None = None
    hold_seconds: float = 2.5
    lifetime_seconds: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"fault rate must be in [0, 1], got {self.rate}")
        unknown = set(self.weights) - set(FAULT_KINDS)
        if unknown or not self.weights or any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise ValueError(f"fault weights must be non-negative over {FAULT_KINDS} with a positive sum, got {dict(self.weights)}")
        if self.hold_seconds <= 0 or (self.lifetime_seconds is not None and self.lifetime_seconds <= 0):
            raise ValueError(f"hold_seconds and lifetime_seconds must be positive, got {self}")


@dataclass(frozen=True)
class ProxyStats:
    """What the proxy saw: requests received (by HTTP method), forwarded upstream, faults by kind and method."""

    requests: int
    requests_by_method: Mapping[str, int]
    forwarded: int
    faults: Mapping[str, int]
    faults_by_method: Mapping[str, int]
    upstream_errors: int
    expired: bool

    @property
    def total_faults(self) -> int:
        return sum(self.faults.values())


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, proxy: FaultProxy) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.proxy = proxy


class FaultProxy:
    """The proxy: ``start()`` (or ``with``), point clients at ``url``, read ``stats()``, ``stop()``."""

    def __init__(self, upstream_url: str, plan: FaultPlan | None = None) -> None:
        parts = urlsplit(upstream_url)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"upstream must be http://host:port, got {upstream_url!r}")
        self.upstream = (parts.hostname, parts.port)
        self.plan = plan or FaultPlan()
        self._rng = random.Random(self.plan.seed)
        self._kinds = [k for k in FAULT_KINDS if self.plan.weights.get(k, 0) > 0]
        self._weights = [self.plan.weights[k] for k in self._kinds]
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._requests = 0
        self._requests_by_method: Counter[str] = Counter()
        self._forwarded = 0
        self._upstream_errors = 0
        self._faults: Counter[str] = Counter()
        self._faults_by_method: Counter[str] = Counter()
        self._expired = False
        self._connections: set[socket.socket] = set()
        self._server = _ProxyServer(self)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fault-proxy", daemon=True)
        self._timer: threading.Timer | None = None
        if self.plan.lifetime_seconds is not None:
            self._timer = threading.Timer(self.plan.lifetime_seconds, self._expire)
            self._timer.daemon = True

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        if self._timer is not None:
            self._timer.start()
        return self

    def stop(self) -> None:
        """Stop serving (idempotent); held ``timeout`` connections are released at once."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self._timer is not None:
            self._timer.cancel()
        if self._thread.is_alive():  # shutdown() waits for serve_forever, which must be running
            self._server.shutdown()
        self._server.server_close()
        with self._lock:
            open_connections = list(self._connections)
        for connection in open_connections:  # kept-alive clients: their handler threads end now
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def wait_stopped(self, timeout: float) -> bool:
        """Block until a proxy with a lifetime has stopped by itself (connections closed, port released), at
        most ``timeout`` s; whether it has stopped."""
        if self._timer is not None:
            self._timer.join(timeout)  # the timer thread runs ``stop`` to its end
        return self._stopped.is_set()

    def _expire(self) -> None:
        self._expired = True
        self.stop()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stats(self) -> ProxyStats:
        with self._lock:
            return ProxyStats(self._requests, dict(self._requests_by_method), self._forwarded, dict(self._faults),
                              dict(self._faults_by_method), self._upstream_errors, self._expired)

    # ------------------------------------------------------------------ used by the handler threads
    def _decide(self, method: str) -> str | None:
        """The fault for the next request (None: forward it), drawn from the seeded sequence."""
        with self._lock:
            self._requests += 1
            self._requests_by_method[method] += 1
            if self.plan.methods is not None and method not in self.plan.methods:
                return None
            if self._rng.random() >= self.plan.rate:
                return None
            kind = self._rng.choices(self._kinds, self._weights)[0]
            self._faults[kind] += 1
            self._faults_by_method[method] += 1
            return kind

    def _track(self, connection: socket.socket, is_open: bool) -> None:
        with self._lock:
            if is_open:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def _count_forwarded(self, ok: bool) -> None:
        with self._lock:
            if ok:
                self._forwarded += 1
            else:
                self._upstream_errors += 1


class _Handler(BaseHTTPRequestHandler):
    """One client connection (keep-alive), relayed over one upstream connection."""

    protocol_version = "HTTP/1.1"
    timeout = 60  # an idle kept-alive connection is closed after this (clients give up on theirs sooner)
    server: _ProxyServer
    _upstream: http.client.HTTPConnection | None = None

    def setup(self) -> None:
        super().setup()
        self.server.proxy._track(self.connection, is_open=True)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002, ANN401 - http.server's signature
        """Silence the per-request access log."""

    def do_GET(self) -> None:
        self._relay()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

    def _relay(self) -> None:
        proxy = self.server.proxy
        body = self._read_body()
        if proxy._stopped.is_set():  # a kept-alive connection that raced the shutdown: nothing after stop
            self._reset()
            return
        fault = proxy._decide(self.command)
        if fault == "slowdown":
            self._send_slowdown()
            return
        if fault == "reset":
            self._reset()
            return
        if fault == "timeout":
            proxy._stopped.wait(proxy.plan.hold_seconds)
            self._reset()
            return
        try:
            status, reason, headers, payload = self._forward(body)
        except (OSError, http.client.HTTPException) as exc:
            proxy._count_forwarded(ok=False)
            self._send(502, "Bad Gateway", [("Content-Type", "text/plain")], f"upstream failed: {exc!r}".encode())
            return
        proxy._count_forwarded(ok=True)
        if fault == "truncate":
            head = self._head(status, reason, headers, len(payload))
            if payload:
                self.wfile.write(head + payload[: len(payload) // 2])
            else:
                self.wfile.write(head[: len(head) // 2])
            self._reset()
            return
        self._send(status, reason, headers, payload)

    def _read_body(self) -> bytes:
        """The request body as sent (a chunked body is kept raw, chunk framing included)."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raw = bytearray()
            while True:
                size_line = self.rfile.readline()
                raw += size_line
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while True:  # trailers, then the empty line
                        line = self.rfile.readline()
                        raw += line
                        if line in (b"\r\n", b"\n", b""):
                            return bytes(raw)
                raw += self.rfile.read(size + 2)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        for attempt in range(2):  # a kept-alive upstream connection the server closed is reopened once
            if self._upstream is None:
                self._upstream = http.client.HTTPConnection(*self.server.proxy.upstream, timeout=60)
            try:
                self._upstream.request(self.command, self.path, body=body, headers=headers)
                response = self._upstream.getresponse()
                payload = response.read()
                return response.status, response.reason, response.getheaders(), payload
            except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
                self._upstream.close()
                self._upstream = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _head(self, status: int, reason: str, headers: list[tuple[str, str]], length: int) -> bytes:
        lines = [f"HTTP/1.1 {status} {reason}"]
        lines += [f"{k}: {v}" for k, v in headers if k.lower() not in _HOP_BY_HOP | {"content-length", "transfer-encoding"}]
        if self.command != "HEAD":
            lines.append(f"Content-Length: {length}")
        else:
            lines += [f"Content-Length: {v}" for k, v in headers if k.lower() == "content-length"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _send(self, status: int, reason: str, headers: list[tuple[str, str]], payload: bytes) -> None:
        if self.command == "HEAD":
            payload = b""
        self.wfile.write(self._head(status, reason, headers, len(payload)) + payload)

    def _send_slowdown(self) -> None:
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
            "<Message>Please reduce your request rate.</Message>"
            f"<Resource>{self.path.split('?')[0]}</Resource><RequestId>injected-fault</RequestId></Error>"
        ).encode()
        self._send(503, "Slow Down", [("Content-Type", "application/xml"), ("x-amz-request-id", "injected-fault")], body)

    def _reset(self) -> None:
        """Reset the client connection: the socket is closed with ``SO_LINGER`` 0 when the handler ends."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()

    def finish(self) -> None:
        self.server.proxy._track(self.connection, is_open=False)
        with contextlib.suppress(OSError):  # the socket may be reset already
            super().finish()
        if self._upstream is not None:
            self._upstream.close()


# ---------------------------------------------------------------------------------------------- fixture
def proxy_storage_options(
    endpoint_url: str,
    key: str,
    secret: str,
    region: str = "us-east-1",
    read_timeout: float = 1.0,
    botocore_retries: int = 5,
) -> dict[str, Any]:
    """s3fs ``storage_options`` for ``endpoint_url``: short timeouts (so a held request times out within
    ``read_timeout`` seconds instead of botocore's 60) and botocore's ``standard`` retry mode with
    ``botocore_retries`` retries after the first attempt (0: no retries at that layer)."""
    return {
        "key": key,
        "secret": secret,
        "client_kwargs": {"endpoint_url": endpoint_url, "region_name": region},
        "config_kwargs": {
            "connect_timeout": read_timeout,
            "read_timeout": read_timeout,
            "retries": {"mode": "standard", "total_max_attempts": botocore_retries + 1},
        },
    }


@dataclass
class FaultyS3:
    """The ``s3`` fixture's bucket behind a running ``FaultProxy``."""

    proxy: FaultProxy
    direct: S3Endpoint
    storage_options: dict[str, Any]

    @property
    def endpoint_url(self) -> str:
        return self.proxy.url

    @property
    def bucket(self) -> str:
        return self.direct.bucket

    def uri(self, *parts: str) -> str:
        return self.direct.uri(*parts)

    def filesystem(self) -> s3fs.S3FileSystem:
        import s3fs

        return s3fs.S3FileSystem(**self.storage_options)

    def config_overrides(self, prefix: str = "storage_options") -> list[str]:
        """``key=value`` overrides that put ``storage_options`` (endpoint, timeouts, botocore retries) into a
        config section, e.g. ``vrseg label ... *faulty_s3.config_overrides()``. Credentials are left out:
        they reach the job through the AWS variables (``environment()``), as they would in production."""

        def flatten(value: Any, key: str) -> list[str]:
            if isinstance(value, dict):
                return [item for k, v in value.items() for item in flatten(v, f"{key}.{k}")]
            return [f"{key}={value}"]

        public = {k: v for k, v in self.storage_options.items() if k not in ("key", "secret")}
        return flatten(public, prefix)

    def environment(self) -> dict[str, str]:
        """The standard AWS variables that make a subprocess reach the bucket through the proxy."""
        return {
            "AWS_ENDPOINT_URL": self.proxy.url,
            "AWS_ACCESS_KEY_ID": self.storage_options["key"],
            "AWS_SECRET_ACCESS_KEY": self.storage_options["secret"],
            "AWS_DEFAULT_REGION": self.storage_options["client_kwargs"]["region_name"],
        }


@pytest.fixture()
def faulty_s3(s3: S3Endpoint, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultyS3]:
    """A fresh moto bucket behind a fault proxy (``FaultPlan`` defaults; ``request.param`` overrides fields)."""
    import s3fs

    overrides = dict(getattr(request, "param", None) or {})
    allowed = {f.name for f in fields(FaultPlan)}
    if set(overrides) - allowed:
        raise ValueError(f"unknown FaultPlan fields {sorted(set(overrides) - allowed)}; known: {sorted(allowed)}")
    with FaultProxy(s3.endpoint_url, FaultPlan(**overrides)) as proxy:
        options = proxy_storage_options(proxy.url, s3.storage_options["key"], s3.storage_options["secret"])
        faulty = FaultyS3(proxy, s3, options)
        for name, value in faulty.environment().items():
            monkeypatch.setenv(name, value)
        s3fs.S3FileSystem.clear_instance_cache()
        yield faulty
        s3fs.S3FileSystem.clear_instance_cache()
    if proxy.stats().expired:
        raise RuntimeError(f"the fault proxy reached its lifetime ({proxy.plan.lifetime_seconds} s) during the test")
