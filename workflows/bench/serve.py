"""``s4seg bench serve``: the gateway against two limits measured in the same run, and latency
by input size.

- model alone: the segmenter and classifier ONNX sessions and nothing else (no HTTP, decode,
  preprocess, gate or encode), at the best instances x threads x batch found here, in images/s;
- in-process: the whole pipeline in one process (decode, letterbox, four ONNX steps, map back,
  palette PNG), one shared session per step;
- the gateway in front of the Triton ensemble (inference over HTTP and over gRPC) and a naive
  FastAPI + PyTorch eager endpoint, doing the same work per request as in-process;
- the hop alone: the ensemble called directly with the served-size tensor over HTTP, gRPC and
  HTTP with system shared memory for the tensors;
- latency by input size (512 px, 2 MP, 12 MP JPEGs) for each output format.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from s4seg.errors import S4segError
from s4seg.imaging import decode_image
from s4seg.letterbox import Framed, Framing, labels_from_scores
from s4seg.manifest import Manifest
from s4seg.onnx_pipeline import OnnxPipeline
from s4seg.outputs import label_png, uncertainty_uri
from s4seg.quality import answer_quality, uncertainty_map
from s4seg.repository import (
    served_version,
    version_pipeline,
)
from s4seg.serving.triton import free_port

from . import cpu_time, naive_endpoint
from .limits import network_flops
from .report import report
from .serve_alone import model_alone, served_engines
from .serve_callers import (
    GATEWAY_VARIANTS,
    IN_PROCESS,
    bench_images,
    hop_callers,
    http_caller,
    latency_by_size,
    measure,
    size_images,
    start_serve,
    stop,
    triton_step_stats,
    wait_http,
)
from .serve_results import ServeBenchRequest, ServeResults


def bench_serve(request: ServeBenchRequest) -> str:
    """Measure, then render (and with ``request.write``, put the section in BENCHMARKS.md)."""
    from .serve_render import render

    results = run_bench_serve(request)
    # A ViT's figures in a section of their own, beside the ResNet's.
    vit = results.manifest.sources["segmenter"].arch.get("name") == "dpt"
    return report(render(results), request.write, "serve-cpu-vit" if vit else "serve-cpu")


def run_bench_serve(request: ServeBenchRequest) -> ServeResults:
    repository = request.repository
    version = served_version(repository)
    if version is None:
        raise S4segError(f"{repository} has no published version (run `s4seg quickstart`)")
    pipeline = version_pipeline(repository, version, device="cpu")
    manifest = pipeline.manifest
    images = bench_images(manifest, request.images)
    framing = Framing.of(manifest)
    first = framing.frame(decode_image(images[0]).pixels)

    def in_process(data: bytes) -> None:
        decoded = decode_image(data, fit=framing.fit)
        framed = framing.frame(decoded.pixels, decoded.size)
        scores = pipeline.run(framed.canvas[None], framed.view[None]).scores[0]
        label_png(labels_from_scores(scores, framed.placement), manifest)

    quality, uncertainty = time_quality(pipeline, first)
    # The model alone first, with nothing else running: in the served engine (what the gateway
    # is compared with) and in every other engine its files run in here (the machine's limit).
    alone = model_alone(repository, version, pipeline, first, request.window, request.windows)
    served_engine, _ = served_engines(manifest)

    env = {**os.environ, "S4SEG_LOG_DIR": str(Path(request.log_dir))}
    processes: list[subprocess.Popen] = []
    measured = Measured()
    try:
        (default, variant), *others = list(GATEWAY_VARIANTS.items())[: request.variants]
        serve, gateway, triton_http, triton_grpc = start_serve(repository, env, variant)
        processes.append(serve)
        naive, naive_url = start_naive(env, manifest)
        processes.append(naive)
        wait_http(f"{naive_url}/docs", naive)
        targets = {
            IN_PROCESS: in_process,
            default: http_caller(f"{gateway}/v1/segment"),
            "naive FastAPI + PyTorch eager": http_caller(f"{naive_url}/v1/segment"),
        }
        measure_targets(measured, request, images, targets, default, serve.pid)
        measured.stats = triton_step_stats(triton_http)
        callers, cleanup = hop_callers(triton_http, triton_grpc, first, manifest.tau)
        try:
            for name, hop in callers.items():
                print(f"bench serve: hop {name}", file=sys.stderr)
                rate, latencies = measure(hop, images, request.hop_concurrency, request.requests)
                measured.hops.append((name, rate, latencies))
        finally:
            cleanup()
        measured.by_size = latency_by_size(
            f"{gateway}/v1/segment", size_images(images), request.size_repeats
        )
        stop(processes)
        processes.clear()

        for name, variant in others:  # the other gateway settings, one server at a time
            serve, gateway, _, _ = start_serve(repository, env, variant)
            processes.append(serve)
            call = http_caller(f"{gateway}/v1/segment")
            measure_targets(measured, request, images, {name: call}, default, serve.pid)
            stop(processes)
            processes.clear()
    finally:
        stop(processes)
    return ServeResults(
        request=request,
        version=version,
        manifest=manifest,
        images=len(images),
        alone=alone,
        served_engine=served_engine,
        flops=network_flops(manifest),
        default=default,
        rows=measured.rows,
        cpu=measured.cpu,
        hops=measured.hops,
        by_size=measured.by_size,
        stats=measured.stats,
        quality_seconds=quality,
        uncertainty_seconds=uncertainty,
    )


def time_quality(pipeline: OnnxPipeline, framed: Framed, repeats: int = 50) -> tuple[float, float]:
    """Median seconds, timed alone on one answer, of ``answer_quality`` (what the gateway adds
    to each request since issue 34) and of the uncertainty map as ``uncertainty=true`` sends
    it (the map and its PNG data URI)."""
    out = pipeline.run(framed.canvas[None], framed.view[None])
    scores, probs, manifest = out.scores[0], out.class_probs[0], pipeline.manifest

    def median_seconds(work: Callable[[], object]) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            work()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    return (
        median_seconds(lambda: answer_quality(scores, framed.placement, probs, manifest)),
        median_seconds(
            lambda: uncertainty_uri(uncertainty_map(scores, framed.placement, manifest))
        ),
    )


@dataclass
class Measured:
    """The figures as they come in (``ServeResults`` holds them when the run is done)."""

    rows: list[tuple[str, int, float, list[float]]] = field(default_factory=list)
    cpu: dict[tuple[str, int], dict[str, float]] = field(default_factory=dict)  # ms per request
    hops: list[tuple[str, float, list[float]]] = field(default_factory=list)
    by_size: list[tuple] = field(default_factory=list)
    stats: dict = field(default_factory=dict)


def measure_targets(
    measured: Measured,
    request: ServeBenchRequest,
    images: list[bytes],
    targets: Mapping[str, Callable[[bytes], object]],
    default: str,
    serve_pid: int,
) -> None:
    """Each target at each concurrency; the CPU each request costs, for the default gateway
    (the serving processes' and this client's) and in-process."""
    for concurrency in request.concurrency:
        total = max(request.requests, 4 * concurrency)
        for name, call in targets.items():
            print(f"bench serve: {name}, concurrency {concurrency}", file=sys.stderr)
            before, client = cpu_time.tree_cpu(serve_pid), cpu_time.own_cpu()
            rate, latencies = measure(call, images, concurrency, total)
            measured.rows.append((name, concurrency, rate, latencies))
            if name not in (default, IN_PROCESS):
                continue
            calls = total + min(concurrency, 4)  # with measure's warm-up
            used = {}
            if name == default:
                used = cpu_time.per_request(before, cpu_time.tree_cpu(serve_pid), calls)
            used["client" if name == default else IN_PROCESS] = (
                1000 * (cpu_time.own_cpu() - client) / calls
            )
            measured.cpu[(name, concurrency)] = used


def start_naive(env: dict[str, str], manifest: Manifest) -> tuple[subprocess.Popen, str]:
    """The naive FastAPI + PyTorch eager endpoint over the published export's checkpoints, and
    its address (started: the caller stops it, and waits for it to answer)."""
    port = free_port()
    export = manifest.published.get("source") if manifest.published else None
    factory = f"{naive_endpoint.__name__}:{naive_endpoint.create_app.__name__}"
    command = [sys.executable, "-m", "uvicorn", "--factory", factory, "--port", str(port)]
    naive = subprocess.Popen(
        [*command, "--log-level", "warning"],
        env={**env, naive_endpoint.EXPORT_VARIABLE: str(export)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return naive, f"http://127.0.0.1:{port}"
