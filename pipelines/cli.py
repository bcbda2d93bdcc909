"""``vrseg`` command line: one subcommand per pipeline module.

Each subcommand module exposes ``register(subparsers)``, which adds its parser and sets ``func`` to
the callable that runs it (returning the process exit status).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

SUBCOMMAND_MODULES = ("pipelines.label", "pipelines.ground", "pipelines.train", "pipelines.evaluate",
                      "pipelines.export", "pipelines.label_report", "pipelines.calibrate", "pipelines.synthetic_cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vrseg", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
