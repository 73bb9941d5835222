"""Which published version Triton serves, decided by us rather than by Triton's poller.

Triton runs with ``--model-control-mode=explicit`` on a repository of its own (the *view*:
configs we write, version folders linked from the published repository, which serving never
modifies; this replica's serving status goes beside it, ``s4seg.repository.write_status``).
Replicas of one repository (each its own Triton and version manager, on one host or many, the
repository on a shared volume) decide alone and write only their own status file and view: each
picks up a publish or a rollback by itself.
:meth:`VersionManager.sync` looks at the repository and, when a newer complete version is on
disk, loads it step by step with config overrides that name exactly the versions to keep loaded
(the served one and the new one), and switches the ensemble only when every step of the new
version is ready. A version that fails to load (corrupt ONNX, wrong shapes) is recorded with
Triton's reason and skipped until its files change; the served version keeps answering.
Versions removed from disk (``s4seg rollback``) make it serve the newest one left.

Why not ``--model-control-mode=poll``: when a pinned step fails to load, Triton unloads the
ensemble that pins it, so a broken version would take the served one down (seen with 2.51).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from s4seg import tensors as t
from s4seg.atomic import write_atomic
from s4seg.defaults import SEGMENTER_INSTANCES
from s4seg.errors import first_line
from s4seg.manifest import ManifestError, sha256_file
from s4seg.repository import (
    ENSEMBLE,
    HEARTBEAT_SECONDS,
    STEP_MODELS,
    complete_versions,
    read_manifest,
    read_status,
    remove_status,
    write_status,
)
from s4seg.triton_config import ensemble_config, step_config, to_pbtxt
from s4seg.triton_request import infer_input

from .triton import ADMIN_HEADER


@dataclass
class Failure:
    reason: str
    fingerprint: float


@dataclass
class VersionState:
    served: int | None = None
    failed: dict[int, Failure] = field(default_factory=dict)
    switched_at: float | None = None
    # A withdrawn version's steps stay loaded until this time (monotonic): requests the old
    # ensemble config had already taken in are between its steps and need them to finish.
    drain_until: float | None = None


# How long a withdrawn version's steps stay loaded after the ensemble moved away from it: longer
# than a request spends between two steps on a loaded CPU (unloading at once answered 2 of
# ~3,200 requests 503 in tests/test_replicas.py, 2 runs in 10).
DRAIN_SECONDS = 10.0


def fingerprint(repository: Path, version: int) -> float:
    """Changes when any file of the version changes (a fixed version is tried again)."""
    stamps = [0.0]
    for model in [*STEP_MODELS.values(), ENSEMBLE]:
        folder = repository / model / str(version)
        if folder.is_dir():
            stamps += [p.stat().st_mtime for p in folder.iterdir()] + [folder.stat().st_mtime]
    return max(stamps)


class LoadError(Exception):
    pass


@dataclass(frozen=True)
class OnDisk:
    """What ``sync`` reads from the shared repository."""

    complete: list[int]  # complete versions, newest first
    fingerprints: dict[int, float]  # of the complete versions newer than the served one
    steps_present: bool  # the served version's step folders are all still there


def read_disk(repository: Path, served: int | None) -> OnDisk:
    complete = complete_versions(repository)[::-1]
    newer = [v for v in complete if served is None or v > served or served not in complete]
    steps = [repository / m / str(served) for m in STEP_MODELS.values()]
    return OnDisk(
        complete=complete,
        fingerprints={v: fingerprint(repository, v) for v in newer},
        steps_present=served is not None and all(step.is_dir() for step in steps),
    )


@dataclass(frozen=True)
class SyncPlan:
    """What one ``sync`` does, decided from data alone (``plan_sync``)."""

    serving: int | None  # served now and still published (None: nothing, or withdrawn)
    candidates: list[int]  # to try in order, newest first, until one loads
    keep: int | None  # stays loaded beside the one tried (requests in flight need it)
    withdrawn: int | None  # served but withdrawn, its steps still loadable
    removed: bool = False  # served but withdrawn and its steps' files gone


def plan_sync(state: VersionState, disk: OnDisk) -> SyncPlan:
    """Rolled back (withdrawn) or removed: switch to the newest left, keeping the old one loaded
    until the ensemble has switched when its steps' files are still there. Otherwise try every
    newer complete version, newest first, except those that failed and have not changed since
    (their fingerprint)."""
    served, withdrawn, removed = state.served, None, False
    if served is not None and served not in disk.complete:
        withdrawn = served if disk.steps_present else None
        removed = withdrawn is None
        served = None
    candidates = []
    for version in disk.complete:
        if served is not None and version <= served:
            break
        failure = state.failed.get(version)
        if failure is None or failure.fingerprint != disk.fingerprints.get(version):
            candidates.append(version)
    keep = served if withdrawn is None else withdrawn
    return SyncPlan(served, candidates, keep, withdrawn, removed)


def drain_due(state: VersionState, now: float) -> bool:
    """A withdrawn version's steps may be unloaded: the requests the old ensemble config took
    in have had ``DRAIN_SECONDS`` to finish."""
    return state.drain_until is not None and now >= state.drain_until


class VersionManager:
    def __init__(  # noqa: PLR0913 (the manager's settings, by keyword)
        self,
        repository: str | Path,
        triton_url: str,
        runtime: str = "python",
        log: Callable[[str], None] = print,
        timeout: float = 600.0,
        segmenter_instances: int = SEGMENTER_INSTANCES,
        threads: int | None = None,
        view: str | Path | None = None,
        replica: str | None = None,
        admin_key: str | None = None,
    ) -> None:
        self.repository = Path(repository)
        self.replica = replica or f"{socket.gethostname()}-{os.getpid()}"
        self.segmenter_instances = segmenter_instances
        self.threads = threads
        # Triton's own repository: our configs + links to the published version folders.
        # (this replica's own: never beside the shared repository)
        self._own_view = view is None
        self.view = Path(view) if view else Path(tempfile.mkdtemp(prefix="s4seg-triton-view-"))
        shutil.rmtree(self.view, ignore_errors=True)
        self.view.mkdir(parents=True)
        self.url = triton_url.rstrip("/")
        self.runtime = runtime
        self.log = log
        self.timeout = timeout
        self.state = VersionState()
        self._lock = threading.Lock()
        # the key Triton's model-repository API asks for (``TritonSettings.admin_key``)
        self._admin = {ADMIN_HEADER: admin_key} if admin_key else {}
        self.loading: int | None = None  # the version being switched to (status: "loading")
        self.loaded: list[int] = []  # step versions Triton holds (status: "loaded")
        self._stopping = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def start_heartbeat(self) -> None:
        """Rewrite the status file every ``HEARTBEAT_SECONDS`` from a thread of its own: a
        load that takes longer than ``STALE_SECONDS`` must not make this replica look gone to
        prune and rollback on other hosts (review M1a)."""

        def beat() -> None:
            while not self._stopping.wait(HEARTBEAT_SECONDS):
                with contextlib.suppress(OSError):
                    write_status(self.repository, self.replica, self._status())

        self._heartbeat = threading.Thread(target=beat, name="s4seg-heartbeat", daemon=True)
        self._heartbeat.start()

    # -- Triton's repository API ----------------------------------------------------------------
    def _place(self, model: str, config: dict, versions: list[int]) -> None:
        """Triton's view of one model: exactly ``versions`` (links into the published
        repository) and ``config``. What Triton reads from disk is what we load, so an ensemble
        load, which re-reads its steps from disk, never reloads them with another config."""
        folder = self.view / model
        folder.mkdir(exist_ok=True)
        for entry in folder.iterdir():
            if entry.name.isdigit() and int(entry.name) not in versions:
                entry.unlink()
        for version in versions:
            link = folder / str(version)
            if not link.is_symlink():
                target = (self.repository / model / str(version)).resolve()
                link.symlink_to(target, target_is_directory=True)
        write_atomic(folder / "config.pbtxt", to_pbtxt(config), skip_unchanged=True)

    def _load(self, model: str, config: dict, versions: list[int]) -> None:
        self._place(model, config, versions)
        response = httpx.post(
            f"{self.url}/v2/repository/models/{model}/load",
            json={},
            timeout=self.timeout,
            headers=self._admin,
        )
        if response.status_code != 200:
            try:
                reason = response.json().get("error", response.text)
            except ValueError:
                reason = response.text
            raise LoadError(f"{model}: {first_line(reason)}")

    def _ready(self, model: str, version: int) -> bool:
        try:
            url = f"{self.url}/v2/models/{model}/versions/{version}/ready"
            return httpx.get(url, timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    # -- deciding -------------------------------------------------------------------------------
    def reset(self) -> None:
        """Triton restarted: nothing is loaded any more."""
        with self._lock:
            self.state = VersionState(failed=self.state.failed)
            self.loaded = []

    def sync(self) -> int | None:
        """Serve the newest complete version that loads; returns the served version."""
        with self._lock:
            disk = read_disk(self.repository, self.state.served)
            plan = plan_sync(self.state, disk)
            if plan.withdrawn is not None or plan.removed:
                self.log(f"version {self.state.served} is withdrawn from {self.repository}")
            served = plan.serving
            for version in plan.candidates:
                try:
                    self._switch(version, keep=plan.keep)
                except LoadError as error:
                    self.state.failed[version] = Failure(str(error), disk.fingerprints[version])
                    self.log(f"version {version} does not load, still serving {served}: {error}")
                    continue
                self.state.failed.pop(version, None)
                was = served or plan.withdrawn
                self.log(f"serving version {version}" + (f" (was {was})" if was else ""))
                if plan.withdrawn is not None:  # the ensemble has moved: unload its steps later
                    self.state.drain_until = time.monotonic() + DRAIN_SECONDS
                served = version
                self.state.switched_at = time.time()
                break
            if served is None:
                served = plan.withdrawn  # nothing else loads: keep it while its files last
            if served is not None and drain_due(self.state, time.monotonic()):
                try:  # the requests in flight are done: only the served version stays loaded
                    self._load_steps([served])
                    self.state.drain_until = None
                except LoadError as error:  # still serving; tried again on the next sync
                    self.log(f"withdrawn steps stay loaded: {error}")
            self.state.served = served
            self._write_status()
            return served

    def _load_steps(self, loaded: list[int]) -> None:
        self.loaded = sorted(set(self.loaded) | set(loaded))  # until every step has them
        for step, model in STEP_MODELS.items():
            config = step_config(step, self.runtime, loaded, self.segmenter_instances, self.threads)
            self._load(model, config, loaded)
        self.loaded = sorted(loaded)

    def _switch(self, version: int, keep: int | None) -> None:
        self.state.drain_until = None  # this load names the versions that stay loaded
        self.loading = version  # said before the load: prune and rollback keep its files
        write_status(self.repository, self.replica, self._status())
        try:
            self._switch_to(version, keep)
        except LoadError:
            self._release(version, keep)
            raise
        finally:
            self.loading = None

    def _release(self, version: int, keep: int | None) -> None:
        """A version that failed its switch leaves Triton: its steps held memory, and kept
        rollback and prune waiting for a version nobody will ever serve."""
        try:
            if keep is not None:
                self._load_steps([keep])
                return
            for model in STEP_MODELS.values():
                httpx.post(
                    f"{self.url}/v2/repository/models/{model}/unload",
                    json={},
                    timeout=self.timeout,
                    headers=self._admin,
                )
            self.loaded = []
        except (LoadError, httpx.HTTPError) as error:
            self.log(f"version {version} failed and stays loaded until the next switch: {error}")

    def _verify(self, version: int) -> None:
        """Every network file of ``version`` is the one its manifest names (sha256), before
        Triton loads it: the repository is shared by every replica, so a file changed after
        publish (by mistake, or by someone with write access to one pod) is refused here
        instead of running in all of them (review M9)."""
        manifest = read_manifest(self.repository, version)
        precision = (manifest.published or {}).get("precision", "fp32")
        try:
            graphs = manifest.variant_graphs(precision)
        except ManifestError as error:
            raise LoadError(f"version {version}: {error}") from None
        for step, model in STEP_MODELS.items():
            path = self.repository / model / str(version) / "model.onnx"
            try:
                digest = sha256_file(path)
            except OSError as error:
                raise LoadError(f"{model} version {version}: {error}") from None
            if digest != graphs[step].sha256:
                raise LoadError(
                    f"{model} version {version}: model.onnx is not the file its manifest names "
                    "(changed since publish); not loaded"
                )

    def _switch_to(self, version: int, keep: int | None) -> None:
        self._verify(version)
        self._load_steps([version] if keep is None else [keep, version])
        for model in STEP_MODELS.values():
            if not self._ready(model, version):
                raise LoadError(f"{model} version {version} is not ready after loading")
        self._smoke_test(version)
        # Every step is ready: the ensemble switches in one reload, pinned to the new version.
        self._load(ENSEMBLE, ensemble_config(version), [version])
        if not self._ready(ENSEMBLE, version):
            raise LoadError(f"{ENSEMBLE} version {version} is not ready after loading")

    def _infer(self, model: str, version: int, inputs: dict[str, np.ndarray]) -> dict:
        import tritonclient.http as http
        from tritonclient.utils import InferenceServerException, np_to_triton_dtype

        client = http.InferenceServerClient(self.url.removeprefix("http://"))
        try:
            tensors = [
                infer_input(http, name, value.shape, np_to_triton_dtype(value.dtype), value)
                for name, value in inputs.items()
            ]
            result = client.infer(model, tensors, model_version=str(version))
            return {o["name"]: result.as_numpy(o["name"]) for o in result.get_response()["outputs"]}
        except InferenceServerException as error:
            raise LoadError(f"{model} version {version} fails on a test image: {error}") from None
        finally:
            client.close()

    def _smoke_test(self, version: int) -> None:
        """One image through the new version's steps, outputs checked against its manifest: a
        version that loads but computes the wrong shapes (another class count, a mismatched
        step) is refused before the ensemble switches to it."""
        try:
            manifest = read_manifest(self.repository, version)
        except ManifestError as error:
            raise LoadError(str(error)) from None
        height, width = manifest.input_size
        classes = manifest.num_classes
        image = np.empty((1, height, width, 3), dtype=np.uint8)
        image[...] = np.asarray(manifest.pad_value, dtype=np.uint8)
        side = manifest.classifier_view_size
        view = np.full((1, side, side, 3), 128, dtype=np.uint8)
        seg = self._infer(STEP_MODELS["segmenter"], version, {t.IMAGE.name: image})
        cls = self._infer(STEP_MODELS["classifier"], version, {t.CLS_IMAGE.name: view})
        logits, probs = t.LOGITS.name, t.CLASS_PROBS.name
        expected = {logits: (1, classes, height, width), probs: (1, classes)}
        for name, value in {**seg, **cls}.items():
            if name in expected and value.shape != expected[name]:
                raise LoadError(
                    f"version {version}: {name} has shape {value.shape}, but its manifest has "
                    f"{classes} classes at {height}x{width} (expected {expected[name]})"
                )
        tau = np.full((1, 1), manifest.tau, dtype=t.TAU.dtype)
        gate = self._infer(
            STEP_MODELS["gate"],
            version,
            {logits: seg[logits], probs: cls[probs], t.TAU.name: tau},
        )
        labels, suppressed = gate[t.LABELS.name], gate[t.SUPPRESSED.name]
        scores = gate.get(t.SCORES.name)
        if (
            labels.shape != (1, height, width)
            or suppressed.shape != (1, classes)
            or scores is None
            or scores.shape != (1, classes, height, width)
        ):
            raise LoadError(f"version {version}: the gate's outputs do not fit its manifest")

    def _status(self) -> dict:
        return {
            "served_version": self.state.served,
            "loading": self.loading,
            "loaded": list(self.loaded),
            "failed": {str(v): reason for v, reason in self.problems().items()},
            "switched_at": self.state.switched_at,
        }

    def _write_status(self) -> None:
        """This replica's file: rewritten when what it says changes, and at least every
        ``HEARTBEAT_SECONDS`` (its age is how other hosts know the replica still runs; the
        heartbeat thread keeps it fresh during long loads)."""
        status = self._status()
        previous = read_status(self.repository, self.replica)
        fresh = time.time() - previous.get("time", 0) < HEARTBEAT_SECONDS
        if not fresh or {k: previous.get(k) for k in status} != status:
            write_status(self.repository, self.replica, status)

    def close(self) -> None:
        """The server stops: withdraw this replica's status (rollback does not wait for it)."""
        self._stopping.set()
        if self._heartbeat is not None:
            self._heartbeat.join(5)
        with self._lock:
            remove_status(self.repository, self.replica)
            if self._own_view:
                shutil.rmtree(self.view, ignore_errors=True)

    def problems(self) -> dict[int, str]:
        """Versions newer than the served one that do not load, with Triton's reason."""
        served = self.state.served or 0
        return {v: f.reason for v, f in sorted(self.state.failed.items()) if v > served}
