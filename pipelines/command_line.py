"""How the file-reading ``vrseg`` commands (``export``, ``report``) end: one summary line on stdout and exit
status 0, or one error line on stderr naming the bad input (credentials redacted) and exit status 2."""

from __future__ import annotations

import sys
from collections.abc import Callable

from actors.config import ConfigError
from actors.uri import redact
from pipelines.formats.model import FormatError
from pipelines.storage import StorageError

INPUT_ERRORS = (ConfigError, FormatError, StorageError, FileNotFoundError, PermissionError, ValueError)


def run_command(name: str, work: Callable[[], str]) -> int:
    """Run ``work`` (which returns the summary line) as the command ``vrseg <name>``."""
    try:
        summary = work()
    except INPUT_ERRORS as exc:
        print(f"vrseg {name}: {redact(str(exc))}", file=sys.stderr)
        return 2
    print(f"vrseg {name}: {summary}")
    return 0
