"""The ``s4seg`` command: the composition root. Each stage's ``commands`` module adds its
parsers and names each command's handler (``set_defaults(handler=...)``); its code is imported
when the command runs, so ``s4seg --help`` and the serving commands never import torch."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from s4seg import __version__
from s4seg.errors import S4segError

# Imported by name: the core does not depend on the stages, the command line gathers them.
STAGE_COMMANDS = (
    "s4seg.training.commands",
    "s4seg.export.commands",
    "s4seg.serving.commands",
    "s4seg.clients.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="s4seg", description="Semi-supervised semantic segmentation: train, export, serve."
    )
    parser.add_argument("--version", action="version", version=f"s4seg {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    bench = commands.add_parser("bench", help="benchmarks (results go into BENCHMARKS.md)")
    targets = bench.add_subparsers(dest="target", required=True)
    for module in STAGE_COMMANDS:
        importlib.import_module(module).add_parsers(commands, targets)
    return parser


def _first_line(error: BaseException) -> str:
    """Errors raised in data loader workers arrive wrapped with a traceback: keep the message."""
    text = str(error).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text.splitlines()[0] if text else type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args) or 0
    except S4segError as error:
        print(f"s4seg: error: {_first_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("s4seg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
