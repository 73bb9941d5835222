"""A real ``s4seg serve`` (tritonserver + version manager + gateway) for the tests that talk to
it over HTTP: started on free ports, waited for until ready, stopped with SIGTERM."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from s4seg.serving.triton import free_port

READY_SECONDS = 180


class Served:
    def __init__(
        self, process: subprocess.Popen, url: str, repo: Path, log: Path, env: dict[str, str]
    ) -> None:
        self.process, self.url, self.repo, self.log, self.env = process, url, repo, log, env

    @property
    def triton_port(self) -> str:
        return self.env["S4SEG_TRITON_HTTP_PORT"]

    def post(self, data: bytes, content_type: str = "image/png", **params) -> httpx.Response:
        return httpx.post(
            f"{self.url}/v1/segment",
            content=data,
            headers={"Content-Type": content_type},
            params=params,
            timeout=60,
        )


def serve_env(root: Path, **extra: str) -> dict[str, str]:
    """Ports and folders of one test server (S4SEG_* settings) under ``root``."""
    return {
        "S4SEG_TRITON_HTTP_PORT": str(free_port()),
        "S4SEG_TRITON_GRPC_PORT": str(free_port()),
        "S4SEG_TRITON_METRICS_PORT": str(free_port()),
        "S4SEG_LOG_DIR": str(root / "logs"),
        "S4SEG_VERSION_POLL_SECONDS": "0.5",
        **extra,
    }


def start_serve(
    repo: Path,
    log: Path,
    extra_env: dict[str, str],
    command: list[str] | None = None,
    ready_path: str = "/readyz",
) -> tuple[subprocess.Popen, str]:
    """Start ``s4seg serve`` (or ``command``: s4seg's arguments) on a free port; fail with its
    log if it exits or is not ready."""
    port = free_port()
    env = {**os.environ, "S4SEG_PORT": str(port), **extra_env}
    args = command or ["serve", "--repository", str(repo), "--no-quickstart"]
    process = subprocess.Popen(
        [sys.executable, "-m", "s4seg", *args],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(f"{url}{ready_path}", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise AssertionError("serve did not become ready:\n" + log.read_text()[-3000:])


@contextmanager
def serving(
    repo: Path,
    root: Path,
    command: list[str] | None = None,
    ready_path: str = "/readyz",
    log_name: str = "serve.log",
    **extra_env: str,
) -> Iterator[Served]:
    """A server for ``repo`` for the length of the block; SIGTERM and a clean exit after."""
    log = root / log_name
    env = serve_env(root, **extra_env)
    process, url = start_serve(repo, log, env, command, ready_path)
    try:
        yield Served(process, url, repo, log, env)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)


def record(name: str, figures: dict) -> None:
    """Figures to stdout and, with S4SEG_RELIABILITY_OUT=FILE, into the JSON file that
    RELIABILITY.md is written from."""
    print(f"\n[reliability] {name}: {json.dumps(figures)}")
    path = os.environ.get("S4SEG_RELIABILITY_OUT")
    if path:
        data = json.loads(Path(path).read_text()) if Path(path).is_file() else {}
        data[name] = figures
        Path(path).write_text(json.dumps(data, indent=1) + "\n")


def hammer(
    url: str,
    bodies: list[tuple[str, bytes, int]],
    stop: Callable[[], bool],
    results: list[tuple[float, str, int, str, str, str]],
) -> None:
    """POST random bodies to ``url`` until ``stop()``: (time, kind, status, version, error,
    detail): the detail, so that a failure says what it was."""
    with httpx.Client(timeout=120) as client:
        rng = random.Random(threading.get_ident())
        while not stop():
            kind, body, _ = rng.choice(bodies)
            response = client.post(
                f"{url}/v1/segment", content=body, headers={"Content-Type": "image/png"}
            )
            body = response.json() if response.status_code != 200 else {}
            results.append(
                (
                    time.monotonic(),
                    kind,
                    response.status_code,
                    response.headers.get("x-model-version", ""),
                    body.get("error", ""),
                    str(body.get("detail", ""))[:200],
                )
            )


HEALTH_PROBE = """
import sys, time, httpx
with httpx.Client(timeout=10, headers={"Connection": "close"}) as client:
    while True:
        start = time.monotonic()
        status = client.get(sys.argv[1] + "/healthz").status_code
        print(status, time.monotonic() - start, flush=True)
        time.sleep(0.05)
"""


@contextmanager
def health_probe(url: str) -> Iterator[list[float]]:
    """``/healthz`` asked every 50 ms, on a new connection each time (as a kubelet does), from a
    process of its own, answering before the block starts: the seconds of each answer, filled
    in when the block ends. (A thread beside the test's client threads would time its own wait
    for the GIL.)"""
    seconds: list[float] = []
    process = subprocess.Popen(
        [sys.executable, "-c", HEALTH_PROBE, url], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    first = process.stdout.readline()  # the probe runs: what follows is measured under load
    try:
        yield seconds
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    for line in [first, *output.splitlines()]:
        if not line.strip():
            continue
        status, took = line.split()
        assert status == "200", f"/healthz answered {status}"
        seconds.append(float(took))
