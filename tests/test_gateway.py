"""``s4seg serve`` as a user runs it: a real tritonserver, the version manager and the FastAPI
gateway in one process tree, talked to over HTTP. Only what needs the real model and Triton is
here; the gateway's HTTP contracts (errors, limits, headers, probes, metrics, docs, the API key)
run in-process in tests/test_gateway_contract.py."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from serve_helpers import Served, serving, start_serve

from s4seg.export.repository import publish
from s4seg.export.requests import PublishRequest

QUIET = {"log": lambda *_: None}


def pids_matching(pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


@pytest.fixture(scope="module")
def served(tiny_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("serve")
    repo = root / "repo"
    publish(PublishRequest(tiny_export, repo), **QUIET)
    with serving(repo, root) as server:
        yield server
    # Nothing left behind: no tritonserver, no python backend stub for this repository.
    time.sleep(1)
    assert pids_matching(str(root)) == [], "processes left after SIGTERM"
    assert server.process.returncode == 0
    # The gateway removed its shared memory regions, and Triton's python backend its own.
    assert not list(Path("/dev/shm").glob(f"s4seg_gateway_{server.process.pid}-*"))
    assert not list(Path("/dev/shm").glob(f"s4seg_triton_{server.process.pid}_*"))


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photo(synth_root: Path) -> Image.Image:
    return Image.open(next(iter(sorted((synth_root / "images" / "val").iterdir())))).convert("RGB")


def test_png_is_a_palette_label_map_at_the_input_size(served: Served, photo: Image.Image) -> None:
    big = photo.resize((150, 90))
    response = served.post(encode(big))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-model-version"] == "1"
    labels = Image.open(io.BytesIO(response.content))
    assert labels.mode == "P" and labels.size == (150, 90)
    assert np.asarray(labels).max() < 7


def test_json_describes_the_served_export(served: Served, photo: Image.Image) -> None:
    """The real export's classes and gate in the JSON answer (the answer's shape, multipart
    uploads, RLE masks and overlays: tests/test_gateway_contract.py)."""
    response = served.post(encode(photo, "JPEG"), "image/jpeg", format="json")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["width"], body["height"]) == photo.size
    assert body["model_version"] == "1" and body["gated"] and body["tau"] == 0.2
    assert sum(c["pixels"] for c in body["classes"]) == photo.size[0] * photo.size[1]
    assert set(body["class_probabilities"]) >= {"background", "disc"}


def test_photos_larger_than_the_served_size_get_edges_at_their_own_resolution(
    served: Served, photo: Image.Image, tiny_export: Path
) -> None:
    """Gated scores resized to the photo, then the argmax: what the in-process pipeline with
    the same map-back computes, and not the served-size labels blown up in blocks."""
    from s4seg.imaging import decode_image
    from s4seg.letterbox import Framing, classifier_view, labels_from_scores
    from s4seg.onnx_pipeline import OnnxPipeline
    from s4seg.workflows.bench.mapback import nearest_map_back

    data = encode(photo.resize((1200, 900), Image.Resampling.BICUBIC), "JPEG", quality=92)
    response = served.post(data, "image/jpeg")
    assert response.status_code == 200, response.text
    served_labels = np.asarray(Image.open(io.BytesIO(response.content)))
    assert served_labels.shape == (900, 1200)

    pipeline = OnnxPipeline.from_export(tiny_export, device="cpu")
    framing = Framing.of(pipeline.manifest)
    decoded = decode_image(data, fit=framing.fit)
    assert decoded.reduced  # the gateway decodes this JPEG at a reduced scale too
    framed = framing.frame(decoded.pixels, decoded.size)
    out = pipeline.run(framed.canvas[None], framed.view[None])
    expected = labels_from_scores(out.scores[0], framed.placement)
    assert (served_labels == expected).mean() > 0.999
    blocks = nearest_map_back(out.labels[0], framed.placement)
    assert 0.9 < (served_labels == blocks).mean() < 1.0  # the same shapes, other edges
    # The classifier saw the whole 4:3 photo (its own view), not the square letterbox.
    body = served.post(data, "image/jpeg", format="json").json()
    probs = np.array([body["class_probabilities"][n] for n in pipeline.manifest.classes])
    np.testing.assert_allclose(probs, out.class_probs[0], atol=1e-5)
    boxed = classifier_view(framed.canvas, framing.classifier_size)
    on_canvas = pipeline.run(framed.canvas[None], boxed[None]).class_probs[0]
    assert np.abs(on_canvas - out.class_probs[0]).max() > 1e-3  # the view matters here


@pytest.mark.parametrize("hop", ["http", "triton_url"])
def test_a_second_gateway_on_the_same_triton_answers_as_over_grpc(
    served: Served, photo: Image.Image, tmp_path: Path, hop: str
) -> None:
    """A second gateway on the served Triton, with no version manager of its own, gives the same
    labels and version as the first (gRPC, the default) through the other hop:
    ``http``: S4SEG_TRITON_PROTOCOL=http with shared memory; ``triton_url``: ``--triton-url``
    alone, which means HTTP without shared memory."""
    env = {"S4SEG_TRITON_URL": f"127.0.0.1:{served.triton_port}"}
    if hop == "http":
        env |= {
            "S4SEG_TRITON_GRPC_URL": f"127.0.0.1:{served.env['S4SEG_TRITON_GRPC_PORT']}",
            "S4SEG_TRITON_PROTOCOL": "http",
            "S4SEG_TRITON_SHARED_MEMORY": "true",
        }
    data = encode(photo.resize((300, 200)))
    over_grpc = served.post(data, format="json").json()
    process, url = start_serve(served.repo, tmp_path / "second.log", env)
    try:
        response = httpx.post(
            f"{url}/v1/segment",
            content=data,
            headers={"Content-Type": "image/png"},
            params={"format": "json"},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        assert response.json() == over_grpc
        assert response.headers["x-model-version"] == "1"
        own = f"s4seg_gateway_{process.pid}-"
        registered = [n for n in shared_memory_regions(served) if n.startswith(own)]
        assert bool(registered) == (hop == "http"), registered
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    assert process.returncode == 0
    assert not [n for n in shared_memory_regions(served) if n.startswith(own)]
    assert not list(Path("/dev/shm").glob(f"{own}*"))


def test_the_hop_alone_by_http_grpc_and_shared_memory_gives_the_same_scores(
    served: Served, tiny_export: Path
) -> None:
    """The callers `bench serve` times for the hop: each gets the in-process pipeline's scores
    (the shared-memory regions are registered, used, then unregistered and removed)."""
    from s4seg.letterbox import Framing
    from s4seg.onnx_pipeline import OnnxPipeline
    from s4seg.workflows.bench.serve_callers import hop_callers

    pipeline = OnnxPipeline.from_export(tiny_export, device="cpu")
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    framed = Framing.of(pipeline.manifest).frame(image)
    expected = pipeline.run(framed.canvas[None], framed.view[None], 0.2).scores
    http = f"127.0.0.1:{served.env['S4SEG_TRITON_HTTP_PORT']}"
    grpc = f"127.0.0.1:{served.env['S4SEG_TRITON_GRPC_PORT']}"
    callers, cleanup = hop_callers(http, grpc, framed, 0.2)
    try:
        for name, call in callers.items():
            np.testing.assert_allclose(call(b""), expected, atol=1e-4, err_msg=name)
    finally:
        cleanup()
    regions = httpx.get(f"http://{http}/v2/systemsharedmemory/status", timeout=5).json()
    assert not [r for r in regions if r["name"].startswith("s4seg_bench_")]
    assert not list(Path("/dev/shm").glob("s4seg_bench_*"))


def test_tau_and_gate_change_the_answer(served: Served, photo: Image.Image) -> None:
    data = encode(photo)
    strict = served.post(data, format="json", tau=1.0).json()
    off = served.post(data, format="json", gate="false").json()
    assert not off["gated"] and off["suppressed"] == []
    assert "background" not in strict["suppressed"] and len(strict["suppressed"]) == 6
    assert {c["name"] for c in strict["classes"]} == {"background"}
    assert len(off["classes"]) > 1


def test_models_and_readiness_name_the_served_export(served: Served) -> None:
    """What Triton serves and the real export's manifest (the routes' contracts, /metrics,
    /docs and the API key: tests/test_gateway_contract.py)."""
    models = httpx.get(f"{served.url}/v1/models").json()
    assert models["served_version"] == 1 and models["published_versions"] == [1]
    assert models["manifest"]["classes"][0] == "background"
    assert models["gate"] == {
        "on": True,
        "tau": 0.2,
        "why": "tau 0.2 [explicit] --tau 0.2 given at export",
    }
    assert models["manifest"]["tau_choice"]["method"] == "explicit"
    ready = httpx.get(f"{served.url}/readyz").json()
    assert ready["ready"] and ready["served_version"] == 1


def test_python_clients_sync_and_async(served: Served, photo: Image.Image) -> None:
    import asyncio

    from s4seg.clients import AsyncSegmentationClient, ClientError, SegmentationClient

    with SegmentationClient(served.url) as client:
        result = client.segment(np.asarray(photo))
        assert result.version == "1" and result.labels().shape == photo.size[::-1]
        assert client.models()["served_version"] == 1
        with pytest.raises(ClientError) as refused:
            client.segment(b"not an image")
        assert refused.value.status == 415 and refused.value.code == "not_an_image"

    async def concurrent() -> list:
        async with AsyncSegmentationClient(served.url) as client:
            return await asyncio.gather(*(client.segment(photo, "json") for _ in range(4)))

    results = asyncio.run(concurrent())
    assert len({json.dumps(r.json["classes"]) for r in results}) == 1


def test_segment_cli_and_predict_through_every_path(
    served: Served, synth_root: Path, tiny_export: Path, tmp_path: Path
) -> None:
    images = sorted((synth_root / "images" / "val").iterdir())
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "s4seg",
            "segment",
            *map(str, images[:2]),
            "--url",
            served.url,
            "--format",
            "json",
            "--out",
            str(tmp_path / "seg"),
        ],
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 0, cli.stderr
    assert "(model version 1)" in cli.stdout and "background" in cli.stdout
    assert json.loads((tmp_path / "seg" / f"{images[0].stem}.json").read_text())["classes"]
    outputs = {}
    for via, extra in (
        ("gateway", ["--url", served.url]),
        (
            "triton",
            ["--triton-url", f"127.0.0.1:{served.triton_port}", "--repository", str(served.repo)],
        ),
        ("local", ["--model", str(tiny_export)]),
    ):
        out, val = tmp_path / via, str(synth_root / "images" / "val")
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "s4seg",
                "predict",
                "--input",
                val,
                "--output",
                str(out),
                "--via",
                via,
                "--concurrency",
                "3",
                *extra,
            ],
            capture_output=True,
            text=True,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        assert "4 written" in run.stdout and "images/s" in run.stdout
        outputs[via] = [np.asarray(Image.open(out / p.name)) for p in images]
    for via in ("gateway", "triton"):
        for a, b in zip(outputs[via], outputs["local"], strict=True):
            np.testing.assert_array_equal(a, b)


def keep_segmenting(served: Served, data: bytes, stop: threading.Event, record) -> None:
    """POST ``data`` until ``stop``; ``record(response)`` for each answer."""
    with httpx.Client(timeout=60) as client:
        while not stop.is_set():
            record(
                client.post(
                    f"{served.url}/v1/segment", content=data, headers={"Content-Type": "image/png"}
                )
            )


def test_rollback_during_traffic_fails_no_request(
    served: Served, photo: Image.Image, unimatch_export: Path
) -> None:
    """Issue 19, item 3: rollback withdraws the served version, the server switches, and only
    then are its files removed: no request and no /v1/models call fails meanwhile. Version 2 is
    a UniMatch segmenter on DeepLabv3+ (issue 23): served by the same ensemble."""
    from s4seg.export.repository import rollback

    if httpx.get(f"{served.url}/v1/models").json()["served_version"] == 1:
        publish(PublishRequest(unimatch_export, served.repo), **QUIET)
    deadline = time.monotonic() + 120
    while httpx.get(f"{served.url}/v1/models").json()["served_version"] != 2:
        assert time.monotonic() < deadline, "version 2 was never served"
        time.sleep(0.3)
    segmenter = httpx.get(f"{served.url}/v1/models").json()["manifest"]["sources"]["segmenter"]
    assert segmenter["trainer"] == "unimatch" and segmenter["arch"]["name"] == "deeplabv3plus"
    first = served.post(encode(photo), format="json")
    assert first.status_code == 200 and first.headers["x-model-version"] == "2"
    data = encode(photo)
    results: list[tuple[str, int, str]] = []
    stop = threading.Event()

    def traffic() -> None:
        def record(r: httpx.Response) -> None:
            results.append(("segment", r.status_code, r.headers.get("x-model-version", "")))

        keep_segmenting(served, data, stop, record)

    def models() -> None:
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                r = client.get(f"{served.url}/v1/models")
                version = str(r.json().get("served_version")) if r.status_code == 200 else ""
                results.append(("models", r.status_code, version))

    workers = [threading.Thread(target=f) for f in (traffic, traffic, traffic, models)]
    for worker in workers:
        worker.start()
    try:
        time.sleep(1)
        assert rollback(served.repo, **QUIET) == 1
        deadline = time.monotonic() + 60
        while "1" not in {v for kind, _, v in results[-4:] if kind == "segment"}:
            assert time.monotonic() < deadline, "version 1 was never served again"
            time.sleep(0.2)
        time.sleep(1)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    failed = [r for r in results if r[1] != 200]
    assert failed == [], failed[:5]
    assert {v for kind, _, v in results if kind == "segment"} == {"1", "2"}
    assert not (served.repo / "s4seg_segmenter" / "2").exists()  # deleted, after the switch


def test_a_vit_segmenter_is_served_like_every_other(
    served: Served, photo: Image.Image, vit_export: Path
) -> None:
    """Issue 35: UniMatch V2 on a (tiny) DINOv2-style ViT with the DPT head, exported with
    parity and published, answers through the same Triton ensemble and gateway."""
    manifest = json.loads((vit_export / "manifest.json").read_text())
    assert manifest["sources"]["segmenter"]["arch"]["name"] == "dpt"
    version = publish(PublishRequest(vit_export, served.repo), **QUIET)
    deadline = time.monotonic() + 120
    while httpx.get(f"{served.url}/v1/models").json()["served_version"] != version:
        assert time.monotonic() < deadline, f"version {version} was never served"
        time.sleep(0.3)
    answer = served.post(encode(photo), format="json")
    assert answer.status_code == 200 and answer.headers["x-model-version"] == str(version)
    segmenter = httpx.get(f"{served.url}/v1/models").json()["manifest"]["sources"]["segmenter"]
    assert segmenter["trainer"] == "unimatch-v2"
    body = answer.json()
    assert (body["height"], body["width"]) == (photo.height, photo.width)


def shared_memory_regions(served: Served) -> list[str]:
    status = httpx.get(f"http://127.0.0.1:{served.triton_port}/v2/systemsharedmemory/status")
    return sorted(region["name"] for region in status.json())
