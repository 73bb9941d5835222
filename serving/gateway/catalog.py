"""Manifests of the published versions, read from the repository (the gateway's only state)."""

from __future__ import annotations

import time
from functools import lru_cache
from pathlib import Path

from s4seg.manifest import MANIFEST_NAME, Manifest
from s4seg.repository import ENSEMBLE, model_versions, read_status, version_folder


@lru_cache(maxsize=16)
def _manifest(path: str, mtime: float) -> Manifest:
    return Manifest.load(path)


class Catalog:
    def __init__(self, repository: Path) -> None:
        self.repository = Path(repository)

    def manifest(self, version: int | str) -> Manifest:
        path = version_folder(self.repository, version) / MANIFEST_NAME
        return _manifest(str(path), path.stat().st_mtime if path.exists() else 0.0)

    def versions(self) -> list[int]:
        return model_versions(self.repository / ENSEMBLE)

    def status(self) -> dict:
        """What the version manager last wrote: served version and versions that fail to load."""
        status = read_status(self.repository)
        if not status:
            return {}
        status["age_seconds"] = round(time.time() - status.get("time", time.time()), 1)
        return status
