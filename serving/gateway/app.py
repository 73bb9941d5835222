"""The gateway application: ``create_app(settings)``; ``uvicorn`` runs it under ``s4seg serve``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from s4seg import __version__

from ..settings import ServeSettings
from .budget import PixelBudget
from .catalog import Catalog
from .errors import install as install_error_answers
from .limits import Admission, BodyLimits, HeaderLimits
from .metrics import RequestMetrics
from .reception import Reception
from .routers import health, models, page, segment
from .security import Hardening
from .triton_client import TritonEnsemble
from .work import Workers

log = logging.getLogger("s4seg.gateway")


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

    install_error_answers(app)

    # Pure ASGI, outermost first: metrics see every answer, oversized URLs and headers are
    # refused (414/431), the security headers (and the key,
    # before anything is held) go on every answer, a segment request's body is received whole
    # under limits of its own, then admission and its deadline, the body's limits last.
    api_key = settings.api_key.get_secret_value() if settings.api_key else None
    app.add_middleware(
        BodyLimits, max_bytes=settings.max_body_bytes, idle_seconds=settings.body_timeout
    )
    app.add_middleware(
        Admission,
        max_in_flight=settings.max_in_flight,
        timeout=settings.request_timeout,
        workers=workers,
        per_client=settings.in_flight_per_client,
    )
    app.add_middleware(
        Reception,
        max_bytes=settings.max_body_bytes,
        idle_seconds=settings.body_timeout,
        total_seconds=settings.body_total_timeout,
        min_rate=settings.min_body_rate,
        max_receiving=settings.max_receiving,
        per_client=settings.uploads_per_client,
    )
    app.add_middleware(Hardening, api_key=api_key, private_docs=settings.docs_mode == "private")
    app.add_middleware(HeaderLimits)
    app.add_middleware(RequestMetrics, routes=app.routes)
    return app
