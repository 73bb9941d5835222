"""The gateway's HTTP contracts in-process: the real app (middleware, routers, decoding, map-back,
encoding, error handlers) with Triton replaced at its dependency (tests/gateway_fakes.py).
Starlette's TestClient where no socket matters; a real uvicorn (``running``) where it does.
What needs the real model and a real tritonserver stays in tests/test_gateway.py."""

from __future__ import annotations

import base64
import io
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from gateway_fakes import CLASSES, FakeEnsemble, fake_app, running, write_repository
from PIL import Image

from s4seg.serving.triton import free_port

LIMITS = {"max_body_bytes": 2_000_000, "max_pixels": 4_000_000}
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "content-security-policy": "frame-ancestors 'none'",
    "referrer-policy": "no-referrer",
}


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def make_photo(size: tuple[int, int] = (64, 48)) -> Image.Image:
    """Noise, red (above the fake's threshold) in its left half: a known fake answer."""
    width, height = size
    pixels = np.random.default_rng(0).integers(0, 120, (height, width, 3), dtype=np.uint8)
    pixels[:, : width // 2, 0] = 250
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return make_photo()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return write_repository(tmp_path / "repo")


@pytest.fixture
def gateway(repo: Path) -> Iterator[tuple[TestClient, FakeEnsemble]]:
    app, ensemble = fake_app(repo, **LIMITS)
    with TestClient(app) as client:
        yield client, ensemble


def post(client, data: bytes, content_type: str = "image/png", **params) -> httpx.Response:
    return client.post(
        "/v1/segment", content=data, headers={"Content-Type": content_type}, params=params
    )


def requests_total(metrics: str, route: str, status: int) -> float:
    found = re.search(
        rf's4seg_gateway_requests_total\{{route="{re.escape(route)}",status="{status}"\}} (\S+)',
        metrics,
    )
    return float(found.group(1)) if found else 0.0


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
    gateway: tuple[TestClient, FakeEnsemble], photo: Image.Image, case: str, status: int, code: str
) -> None:
    client, ensemble = gateway
    if case == "empty":
        response = post(client, b"")
    elif case == "text":
        response = post(client, b"just some text, not an image\n" * 10)
    elif case == "truncated":
        jpeg = encode(photo.resize((256, 256)), "JPEG", quality=95)
        response = post(client, jpeg[: len(jpeg) // 2], "image/jpeg")
    elif case == "wrong_type":
        response = post(client, encode(photo), "text/plain")
    elif case == "too_many_bytes":
        response = post(client, os.urandom(2_100_000))
    elif case == "too_many_pixels":
        response = post(client, encode(Image.new("L", (2500, 2000)), optimize=True))
    elif case == "bomb":  # 20000 x 20000 of one colour: a tiny file that decodes to 400 MP
        response = post(client, encode(Image.new("1", (20000, 20000))))
    else:
        response = client.post("/v1/segment", files={"other": ("x.png", encode(photo))})
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code and body["detail"]
    assert set(body) == {"error", "detail"}  # the one error shape, from middleware or routes
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert ensemble.calls == 0  # refused before the model
    assert client.get("/healthz").status_code == 200  # nothing crashed


@pytest.mark.parametrize(
    ("params", "where"),
    [
        ({"tau": 2}, "tau"),
        ({"tau": -0.5}, "tau"),
        ({"format": "gif"}, "format"),
        ({"gate": "maybe"}, "gate"),
        ({"format": "overlay", "encoding": "bmp"}, "encoding"),
    ],
)
def test_bad_parameters_get_422_naming_the_parameter(
    gateway: tuple[TestClient, FakeEnsemble], photo: Image.Image, params: dict, where: str
) -> None:
    client, ensemble = gateway
    response = post(client, encode(photo), **params)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "invalid_parameter" and where in body["detail"]
    assert set(body) == {"error", "detail"}
    assert ensemble.calls == 0


def test_encoding_applies_to_overlays_only(
    gateway: tuple[TestClient, FakeEnsemble], photo: Image.Image
) -> None:
    client, _ = gateway
    for fmt in ("png", "json"):
        wrong = post(client, encode(photo), format=fmt, encoding="jpeg")
        assert wrong.status_code == 422 and "encoding" in wrong.json()["detail"]
        assert wrong.json()["error"] == "bad_parameter"


def test_png_answer_and_its_headers(
    gateway: tuple[TestClient, FakeEnsemble], photo: Image.Image
) -> None:
    client, ensemble = gateway
    response = post(client, encode(photo.resize((150, 90))))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-model-version"] == "1"
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value, name
    labels = Image.open(io.BytesIO(response.content))
    assert labels.mode == "P" and labels.size == (150, 90)
    assert set(np.unique(np.asarray(labels))) == {0, 1}  # the fake's two classes
    assert ensemble.calls == 1


def test_multipart_json_and_overlay(
    gateway: tuple[TestClient, FakeEnsemble], photo: Image.Image
) -> None:
    from pycocotools import mask as coco_mask

    client, _ = gateway
    data = encode(photo, "JPEG")
    response = client.post(
        "/v1/segment", files={"file": ("photo.jpg", data, "image/jpeg")}, params={"format": "json"}
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-model-version"] == "1"
    body = response.json()
    assert (body["width"], body["height"]) == photo.size
    assert body["model_version"] == "1"
    assert sum(c["pixels"] for c in body["classes"]) == photo.size[0] * photo.size[1]
    assert body["class_probabilities"] is None  # no classifier in the fake manifest
    # the fake scores are 0 and 1: softmax says 0.7311 everywhere; no calibration, no classifier
    quality = {"mean_confidence": 0.7311, "calibrated": False, "uncertain_share": None}
    assert body["quality"] == {**quality, "disagreeing": None}
    assert body["uncertainty_map"] is None  # only when asked for
    unsure = client.post(
        "/v1/segment",
        files={"file": ("photo.jpg", data, "image/jpeg")},
        params={"format": "json", "uncertainty": "true"},
    ).json()["uncertainty_map"]
    assert unsure.startswith("data:image/png;base64,")
    picture = Image.open(io.BytesIO(base64.b64decode(unsure.split(",", 1)[1])))
    # 1 - 0.7311 of the 1 - 1/2 a two-class answer can be unsure: 0.538 of 255, everywhere.
    assert set(np.asarray(picture).ravel()) == {137}
    refused = post(client, data, "image/jpeg", format="png", uncertainty="true")
    assert refused.status_code == 422 and "format=json only" in refused.text
    metrics = client.get("/metrics").text
    assert 's4seg_answer_confidence_count{version="1"}' in metrics
    for present in body["classes"]:
        rle = {"size": present["rle"]["size"], "counts": present["rle"]["counts"].encode()}
        assert coco_mask.decode(rle).sum() == present["pixels"]
    overlay = post(client, data, "image/jpeg", format="overlay")
    assert overlay.status_code == 200
    assert overlay.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(overlay.content)).mode == "RGB"


def test_overlay_encodings_at_the_photos_own_size(gateway: tuple[TestClient, FakeEnsemble]) -> None:
    client, _ = gateway
    data = encode(make_photo((1200, 900)), "JPEG", quality=92)
    for encoding, media in (("jpeg", "image/jpeg"), ("webp", "image/webp"), ("png", "image/png")):
        overlay = post(client, data, "image/jpeg", format="overlay", encoding=encoding)
        assert overlay.status_code == 200, overlay.text
        assert overlay.headers["content-type"] == media
        assert Image.open(io.BytesIO(overlay.content)).size == (1200, 900)


def test_exif_orientation_is_honoured(gateway: tuple[TestClient, FakeEnsemble]) -> None:
    client, _ = gateway
    wide = make_photo((120, 60))  # red on the left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display: the left side goes on top
    response = post(client, encode(wide, "JPEG", exif=exif), "image/jpeg")
    assert response.status_code == 200, response.text
    labels = Image.open(io.BytesIO(response.content))
    assert labels.size == (60, 120)
    labels = np.asarray(labels)
    assert (labels[:50] == 1).mean() > 0.9 and (labels[-50:] == 0).mean() > 0.9


@pytest.mark.parametrize(
    "mode", ["L", "P", "RGBA", "CMYK", "I;16"], ids=["gray", "palette", "rgba", "cmyk", "16bit"]
)
def test_other_image_modes_are_converted(
    gateway: tuple[TestClient, FakeEnsemble], photo: Image.Image, mode: str
) -> None:
    client, ensemble = gateway
    if mode == "I;16":
        grey = (np.asarray(photo.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
        sixteen = Image.fromarray(grey)
        assert sixteen.mode.startswith("I;16")
        data = encode(sixteen)
    elif mode == "CMYK":
        data = encode(photo.convert("CMYK"), "JPEG")
    else:
        data = encode(photo.convert(mode))
    response = post(client, data)
    assert response.status_code == 200, response.text
    assert Image.open(io.BytesIO(response.content)).size == photo.size
    assert ensemble.last_inputs is not None
    assert ensemble.last_inputs[0].dtype == np.uint8 and ensemble.last_inputs[0].shape[-1] == 3


def test_upload_limit_holds_for_streamed_bodies_without_length(repo: Path) -> None:
    """A chunked upload (no Content-Length) is cut off at the limit while it is read (a real
    socket: the TestClient does not stream)."""
    app, ensemble = fake_app(repo, **LIMITS)
    sent = {"bytes": 0}

    def chunks():
        for _ in range(40):  # 40 x 100 kB = 4 MB, twice the limit
            sent["bytes"] += 100_000
            yield b"\0" * 100_000

    with running(app) as url:
        response = httpx.post(
            f"{url}/v1/segment",
            content=chunks(),
            headers={"Content-Type": "image/png"},
            timeout=60,
        )
        assert httpx.get(f"{url}/healthz").status_code == 200
    assert response.status_code == 413 and response.json()["error"] == "too_large"
    assert "content-length" not in response.request.headers  # it really was streamed
    assert ensemble.calls == 0


def test_models_health_and_readiness(gateway: tuple[TestClient, FakeEnsemble]) -> None:
    """The shapes of /v1/models, /readyz, /healthz (the real export's manifest and Triton's
    served version: tests/test_gateway.py)."""
    client, _ = gateway
    models = client.get("/v1/models")
    assert models.status_code == 200
    models = models.json()
    assert models["served_version"] == 1 and models["published_versions"] == [1]
    assert models["failed_versions"] == {}
    assert models["manifest"]["classes"] == CLASSES
    # The fake manifest: no classifier and tau -1, so the gate is off.
    assert models["gate"] == {"on": False, "tau": -1.0, "why": "gate off (tau -1)"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {
        "ready": True,
        "reason": "ready",
        "served_version": 1,
        "failed_versions": {},
    }
    assert client.get("/healthz").json() == {"status": "ok"}


def test_triton_down_gives_503_and_health_stays_up(repo: Path, photo: Image.Image) -> None:
    app, ensemble = fake_app(repo, FakeEnsemble(down=True))
    with TestClient(app) as client:
        down = post(client, encode(photo))
        assert down.status_code == 503, down.text
        assert down.json()["error"] == "unavailable" and down.headers["retry-after"] == "1"
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["ready"] is False and ready.json()["served_version"] is None
        models = client.get("/v1/models")
        assert models.status_code == 503 and "no version is being served" in models.text
        assert client.get("/healthz").status_code == 200
    assert ensemble.calls == 0


def test_metrics_count_answers_by_route_and_status(
    gateway: tuple[TestClient, FakeEnsemble], photo: Image.Image
) -> None:
    client, _ = gateway
    before = client.get("/metrics").text
    assert post(client, encode(photo)).status_code == 200
    assert post(client, b"just some text, not an image\n" * 10).status_code == 415
    assert post(client, os.urandom(2_100_000)).status_code == 413  # answered by middleware
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    after = metrics.text
    for status in (200, 415, 413):
        added = requests_total(after, "/v1/segment", status) - requests_total(
            before, "/v1/segment", status
        )
        assert added == 1, (status, added)
    assert "s4seg_gateway_request_seconds_bucket" in after
    assert "s4seg_gateway_in_flight_requests" in after


def test_openapi_and_docs(gateway: tuple[TestClient, FakeEnsemble]) -> None:
    client, _ = gateway
    schema = client.get("/openapi.json").json()
    assert "/v1/segment" in schema["paths"] and "/v1/models" in schema["paths"]
    assert "/metrics" not in schema["paths"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and "text/html" in docs.headers["content-type"]


def test_api_key_when_configured(repo: Path, photo: Image.Image) -> None:
    app, ensemble = fake_app(repo, api_key="s3cret")
    data = encode(photo)
    headers = {"Content-Type": "image/png"}
    with TestClient(app) as client:
        missing = client.post("/v1/segment", content=data, headers=headers)
        wrong = client.post("/v1/segment", content=data, headers={**headers, "X-API-Key": "nope"})
        assert missing.status_code == 401 and wrong.status_code == 401
        assert missing.json() == {"error": "unauthorized", "detail": "missing or wrong X-API-Key"}
        assert missing.headers["www-authenticate"] == "ApiKey"
        assert ensemble.calls == 0
        right = client.post("/v1/segment", content=data, headers={**headers, "X-API-Key": "s3cret"})
        assert right.status_code == 200 and ensemble.calls == 1
        assert client.get("/v1/models").status_code == 401
        assert client.get("/v1/models", headers={"X-API-Key": "s3cret"}).status_code == 200
        for probe in ("/healthz", "/readyz", "/metrics"):  # probes need no key
            assert client.get(probe).status_code == 200, probe


def test_the_api_key_never_reaches_the_serve_log(repo: Path, tmp_path: Path) -> None:
    """``s4seg serve`` itself (startup, uvicorn's access log), with ``--triton-url`` pointing
    at nothing: no tritonserver is started, the gateway still answers."""
    port = free_port()
    log = tmp_path / "keyed.log"
    env = {
        **os.environ,
        "S4SEG_PORT": str(port),
        "S4SEG_API_KEY": "s3cret",
        "S4SEG_TRITON_URL": f"127.0.0.1:{free_port()}",
        "S4SEG_LOG_DIR": str(tmp_path / "logs"),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "s4seg", "serve", "--repository", str(repo), "--no-quickstart"],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        headers = {"Content-Type": "image/png"}
        data = encode(make_photo())
        missing = httpx.post(f"{url}/v1/segment", content=data, headers=headers)
        wrong = httpx.post(
            f"{url}/v1/segment", content=data, headers={**headers, "X-API-Key": "nope"}
        )
        right = httpx.post(
            f"{url}/v1/segment", content=data, headers={**headers, "X-API-Key": "s3cret"}
        )
        assert missing.status_code == 401 and wrong.status_code == 401
        assert right.status_code == 503 and right.json()["error"] == "unavailable"  # no Triton
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    text = log.read_text()
    assert '"POST /v1/segment HTTP/1.1" 401' in text  # the access log was written
    assert "s3cret" not in text and "nope" not in text


def test_bad_settings_give_one_clear_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "s4seg", "serve", "--repository", str(tmp_path)],
        env={**os.environ, "S4SEG_PORT": "eighty"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "S4SEG_PORT" in result.stderr
