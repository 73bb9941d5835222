"""A real ``s4seg serve`` (tritonserver + version manager + gateway) for the tests that talk to
it over HTTP: started on free ports, waited for until ready, stopped with SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
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


def start_serve(repo: Path, log: Path, extra_env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """Start ``s4seg serve`` on a free port; fail with its log if it exits or is not ready."""
    port = free_port()
    env = {**os.environ, "S4SEG_PORT": str(port), **extra_env}
    process = subprocess.Popen(
        [sys.executable, "-m", "s4seg", "serve", "--repository", str(repo), "--no-quickstart"],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise AssertionError("serve did not become ready:\n" + log.read_text()[-3000:])


@contextmanager
def serving(repo: Path, root: Path, **extra_env: str) -> Iterator[Served]:
    """A server for ``repo`` for the length of the block; SIGTERM and a clean exit after."""
    log = root / "serve.log"
    env = serve_env(root, **extra_env)
    process, url = start_serve(repo, log, env)
    try:
        yield Served(process, url, repo, log, env)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
