"""``s4seg serve`` as a user runs it: a real tritonserver, the version manager and the FastAPI
gateway in one process tree, talked to over HTTP."""

from __future__ import annotations

import io
import json
import os
import shutil
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
from s4seg.export.repository import publish
from serve_helpers import Served, serving, start_serve

QUIET = {"log": lambda *_: None}


def pids_matching(pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


@pytest.fixture(scope="module")
def served(tiny_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("serve")
    repo = root / "repo"
    publish(tiny_export, repo, **QUIET)
    limits = {"S4SEG_MAX_BODY_BYTES": str(2_000_000), "S4SEG_MAX_PIXELS": str(4_000_000)}
    with serving(repo, root, **limits) as server:
        yield server
    # Nothing left behind: no tritonserver, no python backend stub for this repository.
    time.sleep(1)
    assert pids_matching(str(root)) == [], "processes left after SIGTERM"
    assert server.process.returncode == 0
    # The gateway removed its shared memory regions, and Triton's python backend its own.
    assert not list(Path("/dev/shm").glob(f"s4seg_gateway_{server.process.pid}_*"))
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


def test_multipart_json_and_overlay(served: Served, photo: Image.Image) -> None:
    data = encode(photo, "JPEG")
    response = httpx.post(
        f"{served.url}/v1/segment",
        files={"file": ("photo.jpg", data, "image/jpeg")},
        params={"format": "json"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["width"], body["height"]) == photo.size
    assert body["model_version"] == "1" and body["gated"] and body["tau"] == 0.2
    assert sum(c["pixels"] for c in body["classes"]) == photo.size[0] * photo.size[1]
    assert set(body["class_probabilities"]) >= {"background", "disc"}
    from pycocotools import mask as coco_mask

    first = body["classes"][0]
    rle = {"size": first["rle"]["size"], "counts": first["rle"]["counts"].encode()}
    assert coco_mask.decode(rle).sum() == first["pixels"]
    overlay = served.post(data, "image/jpeg", format="overlay")
    assert overlay.status_code == 200
    assert Image.open(io.BytesIO(overlay.content)).mode == "RGB"


def test_photos_larger_than_the_served_size_get_edges_at_their_own_resolution(
    served: Served, photo: Image.Image, tiny_export: Path
) -> None:
    """Gated scores resized to the photo, then the argmax: what the in-process pipeline with
    the same map-back computes, and not the served-size labels blown up in blocks."""
    from s4seg.imaging import decode_image
    from s4seg.letterbox import Framing, classifier_view, labels_from_scores, unletterbox
    from s4seg.onnx_pipeline import OnnxPipeline

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
    blocks = unletterbox(out.labels[0], framed.placement)
    assert 0.9 < (served_labels == blocks).mean() < 1.0  # the same shapes, other edges
    # The classifier saw the whole 4:3 photo (its own view), not the square letterbox.
    body = served.post(data, "image/jpeg", format="json").json()
    probs = np.array([body["class_probabilities"][n] for n in pipeline.manifest.classes])
    np.testing.assert_allclose(probs, out.class_probs[0], atol=1e-5)
    boxed = classifier_view(framed.canvas, framing.classifier_size)
    on_canvas = pipeline.run(framed.canvas[None], boxed[None]).class_probs[0]
    assert np.abs(on_canvas - out.class_probs[0]).max() > 1e-3  # the view matters here

    for encoding, media in (("jpeg", "image/jpeg"), ("webp", "image/webp"), ("png", "image/png")):
        overlay = served.post(data, "image/jpeg", format="overlay", encoding=encoding)
        assert overlay.status_code == 200, overlay.text
        assert overlay.headers["content-type"] == media
        assert Image.open(io.BytesIO(overlay.content)).size == (1200, 900)
    wrong = served.post(data, "image/jpeg", format="png", encoding="jpeg")
    assert wrong.status_code == 422 and "encoding" in wrong.json()["detail"]


def test_gateway_over_http_answers_as_over_grpc(
    served: Served, photo: Image.Image, tmp_path: Path
) -> None:
    """S4SEG_TRITON_PROTOCOL=http (gRPC is the default): the same labels, version and errors
    through the other hop."""
    data = encode(photo.resize((300, 200)))
    over_grpc = served.post(data, format="json").json()
    with serving(served.repo, tmp_path, S4SEG_TRITON_PROTOCOL="http") as http_server:
        response = http_server.post(data, format="json")
        assert response.status_code == 200, response.text
        assert response.json() == over_grpc
        assert response.headers["x-model-version"] == "1"
        assert http_server.post(data, tau=2).status_code == 422


def test_the_hop_alone_by_http_grpc_and_shared_memory_gives_the_same_scores(
    served: Served, tiny_export: Path
) -> None:
    """The callers `bench serve` times for the hop: each gets the in-process pipeline's scores
    (the shared-memory regions are registered, used, then unregistered and removed)."""
    from s4seg.clients.bench import hop_callers

    from s4seg.letterbox import Framing
    from s4seg.onnx_pipeline import OnnxPipeline

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
    bad = served.post(data, tau=2)
    assert bad.status_code == 422 and "tau" in bad.json()["detail"]


def test_exif_orientation_is_honoured(served: Served, photo: Image.Image) -> None:
    wide = photo.resize((120, 60))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    response = served.post(encode(wide, "JPEG", exif=exif), "image/jpeg")
    assert response.status_code == 200
    assert Image.open(io.BytesIO(response.content)).size == (60, 120)


@pytest.mark.parametrize(
    "mode", ["L", "P", "RGBA", "CMYK", "I;16"], ids=["gray", "palette", "rgba", "cmyk", "16bit"]
)
def test_other_image_modes_are_converted(served: Served, photo: Image.Image, mode: str) -> None:
    if mode == "I;16":
        grey = (np.asarray(photo.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
        sixteen = Image.fromarray(grey)
        assert sixteen.mode.startswith("I;16")
        data = encode(sixteen)
    elif mode == "CMYK":
        data = encode(photo.convert("CMYK"), "JPEG")
    else:
        data = encode(photo.convert(mode))
    response = served.post(data)
    assert response.status_code == 200, response.text
    assert Image.open(io.BytesIO(response.content)).size == photo.size


@pytest.mark.parametrize(
    ("case", "status", "code"),
    [
        ("empty", 422, "empty"),
        ("text", 415, "not_an_image"),
        ("truncated", 422, "corrupt"),
        ("wrong_type", 415, "unsupported_media_type"),
        ("too_many_bytes", 413, "too_large"),
        ("too_many_pixels", 413, "too_many_pixels"),
        ("bomb", 413, "too_many_pixels"),
        ("no_file_part", 422, "no_file"),
    ],
)
def test_bad_input_gets_a_clear_4xx(
    served: Served, photo: Image.Image, case: str, status: int, code: str
) -> None:
    if case == "empty":
        response = served.post(b"")
    elif case == "text":
        response = served.post(b"just some text, not an image\n" * 10)
    elif case == "truncated":
        jpeg = encode(photo.resize((256, 256)), "JPEG", quality=95)
        response = served.post(jpeg[: len(jpeg) // 2], "image/jpeg")
    elif case == "wrong_type":
        response = served.post(encode(photo), "text/plain")
    elif case == "too_many_bytes":
        response = served.post(os.urandom(2_100_000))
    elif case == "too_many_pixels":
        response = served.post(encode(Image.new("L", (2500, 2000)), optimize=True))
    elif case == "bomb":  # 20000 x 20000 of one colour: a tiny file that decodes to 400 MP
        response = served.post(encode(Image.new("1", (20000, 20000))))
    else:
        response = httpx.post(
            f"{served.url}/v1/segment", files={"other": ("x.png", encode(photo))}, timeout=30
        )
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code and body["detail"]
    assert httpx.get(f"{served.url}/healthz").status_code == 200  # nothing crashed


def test_upload_limit_holds_for_streamed_bodies_without_length(served: Served) -> None:
    """A chunked upload (no Content-Length) is cut off at the limit while it is read."""
    sent = {"bytes": 0}

    def chunks():
        for _ in range(40):  # 40 x 100 kB = 4 MB, twice the limit
            sent["bytes"] += 100_000
            yield b"\0" * 100_000

    response = httpx.post(
        f"{served.url}/v1/segment", content=chunks(), headers={"Content-Type": "image/png"},
        timeout=60,
    )  # fmt: skip
    assert response.status_code == 413 and response.json()["error"] == "too_large"


def test_bad_settings_give_one_clear_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "s4seg", "serve", "--repository", str(tmp_path)],
        env={**os.environ, "S4SEG_PORT": "eighty"}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "S4SEG_PORT" in result.stderr


def test_models_health_metrics_and_docs(served: Served) -> None:
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
    metrics = httpx.get(f"{served.url}/metrics").text
    assert 's4seg_gateway_requests_total{route="/v1/segment",status="200"}' in metrics
    assert 's4seg_gateway_requests_total{route="/v1/segment",status="415"}' in metrics
    assert "s4seg_gateway_request_seconds_bucket" in metrics
    assert "s4seg_gateway_in_flight_requests" in metrics
    schema = httpx.get(f"{served.url}/openapi.json").json()
    assert "/v1/segment" in schema["paths"]
    assert httpx.get(f"{served.url}/docs").status_code == 200


def test_api_key_when_configured(served: Served, photo: Image.Image, tmp_path: Path) -> None:
    """A second gateway on the same Triton (``--triton-url``) with S4SEG_API_KEY set."""
    process, url = start_serve(
        served.repo,
        tmp_path / "keyed.log",
        {"S4SEG_API_KEY": "s3cret", "S4SEG_TRITON_URL": f"127.0.0.1:{served.triton_port}"},
    )
    try:
        data = encode(photo)
        headers = {"Content-Type": "image/png"}
        missing = httpx.post(f"{url}/v1/segment", content=data, headers=headers)
        wrong = httpx.post(
            f"{url}/v1/segment", content=data, headers={**headers, "X-API-Key": "nope"}
        )
        right = httpx.post(
            f"{url}/v1/segment", content=data, headers={**headers, "X-API-Key": "s3cret"}
        )
        assert missing.status_code == 401 and wrong.status_code == 401
        assert missing.json()["error"] == "unauthorized"
        assert right.status_code == 200
        assert httpx.get(f"{url}/healthz").status_code == 200  # probes need no key
        assert "s3cret" not in (tmp_path / "keyed.log").read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


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
        [sys.executable, "-m", "s4seg", "segment", *map(str, images[:2]), "--url", served.url,
         "--format", "json", "--out", str(tmp_path / "seg")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert "(model version 1)" in cli.stdout and "background" in cli.stdout
    assert json.loads((tmp_path / "seg" / f"{images[0].stem}.json").read_text())["classes"]
    outputs = {}
    for via, extra in (
        ("gateway", ["--url", served.url]),
        ("triton", ["--triton-url", f"127.0.0.1:{served.triton_port}",
                    "--repository", str(served.repo)]),
        ("local", ["--model", str(tiny_export)]),
    ):  # fmt: skip
        out, val = tmp_path / via, str(synth_root / "images" / "val")
        run = subprocess.run(
            [sys.executable, "-m", "s4seg", "predict", "--input", val,
             "--output", str(out), "--via", via, "--concurrency", "3", *extra],
            capture_output=True, text=True,
        )  # fmt: skip
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
            record(client.post(f"{served.url}/v1/segment", content=data,
                               headers={"Content-Type": "image/png"}))  # fmt: skip


def test_publish_during_traffic_fails_no_request(
    served: Served, photo: Image.Image, tiny_export: Path
) -> None:
    data = encode(photo)
    results: list[tuple[int, str]] = []
    stop = threading.Event()

    def traffic() -> None:
        keep_segmenting(
            served, data, stop,
            lambda r: results.append((r.status_code, r.headers.get("x-model-version", ""))),
        )  # fmt: skip

    workers = [threading.Thread(target=traffic) for _ in range(3)]
    for worker in workers:
        worker.start()
    try:
        time.sleep(1)
        assert publish(tiny_export, served.repo, **QUIET) == 2
        deadline = time.monotonic() + 120
        while ("2" not in {v for _, v in results[-3:]}) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    statuses = {s for s, _ in results}
    assert statuses == {200}, [r for r in results if r[0] != 200][:5]
    assert results[0][1] == "1" and results[-1][1] == "2"
    assert httpx.get(f"{served.url}/v1/models").json()["served_version"] == 2


def test_rollback_during_traffic_fails_no_request(
    served: Served, photo: Image.Image, tiny_export: Path
) -> None:
    """Issue 19, item 3: rollback withdraws the served version, the server switches, and only
    then are its files removed: no request and no /v1/models call fails meanwhile."""
    from s4seg.export.repository import rollback

    if httpx.get(f"{served.url}/v1/models").json()["served_version"] == 1:
        publish(tiny_export, served.repo, **QUIET)
    deadline = time.monotonic() + 120
    while httpx.get(f"{served.url}/v1/models").json()["served_version"] != 2:
        assert time.monotonic() < deadline, "version 2 was never served"
        time.sleep(0.3)
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


def shared_memory_regions(served: Served) -> list[str]:
    status = httpx.get(f"http://127.0.0.1:{served.triton_port}/v2/systemsharedmemory/status")
    return sorted(region["name"] for region in status.json())


def triton_shm_files() -> set[str]:
    """The python backend's regions of our Tritons (issue 19, item 9: their own prefix)."""
    return {p.name for p in Path("/dev/shm").iterdir() if p.name.startswith("s4seg_triton_")}


def test_triton_killed_gives_503_then_recovers(served: Served, photo: Image.Image) -> None:
    data = encode(photo)
    assert served.post(data).status_code == 200
    # The gateway's tensors go through shared memory regions registered with Triton ...
    assert any(name.startswith("s4seg_gateway_") for name in shared_memory_regions(served))
    prefix = f"s4seg_triton_{served.process.pid}_{served.triton_port}_"
    before = {name for name in triton_shm_files() if name.startswith(prefix)}
    assert before, "the python backend's regions do not carry the server's prefix"
    shm_bytes = shutil.disk_usage("/dev/shm").used
    (pid,) = pids_matching(f"bin/tritonserver --model-repository={served.log.parent}")
    os.kill(pid, signal.SIGKILL)
    down = served.post(data)
    assert down.status_code == 503, down.text
    assert down.json()["error"] == "unavailable"
    assert httpx.get(f"{served.url}/readyz").status_code == 503
    deadline = time.monotonic() + 180
    status = None
    while time.monotonic() < deadline:
        status = served.post(data).status_code
        if status == 200:
            break
        time.sleep(0.5)
    assert status == 200, served.log.read_text()[-2000:]
    assert pids_matching(f"bin/tritonserver --model-repository={served.log.parent}") != [pid]
    assert served.process.poll() is None  # the gateway itself never restarted
    # ... which the new Triton does not know: the gateway registers them again.
    assert served.post(data).status_code == 200
    assert any(name.startswith("s4seg_gateway_") for name in shared_memory_regions(served))
    # /dev/shm is back to what it was: the killed Triton's regions were removed, not leaked.
    after = {name for name in triton_shm_files() if name.startswith(prefix)}
    leaked = shutil.disk_usage("/dev/shm").used - shm_bytes
    print(f"\n[reliability] triton kill: /dev/shm {len(before)} regions before, {len(after)} "
          f"after, {leaked / 2**20:+.1f} MiB")  # fmt: skip
    assert after and not before & after, "the killed Triton's regions are still in /dev/shm"
    assert leaked < 2 * 2**20, f"{leaked} bytes more in /dev/shm after the restart"
