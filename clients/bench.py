"""``s4seg bench serve``: the gateway against the in-process ONNX Runtime pipeline (the ceiling
on this machine) and a naive FastAPI + PyTorch eager endpoint, same images, same run.

Every target does the same work per request: decode the image, letterbox, segment (gated),
map back, encode a palette PNG. Throughput and latency percentiles at each concurrency, and
Triton's own per-step queue/compute times to show where the gateway's time goes.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from s4seg.serving.triton import free_port

from s4seg.benchmarks import cpu_description, provenance, update_section
from s4seg.errors import S4segError
from s4seg.imaging import decode_image
from s4seg.letterbox import letterbox, unletterbox
from s4seg.outputs import label_png
from s4seg.repository import STEP_MODELS, served_version, version_pipeline


def bench_images(manifest, count: int) -> list[bytes]:
    """PNG bytes of validation images of the model's data set, else random pictures."""
    root = Path(manifest.dataset.get("root", ""))
    paths = sorted((root / "images" / "val").glob("*.png"))[:count] if root.is_dir() else []
    if paths:
        return [p.read_bytes() for p in paths]
    rng = np.random.default_rng(0)
    h, w = manifest.input_size
    images = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buffer, "PNG")
        images.append(buffer.getvalue())
    return images


def measure(call: Callable[[bytes], None], images: list[bytes], concurrency: int, total: int):
    """Requests/s and per-request latencies (s) with ``concurrency`` callers."""
    latencies: list[float] = []

    def one(i: int) -> None:
        start = time.perf_counter()
        call(images[i % len(images)])
        latencies.append(time.perf_counter() - start)

    for i in range(min(concurrency, 4)):  # warm-up
        one(i)
    latencies.clear()
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(total)))
    return total / (time.perf_counter() - start), latencies


def wait_http(url: str, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise S4segError(f"{process.args[:4]} exited with {process.returncode}")
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.5)
    raise S4segError(f"{url} did not come up")


def http_caller(url: str) -> Callable[[bytes], None]:
    client = httpx.Client(timeout=120, limits=httpx.Limits(max_connections=64))

    def call(data: bytes) -> None:
        response = client.post(url, content=data, headers={"Content-Type": "image/png"})
        if response.status_code != 200:
            raise S4segError(f"{url}: HTTP {response.status_code} {response.text[:200]}")

    return call


def triton_step_stats(triton_url: str) -> dict[str, tuple[float, float, int]]:
    """Per step: mean queue ms, mean compute ms (input+infer+output), executions."""
    out = {}
    for step, model in STEP_MODELS.items():
        stats = httpx.get(f"http://{triton_url}/v2/models/{model}/stats", timeout=5).json()
        rows = [s for s in stats.get("model_stats", []) if s.get("inference_count")]
        count = sum(int(r["inference_stats"]["success"]["count"]) for r in rows)
        if not count:
            continue
        queue = sum(int(r["inference_stats"]["queue"]["ns"]) for r in rows)
        compute = sum(
            int(r["inference_stats"][k]["ns"])
            for r in rows
            for k in ("compute_input", "compute_infer", "compute_output")
        )
        executions = sum(int(r.get("execution_count", 0)) for r in rows)
        out[step] = (queue / count / 1e6, compute / count / 1e6, executions)
    return out


def bench_serve(args: argparse.Namespace) -> str:
    repository = Path(args.repository)
    version = served_version(repository)
    if version is None:
        raise S4segError(f"{repository} has no published version (run `s4seg quickstart`)")
    pipeline = version_pipeline(repository, version, device="cpu")
    manifest = pipeline.manifest
    images = bench_images(manifest, args.images)
    size, pad = tuple(manifest.input_size), tuple(manifest.pad_value)

    def in_process(data: bytes) -> None:
        pixels = decode_image(data).pixels
        canvas, placement = letterbox(pixels, size, pad)
        labels = pipeline.run(canvas[None]).labels[0]
        label_png(unletterbox(labels, placement), manifest)

    env = dict(os.environ)
    processes: list[subprocess.Popen] = []
    rows: list[tuple[str, int, float, list[float]]] = []
    stats = {}
    try:
        gateway_port, triton_port = free_port(), free_port()
        env.update(
            S4SEG_PORT=str(gateway_port),
            S4SEG_TRITON_HTTP_PORT=str(triton_port),
            S4SEG_TRITON_GRPC_PORT=str(free_port()),
            S4SEG_TRITON_METRICS_PORT=str(free_port()),
            S4SEG_LOG_DIR=str(Path(args.log_dir)),
        )
        serve = subprocess.Popen(
            [sys.executable, "-m", "s4seg", "serve", "--repository", str(repository),
             "--no-quickstart"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        processes.append(serve)
        gateway = f"http://127.0.0.1:{gateway_port}"
        wait_http(f"{gateway}/healthz", serve)
        while httpx.get(f"{gateway}/readyz", timeout=5).status_code != 200:
            time.sleep(0.5)
        naive_port = free_port()
        naive_export = manifest.published.get("source") if manifest.published else None
        naive = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "s4seg.export.naive_endpoint:app",
             "--port", str(naive_port), "--log-level", "warning"],
            env={**env, "S4SEG_NAIVE_EXPORT": str(naive_export)},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        processes.append(naive)
        wait_http(f"http://127.0.0.1:{naive_port}/docs", naive)
        targets = {
            "in-process ONNX Runtime (ceiling)": in_process,
            "gateway -> Triton ensemble": http_caller(f"{gateway}/v1/segment"),
            "naive FastAPI + PyTorch eager": http_caller(
                f"http://127.0.0.1:{naive_port}/v1/segment"
            ),
        }
        for concurrency in args.concurrency:
            for name, call in targets.items():
                print(f"bench serve: {name}, concurrency {concurrency}", file=sys.stderr)
                total = max(args.requests, 4 * concurrency)
                rate, latencies = measure(call, images, concurrency, total)
                rows.append((name, concurrency, rate, latencies))
        stats = triton_step_stats(f"127.0.0.1:{triton_port}")
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
    ceiling = {c: r for n, c, r, _ in rows if n.startswith("in-process")}
    h, w = manifest.input_size
    lines = [
        *provenance(f"{cpu_description()} (client, gateway, Triton and models share it)"),
        f"Model: version {version} of {repository} (DeepLabv2 ResNet-"
        f"{manifest.sources['segmenter'].arch['backbone_depth']}, served {h}x{w}); "
        f"{len(images)} images cycled; per request: decode, letterbox, segment (gated), map "
        "back, palette PNG.",
        "",
        "| target | concurrency | requests/s | p50 ms | p99 ms | vs ceiling |",
        "|---|---|---|---|---|---|",
    ]
    for name, concurrency, rate, latencies in rows:
        ordered = sorted(latencies)
        p50 = statistics.median(ordered) * 1000
        p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000
        ratio = rate / ceiling[concurrency]
        lines.append(
            f"| {name} | {concurrency} | {rate:.1f} | {p50:.0f} | {p99:.0f} | {ratio:.2f}x |"
        )
    if stats:
        lines += ["", "Triton, per step over the whole gateway run (means per request):", "",
                  "| step | queue ms | compute ms | executions |", "|---|---|---|---|"]  # fmt: skip
        for step, (queue, compute, executions) in stats.items():
            lines.append(f"| {step} | {queue:.1f} | {compute:.1f} | {executions} |")
    table = "\n".join(lines)
    print(table)
    if args.write:
        update_section(Path(args.write), "serve-cpu", table)
    return table
