"""Typed configuration: YAML (OmegaConf) merged with ``key=value`` overrides, validated into dataclasses.

Every configurable part of vrseg declares a dataclass schema. ``load_config`` builds the schema's
defaults, merges the YAML file (a local path or any fsspec URI, read by ``read_yaml``) and the
command-line overrides on top, and returns an instance of the schema. Unknown or misspelled keys and
values of the wrong type are errors that name the key and the file (or "command line"), raised before
any work starts.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from actors.uri import filesystem_for, is_relative

T = TypeVar("T")
PROJECT_ROOT = Path(__file__).resolve().parents[1]


class ConfigError(ValueError):
    """A configuration file or override is malformed; the message names the key and its source."""


def _merge(base: DictConfig, layer: Mapping[str, Any], source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, layer)
    except ConfigKeyError as exc:
        raise ConfigError(f"{source}: unknown key '{exc.full_key}' ({exc.msg.splitlines()[0]})") from None
    except ValidationError as exc:
        raise ConfigError(f"{source}: invalid value for '{exc.full_key}': {exc.msg.splitlines()[0]}") from None
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{source}: {exc}") from None


def read_yaml(location: str | Path, storage_options: Mapping[str, Any] | None = None) -> DictConfig:
    """The YAML mapping at ``location`` (a local path or an fsspec URI, read with ``storage_options`` and
    the environment as in ``actors.uri.filesystem_for``).

    Raises ``ConfigError`` naming ``location`` if it does not exist, cannot be read, is not valid YAML or
    is not a mapping at the top level.
    """
    try:
        fs, path = filesystem_for(str(location), storage_options)
        if not fs.isfile(path):
            raise ConfigError(f"config file not found: {location}")
        text = fs.cat_file(path).decode("utf-8")
    except ConfigError:
        raise
    except Exception as exc:  # object stores fail in many ways: no bucket, access denied, endpoint down
        raise ConfigError(f"{location}: cannot read: {exc}") from None
    try:
        layer = OmegaConf.load(io.StringIO(text))
    except Exception as exc:  # YAML syntax errors come in many types
        raise ConfigError(f"{location}: not valid YAML: {exc}") from None
    if not isinstance(layer, DictConfig):
        raise ConfigError(f"{location}: top level must be a mapping")
    return layer


def resolve_config_location(location: str | Path) -> str:
    """Where the config file named ``location`` is read from, so that ``configs/<kind>/<name>.yaml`` works from
    any working directory.

    URIs, absolute paths and relative paths that exist from the working directory are returned as given; any
    other relative path is taken from the project root (where ``configs/`` ships). Raises ``ConfigError``
    naming both places when the file is in neither.
    """
    location = str(location)
    if not is_relative(location) or Path(location).exists():
        return location
    shipped = PROJECT_ROOT / location
    if shipped.exists():
        return str(shipped)
    raise ConfigError(f"config file not found: {location} (looked in {Path.cwd()} and in {PROJECT_ROOT})")


def load_config(
    schema: type[T],
    path: str | Path | Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
    source: str | None = None,
) -> T:
    """Return ``schema`` filled from ``path`` and ``overrides`` (``a.b=value`` strings).

    ``path``: a YAML file (local path or fsspec URI with the environment's storage options; ``read_yaml``
    reads others; a relative path missing from the working directory is read from the project root,
    ``resolve_config_location``), or a mapping already read from one, which ``source`` then names in messages.
    Raises ``ConfigError`` naming the offending key and its source for unknown keys, wrong types,
    unreadable files and malformed overrides; ``__post_init__`` checks of the schema run last and
    their ``ValueError`` is re-raised as ``ConfigError`` naming the source.
    """
    if not dataclasses.is_dataclass(schema):
        raise TypeError(f"config schema must be a dataclass, got {schema!r}")
    merged = OmegaConf.structured(schema)
    sources = []
    if path is not None:
        if isinstance(path, Mapping):
            layer, name = path, source or "config"
        else:
            location = resolve_config_location(path)
            layer, name = read_yaml(location), source or location
        merged = _merge(merged, layer, name)
        sources.append(name)
    if overrides:
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"command line: override '{item}' is not of the form key=value")
        try:
            layer = OmegaConf.from_dotlist(list(overrides))
        except OmegaConfBaseException as exc:
            raise ConfigError(f"command line: {exc}") from None
        merged = _merge(merged, layer, "command line")
        sources.append("command line")
    try:
        missing = OmegaConf.missing_keys(merged)
        if missing:
            raise ConfigError(f"{' + '.join(sources) or schema.__name__}: required keys not set: {sorted(missing)}")
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{' + '.join(sources) or schema.__name__}: {exc}") from None


def to_plain(config: Any) -> dict[str, Any]:
    """A JSON-serialisable dict of a config dataclass (for run records)."""
    return OmegaConf.to_container(OmegaConf.structured(config), resolve=True)  # type: ignore[return-value]
