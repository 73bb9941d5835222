"""What the served system survives: load with bad input mixed in, Triton killed mid-load, a
version swap under load, processes killed mid-work, and fuzzed input. Figures go to stdout and,
with S4SEG_RELIABILITY_OUT=FILE, into a JSON file that RELIABILITY.md is written from."""

from __future__ import annotations

import io
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from serve_helpers import Served, hammer, health_probe, record, serving

from s4seg.export.repository import publish
from s4seg.export.requests import PublishRequest
from s4seg.imaging import DecodedImage, ImageError, decode_image
from s4seg.workflows.bench.report import percentile

QUIET = {"log": lambda *_: None}
# One address holds at most three quarters of the 32 admission slots (issue 32): the load
# generator stays within its share, so every refusal it sees comes from the scenario.
CONCURRENCY = 24


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pids(pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def shm_regions() -> set[str]:
    return {p.name for p in Path("/dev/shm").iterdir() if "triton" in p.name.lower()}


def png(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def stack(tiny_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("reliability")
    repo = root / "repo"
    publish(PublishRequest(tiny_export, repo), **QUIET)
    with serving(repo, root) as server:
        yield server


def mixed_inputs(synth_root: Path) -> list[tuple[str, bytes, int]]:
    """(kind, body, expected status): valid images and the bad ones users send."""
    images = sorted((synth_root / "images" / "val").iterdir())
    valid = [("valid", p.read_bytes(), 200) for p in images]
    jpeg = png(Image.open(images[0]).convert("RGB").resize((200, 200)), "JPEG")
    bad = [
        ("text", b"hello, not an image\n" * 20, 415),
        ("truncated", jpeg[: len(jpeg) // 2], 422),
        ("empty", b"", 422),
    ]
    return valid * 3 + bad  # 3 valid for each bad one


def run_load(
    stack: Served, bodies, until: Callable[[list], bool], during=None, limit: float = 300
) -> list:
    """Load from CONCURRENCY clients until ``until(results)``; past ``limit`` seconds the
    test fails with what came back instead of hanging."""
    results: list = []
    deadline = time.monotonic() + limit
    done = threading.Event()
    workers = [
        threading.Thread(target=hammer, args=(stack.url, bodies, done.is_set, results))
        for _ in range(CONCURRENCY)
    ]
    for worker in workers:
        worker.start()
    try:
        if during is not None:
            during(results)
        while not until(results):
            if time.monotonic() > deadline:
                statuses = Counter(f"{r[2]} {r[4]}" for r in results)
                pytest.fail(f"not done after {limit:.0f} s: {len(results)} answers {statuses}")
            time.sleep(0.2)
    finally:
        done.set()
        for worker in workers:
            worker.join()
    return results


@pytest.mark.slow
def test_load_with_bad_input_mixed_in(stack: Served, synth_root: Path) -> None:
    bodies = mixed_inputs(synth_root)
    expected = {kind: status for kind, _, status in bodies}
    with httpx.Client(timeout=60) as client:  # warm up: every stub started, every region made
        for _, body, _ in bodies[:20]:
            client.post(
                f"{stack.url}/v1/segment", content=body, headers={"Content-Type": "image/png"}
            )
    time.sleep(3)
    stubs_before = len(pids(f"triton_python_backend_stub.*{stack.repo.parent}"))
    shm_before = shm_regions()
    rss_before = rss_mib(stack.process.pid)
    start = time.monotonic()
    results = run_load(stack, bodies, lambda r: len(r) >= 2000)
    seconds = time.monotonic() - start
    unexpected = [r for r in results if r[2] != expected[r[1]]]
    rss_after = rss_mib(stack.process.pid)
    statuses = Counter((r[1], r[2]) for r in results)
    stubs_after = len(pids(f"triton_python_backend_stub.*{stack.repo.parent}"))
    figures = {
        "requests": len(results),
        "concurrency": CONCURRENCY,
        "seconds": round(seconds, 1),
        "requests_per_second": round(len(results) / seconds, 1),
        "by_kind_and_status": {f"{k} {s}": n for (k, s), n in statuses.items()},
        "unexpected": len(unexpected),
        "gateway_rss_mib_before": round(rss_before, 1),
        "gateway_rss_mib_after": round(rss_after, 1),
        "python_backend_stubs_before_after": [stubs_before, stubs_after],
        "triton_shm_regions_before_after": [len(shm_before), len(shm_regions())],
    }
    record("load", figures)
    assert unexpected == [], unexpected[:5]
    assert rss_after - rss_before < 200, "gateway memory grew by more than 200 MiB"
    # Nothing accumulates: no new stub processes, no new shared-memory regions.
    assert stubs_after <= stubs_before
    assert len(shm_regions()) <= len(shm_before)  # (the python backend's names are uuids)


@pytest.mark.slow
def test_version_swap_under_load(stack: Served, synth_root: Path, tiny_export: Path) -> None:
    bodies = [b for b in mixed_inputs(synth_root) if b[0] == "valid"]
    published: dict[str, float] = {}

    def swap(results: list) -> None:
        time.sleep(2)
        published["at"] = time.monotonic()
        published["version"] = str(publish(PublishRequest(tiny_export, stack.repo), **QUIET))

    def switched(results: list) -> bool:
        new = [r for r in results if published and r[3] == published["version"]]
        return len(new) >= 3 * CONCURRENCY

    results = run_load(stack, bodies, switched, during=swap)
    failures = [r for r in results if r[2] != 200]
    versions = Counter(r[3] for r in results)
    first_new = min(r[0] for r in results if r[3] == published["version"])
    figures = {
        "requests": len(results),
        "failed": len(failures),
        "failures": dict(Counter(f"{r[2]} {r[4]}" for r in failures)),
        "versions_in_responses": dict(versions),
        "switch_seconds_after_publish": round(first_new - published["at"], 1),
    }
    record("version_swap", figures)
    assert failures == []
    assert set(versions) == {str(int(published["version"]) - 1), published["version"]}
    # The catalog describes the version that now answers.
    models = httpx.get(f"{stack.url}/v1/models", timeout=5).json()
    assert models["served_version"] == int(published["version"])


@pytest.mark.slow
def test_triton_sigkill_mid_load(stack: Served, synth_root: Path) -> None:
    bodies = [b for b in mixed_inputs(synth_root) if b[0] == "valid"]
    killed: dict[str, float] = {}

    prefix = f"s4seg_triton_{stack.process.pid}_{stack.triton_port}_"
    shm: dict[str, object] = {}

    def kill(results: list) -> None:
        time.sleep(2)
        shm["gateway_before"] = gateway_regions(stack)
        shm["before"] = {n for n in shm_regions() if n.startswith(prefix)}
        shm["bytes"] = shutil.disk_usage("/dev/shm").used
        (pid,) = pids(f"bin/tritonserver --model-repository={stack.repo.parent}")
        killed["at"] = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        # Readiness says so while Triton is down (the load answers 503 meanwhile).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "readyz_down" not in killed:
            if httpx.get(f"{stack.url}/readyz", timeout=5).status_code == 503:
                killed["readyz_down"] = time.monotonic()
            time.sleep(0.05)

    def recovered(results: list) -> bool:
        after = [r for r in results if killed and r[0] > killed["at"]]
        failed = [r for r in after if r[2] != 200]
        return bool(failed) and sum(1 for r in after if r[2] == 200 and r[0] > failed[-1][0]) > 50

    results = run_load(stack, bodies, recovered, during=kill)
    failed = [r for r in results if r[2] != 200]
    after = {n for n in shm_regions() if n.startswith(prefix)}
    grown = shutil.disk_usage("/dev/shm").used - shm["bytes"]
    figures = {
        "requests": len(results),
        "non_200": len(failed),
        "non_200_statuses": dict(Counter(f"{r[2]} {r[4]}" for r in failed)),
        "outage_seconds": round(failed[-1][0] - killed["at"], 1),
        "gateway_restarted": stack.process.poll() is not None,
        "python_backend_regions_before_after": [len(shm["before"]), len(after)],
        "dev_shm_mib_grown": round(grown / 2**20, 1),
    }
    record("triton_sigkill", figures)
    # /dev/shm is back to what it was: none of the killed Triton's regions is left.
    assert shm["before"] and after and not shm["before"] & after
    assert grown < 2 * 2**20
    assert {r[2] for r in failed} == {503}
    assert {r[4] for r in failed} == {"unavailable"}
    assert stack.process.poll() is None  # the gateway itself never restarted
    assert "readyz_down" in killed, "/readyz did not report Triton down"
    assert httpx.get(f"{stack.url}/readyz", timeout=5).status_code == 200
    # The new Triton knew none of the gateway's regions: they were registered again.
    assert shm["gateway_before"] and gateway_regions(stack)


@pytest.mark.slow
def test_predict_killed_mid_run_then_completes(tiny_export: Path, tmp_path: Path) -> None:
    from s4seg.training.data.synth import write_synthetic

    root = write_synthetic(tmp_path / "synth", num_train=0, num_val=120, num_unlabeled=0, size=64)
    images = root / "images" / "val"
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "s4seg",
        "predict",
        "--via",
        "local",
        "--model",
        str(tiny_export),
        "--input",
        str(images),
        "--output",
        str(out),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(out.rglob("*.png"))) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    partial = len(list(out.rglob("val_*.png")))
    for path in out.rglob("val_*.png"):  # every file with a final name is a whole PNG
        Image.open(path).load()
    rerun = subprocess.run(command, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert len(list(out.rglob("val_*.png"))) == 120
    assert not list(out.rglob(".*.tmp"))
    record(
        "predict_sigkill",
        {
            "written_before_kill": partial,
            "total": 120,
            "rerun": rerun.stdout.strip().splitlines()[0],
        },
    )


@pytest.mark.slow
def test_training_sigkill_then_resume_equals_uninterrupted(synth_root: Path, tmp_path: Path):
    import torch
    from helpers import TINY_TRAINING

    from s4seg.training.checkpoint import Checkpoint

    base = [sys.executable, "-m", "s4seg", "train", "baseline", "--config", "synthetic-quick"]
    sets = [
        *TINY_TRAINING,
        f"data.root={synth_root}",
        "train.iterations=6",
        "train.checkpoint_every=2",
        "train.val_every=100",
    ]

    def command(out: Path) -> list[str]:
        return [*base, *(a for s in [*sets, f"train.out_dir={out}"] for a in ("--set", s))]

    straight = tmp_path / "straight"
    subprocess.run(command(straight), check=True, capture_output=True)
    killed = tmp_path / "killed"
    process = subprocess.Popen(
        command(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        last = killed / "last.pt"
        if last.is_file() and Checkpoint.load(last).iteration >= 2:
            break
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    at_kill = Checkpoint.load(killed / "last.pt").iteration
    subprocess.run([*command(killed), "--resume", "auto"], check=True, capture_output=True)
    a, b = Checkpoint.load(straight / "last.pt"), Checkpoint.load(killed / "last.pt")
    assert a.iteration == b.iteration == 6
    for name, tensor in a.model.items():
        assert torch.equal(tensor, b.model[name]), name
    # A checkpoint cut short on disk is refused by name, never loaded half.
    truncated = tmp_path / "truncated.pt"
    data = (killed / "last.pt").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    result = subprocess.run(
        [*command(killed), "--resume", str(truncated)], capture_output=True, text=True
    )
    assert result.returncode == 2 and "unreadable (truncated or corrupt?)" in result.stderr
    record(
        "training_sigkill", {"killed_at_iteration": at_kill, "resumed_to": 6, "weights_equal": True}
    )


# -- fuzzing -------------------------------------------------------------------------------------


def _valid_png() -> bytes:
    return png(Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 24, 3), np.uint8)))


VALID = {"png": _valid_png(), "jpeg": png(Image.open(io.BytesIO(_valid_png())), "JPEG")}
FUZZED = {
    "base": st.sampled_from(sorted(VALID)),
    "cut": st.integers(min_value=0, max_value=2000),
    "flips": st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=8),
    "junk": st.binary(max_size=64),
}


def test_decoding_fuzzed_bytes_never_crashes() -> None:
    """Valid files cut, bit-flipped and extended: decoded, or refused with ImageError."""
    tried = 0

    @settings(max_examples=400, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
    @given(**FUZZED)
    def fuzz(base: str, cut: int, flips, junk: bytes) -> None:
        nonlocal tried
        tried += 1
        data = bytearray(VALID[base][: max(cut, 1)] if cut else VALID[base])
        for position, value in flips:
            if data:
                data[position % len(data)] = value
        try:
            result = decode_image(bytes(data) + junk, max_pixels=1_000_000)
        except ImageError as error:
            assert 400 <= error.status < 500 and str(error)
            return
        assert isinstance(result, DecodedImage) and result.pixels.dtype == np.uint8
        assert result.pixels.ndim == 3 and result.pixels.shape[2] == 3

    fuzz()
    record("fuzz_decode_fuzzed", {"cases": tried})


def test_decoding_random_bytes_never_crashes() -> None:
    tried = 0

    @settings(max_examples=200, deadline=2000)
    @given(st.binary(max_size=512))
    def fuzz(data: bytes) -> None:
        nonlocal tried
        tried += 1
        try:
            decode_image(data)
        except ImageError as error:
            assert error.status in (413, 415, 422)

    fuzz()
    record("fuzz_decode_random", {"cases": tried})


@pytest.mark.slow
def test_gateway_fuzzed_from_its_openapi_schema(stack: Served) -> None:
    """Requests generated from the gateway's own OpenAPI schema (schemathesis): never a 5xx,
    never a hang. (Driven with hypothesis directly: schemathesis' pytest plugin does not load
    under this pytest.)"""
    import schemathesis
    from schemathesis.checks import not_a_server_error

    schema = schemathesis.openapi.from_url(f"{stack.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    cases: Counter = Counter()
    assert any(op.path == "/v1/segment" for op in operations)
    for operation in operations:

        @settings(
            max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        @given(case=operation.as_strategy())
        def fuzz(case) -> None:
            cases[f"{case.method} {case.path}"] += 1
            case.call_and_validate(checks=[not_a_server_error], timeout=60)

        fuzz()
    record("fuzz_api", {"cases": dict(cases)})


SLOW_RUNNER = '''"""Test only: the real runner, slow on purpose for uniform red images."""
import importlib.util
import os
import time

import triton_python_backend_utils as pb_utils

_spec = importlib.util.spec_from_file_location(
    "real_runner", os.path.join(os.path.dirname(os.path.abspath(__file__)), "real_runner.py")
)
_real = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_real)


class TritonPythonModel(_real.TritonPythonModel):
    def execute(self, requests):
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "image").as_numpy().astype("float32")
            red = float(x[0, 0, 0, 0] - x[0, 0, 0, 1]) > 200
            if float(x.std(axis=(1, 2)).max()) < 1e-6 and red:
                time.sleep(SECONDS)
        return super().execute(requests)
'''


def gateway_regions(server: Served) -> set[str]:
    url = f"http://127.0.0.1:{server.triton_port}/v2/systemsharedmemory/status"
    return {r["name"] for r in httpx.get(url, timeout=5).json() if r["name"].startswith("s4seg_")}


def test_a_timed_out_request_never_hands_its_scores_to_the_next(
    tiny_export: Path, synth_root: Path, tmp_path: Path
) -> None:
    """Issue 19, item 2: one shared-memory slot (max_in_flight 1), a request whose segmenter
    step is made slow on purpose so that it times out while Triton still works on it: the
    requests after it answer with their own scores, and never in its regions."""
    repo = tmp_path / "repo"
    publish(PublishRequest(tiny_export, repo), **QUIET)
    step = repo / "s4seg_segmenter" / "1"
    (step / "model.py").rename(step / "real_runner.py")
    (step / "model.py").write_text(SLOW_RUNNER.replace("SECONDS", "3.0"))
    images = sorted((synth_root / "images" / "val").iterdir())[:3]
    bodies = [p.read_bytes() for p in images]
    slow = png(Image.new("RGB", (64, 64), (250, 5, 5)))
    settings = {"S4SEG_MAX_IN_FLIGHT": "1", "S4SEG_REQUEST_TIMEOUT": "1.5"}
    with serving(repo, tmp_path, **settings) as server:
        own = [server.post(body).content for body in bodies]  # each image's own label map
        regions_before = gateway_regions(server)
        assert len(regions_before) == 2  # the one slot: its input and output region
        timed_out: list[httpx.Response] = []
        thread = threading.Thread(target=lambda: timed_out.append(server.post(slow)))
        thread.start()
        time.sleep(0.3)  # it is in flight (and holds the one slot)
        answers: list[tuple[int, int, bytes]] = []
        until = time.monotonic() + 5.0  # past the slow request's deadline and its late write
        while time.monotonic() < until:
            i = len(answers) % len(bodies)
            r = server.post(bodies[i])
            answers.append((i, r.status_code, r.content))
        thread.join()
        regions_after = gateway_regions(server)
    assert timed_out[0].status_code == 504, timed_out[0].text
    served = [(i, content) for i, status, content in answers if status == 200]
    assert {status for _, status, _ in answers} <= {200, 503}  # 503: the one slot was taken
    assert len(served) > 10
    wrong = [i for i, content in served if content != own[i]]
    record("timed_out_slot", {"answers_after_timeout": len(served), "wrong_scores": len(wrong)})
    assert wrong == [], f"{len(wrong)} answers carried scores that were not their own"
    # The timed-out request's regions were given up (unregistered), never handed out again.
    assert regions_after.isdisjoint(regions_before), (regions_before, regions_after)
    assert len(regions_after) == 2


def declared_jpeg(width: int, height: int) -> bytes:
    """A few hundred bytes whose header declares width x height (the data is cut short)."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 120, 30)).save(buffer, "JPEG", quality=50)
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def flood(url: str, body: bytes, count: int, params: dict | None = None) -> list[tuple[int, float]]:
    """``count`` requests released at once; (status, seconds) of each."""
    results: list[tuple[int, float]] = []
    gate = threading.Barrier(count)

    def one() -> None:
        with httpx.Client(timeout=120) as client:
            gate.wait()
            start = time.monotonic()
            r = client.post(
                f"{url}/v1/segment",
                content=body,
                params=params or {},
                headers={"Content-Type": "image/jpeg"},
            )
            results.append((r.status_code, time.monotonic() - start))

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def pct(values: list[float], q: int) -> float:
    """The one percentile of the benchmarks (``q`` in percent); NaN for no values."""
    return percentile(values, q / 100) if values else float("nan")


@pytest.mark.slow
def test_a_flood_past_the_bound_gets_200_or_503_and_health_stays_fast(
    stack: Served, synth_root: Path
) -> None:
    """Issue 19, item 4 (and 10): 200 requests at once against max_in_flight 32; then 40 tiny
    JPEGs that each declare 39 MP, as overlays (refused for their pixels per byte since issue
    32; before, decoded at full size)."""
    body = sorted((synth_root / "images" / "val").iterdir())[0].read_bytes()
    with health_probe(stack.url) as health:
        results = flood(stack.url, body, 200)
    counts = Counter(status for status, _ in results)
    accepted = [seconds for status, seconds in results if status == 200]
    refused = [seconds for status, seconds in results if status in (429, 503)]

    rss_before, peak = rss_mib(stack.process.pid), [0.0]
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            peak[0] = max(peak[0], rss_mib(stack.process.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        bombs = flood(stack.url, declared_jpeg(65500, 598), 40, {"format": "overlay"})
    finally:
        sampling.set()
        sampler.join()
    bomb_counts = Counter(status for status, _ in bombs)
    figures = {
        "flood_requests": len(results),
        "by_status": {str(k): v for k, v in sorted(counts.items())},
        "accepted_p50_s": round(pct(accepted, 50), 2),
        "accepted_p99_s": round(pct(accepted, 99), 2),
        "refused_p99_s": round(pct(refused, 99), 3),
        "healthz_p50_s": round(pct(health, 50), 3),
        "healthz_max_s": round(max(health), 3),
        "declared_39mp_jpegs": len(bombs),
        "declared_39mp_by_status": {str(k): v for k, v in sorted(bomb_counts.items())},
        "gateway_rss_mib_before": round(rss_before, 1),
        "gateway_rss_mib_peak": round(peak[0], 1),
    }
    record("flood", figures)
    # One client: at most three quarters of the uploads (48 of 64) and of the slots (24 of 32)
    # are its own (429 beyond them, issue 32); the rest of the flood is refused at once.
    assert set(counts) <= {200, 429, 503} and counts[200] >= 24, counts
    # Refused at once, not after a queue (queued behind the flood, p99 was 7.2 s): 0.25 s on
    # a quiet machine, 1.05 s once on CI's, with 200 connections opening on two cores.
    assert pct(refused, 99) < 2.5
    # Half the liveness probe's timeout (deploy/kubernetes: 5 s, three times); 0.5-1.2 s here.
    assert health and max(health) < 2.5
    # Refused by their pixels per byte (422) since issue 32; before, served grey where the data
    # ended, each holding 39 MP of the budget.
    assert set(bomb_counts) <= {413, 422, 429}, bomb_counts  # 413: 65500 px, a side too long
    # One 39 MP overlay costs about 0.7 GiB; the budget (max_pixels) lets one run at a time.
    assert peak[0] - rss_before < 1100, "40 declared-39-MP images raised the gateway's memory"


@pytest.mark.slow
def test_slow_clients_are_dropped(stack: Served) -> None:
    """Issue 19, item 5, with the default limits on the real server: headers sent one byte a
    second, and a body that stalls after 8 of 100,000 declared bytes."""
    import socket

    port = int(stack.url.rsplit(":", 1)[1])
    seconds: dict[str, float] = {}

    def drip() -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        start = time.monotonic()
        try:
            for byte in b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n" * 4:
                sock.sendall(bytes([byte]))
                sock.settimeout(1.0)
                try:
                    if sock.recv(1) == b"":
                        break
                except TimeoutError:
                    pass
        except OSError:
            pass
        seconds["headers_one_byte_a_second"] = time.monotonic() - start

    def stall() -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        start = time.monotonic()
        sock.sendall(
            b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Content-Length: 100000\r\n\r\n12345678"
        )
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
        seconds["body_stalled_after_8_bytes"] = time.monotonic() - start
        seconds["body_answer_408"] = float(answer.startswith(b"HTTP/1.1 408"))

    threads = [threading.Thread(target=drip), threading.Thread(target=stall)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    record("slow_clients", {k: round(v, 1) for k, v in seconds.items()})
    assert seconds["headers_one_byte_a_second"] < 8  # S4SEG_HEADER_TIMEOUT 5 s
    assert seconds["body_stalled_after_8_bytes"] < 13 and seconds["body_answer_408"] == 1.0
