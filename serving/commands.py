"""``s4seg serve``'s flags and settings: flags over environment variables over defaults. The
command itself is the top layer's (``s4seg.workflows.commands``): on a first run it builds the
demo model before serving, which is not the serving stage's to do."""

from __future__ import annotations

import argparse

from pydantic import ValidationError

from s4seg.errors import ConfigError

from .settings import ServeSettings

FLAGS = ("repository", "host", "port", "triton_url", "runtime")


def settings_from(args: argparse.Namespace) -> ServeSettings:
    given = {name: getattr(args, name) for name in FLAGS if getattr(args, name) is not None}
    try:
        return ServeSettings(**given)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(
            f"setting {where} (flag or S4SEG_{where.upper()}): {first['msg']}"
        ) from None


def add_serve_arguments(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--repository", help="model repository (env S4SEG_REPOSITORY)")
    serve.add_argument("--host", help="gateway address (env S4SEG_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="gateway port (env S4SEG_PORT, default 8080)")
    serve.add_argument("--triton-url", help="use this running Triton instead of starting one")
    serve.add_argument(
        "--runtime", choices=["python", "onnxruntime", "openvino"], help="step runtime"
    )
