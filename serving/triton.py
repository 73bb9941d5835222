"""Starting and stopping the ``tritonserver`` that ships inside the ``nvidia-pytriton`` wheel.

What it takes on our machines (found by running it; docs/serving.md): the python-backend stub
copied next to the backend, the venv's ``bin`` first on PATH (the stub finds site-packages
through ``python3``), ``--backend-directory`` pointing into the wheel, and every port on
127.0.0.1 so that Triton's model-control API is not reachable from outside. No torch here.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import httpx

from s4seg.errors import S4segError


class TritonError(S4segError):
    """tritonserver is missing, can not start, or did not become ready."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def check_ports_free(host: str, ports: dict[str, int]) -> None:
    """Refuse, by name, to start where a port is taken: a tritonserver left by an earlier
    ``s4seg serve`` that was killed would answer on it, and be driven as ours (review M6)."""
    for name, port in ports.items():
        with socket.socket() as probe:
            # As Triton binds: connections of a Triton that died (TIME_WAIT) do not hold a
            # port, a listening server does.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
                probe.listen()
            except OSError:
                raise TritonError(
                    f"port {port} ({name}) on {host} is taken, by another program or by a "
                    "tritonserver of an `s4seg serve` that was killed: stop it, or choose other "
                    "ports (S4SEG_TRITON_*_PORT)"
                ) from None


_PR_SET_PDEATHSIG = 1
_prctl = (
    getattr(ctypes.CDLL(None, use_errno=True), "prctl", None) if sys.platform == "linux" else None
)


def _own_session_dying_with_parent() -> None:
    """In the child, before exec: Triton dies with the thread that started it (SIGKILL), even
    when ``s4seg serve`` is killed with SIGKILL and can not stop it (review M6)."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass(frozen=True)
class TritonInstall:
    binary: Path
    backends: Path | None  # None: the binary's own default (/opt/tritonserver/backends on NGC)

    @classmethod
    def find(cls) -> TritonInstall:
        """``S4SEG_TRITON_BINARY`` (e.g. the NGC image's server) if set, else the server in the
        nvidia-pytriton wheel, with its python backend stub in place (copied on first use)."""
        override = os.environ.get("S4SEG_TRITON_BINARY")
        if override:
            if not Path(override).is_file():
                raise TritonError(f"S4SEG_TRITON_BINARY={override}: no such file")
            return cls(Path(override), None)
        try:
            import pytriton
        except ImportError:
            raise TritonError(
                "nvidia-pytriton is not installed (pip install nvidia-pytriton)"
            ) from None
        root = Path(pytriton.__file__).parent / "tritonserver"
        binary, backends = root / "bin" / "tritonserver", root / "backends"
        if not binary.is_file():
            raise TritonError(f"no tritonserver binary in {root}")
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = backends / "python" / "triton_python_backend_stub"
        if not stub.is_file():
            source = root / "python_backend_stubs" / version / "triton_python_backend_stub"
            if not source.is_file():
                raise TritonError(
                    f"nvidia-pytriton has no python backend stub for Python {version}"
                )
            # Beside it, then renamed: replicas starting on one install never run half a
            # copy (review L11).
            part = stub.with_name(f".{stub.name}.{os.getpid()}")
            shutil.copy2(source, part)
            part.replace(stub)
        if ctypes.util.find_library(f"python{version}") is None and not any(
            Path(d, f"libpython{version}.so.1.0").exists()
            for d in (
                "/usr/lib/x86_64-linux-gnu",
                "/usr/lib",
                "/usr/local/lib",
                sys.base_prefix + "/lib",
            )
        ):
            raise TritonError(
                f"libpython{version}.so.1.0 not found: the python backend stub needs it "
                f"(Debian/Ubuntu: apt install libpython{version})"
            )
        return cls(binary, backends)


@dataclass
class TritonSettings:
    repository: Path
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    # "explicit": s4seg decides what loads (serving/versions.py); "none": all at start (bench)
    control: str = "explicit"
    poll_seconds: float = 1.0
    log_file: Path | None = None
    extra_args: list[str] = field(default_factory=list)
    # Triton's model-repository API (load, unload, index) answers only requests that carry this
    # key (``ADMIN_HEADER``): a new one each start, known to the version manager. Without it any
    # local process could load a python model of its own on loopback (review M9).
    admin_key: str = field(default_factory=lambda: secrets.token_hex(16))

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def shm_prefix(self) -> str:
        """The python backend's shared-memory regions of this server: the supervising process
        and the port name them, so that leftovers of a killed Triton can be found and removed."""
        return f"{SHM_PREFIX}{os.getpid()}_{self.http_port}_"


SHM_PREFIX = "s4seg_triton_"
ADMIN_HEADER = "s4seg-admin-key"
DEV_SHM = Path("/dev/shm")


def remove_shm_leftovers(own_prefix: str) -> list[str]:
    """Remove this server's python-backend regions (call while no Triton of it runs) and those
    of s4seg processes that are gone. Triton frees them on a clean exit; a killed one cannot."""
    removed = []
    pattern = re.compile(rf"{SHM_PREFIX}(\d+)_")
    for path in DEV_SHM.glob(f"{SHM_PREFIX}*"):
        match = pattern.match(path.name)
        if path.name.startswith(own_prefix) or (
            match and not Path(f"/proc/{match.group(1)}").exists()
        ):
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


def triton_command(install: TritonInstall, settings: TritonSettings) -> list[str]:
    return [
        str(install.binary),
        f"--model-repository={Path(settings.repository).resolve()}",
        *(
            ["--model-control-mode=poll", f"--repository-poll-secs={round(settings.poll_seconds)}"]
            if settings.control == "poll"
            else [f"--model-control-mode={settings.control}"]
        ),
        *([f"--backend-directory={install.backends}"] if install.backends else []),
        f"--http-address={settings.host}",
        f"--http-port={settings.http_port}",
        f"--grpc-address={settings.host}",
        f"--grpc-port={settings.grpc_port}",
        f"--metrics-address={settings.host}",
        f"--metrics-port={settings.metrics_port}",
        # A broken version must not stop the server: the previous one keeps serving.
        "--exit-on-error=false",
        "--strict-readiness=false",
        "--allow-gpu-metrics=false",
        "--exit-timeout-secs=10",
        *([] if os.path.exists("/dev/nvidiactl") else ["--pinned-memory-pool-byte-size=0"]),
        f"--backend-config=python,shm-region-prefix-name={settings.shm_prefix}",
        *(restricted_api(settings.admin_key) if settings.control == "explicit" else []),
        *settings.extra_args,
    ]


def restricted_api(key: str) -> list[str]:
    """Triton's model-repository API, over HTTP and gRPC, for requests with the key only."""
    return [
        f"--http-restricted-api=model-repository:{ADMIN_HEADER}={key}",
        f"--grpc-restricted-protocol=model-repository:{ADMIN_HEADER}={key}",
    ]


def triton_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


class TritonProcess:
    """A running tritonserver in its own process group (so stop() leaves nothing behind)."""

    def __init__(self, settings: TritonSettings) -> None:
        self.settings = settings
        self.install = TritonInstall.find()
        self.process: subprocess.Popen | None = None
        self._log: BinaryIO | None = None

    def start(self) -> TritonProcess:
        if not Path(self.settings.repository).is_dir():
            raise TritonError(f"model repository not found: {self.settings.repository}")
        settings = self.settings
        ports = {
            "http": settings.http_port,
            "grpc": settings.grpc_port,
            "metrics": settings.metrics_port,
        }
        check_ports_free(settings.host, ports)
        remove_shm_leftovers(self.settings.shm_prefix)  # of a Triton of ours that was killed
        out: int | BinaryIO = subprocess.DEVNULL
        if self.settings.log_file is not None:
            self.settings.log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.settings.log_file, "ab")  # noqa: SIM115 - lives with the process
            out = self._log
        self.process = subprocess.Popen(
            triton_command(self.install, self.settings),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=triton_env(),
            start_new_session=True,
            preexec_fn=_own_session_dying_with_parent,
        )
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_live(self, timeout: float = 60.0) -> None:
        """Until the HTTP endpoint answers; raises if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                code = self.process.returncode if self.process else None
                raise TritonError(
                    f"tritonserver exited with code {code} (log: {self.settings.log_file})"
                )
            try:
                if (
                    httpx.get(f"{self.settings.http_url}/v2/health/live", timeout=1).status_code
                    == 200
                ):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TritonError(f"tritonserver did not come up within {timeout:.0f} s")

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            with_group(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with_group(self.process.pid, signal.SIGKILL)
                self.process.wait()
        else:  # it died on its own; its stubs may still be around
            with_group(self.process.pid, signal.SIGKILL)
        _wait_group_gone(self.process.pid)
        remove_shm_leftovers(self.settings.shm_prefix)
        if self._log is not None:
            self._log.close()

    def __enter__(self) -> TritonProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _group_alive(pgid: int) -> bool:
    """A process of the group still runs (zombies, which nobody may reap in a container, not)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _wait_group_gone(pgid: int, timeout: float = 10.0) -> None:
    """Until no process of the group is left (the stubs hold the regions until they exit)."""
    deadline = time.monotonic() + timeout
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)


def with_group(pid: int, sig: int) -> None:
    """Signal a process group (the server and its python backend stubs)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)
