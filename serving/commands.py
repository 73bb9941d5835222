"""``s4seg serve`` from the command line: flags over environment variables over defaults."""

from __future__ import annotations

import argparse

from pydantic import ValidationError

from s4seg.errors import ConfigError

from .settings import ServeSettings

FLAGS = ("repository", "host", "port", "triton_url", "runtime")


def run_serve(args: argparse.Namespace) -> int:
    from .serve import serve

    given = {name: getattr(args, name) for name in FLAGS if getattr(args, name) is not None}
    try:
        settings = ServeSettings(**given)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(
            f"setting {where} (flag or S4SEG_{where.upper()}): {first['msg']}"
        ) from None
    return serve(settings, quickstart=not args.no_quickstart)
