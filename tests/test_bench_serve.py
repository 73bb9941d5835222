"""The parts of `s4seg bench serve` that are not the servers: the model-alone limit and the
photos of the latency-by-size table."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from s4seg.export.requests import PublishRequest
from s4seg.letterbox import Framing
from s4seg.onnx_pipeline import OnnxPipeline
from s4seg.workflows.bench.serve import time_quality
from s4seg.workflows.bench.serve_alone import model_alone
from s4seg.workflows.bench.serve_callers import SIZES, size_images


def test_model_alone_tries_every_engine_and_layout_and_counts_images(
    tiny_export: Path, tmp_path: Path
) -> None:
    from s4seg.export.repository import publish
    from s4seg.repository import version_pipeline
    from s4seg.workflows.bench.limits import network_flops, peak_gflops

    repo = tmp_path / "repo"
    version = publish(PublishRequest(tiny_export, repo), log=lambda *_: None)
    pipeline = version_pipeline(repo, version, device="cpu")
    framed = Framing.of(pipeline.manifest).frame(np.zeros((64, 64, 3), np.uint8))
    rows = model_alone(repo, version, pipeline, framed, window=0.3, windows=2)
    quality, uncertainty = time_quality(pipeline, framed, repeats=3)
    assert quality > 0 and uncertainty > 0  # both timed (the render test checks the line)
    layouts = [(i, b) for i in (1, 2) for b in (1, 4, 8)]
    engines = [("onnxruntime", "fp32"), ("openvino", "fp32")]  # tiny_export has no BF16 variant
    assert [(r.engine.runtime, r.engine.precision, r.instances, r.batch) for r in rows] == [
        (*e, *layout) for e in engines for layout in layouts
    ]
    flops = network_flops(pipeline.manifest)
    assert set(flops) == {"segmenter", "classifier"} and flops["segmenter"] > flops["classifier"]
    peak, how = peak_gflops("fp32")
    assert peak is None or (peak > 0 and "GHz" in how)
    cores = os.cpu_count() or 1
    for row in rows:
        assert row.threads == max(1, cores // row.instances)
        # A window lasts until a call finishes in it: a busy machine reads slow, never 0.
        assert len(row.rates) == 2 and all(rate > 0 for rate in row.rates)
        # Images, not calls: a batch of 8 counts 8.
        assert len(row.images) == 2
        assert all(n >= row.batch and n % row.batch == 0 for n in row.images)


def test_size_images_are_jpegs_of_each_size() -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 120, np.uint8)).save(buffer, "PNG")
    photos = size_images([buffer.getvalue()])
    assert list(photos) == [name for name, _, _ in SIZES]
    for (_, height, width), data in zip(SIZES, photos.values(), strict=True):
        image = Image.open(io.BytesIO(data))
        assert image.format == "JPEG" and image.size == (width, height)


def test_the_naive_endpoint_does_the_gateways_work(tiny_export: Path, synth_root: Path) -> None:
    """Issue 20, item 14: reduced JPEG decode and scores mapped back at the photo's size, the
    label map the in-process pipeline gives (PyTorch against ONNX Runtime: float noise only)."""
    from fastapi.testclient import TestClient
    from helpers import segment_like_the_server

    from s4seg.imaging import decode_image
    from s4seg.workflows.bench.naive_endpoint import create_app

    photo = Image.open(sorted((synth_root / "images" / "val").iterdir())[0]).convert("RGB")
    buffer = io.BytesIO()
    photo.resize((300, 130)).save(buffer, "JPEG", quality=95)
    data = buffer.getvalue()
    with TestClient(create_app(str(tiny_export))) as client:
        response = client.post("/v1/segment", content=data)
    assert response.status_code == 200, response.text
    labels = np.asarray(Image.open(io.BytesIO(response.content)))
    decoded = decode_image(data, fit=(64, 64))
    assert decoded.reduced  # decoded at a reduced scale, as the gateway does
    pipeline = OnnxPipeline.from_export(tiny_export, device="cpu")
    expected = segment_like_the_server(pipeline, decoded.pixels, size=decoded.size).labels[0]
    assert labels.shape == expected.shape == (130, 300)
    assert (labels == expected).mean() > 0.99


def test_peak_counts_zen5_avx512_at_full_width(monkeypatch: pytest.MonkeyPatch) -> None:
    """Zen 4 runs AVX-512 on 256-bit halves, Zen 5 (cpu family 26) on 512-bit pipes: the peak
    of the same clock and cores doubles (this machine's EPYC had been counted as a Zen 4)."""
    from s4seg.workflows.bench import limits

    flags = frozenset({"avx2", "avx512f"})
    monkeypatch.setattr(limits, "cpu_flags", lambda: flags)
    monkeypatch.setattr(limits, "clock_ghz", lambda: 2.0)
    monkeypatch.setattr(limits.os, "cpu_count", lambda: 2)
    peaks = {}
    for vendor, family in (("AuthenticAMD", "25"), ("AuthenticAMD", "26"), ("GenuineIntel", "6")):
        info = {"vendor_id": vendor, "cpu family": family}
        monkeypatch.setattr(limits, "cpuinfo", info.get)
        peaks[family] = limits.peak_gflops("fp32")
    assert limits.half_width_avx512(flags) is False  # the Intel one, last
    assert peaks["25"][0] == 2 * 2.0 * 32 and "256-bit" in peaks["25"][1]
    assert peaks["26"][0] == 2 * 2.0 * 64 and "512-bit" in peaks["26"][1]
    assert peaks["6"][0] == 2 * 2.0 * 64


def test_render_compares_each_target_with_in_process_and_the_model_alone() -> None:
    """The section is rendered from the measured results alone (measure apart from render):
    each request row is divided by in-process at its concurrency and by the served engine's
    best model-alone rate; sections not measured are left out."""
    from types import SimpleNamespace

    from s4seg.export.engine_choice import Candidate
    from s4seg.workflows.bench.serve_alone import ModelAlone
    from s4seg.workflows.bench.serve_callers import IN_PROCESS
    from s4seg.workflows.bench.serve_render import render
    from s4seg.workflows.bench.serve_results import ServeBenchRequest, ServeResults

    served, other = Candidate("onnxruntime", "fp32"), Candidate("openvino", "fp32")
    manifest = SimpleNamespace(
        input_size=[64, 64],
        num_classes=7,
        sources={"segmenter": SimpleNamespace(arch={"backbone_depth": 18})},
    )
    request = ServeBenchRequest(Path("repo"), 4, 10, [1], 8, 2, 1, 1.0, 3, Path("logs"))
    results = ServeResults(
        request=request,
        version=3,
        manifest=manifest,
        images=4,
        alone=[ModelAlone(served, 1, 2, 1, [20.0]), ModelAlone(other, 1, 2, 1, [40.0])],
        served_engine=served,
        flops={"segmenter": 2e9, "classifier": 1e9},
        default="gateway",
        rows=[(IN_PROCESS, 1, 10.0, [0.1, 0.1]), ("gateway", 1, 5.0, [0.2, 0.4])],
        quality_seconds=0.002,
        uncertainty_seconds=0.005,
    )
    text = render(results)
    assert "| onnxruntime | fp32 | 1 x 2 | 1 | 20.0 **served best** |" in text
    assert "| openvino | fp32 | 1 x 2 | 1 | 40.0 **limit** |" in text
    gateway = next(line for line in text.splitlines() if line.startswith("| gateway | 1 |"))
    assert gateway.endswith("| 0.50x | 0.25x | 0.12x |"), gateway
    assert "FLOPs per image 3.00 G" in text
    assert "2.00 ms, timed alone, 2.0% of an in-process request" in text
    assert "With `uncertainty=true`, the map and its PNG add 5.00 ms (5.0%)." in text
    for absent in ("Where the CPU goes", "The hop alone", "Latency by input size", "Triton, per"):
        assert absent not in text


def test_the_benchmarks_name_the_segmenter_they_measured() -> None:
    from s4seg.workflows.bench.report import segmenter_name

    assert segmenter_name({"name": "deeplabv2", "backbone_depth": 18}) == "DeepLabv2 ResNet-18"
    assert segmenter_name({"name": "deeplabv3plus", "backbone_depth": 101}) == (
        "DeepLabv3+ ResNet-101"
    )
    assert segmenter_name({"name": "dpt", "encoder": "vit_small_patch14_dinov2"}) == (
        "DPT on vit_small_patch14_dinov2"
    )
