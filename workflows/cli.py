"""The ``s4seg`` command: the composition root. Each stage's ``commands`` module adds its own
commands, this layer's ``parsers`` the ones that drive several stages (handled in its
``commands``); each command names its handler (``set_defaults(handler=...)``), whose code is
imported when the command runs, so ``s4seg --help`` and the serving commands never import
torch."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from s4seg import __version__
from s4seg.clients import commands as client_commands
from s4seg.errors import S4segError, first_line
from s4seg.export import commands as export_commands
from s4seg.training import commands as training_commands

from . import commands as workflow_commands
from . import parsers as workflow_parsers

# In the order of the pipeline; ``serve`` is the top layer's (it builds the demo model first).
STAGE_COMMANDS = (training_commands, export_commands, client_commands, workflow_parsers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="s4seg", description="Semi-supervised semantic segmentation: train, export, serve."
    )
    parser.add_argument("--version", action="version", version=f"s4seg {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for module in STAGE_COMMANDS:
        module.add_parsers(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return workflow_commands.dispatch(args)
    except S4segError as error:
        print(f"s4seg: error: {first_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("s4seg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
