"""fsspec locations: one function turns a URI (``s3://``, ``gs://``, ``file://``, plain path) into a
filesystem and a path, with object-storage options from config or the standard AWS environment.

S3 endpoint and credentials come, in order of precedence, from the ``storage_options`` given by the
caller (config) and from ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_DEFAULT_REGION``. ``redact`` removes secrets from anything that is logged or written.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import fsspec
from fsspec import AbstractFileSystem

# Credential names: a word of the name (split at non-alphanumerics) is one of _SECRET_WORDS, or its last word is
# "key" (``key``, ``api_key``, ``secret_access_key``). ``video_tokens_per_frame`` or ``key_frames`` are not secrets.
_SECRET_WORDS = frozenset({"secret", "password", "passwd", "token", "credential", "credentials"})
_WORD = re.compile(r"[^a-z0-9]+")


_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


def protocol_of(uri: str) -> str:
    """``s3`` for ``s3://b/k``, ``file`` for plain paths and ``file://`` URIs."""
    match = _SCHEME.match(uri)
    return match.group(1).lower() if match else "file"


def is_relative(location: str) -> bool:
    """True for a plain relative path (``a/b``); False for absolute paths and ``proto://`` URIs."""
    return _SCHEME.match(location) is None and not os.path.isabs(location)


def parent(uri: str) -> str:
    """The directory holding ``uri``: ``s3://b/p`` for ``s3://b/p/f``; a plain path's, made absolute."""
    if _SCHEME.match(uri):
        return uri.rstrip("/").rsplit("/", 1)[0]
    return os.path.dirname(os.path.abspath(uri))


def s3_options_from_env() -> dict[str, Any]:
    """s3fs options from the standard AWS environment variables (empty entries are left out)."""
    options: dict[str, Any] = {}
    client_kwargs: dict[str, Any] = {}
    if os.environ.get("AWS_ENDPOINT_URL"):
        client_kwargs["endpoint_url"] = os.environ["AWS_ENDPOINT_URL"]
    if os.environ.get("AWS_DEFAULT_REGION"):
        client_kwargs["region_name"] = os.environ["AWS_DEFAULT_REGION"]
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        options["key"] = os.environ["AWS_ACCESS_KEY_ID"]
    if os.environ.get("AWS_SECRET_ACCESS_KEY"):
        options["secret"] = os.environ["AWS_SECRET_ACCESS_KEY"]
    if client_kwargs:
        options["client_kwargs"] = client_kwargs
    return options


def storage_options_for(uri: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Options for ``uri``'s protocol: the environment's, overridden key by key by ``storage_options``."""
    options: dict[str, Any] = s3_options_from_env() if protocol_of(uri) in ("s3", "s3a") else {}
    for key, value in (storage_options or {}).items():
        if key == "client_kwargs" and isinstance(value, Mapping):
            options["client_kwargs"] = {**options.get("client_kwargs", {}), **value}
        else:
            options[key] = value
    return options


def filesystem_for(uri: str, storage_options: Mapping[str, Any] | None = None) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem that serves ``uri`` and the path inside it (protocol stripped)."""
    protocol = protocol_of(uri)
    fs = fsspec.filesystem(protocol, **storage_options_for(uri, storage_options))
    path = fs._strip_protocol(uri)  # noqa: SLF001 - fsspec's public way is url_to_fs, which re-parses options
    return fs, path


def join(base: str, *parts: str) -> str:
    """Join URI parts with ``/`` (works for plain paths and ``proto://`` URIs alike)."""
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def _is_secret_name(name: str) -> bool:
    lowered = name.lower()
    words = [w for w in _WORD.split(lowered) if w]
    return bool(words) and (words[-1] == "key" or "key_id" in lowered or any(w in _SECRET_WORDS for w in words))


def redact(value: Any) -> Any:
    """A copy of ``value`` (nested dicts/lists/strings) with credentials replaced by ``***``."""
    if isinstance(value, Mapping):
        return {
            k: ("***" if _is_secret_name(str(k)) else redact(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(redact(v) for v in value)
    if isinstance(value, str):
        for env in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN"):
            secret = os.environ.get(env)
            if secret and len(secret) >= 4:
                value = value.replace(secret, "***")
        return value
    return value
