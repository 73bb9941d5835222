"""What ``s4seg bench serve`` times: the images, the ways to call a model (in-process, over
HTTP, the bare hop to Triton), the servers it starts, and the timing loop."""

from __future__ import annotations

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
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from s4seg.errors import S4segError
from s4seg.letterbox import Framed
from s4seg.repository import (
    ENSEMBLE,
    STEP_MODELS,
)
from s4seg.serving.triton import free_port
from s4seg.tensors import SCORES
from s4seg.triton_request import ensemble_inputs, map_back_outputs

from .report import percentile

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


def measure(call: Callable[[bytes], object], images: list[bytes], concurrency: int, total: int):
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
                response = client.post(
                    gateway, content=data, params=params, headers={"Content-Type": "image/jpeg"}
                )
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


def hop_callers(
    triton_url: str, grpc_url: str, framed: Framed, tau: float
) -> tuple[dict[str, Callable[[bytes], np.ndarray]], Callable[[], None]]:
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
            raise S4segError(f"the server for {url} exited with {process.returncode}")
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
        "S4SEG_TRITON_PROTOCOL": "grpc",
        "S4SEG_TRITON_SHARED_MEMORY": "true",
    },
    "gateway -> Triton (gRPC)": {
        "S4SEG_TRITON_PROTOCOL": "grpc",
        "S4SEG_TRITON_SHARED_MEMORY": "false",
    },
    "gateway -> Triton (HTTP)": {
        "S4SEG_TRITON_PROTOCOL": "http",
        "S4SEG_TRITON_SHARED_MEMORY": "false",
    },
}


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
        [
            sys.executable,
            "-m",
            "s4seg",
            "serve",
            "--repository",
            str(repository),
            "--no-quickstart",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
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
