"""The gateway application: ``create_app(settings)``; ``uvicorn`` runs it under ``s4seg serve``."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from s4seg import __version__
from s4seg.imaging import ImageError

from ..settings import ServeSettings
from .catalog import Catalog
from .dependencies import Unauthorized
from .limits import BodySizeLimit
from .metrics import IN_FLIGHT, LATENCY, REQUESTS
from .routers import health, models, page, segment
from .triton_client import TritonEnsemble, TritonFailed, TritonUnavailable

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
        )
        try:
            yield
        finally:
            await app.state.triton.close()

    app = FastAPI(
        title="s4seg gateway",
        version=__version__,
        description="Semantic segmentation (s4GAN + MLMT) served by a Triton ensemble.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.catalog = Catalog(settings.repository)
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
        # The client went away, or BodySizeLimit already answered 413: nothing to say.
        return error(499, "client_disconnected", "the client closed the request")

    @app.exception_handler(Unauthorized)
    async def unauthorized(_: Request, exc: Unauthorized) -> JSONResponse:
        return error(
            401, "unauthorized", "missing or wrong X-API-Key", {"WWW-Authenticate": "ApiKey"}
        )

    @app.exception_handler(TritonUnavailable)
    async def unavailable(_: Request, exc: TritonUnavailable) -> JSONResponse:
        return error(503, "unavailable", str(exc), {"Retry-After": "1"})

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

    @app.middleware("http")
    async def measure(request: Request, call_next):
        route = request.url.path if request.url.path.startswith("/v1/") else "other"
        IN_FLIGHT.inc()
        start = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            IN_FLIGHT.dec()
            LATENCY.labels(route).observe(time.perf_counter() - start)
            REQUESTS.labels(route, str(status)).inc()

    # Outermost: refuse oversize bodies before any route reads them.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    return app
