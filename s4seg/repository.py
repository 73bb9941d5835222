"""The model repository contract (no torch): layout and names, versions, manifests, the serving
status, and which version is served. Publishing, the promotion gate and rollback write it
(``s4seg.export.repository``); the version manager, the gateway and the clients read it.

Layout (one folder per model, numbered version folders inside)::

    model_repository/
      s4seg_preprocess/config.pbtxt   N/model.onnx (+ N/model.py: the python-backend runner)
      s4seg_segmenter/ ...             s4seg_classifier/ ...   s4seg_gate/ ...
      s4seg/config.pbtxt              N/manifest.json   (the ensemble; its config names N)

The serving status (what ``s4seg serve`` serves, versions that failed to load) lives beside the
repository, not in it (``.model_repository.serving.json``): the published tree is written by
publish and rollback only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from s4seg.atomic import write_json_atomic
from s4seg.manifest import MANIFEST_NAME, STEPS, Manifest

if TYPE_CHECKING:
    from s4seg.onnx_pipeline import OnnxPipeline

ENSEMBLE = "s4seg"
STEP_MODELS = {
    "preprocess": "s4seg_preprocess",
    "segmenter": "s4seg_segmenter",
    "classifier": "s4seg_classifier",
    "gate": "s4seg_gate",
}
GRAPH_FILE = "model.onnx"


def model_versions(model_dir: Path) -> list[int]:
    """Numbered version folders of one model, oldest first (staged ``.N.tmp`` ones excluded)."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def complete_versions(repository: Path) -> list[int]:
    """Versions with a manifest and every step on disk, oldest first."""
    repository = Path(repository)
    return [
        v
        for v in model_versions(repository / ENSEMBLE)
        if (version_folder(repository, v) / MANIFEST_NAME).is_file()
        and all((repository / m / str(v)).is_dir() for m in STEP_MODELS.values())
    ]


def version_folder(repository: Path, version: int | str) -> Path:
    """The ensemble's folder of a version: its manifest."""
    return Path(repository) / ENSEMBLE / str(version)


def read_manifest(repository: Path, version: int | str) -> Manifest:
    return Manifest.load(version_folder(repository, version))


def graph_path(repository: Path, step: str, version: int | str) -> Path:
    return Path(repository) / STEP_MODELS[step] / str(version) / GRAPH_FILE


def version_pipeline(repository: Path, version: int, device: str = "auto") -> OnnxPipeline:
    """A published version run in-process (the promotion gate, ``predict --via local``)."""
    from s4seg.onnx_pipeline import OnnxPipeline

    files = {step: graph_path(repository, step, version) for step in STEPS}
    return OnnxPipeline(read_manifest(repository, version), files, device)


# -- the serving status ---------------------------------------------------------------------------
def status_path(repository: Path) -> Path:
    repository = Path(repository).resolve()
    return repository.parent / f".{repository.name}.serving.json"


def read_status(repository: Path) -> dict[str, Any]:
    """What the version manager last wrote ({} when no server ever ran)."""
    try:
        status = json.loads(status_path(repository).read_text())
    except (OSError, ValueError):
        return {}
    return status if isinstance(status, dict) else {}


def write_status(repository: Path, status: dict[str, Any]) -> None:
    write_json_atomic(status_path(repository), {**status, "pid": os.getpid()})


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def served_by_a_server(repository: Path) -> int | None:
    """The version a running ``s4seg serve`` reports serving (None: no server runs)."""
    status = read_status(repository)
    reported = status.get("served_version")
    return reported if _alive(status.get("pid")) and isinstance(reported, int) else None


def served_version(repository: Path) -> int | None:
    """The version answering requests: what the running server reports (its status, while its
    process lives); with no server, the newest complete version that has not failed to load."""
    on_disk = complete_versions(repository)
    status = read_status(repository)
    reported = status.get("served_version")
    if _alive(status.get("pid")) and reported in on_disk:
        return reported
    failed = {int(v) for v in status.get("failed", {})}
    loadable = [v for v in on_disk if v not in failed]
    return loadable[-1] if loadable else None


def served_manifest(repository: Path) -> Manifest | None:
    version = served_version(repository)
    return None if version is None else read_manifest(repository, version)
