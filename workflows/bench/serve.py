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

import argparse
import io
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from s4seg.engines import bf16_capable, open_session
from s4seg.errors import S4segError
from s4seg.export.engine_choice import Candidate
from s4seg.imaging import decode_image
from s4seg.letterbox import Framed, Framing, labels_from_scores
from s4seg.onnx_pipeline import OnnxPipeline
from s4seg.outputs import label_png
from s4seg.repository import (
    ENSEMBLE,
    STEP_MODELS,
    graph_path,
    served_version,
    version_pipeline,
)
from s4seg.serving.triton import free_port
from s4seg.tensors import CLS_IMAGE, IMAGE, SCORES
from s4seg.triton_request import ensemble_inputs, map_back_outputs

from . import cpu_time, naive_endpoint
from .limits import network_flops, peak_gflops
from .report import cpu_description, percentile, provenance, report

# Input sizes of the latency table: (name, height, width).
SIZES = (("512 px", 512, 512), ("2 MP", 1224, 1632), ("12 MP", 3000, 4000))
# Output formats of the latency table: (name, query parameters).
FORMATS = (
    ("png", {"format": "png"}),
    ("json", {"format": "json"}),
    ("overlay png", {"format": "overlay"}),
    ("overlay jpeg", {"format": "overlay", "encoding": "jpeg"}),
)


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


@dataclass
class ModelAlone:
    engine: Candidate
    instances: int
    threads: int
    batch: int
    rates: list[float]  # images/s in each timed window

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)


def served_engines(manifest) -> tuple[Candidate, list[Candidate]]:
    """The engine the version is served with, and every engine its published files can run in
    here (the FP32 files also at bf16 where the export's BF16 variant passed and the CPU has
    it): the model alone is measured in each."""
    engine = (manifest.published or {}).get("engine") or {}
    served = Candidate(engine.get("runtime", "onnxruntime"), engine.get("precision", "fp32"))
    files = "fp32" if served.precision == "bf16" else served.precision
    found = [Candidate("onnxruntime", files), Candidate("openvino", files)]
    bf16 = manifest.variants.get("bf16")
    if files == "fp32" and bf16 is not None and bf16.graphs and bf16_capable():
        found.append(Candidate("openvino", "bf16"))
    return served, found


def model_alone(
    repository: Path, version: int, pipeline: OnnxPipeline, framed: Framed, window: float,
    windows: int,
) -> list[ModelAlone]:  # fmt: skip
    """Images/s of the segmenter + classifier alone, for each engine x instances x batch (the
    threads split the cores); each instance is a Python thread looping over its own sessions
    (both runtimes release the GIL). Warm-up outside the windows; one rate per window."""
    files = {step: graph_path(repository, step, version) for step in ("segmenter", "classifier")}
    _, engines = served_engines(pipeline.manifest)
    cores = os.cpu_count() or 1
    rows = []
    for engine in engines:
        for instances in (1, 2):
            threads = max(1, cores // instances)
            sessions = [
                {
                    step: open_session(
                        f, engine.runtime, engine.precision, pipeline.providers, threads=threads
                    )
                    for step, f in files.items()
                }
                for _ in range(instances)
            ]
            for batch in (1, 4, 8):
                rows.append(
                    ModelAlone(engine, instances, threads, batch,
                               loop_rates(pipeline, sessions, framed, batch, window, windows))
                )  # fmt: skip
                print(f"bench serve: model alone {engine.name} {instances}x{threads} batch "
                      f"{batch}: {rows[-1].rate:.1f} images/s", file=sys.stderr)  # fmt: skip
    return rows


def loop_rates(
    pipeline: OnnxPipeline, sessions: list[dict], framed: Framed, batch: int, window: float,
    windows: int,
) -> list[float]:  # fmt: skip
    images = np.repeat(framed.canvas[None], batch, axis=0)
    views = np.repeat(framed.view[None], batch, axis=0)
    done = [0] * len(sessions)
    stop = threading.Event()

    def loop(i: int) -> None:
        run = sessions[i]
        while not stop.is_set():
            run["segmenter"].run(None, {IMAGE.name: images})
            run["classifier"].run(None, {CLS_IMAGE.name: views})
            done[i] += batch

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(len(sessions))]
    for worker in workers:
        worker.start()
    time.sleep(window / 2)  # warm-up
    rates = []
    for _ in range(windows):
        before, start = sum(done), time.perf_counter()
        time.sleep(window)
        rates.append((sum(done) - before) / (time.perf_counter() - start))
    stop.set()
    for worker in workers:
        worker.join()
    return rates


def size_images(images: list[bytes]) -> dict[str, bytes]:
    """JPEGs at each size of ``SIZES``, made from the first benchmark image with film grain (a
    smooth upscale compresses, and decodes, unlike a photo)."""
    base = Image.open(io.BytesIO(images[0])).convert("RGB")
    rng = np.random.default_rng(1)
    out = {}
    for name, height, width in SIZES:
        big = np.asarray(base.resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
        grain = rng.normal(0, 6, (*big.shape[:2], 1)).astype(np.int16)
        buffer = io.BytesIO()
        Image.fromarray(np.clip(big + grain, 0, 255).astype(np.uint8)).save(
            buffer, "JPEG", quality=90
        )
        out[name] = buffer.getvalue()
    return out


def latency_by_size(gateway: str, photos: dict[str, bytes], repeats: int) -> list[tuple]:
    """(size, format, p50 ms, p90 ms, response KiB) at concurrency 1 through the gateway."""
    client = httpx.Client(timeout=120)
    rows = []
    for size, data in photos.items():
        for fmt, params in FORMATS:
            times, length = [], 0
            for i in range(repeats + 1):  # the first is a warm-up
                start = time.perf_counter()
                response = client.post(gateway, content=data, params=params,
                                       headers={"Content-Type": "image/jpeg"})  # fmt: skip
                if response.status_code != 200:
                    raise S4segError(f"{gateway} {params}: HTTP {response.status_code}")
                if i:
                    times.append(time.perf_counter() - start)
                length = len(response.content)
            p90 = percentile(times, 0.9)
            rows.append((size, fmt, statistics.median(times) * 1000, p90 * 1000, length / 1024))
            print(f"bench serve: {size} {fmt}: {rows[-1][2]:.0f} ms", file=sys.stderr)
    client.close()
    return rows


def hop_callers(triton_url: str, grpc_url: str, framed: Framed, tau: float) -> dict:
    """The ensemble called directly with a served-size tensor: HTTP, gRPC, HTTP + system shared
    memory for the image and the gated scores (one client and one pair of regions per thread;
    the classifier's small view inline, as the gateway sends it)."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    import tritonclient.utils.shared_memory as shm

    local = threading.local()
    regions: list[tuple] = []
    lock = threading.Lock()
    canvas, batch, views = framed.canvas, framed.canvas[None], framed.view[None]

    def inline(kind, url: str) -> Callable[[bytes], np.ndarray]:
        """Tensors in the request and response bodies, one client per thread."""

        def call(_: bytes) -> np.ndarray:
            clients = local.__dict__.setdefault("inline", {})
            if kind not in clients:
                clients[kind] = kind.InferenceServerClient(url)
            inputs = ensemble_inputs(kind, batch, views, tau)
            result = clients[kind].infer(ENSEMBLE, inputs, outputs=map_back_outputs(kind))
            return result.as_numpy(SCORES.name)

        return call

    def shm_call(_: bytes) -> np.ndarray:
        if not hasattr(local, "shm"):
            client = httpclient.InferenceServerClient(triton_url)
            name = f"s4seg_bench_{os.getpid()}_{threading.get_ident()}"
            out_bytes = 4 * 256 * canvas.shape[0] * canvas.shape[1]  # up to 256 classes
            handles = []
            for suffix, size in (("in", batch.nbytes), ("out", out_bytes)):
                handle = shm.create_shared_memory_region(
                    f"{name}_{suffix}", f"/{name}_{suffix}", size
                )
                client.register_system_shared_memory(f"{name}_{suffix}", f"/{name}_{suffix}", size)
                handles.append(handle)
            with lock:
                regions.append((name, handles))
            local.shm = (client, name, handles, out_bytes)
        client, name, (handle_in, handle_out), out_bytes = local.shm
        shm.set_shared_memory_region(handle_in, [batch])
        inputs = ensemble_inputs(httpclient, batch, views, tau, inline_image=False)
        inputs[0].set_shared_memory(f"{name}_in", batch.nbytes)
        outputs = map_back_outputs(httpclient)
        outputs[0].set_shared_memory(f"{name}_out", out_bytes)  # the scores; the rest inline
        result = client.infer(ENSEMBLE, inputs, outputs=outputs)
        shape = result.get_output(SCORES.name)["shape"]
        return shm.get_contents_as_numpy(handle_out, np.float32, shape).copy()

    def cleanup() -> None:
        # A client of this thread: tritonclient's HTTP clients (gevent) stay in their own.
        client = httpclient.InferenceServerClient(triton_url)
        for name, handles in regions:
            for suffix, handle in zip(("in", "out"), handles, strict=True):
                client.unregister_system_shared_memory(f"{name}_{suffix}")
                shm.destroy_shared_memory_region(handle)
        client.close()

    callers = {
        "HTTP": inline(httpclient, triton_url),
        "gRPC": inline(grpcclient, grpc_url),
        "HTTP + system shared memory": shm_call,
    }
    return callers, cleanup


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


def triton_step_stats(
    triton_url: str, models: dict[str, str] | None = None
) -> dict[str, tuple[float, float, int]]:
    """Per step: mean queue ms, mean compute ms (input+infer+output), executions. ``models``:
    step -> Triton model name (default: as served)."""
    out = {}
    for step, model in (models or STEP_MODELS).items():
        response = httpx.get(f"http://{triton_url}/v2/models/{model}/stats", timeout=5)
        if response.status_code != 200:  # a layout without this step
            continue
        stats = response.json()
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


IN_PROCESS = "in-process pipeline"

# The gateway's hop to Triton, as the settings choose it: the first is the default.
GATEWAY_VARIANTS = {
    "gateway -> Triton (gRPC + shared memory, default)": {
        "S4SEG_TRITON_PROTOCOL": "grpc", "S4SEG_TRITON_SHARED_MEMORY": "true"
    },
    "gateway -> Triton (gRPC)": {
        "S4SEG_TRITON_PROTOCOL": "grpc", "S4SEG_TRITON_SHARED_MEMORY": "false"
    },
    "gateway -> Triton (HTTP)": {
        "S4SEG_TRITON_PROTOCOL": "http", "S4SEG_TRITON_SHARED_MEMORY": "false"
    },
}  # fmt: skip


def start_serve(
    repository: Path, env: dict, variant: dict[str, str]
) -> tuple[subprocess.Popen, str, str, str]:
    """``s4seg serve`` on free ports: the process, the gateway URL, Triton's HTTP and gRPC."""
    ports = {name: str(free_port()) for name in ("PORT", "HTTP", "GRPC", "METRICS")}
    env = {
        **env,
        "S4SEG_PORT": ports["PORT"],
        "S4SEG_TRITON_HTTP_PORT": ports["HTTP"],
        "S4SEG_TRITON_GRPC_PORT": ports["GRPC"],
        "S4SEG_TRITON_METRICS_PORT": ports["METRICS"],
        **variant,
    }
    serve = subprocess.Popen(
        [sys.executable, "-m", "s4seg", "serve", "--repository", str(repository),
         "--no-quickstart"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    gateway = f"http://127.0.0.1:{ports['PORT']}"
    wait_http(f"{gateway}/healthz", serve)
    while httpx.get(f"{gateway}/readyz", timeout=5).status_code != 200:
        time.sleep(0.5)
    return serve, gateway, f"127.0.0.1:{ports['HTTP']}", f"127.0.0.1:{ports['GRPC']}"


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()


def percentiles(latencies: list[float]) -> tuple[float, float]:
    """p50 and p99 in ms."""
    return statistics.median(latencies) * 1000, percentile(latencies, 0.99) * 1000


def bench_serve(args: argparse.Namespace) -> str:  # noqa: C901, PLR0912, PLR0915 (to be split like study)
    repository = Path(args.repository)
    version = served_version(repository)
    if version is None:
        raise S4segError(f"{repository} has no published version (run `s4seg quickstart`)")
    pipeline = version_pipeline(repository, version, device="cpu")
    manifest = pipeline.manifest
    images = bench_images(manifest, args.images)
    framing = Framing.of(manifest)
    first = framing.frame(decode_image(images[0]).pixels)

    def in_process(data: bytes) -> None:
        decoded = decode_image(data, fit=framing.fit)
        framed = framing.frame(decoded.pixels, decoded.size)
        scores = pipeline.run(framed.canvas[None], framed.view[None]).scores[0]
        label_png(labels_from_scores(scores, framed.placement), manifest)

    # The model alone first, with nothing else running: in the served engine (what the gateway
    # is compared with) and in every other engine its files run in here (the machine's limit).
    alone = model_alone(repository, version, pipeline, first, args.window, args.windows)
    served_engine, _ = served_engines(manifest)
    best = max((r for r in alone if r.engine == served_engine), key=lambda row: row.rate)
    limit = max(alone, key=lambda row: row.rate)
    flops = network_flops(manifest)
    per_image = sum(flops.values())

    env = {**os.environ, "S4SEG_LOG_DIR": str(Path(args.log_dir))}
    processes: list[subprocess.Popen] = []
    rows: list[tuple[str, int, float, list[float]]] = []
    hops: list[tuple[str, float, list[float]]] = []
    stats, by_size = {}, []
    cpu: dict[tuple[str, int], dict[str, float]] = {}  # (target, concurrency) -> ms per request
    total = lambda c: max(args.requests, 4 * c)  # noqa: E731
    try:
        (default, variant), *others = list(GATEWAY_VARIANTS.items())[: args.variants]
        serve, gateway, triton_http, triton_grpc = start_serve(repository, env, variant)
        processes.append(serve)
        naive_port = free_port()
        naive_export = manifest.published.get("source") if manifest.published else None
        factory = f"{naive_endpoint.__name__}:{naive_endpoint.create_app.__name__}"
        naive = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", factory,
             "--port", str(naive_port), "--log-level", "warning"],
            env={**env, naive_endpoint.EXPORT_VARIABLE: str(naive_export)},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        processes.append(naive)
        wait_http(f"http://127.0.0.1:{naive_port}/docs", naive)
        targets = {
            IN_PROCESS: in_process,
            default: http_caller(f"{gateway}/v1/segment"),
            "naive FastAPI + PyTorch eager": http_caller(
                f"http://127.0.0.1:{naive_port}/v1/segment"
            ),
        }
        for concurrency in args.concurrency:
            for name, call in targets.items():
                print(f"bench serve: {name}, concurrency {concurrency}", file=sys.stderr)
                before, client = cpu_time.tree_cpu(serve.pid), cpu_time.own_cpu()
                rate, latencies = measure(call, images, concurrency, total(concurrency))
                rows.append((name, concurrency, rate, latencies))
                calls = total(concurrency) + min(concurrency, 4)  # with measure's warm-up
                if name in (default, IN_PROCESS):
                    used = cpu_time.per_request(before, cpu_time.tree_cpu(serve.pid), calls)
                    used = used if name == default else {}
                    used["client" if name == default else IN_PROCESS] = (
                        1000 * (cpu_time.own_cpu() - client) / calls
                    )
                    cpu[(name, concurrency)] = used
        stats = triton_step_stats(triton_http)
        callers, cleanup = hop_callers(triton_http, triton_grpc, first, manifest.tau)
        try:
            for name, call in callers.items():
                print(f"bench serve: hop {name}", file=sys.stderr)
                rate, latencies = measure(call, images, args.hop_concurrency, args.requests)
                hops.append((name, rate, latencies))
        finally:
            cleanup()
        by_size = latency_by_size(f"{gateway}/v1/segment", size_images(images), args.size_repeats)
        stop(processes)
        processes.clear()

        for name, variant in others:
            serve, gateway, _, _ = start_serve(repository, env, variant)
            processes.append(serve)
            call = http_caller(f"{gateway}/v1/segment")
            for concurrency in args.concurrency:
                print(f"bench serve: {name}, concurrency {concurrency}", file=sys.stderr)
                rate, latencies = measure(call, images, concurrency, total(concurrency))
                rows.append((name, concurrency, rate, latencies))
            stop(processes)
            processes.clear()
    finally:
        stop(processes)

    in_proc = {c: r for n, c, r, _ in rows if n.startswith("in-process")}
    h, w = manifest.input_size
    lines = [
        *provenance(f"{cpu_description()} (client, gateway, Triton and models share it)"),
        f"Model: version {version} of {repository} (DeepLabv2 ResNet-"
        f"{manifest.sources['segmenter'].arch['backbone_depth']}, served {h}x{w}, "
        f"{manifest.num_classes} classes); {len(images)} images cycled.",
        "",
        f"**Model alone** (segmenter + classifier sessions, nothing else; {args.windows} windows "
        f"of {args.window:g} s after a warm-up; median, min-max). Served with "
        f"{served_engine.name}; FLOPs per image {per_image / 1e9:.2f} G "
        f"({', '.join(f'{k} {v / 1e9:.2f} G' for k, v in flops.items())}, torch's flop "
        "counter); peak an estimate:",
        "",
    ]
    for precision in sorted({row.engine.precision for row in alone}):
        peak, how = peak_gflops(precision)
        lines.append(f"- peak {precision}: {f'{peak:.0f} GFLOP/s' if peak else 'unknown'} ({how})")
    lines += [
        "",
        "| runtime | precision | instances x threads | batch | images/s | spread | GFLOP/s | "
        "of peak |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in alone:
        mark = " **served best**" if row is best else ""
        mark += " **limit**" if row is limit else ""
        peak, _ = peak_gflops(row.engine.precision)
        gflops = row.rate * per_image / 1e9
        share = f"{100 * gflops / peak:.0f}%" if peak else "-"
        lines.append(
            f"| {row.engine.runtime} | {row.engine.precision} | {row.instances} x {row.threads} "
            f"| {row.batch} | {row.rate:.1f}{mark} | {min(row.rates):.1f}-{max(row.rates):.1f} | "
            f"{gflops:.0f} | {share} |"
        )
    lines += [
        "",
        "**Requests** (per request: decode, letterbox, segment gated, map back at the image's "
        "size, palette PNG; in-process and the gateway decode JPEGs at reduced scale alike):",
        "",
        "| target | concurrency | requests/s | p50 ms | p99 ms | p99/p50 | vs in-process | "
        "vs model alone (served engine) | vs the limit |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, concurrency, rate, latencies in sorted(rows, key=lambda r: r[1]):
        p50, p99 = percentiles(latencies)
        lines.append(
            f"| {name} | {concurrency} | {rate:.1f} | {p50:.0f} | {p99:.0f} | {p99 / p50:.2f} | "
            f"{rate / in_proc[concurrency]:.2f}x | {rate / best.rate:.2f}x | "
            f"{rate / limit.rate:.2f}x |"
        )
    if cpu:
        labels = sorted({k for (n, _), used in cpu.items() if n != IN_PROCESS for k in used})
        lines += [
            "",
            "**Where the CPU goes** (CPU ms per request, from /proc, over each run above: the "
            "client is this benchmark's process, the rest `s4seg serve` and its children; "
            "in-process: the whole pipeline in this process):",
            "",
            f"| concurrency | {' | '.join(labels)} | all (gateway path) | in-process |",
            "|---" * (len(labels) + 3) + "|",
        ]
        for concurrency in args.concurrency:
            used = cpu.get((default, concurrency), {})
            alone = cpu.get((IN_PROCESS, concurrency), {}).get(IN_PROCESS, float("nan"))
            cells = " | ".join(f"{used.get(k, 0):.1f}" for k in labels)
            lines.append(f"| {concurrency} | {cells} | {sum(used.values()):.1f} | {alone:.1f} |")
    if hops:
        lines += [
            "",
            f"**The hop alone**: the ensemble called directly with the served-size image tensor "
            f"(no decode, no map back), concurrency {args.hop_concurrency}, gated scores back:",
            "",
            "| protocol | requests/s | p50 ms | p99 ms |",
            "|---|---|---|---|",
        ]
        for name, rate, latencies in hops:
            p50, p99 = percentiles(latencies)
            lines.append(f"| {name} | {rate:.1f} | {p50:.0f} | {p99:.0f} |")
    if by_size:
        lines += [
            "",
            f"**Latency by input size** (the default gateway, concurrency 1, JPEG in, "
            f"{args.size_repeats} requests after one warm-up):",
            "",
            "| input | output | p50 ms | p90 ms | response KiB |",
            "|---|---|---|---|---|",
        ]
        for name, fmt, p50, p90, kib in by_size:
            lines.append(f"| {name} | {fmt} | {p50:.0f} | {p90:.0f} | {kib:.0f} |")
    if stats:
        lines += ["", "Triton, per step over the default gateway's run (means per request):", "",
                  "| step | queue ms | compute ms | executions |", "|---|---|---|---|"]  # fmt: skip
        for step, (queue, compute, executions) in stats.items():
            lines.append(f"| {step} | {queue:.1f} | {compute:.1f} | {executions} |")
    return report("\n".join(lines), args.write, "serve-cpu")
