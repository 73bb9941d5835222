"""A real tritonserver (from the pinned nvidia-pytriton wheel) on a repository made by the real
``s4seg publish``: the ensemble's answers, tau per request, a hot version switch under load, and
a broken version that must not take the served one down."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers import framed_batch

from s4seg.clients.triton_pipeline import TritonPipeline
from s4seg.export.repository import publish
from s4seg.export.requests import ExportRequest, PublishRequest
from s4seg.layouts import open_layout
from s4seg.manifest import Manifest, sha256_file
from s4seg.onnx_pipeline import UNGATED_TAU, OnnxPipeline
from s4seg.repository import (
    ENSEMBLE,
    STEP_MODELS,
    complete_versions,
    read_status,
    served_version,
)
from s4seg.serving.triton import ADMIN_HEADER, TritonProcess, TritonSettings, free_port
from s4seg.serving.versions import VersionManager
from s4seg.triton_config import ensemble_pbtxt

QUIET = {"log": lambda *_: None}


class Server:
    """tritonserver + the version manager that ``s4seg serve`` runs beside it."""

    def __init__(self, process: TritonProcess, repo: Path) -> None:
        self.process, self.repo = process, repo
        self.url = process.settings.http_url
        self.versions = VersionManager(
            repo,
            self.url,
            log=lambda *_: None,
            view=process.settings.repository,
            admin_key=process.settings.admin_key,
        )
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            self.versions.sync()

    def pipeline(self) -> TritonPipeline:
        return TritonPipeline(self.url, Manifest.load(self.repo / ENSEMBLE / "1"))

    def index(self) -> list[dict]:
        key = {ADMIN_HEADER: self.process.settings.admin_key}
        return httpx.post(f"{self.url}/v2/repository/index", timeout=5, headers=key).json()

    def log_tail(self) -> str:
        return "\n".join(self.process.settings.log_file.read_text().splitlines()[-30:])


@pytest.fixture(scope="module")
def server(tiny_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("triton")
    repo = root / "repo"
    publish(PublishRequest(tiny_export, repo), **QUIET)
    settings = TritonSettings(
        root / "view",
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        poll_seconds=1,
        log_file=root / "triton.log",
    )
    process = TritonProcess(settings)
    try:
        server = Server(process, repo)  # makes the view Triton serves
        process.start()
        process.wait_live(120)
        assert server.versions.sync() == 1
        server._watcher.start()
        yield server
    finally:
        if "server" in locals():
            server._stop.set()
        process.stop()
    assert not process.running


def synth_images(root: Path, count: int = 4) -> list[np.ndarray]:
    layout = open_layout(root)
    return [np.asarray(layout.read_image(s)) for s in layout.samples("val")[:count]]


def test_the_model_repository_api_needs_the_admin_key(server: Server) -> None:
    """Issue 32, item 11 (review M9): any local process could load a python model of its own
    through Triton's load API; it now answers only the version manager, which has the key."""
    url = f"{server.url}/v2/repository/models/s4seg/load"
    refused = httpx.post(url, json={}, timeout=10)
    assert refused.status_code in (401, 403), refused.text
    assert httpx.post(f"{server.url}/v2/repository/index", timeout=5).status_code in (401, 403)
    assert isinstance(server.index(), list)  # with the key


def test_ports_are_on_loopback_only(server: Server) -> None:
    command = " ".join(server.process.process.args)
    for kind in ("http", "grpc", "metrics"):
        assert f"--{kind}-address=127.0.0.1" in command


def test_ensemble_equals_onnx_runtime_and_pytorch(
    server: Server, tiny_export: Path, varied_checkpoint: Path, tiny_classifier: Path, synth_root
) -> None:
    from s4seg.export.exporter import build_graphs
    from s4seg.export.parity import torch_pipeline
    from s4seg.training.checkpoint import Checkpoint

    images = np.stack(synth_images(synth_root))
    local_pipeline = OnnxPipeline.from_export(tiny_export, device="cpu")
    views = framed_batch(local_pipeline, images)[1]
    remote = server.pipeline().run(images, views)
    local = local_pipeline.run(images, views)
    np.testing.assert_array_equal(remote.labels, local.labels)
    np.testing.assert_allclose(remote.class_probs, local.class_probs, atol=1e-6)
    graphs, _, _ = build_graphs(
        Checkpoint.load(varied_checkpoint), Checkpoint.load(tiny_classifier)
    )
    reference = torch_pipeline(graphs, images, views, 0.2)
    assert (remote.labels == reference["labels"]).mean() >= 0.999
    assert len(np.unique(remote.labels)) > 2  # a real map, not one class everywhere


def test_tau_per_request_changes_the_result_as_the_gate_says(server: Server, synth_root) -> None:
    pipeline = server.pipeline()
    images, views = framed_batch(pipeline, synth_images(synth_root))
    ungated = pipeline.run(images, views, UNGATED_TAU)
    strict = pipeline.run(images, views, 0.99)
    probs = strict.class_probs
    expected = probs <= 0.99
    expected[:, 0] = False  # background is never suppressed
    np.testing.assert_array_equal(strict.suppressed, expected)
    assert not ungated.suppressed.any()
    for labels, suppressed in zip(strict.labels, strict.suppressed, strict=True):
        assert not np.isin(labels, np.flatnonzero(suppressed)).any()
    assert (strict.labels != ungated.labels).any()
    # Classes that survive keep exactly their ungated pixels.
    kept = ~np.isin(ungated.labels, np.flatnonzero(strict.suppressed[0]))
    np.testing.assert_array_equal(strict.labels[0][kept[0]], ungated.labels[0][kept[0]])


def test_evaluate_through_triton_matches_onnx(
    server: Server, tiny_export: Path, synth_root: Path, tmp_path: Path
) -> None:
    reports = {}
    for name, args in (
        ("triton", ["--triton", server.url, "--repository", str(server.repo)]),
        ("onnx", ["--onnx", str(tiny_export)]),
    ):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "s4seg",
                "evaluate",
                *args,
                "--data",
                str(synth_root),
                "--out",
                str(tmp_path / name),
            ],
            check=True,
            capture_output=True,
        )
        reports[name] = json.loads((tmp_path / name / "report.json").read_text())
    assert reports["triton"]["confusion_matrix"] == reports["onnx"]["confusion_matrix"]


def test_second_publish_is_served_without_restart_or_failed_requests(
    server: Server, tiny_export: Path, synth_root: Path
) -> None:
    batch = framed_batch(server.pipeline(), synth_images(synth_root, 1))
    pid = server.process.process.pid
    seen: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        pipeline = server.pipeline()
        while not stop.is_set():
            try:
                pipeline.run(*batch)
                seen.append(pipeline.last_version or "?")
            except Exception as error:
                failures.append(str(error))
        pipeline.close()

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        time.sleep(1)
        assert publish(PublishRequest(tiny_export, server.repo), **QUIET) == 2
        deadline = time.monotonic() + 120
        while "2" not in seen[-3:] and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)
    finally:
        stop.set()
        worker.join()
    assert failures == [], server.log_tail()
    assert seen[0] == "1" and seen[-1] == "2", server.log_tail()
    # Once switched, never back: the ensemble pins every step, versions do not mix.
    assert "1" not in seen[seen.index("2") :]
    assert server.process.process.pid == pid and server.process.running


def test_broken_version_does_not_take_the_served_one_down(server: Server, synth_root) -> None:
    """Version 3 published by hand with a truncated segmenter: refused before Triton sees it
    (its file is not the one its manifest names, issue 32 item 11); with a manifest that names
    the truncated file, Triton fails to load it. Version 2 keeps answering throughout."""
    repo = server.repo
    for model in [*STEP_MODELS.values(), ENSEMBLE]:
        shutil.copytree(repo / model / "2", repo / model / ".3.tmp")
    onnx = repo / "s4seg_segmenter" / ".3.tmp" / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[:2000])
    for model in [*STEP_MODELS.values(), ENSEMBLE]:
        (repo / model / ".3.tmp").rename(repo / model / "3")
    (repo / ENSEMBLE / "config.pbtxt").write_text(ensemble_pbtxt(3))

    deadline = time.monotonic() + 120
    while 3 not in server.versions.problems() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "changed since publish" in server.versions.problems().get(3, ""), server.log_tail()
    assert "version 3" not in server.process.settings.log_file.read_text()  # never loaded
    # The manifest names the truncated file now (a broken export): Triton's own refusal.
    manifest_path = repo / ENSEMBLE / "3" / "manifest.json"
    named = json.loads(manifest_path.read_text())
    named["graphs"]["segmenter"]["sha256"] = sha256_file(
        repo / "s4seg_segmenter" / "3" / "model.onnx"
    )
    manifest_path.write_text(json.dumps(named))
    deadline = time.monotonic() + 120
    while "changed since" in server.versions.problems().get(3, "changed since"):
        assert time.monotonic() < deadline, server.versions.problems()
        time.sleep(0.5)
    assert "s4seg_segmenter" in server.versions.problems().get(3, ""), server.log_tail()
    assert server.versions.state.served == 2
    status = read_status(repo, server.versions.replica)  # what /readyz shows, beside the repo
    assert not any(p.name.endswith(".json") for p in repo.iterdir())
    assert status["served_version"] == 2 and "s4seg_segmenter" in status["failed"]["3"]
    # `predict --via local` and the gateway answer with the same model: the one served.
    assert served_version(repo) == 2 and max(complete_versions(repo)) == 3
    time.sleep(2)  # more syncs: the failed version is not retried until its files change
    pipeline = server.pipeline()
    batch = framed_batch(pipeline, synth_images(synth_root, 1))
    for _ in range(5):
        pipeline.run(*batch)
        assert pipeline.last_version == "2"
    log = server.process.settings.log_file.read_text()
    assert log.count("failed to load 's4seg_segmenter' version 3") == 1


def test_version_with_wrong_shapes_is_refused_before_the_switch(
    server: Server, synth_root, tmp_path: Path
) -> None:
    """Version 4 loads fine but its segmenter has 5 classes where the manifest says 7: the
    smoke test through its steps refuses it, version 2 keeps answering."""
    import torch

    from s4seg.export.graphs import Segmenter
    from s4seg.export.onnx_export import export_onnx
    from s4seg.training.models import DeepLabV2

    repo = server.repo

    class FromImage(torch.nn.Module):  # the served segmenter's input: the uint8 image
        def __init__(self) -> None:
            super().__init__()
            self.segmenter = Segmenter(DeepLabV2(5, 18, [6, 12, 18, 24]))

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return self.segmenter(image.permute(0, 3, 1, 2).float() / 255)

    wrong = tmp_path / "wrong.onnx"
    export_onnx(
        FromImage(),
        {"image": torch.zeros(2, 64, 64, 3, dtype=torch.uint8)},
        ["logits"],
        wrong,
        {"image": {0: "batch", 1: "height", 2: "width"}},
    )
    for model in [*STEP_MODELS.values(), ENSEMBLE]:
        shutil.copytree(repo / model / "2", repo / model / ".4.tmp")
    shutil.copyfile(wrong, repo / "s4seg_segmenter" / ".4.tmp" / "model.onnx")
    manifest_path = repo / ENSEMBLE / ".4.tmp" / "manifest.json"
    named = json.loads(manifest_path.read_text())  # the manifest names the wrong file
    named["graphs"]["segmenter"]["sha256"] = sha256_file(wrong)
    manifest_path.write_text(json.dumps(named))
    for model in [*STEP_MODELS.values(), ENSEMBLE]:
        (repo / model / ".4.tmp").rename(repo / model / "4")
    deadline = time.monotonic() + 120
    while 4 not in server.versions.problems() and time.monotonic() < deadline:
        time.sleep(0.5)
    reason = server.versions.problems().get(4, "")
    assert "logits has shape (1, 5, 64, 64)" in reason and "7 classes" in reason, reason
    # Its steps loaded before the smoke test refused them; they leave Triton with the refusal.
    assert server.versions.loaded == [2]
    pipeline = server.pipeline()
    pipeline.run(*framed_batch(pipeline, synth_images(synth_root, 1)))
    assert pipeline.last_version == "2"


def test_rollback_serves_the_previous_version_again(server: Server, synth_root) -> None:
    from s4seg.export.repository import rollback

    # Versions 4 and 3 are the broken ones; then back from 2 to 1.
    # Versions that failed are not loaded (test above): withdrawing them waits for nobody.
    started = time.monotonic()
    assert [rollback(server.repo, **QUIET) for _ in range(2)] == [3, 2]
    assert time.monotonic() - started < 10
    assert rollback(server.repo, **QUIET) == 1
    deadline = time.monotonic() + 120
    while server.versions.state.served != 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    pipeline = server.pipeline()
    pipeline.run(*framed_batch(pipeline, synth_images(synth_root, 1)))
    assert pipeline.last_version == "1"


def test_a_version_in_openvino_at_bf16_answers_like_the_in_process_one(
    server: Server, varied_checkpoint: Path, tiny_classifier: Path, synth_root, tmp_path: Path
) -> None:
    """Issue 25: publish --precision bf16 writes the networks' engine beside their graphs; the
    runner in Triton opens them in OpenVINO at bf16 and answers as the in-process pipeline
    does with the same engine."""
    from s4seg.engines import bf16_capable
    from s4seg.export.exporter import export_models
    from s4seg.export.repository import publish

    if not bf16_capable():
        pytest.skip("this CPU has no BF16 instructions")
    out = tmp_path / "bf16"
    export_models(
        ExportRequest(
            str(varied_checkpoint),
            str(tiny_classifier),
            str(out),
            input_size=(64, 64),
            data=str(synth_root),
            parity_images=2,
            tau=0.2,
            variants=frozenset({"bf16"}),
        ),
        log=lambda *_: None,
    )
    if not Manifest.load(out).variants["bf16"].graphs:
        pytest.skip("the bf16 variant was refused on this export (its parity is in the manifest)")
    version = publish(PublishRequest(out, server.repo, precision="bf16"), **QUIET)
    deadline = time.monotonic() + 120
    while server.versions.state.served != version and time.monotonic() < deadline:
        time.sleep(0.5)
    assert server.versions.state.served == version, server.log_tail()
    images = np.stack(synth_images(synth_root))
    local = OnnxPipeline.from_export(out, device="cpu", precision="bf16", runtime="openvino")
    views = framed_batch(local, images)[1]
    pipeline = server.pipeline()
    remote = pipeline.run(images, views)
    assert pipeline.last_version == str(version)
    assert (remote.labels == local.run(images, views).labels).mean() >= 0.999
    log = server.process.settings.log_file.read_text()
    assert f"s4seg_segmenter/{version}: " in log and "on OpenVINO CPU" in log


def test_triton_dies_with_serve_and_a_held_port_is_named() -> None:
    """Issue 32, item 10 (review M6): ``kill -9`` of ``s4seg serve`` left tritonserver running,
    and the next start drove the orphan. The process Triton is started as dies with its parent
    (SIGKILL on the parent's death), and a port still taken stops the start by name."""
    import signal
    import socket

    from s4seg.serving.triton import TritonError, check_ports_free

    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import subprocess, sys, time\n"
                "from s4seg.serving import triton\n"
                "child = subprocess.Popen(['sleep', '300'], start_new_session=True,\n"
                "                         preexec_fn=triton._own_session_dying_with_parent)\n"
                "print(child.pid, flush=True)\n"
                "time.sleep(300)\n"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    child = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait()

    def alive() -> bool:  # a zombie (killed, not yet reaped by init) counts as gone
        try:
            return Path(f"/proc/{child}/stat").read_text().split()[2] != "Z"
        except OSError:
            return False

    deadline = time.monotonic() + 10
    while alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(), "the child outlived its killed parent"
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(TritonError, match=f"port {port} \\(grpc\\) on 127.0.0.1 is taken"):
            check_ports_free("127.0.0.1", {"http": free_port(), "grpc": port})
    check_ports_free("127.0.0.1", {"http": port})  # free again once its listener is gone
