"""Retries for object-storage operations: which errors are transient, and exponential backoff.

Shared by the decoder (``actors.decode``) and the output store (``pipelines.storage``). Transient: HTTP
5xx/429 and throttling replies, connection resets, cut bodies, timeouts (the exception and its causes are
inspected: s3fs turns a 503 into ``OSError(EBUSY)`` caused by botocore's ``ClientError``); permanent:
missing, denied, invalid.
"""

from __future__ import annotations

import errno
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import aiohttp
import botocore.exceptions

from actors.uri import redact

T = TypeVar("T")
log = logging.getLogger(__name__)

_TRANSIENT_ERRNOS = frozenset(
    {errno.EBUSY, errno.EAGAIN, errno.ECONNRESET, errno.ECONNABORTED, errno.ECONNREFUSED, errno.ETIMEDOUT,
     errno.EPIPE, getattr(errno, "EREMOTEIO", errno.EIO)}
)
_TRANSIENT_CODES = frozenset(
    {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "RequestTimeTooSkewed",
     "Throttling", "ThrottlingException", "TooManyRequests", "503", "500", "502", "504"}
)
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: attempt k (from 1) waits ``min(max_delay, initial_delay * multiplier**(k-1))``
    scaled by a random factor in ``[1 - jitter, 1]`` (jitter spreads out workers that failed together)."""

    attempts: int = 6
    initial_delay: float = 0.1
    max_delay: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"retry.attempts must be >= 1, got {self.attempts}")
        if self.initial_delay < 0 or self.max_delay < 0 or self.multiplier < 1 or not 0 <= self.jitter <= 1:
            raise ValueError(f"invalid retry policy {self}")

    def delay(self, attempt: int) -> float:
        base = min(self.max_delay, self.initial_delay * self.multiplier ** (attempt - 1))
        return base * (1 - self.jitter * random.random())


def _causes(exc: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_transient(exc: BaseException) -> bool:
    """Whether retrying may help: 5xx/429 and throttling replies, connection resets, timeouts.

    The exception and its causes are inspected (s3fs translates a 503 into ``OSError(EBUSY)`` caused
    by botocore's ``ClientError``). Missing, denied and invalid requests are permanent.
    """
    if isinstance(exc, _PERMANENT):
        return False
    for cause in _causes(exc):
        if isinstance(cause, ConnectionError | TimeoutError):
            return True
        if isinstance(cause, botocore.exceptions.ClientError):
            error = cause.response.get("Error", {})
            status = cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            return error.get("Code") in _TRANSIENT_CODES or status >= 500 or status == 429
        if isinstance(
            cause,
            botocore.exceptions.ConnectionError
            | botocore.exceptions.HTTPClientError
            | aiohttp.ClientConnectionError
            | aiohttp.ClientPayloadError,
        ):
            return True
        if isinstance(cause, OSError) and cause.errno in _TRANSIENT_ERRNOS:
            return True
    return False


def with_retries(
    operation: Callable[[], T],
    what: str,
    policy: RetryPolicy | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``operation()``, retried per ``policy`` while it fails with a transient error.

    ``what`` names the operation and its URI in log lines; the last transient error is re-raised
    when the attempts run out, permanent errors at once.
    """
    policy = policy or RetryPolicy()
    for attempt in range(1, policy.attempts + 1):
        try:
            return operation()
        except Exception as exc:
            if attempt == policy.attempts or not is_transient(exc):
                raise
            wait = policy.delay(attempt)
            log.warning("%s: transient error (attempt %d/%d), retrying in %.2fs: %r",
                        redact(what), attempt, policy.attempts, wait, exc)
            sleep(wait)
    raise AssertionError("unreachable")


