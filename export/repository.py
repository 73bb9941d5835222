"""Publishing, the promotion gate and rollback: writing versions into the Triton model
repository (its layout and reading it: ``s4seg.repository``).

A version folder is staged under a name Triton ignores (``.N.tmp``) and renamed into place when
complete. Steps keep their two newest versions loaded; the ensemble's config, replaced in one
``os.replace`` after every step is in place, pins all steps to the new version, so Triton
switches the whole pipeline at once and never mixes versions. No torch here.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from s4seg.atomic import write_atomic, write_json_atomic
from s4seg.defaults import REPOSITORY
from s4seg.engines import check_engine, open_onnxruntime
from s4seg.errors import S4segError
from s4seg.manifest import MANIFEST_NAME, STEPS, Manifest, ManifestError, sha256_file
from s4seg.onnx_pipeline import MODEL_STEPS, OnnxPipeline, gpu_present, graph_files
from s4seg.pipeline_evaluation import evaluate_pipeline
from s4seg.repository import (
    ENGINE_FILE,
    ENSEMBLE,
    STEP_MODELS,
    complete_versions,
    in_use,
    model_versions,
    read_manifest,
    served_version,
    version_pipeline,
)
from s4seg.triton_config import RUNTIMES, ensemble_pbtxt, step_pbtxt

from .requests import PromotionGate, PublishRequest

RUNNER = Path(__file__).with_name("triton") / "onnx_runner.py"
Log = Callable[[str], None]
MIN_KEEP = 2  # the served version and the one before: what Triton keeps loaded


class PublishError(S4segError):
    """A version can not be published (or rolled back) safely."""


@contextlib.contextmanager
def locked(repository: Path) -> Iterator[None]:
    """One publish or rollback at a time per repository."""
    repository.mkdir(parents=True, exist_ok=True)
    with open(repository / ".publish.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _place_version(model_dir: Path, version: int, files: dict[str, Path]) -> None:
    """Copy ``files`` (name in the version folder -> source) into ``model_dir/version``."""
    stage = model_dir / f".{version}.tmp"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    for name, source in files.items():
        shutil.copyfile(source, stage / name)
    _fsync_tree(stage)
    stage.rename(model_dir / str(version))


def check_export(folder: Path, precision: str = "fp32") -> Manifest:
    """The export is complete and unchanged since export: every file exists, hashes match, and
    each graph loads in ONNX Runtime."""
    manifest = Manifest.load(folder)
    try:
        graphs = manifest.variant_graphs(precision)  # refuses a variant the export lacks
    except ManifestError as error:
        raise PublishError(f"{folder}: {error}") from None
    for step in STEPS:
        graph = graphs[step]
        path = folder / graph.file
        if not path.is_file():
            raise PublishError(f"{folder} lacks {graph.file} (the {step} graph)")
        if sha256_file(path) != graph.sha256:
            raise PublishError(
                f"{path} does not match the sha256 in its manifest (changed or corrupt)"
            )
        open_onnxruntime(path, ["CPUExecutionProvider"])
    if manifest.parity is None or not manifest.parity.passed:
        raise PublishError(f"{folder}: the export's parity check did not pass")
    return manifest


def compare_classes(new: Manifest, served: Manifest) -> str | None:
    if new.classes != served.classes:
        return f"classes {new.classes[:4]}... differ from the served {served.classes[:4]}..."
    if new.background_index != served.background_index:
        return (
            f"background index {new.background_index} differs from the served "
            f"{served.background_index}"
        )
    return None


def publish(request: PublishRequest, log: Log = print) -> int:
    """Publish ``request.export_dir`` as the next version; returns the version number."""
    folder, repo = Path(request.export_dir), Path(request.repository)
    runtime, precision, keep = request.runtime, request.precision, request.keep
    if runtime not in RUNTIMES:
        raise PublishError(f"--runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
    if keep is not None and keep < MIN_KEEP:
        raise PublishError(
            f"--keep must be at least {MIN_KEEP} (the served version and the previous)"
        )
    engine = served_engine(folder, runtime, precision, log)
    precision = engine["precision"]
    manifest = check_export(folder, precision)
    files = graph_files(manifest, folder, precision)
    with locked(repo):
        remove_withdrawn(repo, log)
        served = served_version(repo)
        if served is not None:
            old = read_manifest(repo, served)
            problem = compare_classes(manifest, old)
            if problem and not request.force:
                raise PublishError(
                    f"{problem}; clients expect the served classes (--force to replace)"
                )
            if request.gate is not None:
                pipeline = OnnxPipeline(
                    manifest, files, runtime=engine["runtime"], precision=precision
                )
                promotion_gate(pipeline, repo, served, request.gate, log)
        version = next_version(repo)
        for step, model in STEP_MODELS.items():
            model_dir = repo / model
            model_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(model_dir / "config.pbtxt", step_pbtxt(step, runtime), skip_unchanged=True)
            version_files = {"model.onnx": files[step]}
            if runtime == "python":
                version_files["model.py"] = RUNNER
            staged = None
            if runtime == "python" and step in MODEL_STEPS and engine["runtime"] != "onnxruntime":
                # how the runner runs this network (s4seg.engines); absent: ONNX Runtime. The
                # native backends need none: the step config names the backend.
                staged = model_dir / f".{version}.{ENGINE_FILE}"
                write_json_atomic(staged, {k: engine[k] for k in ("runtime", "precision")})
                version_files[ENGINE_FILE] = staged
            _place_version(model_dir, version, version_files)
            if staged is not None:
                staged.unlink()
        ensemble_dir = repo / ENSEMBLE
        ensemble_dir.mkdir(parents=True, exist_ok=True)
        stage = ensemble_dir / f".{version}.manifest"
        manifest.published = {
            "version": version,
            "runtime": runtime,
            "precision": precision,
            "engine": engine,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "source": str(folder.resolve()),
        }
        manifest.save(stage)
        _place_version(ensemble_dir, version, {MANIFEST_NAME: stage})
        stage.unlink()
        # The switch: one atomic replacement of the ensemble config.
        write_atomic(ensemble_dir / "config.pbtxt", ensemble_pbtxt(version))
        write_atomic(repo / LAST_VERSION, f"{version}\n")
        if keep is not None:
            prune(repo, keep, log)
    log(
        f"published {folder} as version {version} of {repo} ({runtime} runtime; networks in "
        f"{engine['runtime']} at {precision})"
    )
    log(f"version {version} serves {manifest.describe_tau()}")
    return version


LAST_VERSION = ".last_version"
"""The highest version number ever published here (beside the models; Triton ignores it)."""


def next_version(repo: Path) -> int:
    """One past every number this repository has used: on disk (complete or not) and ever
    published (``LAST_VERSION``). Numbers only grow: after a rollback the next
    publish does not reuse the withdrawn version's number, so "2" never names two models
    (security review M3)."""
    found = [v for m in [*STEP_MODELS.values(), ENSEMBLE] for v in model_versions(repo / m)]
    with contextlib.suppress(OSError, ValueError):  # none yet (an older repository): the disk
        found.append(int((repo / LAST_VERSION).read_text().strip()))
    return max(found, default=0) + 1


def served_engine(folder: Path, runtime: str, precision: str, log: Log = print) -> dict[str, Any]:
    """How the networks will run: ``auto`` measures here (``engine_choice``), among the engines
    the step runtime can run (python: any; native backends: their own); otherwise ONNX Runtime
    (OpenVINO under ``--runtime openvino``), and bf16 in OpenVINO inside the python runner."""
    native = runtime if runtime != "python" else None
    if precision == "auto":
        if native == "onnxruntime" and gpu_present():
            log("precision auto: Triton's native ONNX Runtime backend runs fp32 on the GPU")
            return {"runtime": "onnxruntime", "precision": "fp32", "why": "native backend, GPU"}
        from .engine_choice import choose_engine

        _, record = choose_engine(folder, check_export(folder), log, runtime=native)
        log(f"precision auto: {record['runtime']} {record['precision']}: {record['why']}")
        return record
    if precision == "bf16":
        if native is not None:
            raise PublishError(
                "--precision bf16 runs in OpenVINO inside the python runner (--runtime python): "
                "Triton's native ONNX Runtime backend has no bf16, and its OpenVINO backend "
                "sets bf16 per model (every loaded version), not per version"
            )
        check_engine("openvino", "bf16")  # refused by name on a CPU without BF16
        return {"runtime": "openvino", "precision": "bf16", "why": "--precision bf16"}
    if native == "openvino" and precision not in ("fp32", "int8"):
        raise PublishError(f"--runtime openvino serves fp32 or int8, not {precision}")
    engine = "openvino" if native == "openvino" else "onnxruntime"
    return {"runtime": engine, "precision": precision, "why": f"--precision {precision}"}


def promotion_gate(
    new_pipeline: OnnxPipeline, repo: Path, served: int, gate: PromotionGate, log: Log
) -> None:
    """Refuse a version whose gated mIoU is more than ``gate.max_drop`` points below the served
    one. Both are measured as they are (to be) served: the very files published (the precision
    chosen), each image letterboxed into the served size and mapped back as the gateway does,
    on the reported part of the validation split."""
    data, max_drop = gate.data, gate.max_drop
    log(f"promotion gate: gated mIoU of the new export and of served version {served} on {data}")
    new, _ = evaluate_pipeline(
        new_pipeline, data, gate.kind, max_images=gate.images, served_path=True
    )
    old, _ = evaluate_pipeline(
        version_pipeline(repo, served), data, gate.kind, max_images=gate.images, served_path=True
    )
    new_miou, old_miou = 100 * new["miou"], 100 * old["miou"]
    log(f"promotion gate: new {new_miou:.2f} mIoU, served (v{served}) {old_miou:.2f} mIoU")
    log(f"promotion gate: new version serves {new_pipeline.manifest.describe_tau()}")
    if new_miou < old_miou - max_drop:
        raise PublishError(
            f"refused: gated mIoU {new_miou:.2f} is {old_miou - new_miou:.2f} points below the "
            f"served version {served} ({old_miou:.2f}); --max-drop is {max_drop:g}"
        )


def prune(repo: Path, keep: int, log: Log = print) -> list[int]:
    """Remove all but the ``keep`` newest complete versions, as whole versions (the ensemble's
    folder and every step's: pruned step by step, a crashed publish's extra step folders made
    an older version incomplete and rollback refused it, review M2), never one a replica
    serves (it can be older than those when newer versions failed to load). Incomplete
    versions no replica serves are what a crashed publish left: removed too."""
    served = {v for v in (served_version(repo), *in_use(repo)) if v is not None}
    kept = set(complete_versions(repo)[-keep:]) | served
    removed: set[int] = set()
    for model in [ENSEMBLE, *STEP_MODELS.values()]:  # the ensemble first: it uses the steps
        for version in model_versions(repo / model):
            if version not in kept:
                shutil.rmtree(repo / model / str(version))
                removed.add(version)
    if removed:
        log(
            f"pruned versions {sorted(removed)}"
            + (f" (kept served {sorted(served)})" if served else "")
        )
    return sorted(removed)


WITHDRAWN = ".{version}.withdrawn"  # an ensemble version folder out of service (Triton ignores it)


def rollback(repository: str | Path = REPOSITORY, log: Log = print, wait: float = 60.0) -> int:
    """Serve the previous version again and remove the newest; returns the version now served.

    Switch first, delete after: the newest version is withdrawn (its ensemble folder renamed,
    so it is no longer complete and a running server moves to the previous one), and its files
    are removed once no running server serves it (at most ``wait`` seconds; after that they
    stay, withdrawn, and the next rollback or publish removes them)."""
    repo = Path(repository)
    with locked(repo):
        remove_withdrawn(repo, log)
        found = model_versions(repo / ENSEMBLE)
        if len(found) < 2:
            raise PublishError(
                f"{repo} has {len(found)} published version(s): nothing to roll back to"
            )
        newest, previous = found[-1], found[-2]
        for model in STEP_MODELS.values():
            if not (repo / model / str(previous)).is_dir():
                raise PublishError(f"{repo / model} lacks version {previous}; can not roll back")
        write_atomic(repo / ENSEMBLE / "config.pbtxt", ensemble_pbtxt(previous))
        (repo / ENSEMBLE / str(newest)).rename(repo / ENSEMBLE / WITHDRAWN.format(version=newest))
    if _wait_until_not_served(repo, newest, wait):
        with locked(repo):
            remove_withdrawn(repo, log)
        log(f"rolled back {repo}: version {newest} removed, version {previous} served")
    else:
        log(
            f"rolled back {repo}: version {previous} is the newest; a running server still "
            f"serves {newest} after {wait:g} s, so its files stay until the next rollback or "
            "publish"
        )
    return previous


def _wait_until_not_served(repo: Path, version: int, wait: float) -> bool:
    """True once no running replica serves, loads or keeps ``version`` (at once when no server
    runs)."""
    deadline = time.monotonic() + wait
    while version in in_use(repo):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
    return True


def remove_withdrawn(repo: Path, log: Log = print) -> list[int]:
    """Delete the files of withdrawn versions that no running server serves, loads or keeps
    any more."""
    removed = []
    served = in_use(repo)
    for folder in sorted((repo / ENSEMBLE).glob(WITHDRAWN.format(version="*"))):
        version = int(folder.name.split(".")[1])
        if version in served:
            continue
        for model in STEP_MODELS.values():
            shutil.rmtree(repo / model / str(version), ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(version)
    if removed:
        log(f"removed withdrawn versions {removed}")
    return removed
