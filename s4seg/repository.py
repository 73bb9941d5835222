"""The model repository contract (no torch): layout and names, versions, manifests, the serving
status, and which version is served. Publishing, the promotion gate and rollback write it
(``s4seg.export.repository``); the version manager, the gateway and the clients read it.

Layout (one folder per model, numbered version folders inside)::

    model_repository/
      s4seg_segmenter/config.pbtxt    N/model.onnx (+ N/model.py: the python-backend runner)
      s4seg_classifier/ ...            s4seg_gate/ ...
      s4seg/config.pbtxt              N/manifest.json   (the ensemble; its config names N)

The serving status (what ``s4seg serve`` serves, versions that failed to load) lives beside the
repository, not in it (``.model_repository.serving/``, one file per replica, each written by its
replica alone): the published tree is written by publish and rollback only.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from s4seg.atomic import write_json_atomic
from s4seg.manifest import MANIFEST_NAME, STEPS, Manifest

if TYPE_CHECKING:
    from s4seg.onnx_pipeline import OnnxPipeline

ENSEMBLE = "s4seg"
STEP_MODELS = {
    "segmenter": "s4seg_segmenter",
    "classifier": "s4seg_classifier",
    "gate": "s4seg_gate",
}
GRAPH_FILE = "model.onnx"
# Beside a network's model.onnx: {"runtime": ..., "precision": ...}, how the runner runs it
# (``s4seg.engines``), written by publish; absent: ONNX Runtime as the file is.
ENGINE_FILE = "engine.json"


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


def version_pipeline(
    repository: Path, version: int, device: str = "auto", threads: int | None = None
) -> OnnxPipeline:
    """A published version run in-process as it is served (the promotion gate, ``predict --via
    local``): its networks in the runtime and precision publish chose."""
    from s4seg.onnx_pipeline import OnnxPipeline

    manifest = read_manifest(repository, version)
    engine = (manifest.published or {}).get("engine") or {}
    files = {step: graph_path(repository, step, version) for step in STEPS}
    runtime, precision = engine.get("runtime", "onnxruntime"), engine.get("precision", "fp32")
    return OnnxPipeline(
        manifest, files, device, runtime=runtime, precision=precision, threads=threads
    )


# -- the serving status: one file per replica ----------------------------------------------------
# A replica rewrites its file at least this often, from a thread of its own (a version load
# that takes minutes does not stop it); a file older than STALE_SECONDS is a replica that is
# gone (killed, or on a host that is down), since another host's pid can not be checked. Ages
# are read on the volume's own clock (the files' modification times against a probe written
# there now), never one host's clock against another's (review M1b).
HEARTBEAT_SECONDS = 10.0
STALE_SECONDS = 45.0


def pid_namespace() -> int | None:
    """This process's pid namespace (containers of one pod share a host name, not pids)."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def volume_now(folder: Path) -> float:
    """The time on the clock of the volume ``folder`` is on: a probe file's modification time
    (the clock that stamps every status file there), else this host's clock."""
    probe = folder / f".clock.{socket.gethostname()}.{os.getpid()}"
    try:
        probe.write_bytes(b"")
        return probe.stat().st_mtime
    except OSError:
        return time.time()
    finally:
        probe.unlink(missing_ok=True)


def status_dir(repository: Path) -> Path:
    """Beside the published tree (``.model_repository.serving/``), which only publish and
    rollback write; on the same volume, so every replica and ``s4seg rollback`` see it."""
    repository = Path(repository).resolve()
    return repository.parent / f".{repository.name}.serving"


def status_path(repository: Path, replica: str) -> Path:
    """The file of one replica: written by that replica alone."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", replica).strip(".") or "replica"
    return status_dir(repository) / f"{name}.json"


def read_status(repository: Path, replica: str) -> dict[str, Any]:
    """What one replica's version manager last wrote ({} when it never ran)."""
    return _read_json(status_path(repository, replica))


def write_status(repository: Path, replica: str, status: dict[str, Any]) -> None:
    identity = {
        "replica": replica,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_namespace": pid_namespace(),
    }
    write_json_atomic(status_path(repository, replica), {**status, **identity, "time": time.time()})


def remove_status(repository: Path, replica: str) -> None:
    """A replica that stops says so: rollback need not wait for it."""
    status_path(repository, replica).unlink(missing_ok=True)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return status if isinstance(status, dict) else {}


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


def _live(status: dict[str, Any], age: float) -> bool:
    """Where its process can be seen (this host and pid namespace): that process lives, however
    long ago it last wrote (a load may take minutes). Elsewhere: its file is recent, by the
    volume's clock."""
    here = (
        status.get("host") == socket.gethostname()
        and status.get("pid_namespace", pid_namespace()) == pid_namespace()
    )
    if here:
        return _alive(status.get("pid"))
    return age < STALE_SECONDS


def replica_statuses(repository: Path, live_only: bool = True) -> dict[str, dict[str, Any]]:
    """Every replica's status by name (by default only the replicas still running)."""
    folder = status_dir(repository)
    found: dict[str, dict[str, Any]] = {}
    if not folder.is_dir():
        return found
    now = volume_now(folder)
    for path in sorted(folder.glob("*.json")):
        status = _read_json(path)
        try:
            age = now - path.stat().st_mtime
        except OSError:
            continue
        if status and (not live_only or _live(status, age)):
            found[str(status.get("replica", path.stem))] = status
    return found


def in_use(repository: Path) -> set[int]:
    """Every version a running replica serves, is switching to, or keeps loaded: what prune
    and rollback must not delete (review M1a)."""
    used: set[int] = set()
    for status in replica_statuses(repository).values():
        for key in ("served_version", "loading"):
            if isinstance(status.get(key), int):
                used.add(status[key])
        used.update(v for v in status.get("loaded", []) if isinstance(v, int))
    return used


def served_by_servers(repository: Path) -> dict[str, int]:
    """The version each running replica reports serving ({}: no server runs)."""
    return {
        name: status["served_version"]
        for name, status in replica_statuses(repository).items()
        if isinstance(status.get("served_version"), int)
    }


def served_version(repository: Path) -> int | None:
    """The version answering requests: the newest one a running replica serves (replicas
    converge on it); with no server, the newest complete version that no replica failed to
    load."""
    on_disk = complete_versions(repository)
    served = [v for v in served_by_servers(repository).values() if v in on_disk]
    if served:
        return max(served)
    failed = {
        int(v)
        for status in replica_statuses(repository, live_only=False).values()
        for v in status.get("failed", {})
    }
    loadable = [v for v in on_disk if v not in failed]
    return loadable[-1] if loadable else None


def served_manifest(repository: Path) -> Manifest | None:
    version = served_version(repository)
    return None if version is None else read_manifest(repository, version)
