"""Manifests of the published versions, read from the repository (the gateway's only state)."""

from __future__ import annotations

import json
import time
from functools import lru_cache
from pathlib import Path

from s4seg.export.triton_config import ENSEMBLE

from s4seg.manifest import Manifest

from ..versions import STATUS_FILE


@lru_cache(maxsize=16)
def _manifest(path: str, mtime: float) -> Manifest:
    return Manifest.load(path)


class Catalog:
    def __init__(self, repository: Path) -> None:
        self.repository = Path(repository)

    def manifest(self, version: int | str) -> Manifest:
        path = self.repository / ENSEMBLE / str(version) / "manifest.json"
        return _manifest(str(path), path.stat().st_mtime if path.exists() else 0.0)

    def versions(self) -> list[int]:
        folder = self.repository / ENSEMBLE
        if not folder.is_dir():
            return []
        return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())

    def status(self) -> dict:
        """What the version manager last wrote: served version and versions that fail to load."""
        try:
            status = json.loads((self.repository / STATUS_FILE).read_text())
        except (OSError, ValueError):
            return {}
        status["age_seconds"] = round(time.time() - status.get("time", time.time()), 1)
        return status
