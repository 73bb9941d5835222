"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from s4seg.manifest import without_host_paths

from ..dependencies import CatalogDep, TritonDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The gateway process is alive")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="Triton and the ensemble are ready to segment")
async def readyz(triton: TritonDep, catalog: CatalogDep) -> JSONResponse:
    ready, reason = await triton.readiness()
    status = catalog.status()
    body = {
        "ready": ready,
        "reason": reason,
        "served_version": await triton.served_version(max_age=0) if ready else None,
        "failed_versions": without_host_paths(status.get("failed", {})),
    }
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
