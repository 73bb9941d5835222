"""Manifests of the published versions, read from the repository (the gateway's only state).

A manifest once read stays readable: ``s4seg rollback`` and ``publish --keep`` remove version
folders, and until the version manager has switched away, the gateway still answers with the
removed version (Triton holds it in memory), so it must still describe it.
"""

from __future__ import annotations

import time
from pathlib import Path

from s4seg.manifest import MANIFEST_NAME, Manifest, ManifestError
from s4seg.repository import ENSEMBLE, model_versions, read_status, version_folder


class VersionGone(ManifestError):
    """A version was never read here and its manifest is no longer on disk (HTTP 503)."""


class Catalog:
    def __init__(self, repository: Path, replica: str) -> None:
        self.repository, self.replica = Path(repository), replica
        self._read: dict[str, tuple[float, Manifest]] = {}  # version -> (mtime, manifest)

    def manifest(self, version: int | str) -> Manifest:
        key = str(version)
        path = version_folder(self.repository, key) / MANIFEST_NAME
        try:
            mtime = path.stat().st_mtime
        except OSError:
            if key in self._read:
                return self._read[key][1]
            raise VersionGone(f"version {key} is no longer in the repository") from None
        cached = self._read.get(key)
        if cached is None or cached[0] != mtime:
            try:
                self._read[key] = (mtime, Manifest.load(path))
            except ManifestError:
                if cached is None:
                    raise  # 503 (app.py): nothing known of this version yet
                return cached[1]  # removed, or rewritten in place, while being read
        return self._read[key][1]

    def versions(self) -> list[int]:
        return model_versions(self.repository / ENSEMBLE)

    def status(self) -> dict:
        """What this replica's version manager last wrote: served version and versions that
        fail to load."""
        status = read_status(self.repository, self.replica)
        if not status:
            return {}
        status["age_seconds"] = round(time.time() - status.get("time", time.time()), 1)
        return status
