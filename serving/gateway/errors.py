"""Every error the gateway answers from an exception, in one table: its status, its code (the
``error`` field clients branch on), its detail and headers. ``install`` registers the table on
the app; anything else is a 500 that names only the exception's type (request bodies and keys
never reach the logs)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from s4seg.imaging import ImageError
from s4seg.manifest import ManifestError

from .budget import Busy
from .catalog import VersionGone
from .dependencies import Unauthorized
from .triton_client import TritonFailed, TritonUnavailable

log = logging.getLogger("s4seg.gateway")

RETRY = {"Retry-After": "1"}


def error(status: int, code: str, detail: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


@dataclass(frozen=True)
class Answer:
    """How one kind of exception is answered; status and code may depend on it."""

    status: int | Callable[[Any], int]
    code: str | Callable[[Any], str]
    detail: Callable[[Any], str] = str
    headers: dict[str, str] = field(default_factory=dict)

    def __call__(self, exc: Exception) -> JSONResponse:
        status = self.status(exc) if callable(self.status) else self.status
        code = self.code(exc) if callable(self.code) else self.code
        return error(status, code, self.detail(exc), self.headers or None)


def switching(exc: Exception) -> str:
    return f"{exc}; the server is switching versions"


def unreadable(exc: Exception) -> str:
    # A served manifest edited in place (briefly invalid) is the server's state, not the
    # client's error: 503 to retry, never 500 (review L2).
    if isinstance(exc, VersionGone):
        return switching(exc)
    return "the served version's manifest can not be read now; retry"


def first_invalid(exc: RequestValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    return f"{where}: {first.get('msg')}"


# Looked up by the exception's class hierarchy, the most specific first (Starlette's rule):
# VersionGone is a ManifestError.
ERRORS: dict[type[Exception], Answer] = {
    ImageError: Answer(lambda e: e.status, lambda e: e.code),
    # The client went away, or BodyLimits already answered 413/408: nothing to say.
    ClientDisconnect: Answer(499, "client_disconnected", lambda _: "the client closed the request"),
    Unauthorized: Answer(
        401, "unauthorized", lambda _: "missing or wrong X-API-Key", {"WWW-Authenticate": "ApiKey"}
    ),
    TritonUnavailable: Answer(503, "unavailable", str, RETRY),
    Busy: Answer(503, "overloaded", str, RETRY),
    ManifestError: Answer(503, "unavailable", unreadable, RETRY),
    VersionGone: Answer(503, "unavailable", switching, RETRY),
    TritonFailed: Answer(
        lambda e: e.status, lambda e: "model_error" if e.status == 502 else "timeout"
    ),
    RequestValidationError: Answer(422, "invalid_parameter", first_invalid),
    StarletteHTTPException: Answer(lambda e: e.status_code, "http_error", lambda e: str(e.detail)),
}


def install(app: FastAPI) -> None:
    """The table's handlers, and the 500 for anything else."""
    for kind, answer in ERRORS.items():

        async def handle(_: Request, exc: Exception, answer: Answer = answer) -> JSONResponse:
            return answer(exc)

        app.add_exception_handler(kind, handle)

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error(500, "internal", f"unexpected {type(exc).__name__}")

    app.add_exception_handler(Exception, unexpected)
