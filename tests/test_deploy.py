"""deploy/kubernetes, checked offline: every overlay renders with kustomize and every object
validates against the Kubernetes schemas of the version we target; the commands, probes,
environment and counts in the manifests are the ones the product accepts."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
KUSTOMIZE = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("cpu", "gpu", "ngc-cpu")
KUBERNETES_VERSION = "1.32.0"  # what we target: the kubectl on our machines' image is 1.32


def render(folder: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize FOLDER``: the objects a cluster would get."""
    if shutil.which("kubectl") is None:
        if os.environ.get("S4SEG_REQUIRE_KUBECTL"):
            pytest.fail("kubectl is not installed (CI must render the manifests)")
        pytest.skip("kubectl is not installed")
    done = subprocess.run(
        ["kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(KUSTOMIZE / "overlays" / request.param)


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def container(obj: dict[str, Any]) -> dict[str, Any]:
    (only,) = obj["spec"]["template"]["spec"]["containers"]
    return only


def env(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def s4seg_argv(command: list[str]) -> list[str]:
    """The s4seg arguments of a container command (``s4seg ...`` or ``torchrun ... -m s4seg``)."""
    if command[0] == "s4seg":
        return command[1:]
    assert command[0] == "torchrun", command
    return command[command.index("-m") + 2 :]


def test_every_object_validates_against_the_kubernetes_schemas(overlay) -> None:
    import kubernetes_validate

    _, objects = overlay
    kinds = {o["kind"] for o in objects}
    assert {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Job",
        "PersistentVolumeClaim",
    } <= kinds
    for obj in objects:
        # strict: a misspelt or misplaced field is an error, not silently ignored
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_a_misplaced_field_is_caught() -> None:
    """The validation above can fail: the same check on a broken Deployment."""
    import kubernetes_validate

    deployment = find(render(KUSTOMIZE / "overlays" / "cpu"), "Deployment", "s4seg-serving")
    container(deployment)["readinessProbe"]["httpGet"]["paht"] = "/readyz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_commands_parse_and_environment_names_settings(overlay) -> None:
    """Every container runs a command our CLI accepts; the serving container's S4SEG_* variables
    are settings of ``s4seg serve`` and its probes are the gateway's routes."""
    from s4seg.serving.gateway.app import create_app
    from s4seg.serving.settings import ServeSettings
    from s4seg.workflows.cli import build_parser

    _, objects = overlay
    parser = build_parser()
    for obj in objects:
        if obj["kind"] in ("Deployment", "Job"):
            args = parser.parse_args(s4seg_argv(container(obj)["command"]))
            assert callable(args.handler)
    serve = container(find(objects, "Deployment", "s4seg-serving"))
    fields = {f"S4SEG_{name.upper()}" for name in ServeSettings.model_fields}
    assert set(env(serve)) <= fields, set(env(serve)) - fields
    routes = set(create_app(ServeSettings()).openapi()["paths"])
    assert serve["readinessProbe"]["httpGet"]["path"] == "/readyz" in routes
    assert serve["livenessProbe"]["httpGet"]["path"] == "/healthz" in routes
    assert env(serve)["S4SEG_REPLICA"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_the_repository_and_its_status_are_on_the_shared_volume(overlay) -> None:
    """Replicas find each other's status beside the repository: both on the RWX volume."""
    from s4seg.repository import status_dir

    _, objects = overlay
    deployment = find(objects, "Deployment", "s4seg-serving")
    serve = container(deployment)
    mounts = {m["name"]: m["mountPath"] for m in serve["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    claim = volumes["models"]["persistentVolumeClaim"]["claimName"]
    assert find(objects, "PersistentVolumeClaim", claim)["spec"]["accessModes"] == ["ReadWriteMany"]
    repository = Path(env(serve)["S4SEG_REPOSITORY"])
    assert repository.is_relative_to(mounts["models"])
    assert status_dir(repository).is_relative_to(mounts["models"])


def test_shared_memory_is_sized_as_the_dockerfile_says(overlay) -> None:
    _, objects = overlay
    said = re.search(r"--shm-size=(\d+)g", (ROOT / "Dockerfile").read_text())
    assert said is not None
    deployment = find(objects, "Deployment", "s4seg-serving")
    mounts = {m["mountPath"]: m["name"] for m in container(deployment)["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    shm = volumes[mounts["/dev/shm"]]["emptyDir"]
    assert shm == {"medium": "Memory", "sizeLimit": f"{said.group(1)}Gi"}


def test_job_counts_match_what_the_commands_expect(overlay) -> None:
    """The predict Job's shard count is its completions; the study Job has one pod per cell of
    its preset; torchrun starts one process per GPU the pod gets."""
    from s4seg.workflows.cli import build_parser
    from s4seg.workflows.commands import study_request
    from s4seg.workflows.study import load_spec, resolve_spec

    name, objects = overlay
    predict = find(objects, "Job", "s4seg-predict")
    assert predict["spec"]["completionMode"] == "Indexed"
    assert env(container(predict))["S4SEG_SHARD_COUNT"] == str(predict["spec"]["completions"])
    assert "auto" in container(predict)["command"]

    study = find(objects, "Job", "s4seg-study-cell")
    args = build_parser().parse_args(s4seg_argv(container(study)["command"]))
    assert args.cell == "auto" and load_spec(args.preset)
    request = study_request(args)
    cells = resolve_spec(
        Path("/nonexistent"),
        request.preset,
        request.config,
        request.methods,
        request.labels,
        request.seeds,
        request.overrides,
    ).cells()
    assert study["spec"]["completionMode"] == "Indexed"
    assert study["spec"]["completions"] == len(cells)

    for job in ("s4seg-train", "s4seg-study-cell"):
        c = container(find(objects, "Job", job))
        (flag,) = [a for a in c["command"] if a.startswith("--nproc_per_node=")]
        nproc = int(flag.split("=")[1])
        gpus = int(c["resources"].get("limits", {}).get("nvidia.com/gpu", 0))
        assert nproc == (gpus if name == "gpu" else 1), (job, nproc, gpus)


def test_the_gpu_overlay_serves_with_the_native_backend_on_a_gpu() -> None:
    objects = render(KUSTOMIZE / "overlays" / "gpu")
    serve = container(find(objects, "Deployment", "s4seg-serving"))
    assert env(serve)["S4SEG_RUNTIME"] == "onnxruntime"
    assert serve["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert serve["image"].startswith("s4seg-gpu")
    cpu = container(find(render(KUSTOMIZE / "overlays" / "cpu"), "Deployment", "s4seg-serving"))
    assert "S4SEG_RUNTIME" not in env(cpu) and "nvidia.com/gpu" not in cpu["resources"]["limits"]


def test_the_ngc_cpu_overlay_serves_the_networks_on_tritons_openvino_backend() -> None:
    """The NGC image on CPU nodes: S4SEG_RUNTIME=openvino (a runtime publish and serve accept),
    the NGC image, no GPU."""
    from s4seg.triton_config import RUNTIMES

    objects = render(KUSTOMIZE / "overlays" / "ngc-cpu")
    serve = container(find(objects, "Deployment", "s4seg-serving"))
    assert env(serve)["S4SEG_RUNTIME"] == "openvino" and "openvino" in RUNTIMES
    assert serve["image"].startswith("s4seg-gpu")  # the Dockerfile's NGC image
    assert "nvidia.com/gpu" not in serve["resources"]["limits"]
