"""The gateway application: ``create_app(settings)``; ``uvicorn`` runs it under ``s4seg serve``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from s4seg import __version__
from s4seg.imaging import ImageError
from s4seg.manifest import ManifestError

from ..settings import ServeSettings
from .budget import Busy, PixelBudget
from .catalog import Catalog, VersionGone
from .dependencies import Unauthorized
from .limits import Admission, BodyLimits, HeaderLimits
from .metrics import RequestMetrics
from .reception import Reception
from .routers import health, models, page, segment
from .security import Hardening
from .triton_client import TritonEnsemble, TritonFailed, TritonUnavailable
from .work import Workers

log = logging.getLogger("s4seg.gateway")


def error(status: int, code: str, detail: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def create_app(settings: ServeSettings | None = None) -> FastAPI:
    settings = settings or ServeSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.triton = TritonEnsemble(
            settings.triton_http,
            settings.request_timeout,
            grpc_url=settings.triton_grpc if settings.inference_protocol == "grpc" else None,
            shared_memory=settings.use_shared_memory,
            slots=settings.max_in_flight,
        )
        try:
            yield
        finally:
            await app.state.triton.close()
            app.state.workers.close()

    docs = settings.docs_mode != "off"
    app = FastAPI(
        title="s4seg gateway",
        version=__version__,
        description="Semantic segmentation (s4GAN + MLMT) served by a Triton ensemble.",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.settings = settings
    app.state.catalog = Catalog(settings.repository, settings.replica_name)
    app.state.budget = PixelBudget(settings.pixel_budget, settings.pixels_per_client)
    app.state.workers = workers = Workers()
    app.include_router(segment.router)
    app.include_router(models.router)
    app.include_router(health.router)
    app.include_router(page.router)
    app.mount("/static", page.static_files, name="static")

    @app.exception_handler(ImageError)
    async def bad_image(_: Request, exc: ImageError) -> JSONResponse:
        return error(exc.status, exc.code, str(exc))

    @app.exception_handler(ClientDisconnect)
    async def disconnected(_: Request, exc: ClientDisconnect) -> JSONResponse:
        # The client went away, or BodyLimits already answered 413/408: nothing to say.
        return error(499, "client_disconnected", "the client closed the request")

    @app.exception_handler(Unauthorized)
    async def unauthorized(_: Request, exc: Unauthorized) -> JSONResponse:
        return error(
            401, "unauthorized", "missing or wrong X-API-Key", {"WWW-Authenticate": "ApiKey"}
        )

    @app.exception_handler(TritonUnavailable)
    async def unavailable(_: Request, exc: TritonUnavailable) -> JSONResponse:
        return error(503, "unavailable", str(exc), {"Retry-After": "1"})

    @app.exception_handler(Busy)
    async def busy(_: Request, exc: Busy) -> JSONResponse:
        return error(503, "overloaded", str(exc), {"Retry-After": "1"})

    @app.exception_handler(ManifestError)
    async def unreadable(_: Request, exc: ManifestError) -> JSONResponse:
        # A served manifest edited in place (briefly invalid) is the server's state, not the
        # client's error: 503 to retry, never 500 (review L2). VersionGone says it its way.
        detail = "the served version's manifest can not be read now; retry"
        if isinstance(exc, VersionGone):
            detail = f"{exc}; the server is switching versions"
        return error(503, "unavailable", detail, {"Retry-After": "1"})

    @app.exception_handler(VersionGone)
    async def switching(_: Request, exc: VersionGone) -> JSONResponse:
        detail = f"{exc}; the server is switching versions"
        return error(503, "unavailable", detail, {"Retry-After": "1"})

    @app.exception_handler(TritonFailed)
    async def failed(_: Request, exc: TritonFailed) -> JSONResponse:
        return error(exc.status, "model_error" if exc.status == 502 else "timeout", str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error(422, "invalid_parameter", f"{where}: {first.get('msg')}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, "http_error", str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Logged with its type only: request bodies and keys never reach the logs.
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error(500, "internal", f"unexpected {type(exc).__name__}")

    # Pure ASGI, outermost first: metrics see every answer, oversized URLs and headers are
    # refused (414/431), the security headers (and the key,
    # before anything is held) go on every answer, a segment request's body is received whole
    # under limits of its own, then admission and its deadline, the body's limits last.
    api_key = settings.api_key.get_secret_value() if settings.api_key else None
    app.add_middleware(BodyLimits, max_bytes=settings.max_body_bytes,
                       idle_seconds=settings.body_timeout)  # fmt: skip
    app.add_middleware(Admission, max_in_flight=settings.max_in_flight,
                       timeout=settings.request_timeout, workers=workers,
                       per_client=settings.in_flight_per_client)  # fmt: skip
    app.add_middleware(Reception, max_bytes=settings.max_body_bytes,
                       idle_seconds=settings.body_timeout,
                       total_seconds=settings.body_total_timeout,
                       min_rate=settings.min_body_rate, max_receiving=settings.max_receiving,
                       per_client=settings.uploads_per_client)  # fmt: skip
    app.add_middleware(Hardening, api_key=api_key, private_docs=settings.docs_mode == "private")
    app.add_middleware(HeaderLimits)
    app.add_middleware(RequestMetrics, routes=app.routes)
    return app
