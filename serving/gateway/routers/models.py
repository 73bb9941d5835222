"""What is served: the manifest of the served version and the versions on disk (host paths
reduced to names: clients learn nothing of the server's folders)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException

from s4seg.manifest import without_host_paths

from ..dependencies import CatalogDep, TritonDep, require_api_key

router = APIRouter(tags=["models"], dependencies=[Depends(require_api_key)])


@router.get("/v1/models", summary="The served version, its manifest, and all published versions")
async def models(triton: TritonDep, catalog: CatalogDep) -> dict:
    served = await triton.served_version(max_age=0)
    if served is None:
        raise HTTPException(503, "no version is being served (Triton down or nothing published)")
    manifest = catalog.manifest(served)  # VersionGone: 503 (app.py)
    return {
        "served_version": served,
        "published_versions": catalog.versions(),
        "failed_versions": without_host_paths(catalog.status().get("failed", {})),
        # The default gate of every request, and why (the sweep is in manifest.tau_choice).
        "gate": {
            "on": manifest.gate_on,
            "tau": manifest.tau,
            "why": without_host_paths(manifest.describe_tau()),
        },
        # How its networks run (runtime, precision) and why: publish --precision auto measured.
        "engine": without_host_paths((manifest.published or {}).get("engine")),
        "manifest": manifest.public_dump(),
    }
