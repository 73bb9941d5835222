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


# -- the command line: parsers only (no torch at parse time); each command names its handler ----


def add_parsers(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    serve = commands.add_parser(
        "serve", help="serve segmentation: tritonserver + version manager + HTTP gateway"
    )
    serve.add_argument("--repository", help="model repository (env S4SEG_REPOSITORY)")
    serve.add_argument("--host", help="gateway address (env S4SEG_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="gateway port (env S4SEG_PORT, default 8080)")
    serve.add_argument("--triton-url", help="use this running Triton instead of starting one")
    serve.add_argument("--runtime", choices=["python", "onnxruntime"], help="step runtime")
    serve.add_argument(
        "--no-quickstart", action="store_true", help="fail instead of building the demo model"
    )
    serve.set_defaults(handler=run_serve)
