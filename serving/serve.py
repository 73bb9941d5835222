"""``s4seg serve``: tritonserver + the version manager + the gateway, as one command.

1. No version published yet: ``first_run`` builds and publishes one (``s4seg serve`` passes the
   demo model's quickstart, run in a child process: serving never imports torch), else it fails.
2. Start ``tritonserver`` (explicit model control, ports on 127.0.0.1) and wait until it is live.
3. A supervisor thread syncs the served version every ``version_poll_seconds`` (new publishes,
   rollbacks) and restarts Triton if it dies.
4. uvicorn runs the gateway in the foreground. SIGINT/SIGTERM stop the gateway, the supervisor
   and Triton (its whole process group), in that order, leaving no process behind.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path

from s4seg.errors import S4segError
from s4seg.repository import complete_versions

from .settings import ServeSettings
from .triton import TritonProcess, TritonSettings
from .versions import VersionManager

log = logging.getLogger("s4seg.serve")


class Supervisor(threading.Thread):
    """Keeps Triton running and the served version current."""

    def __init__(self, triton: TritonProcess | None, versions: VersionManager, every: float):
        super().__init__(name="s4seg-supervisor", daemon=True)
        self.triton, self.versions, self.every = triton, versions, every
        self.stopping = threading.Event()
        self.restarts = 0

    def run(self) -> None:
        while not self.stopping.wait(self.every):
            try:
                if self.triton is not None and not self.triton.running:
                    code = self.triton.process.returncode if self.triton.process else None
                    log.error("tritonserver exited (code %s); restarting it", code)
                    self.triton.stop()
                    self.triton.start()
                    self.triton.wait_live(120)
                    self.restarts += 1
                    self.versions.reset()
                self.versions.sync()
            except Exception as error:  # keep supervising; the next round tries again
                log.error("supervisor: %s", error)

    def stop(self) -> None:
        self.stopping.set()
        if self.is_alive():
            self.join(timeout=30)


def _raise_on_sigterm() -> None:
    """Until uvicorn installs its own handlers, SIGTERM unwinds like Ctrl-C (cleanup runs)."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


FirstRun = Callable[[Path, str], None]  # (repository, runtime): publish a first version


def serve(settings: ServeSettings, first_run: FirstRun | None = None) -> int:
    import uvicorn

    from .gateway.app import create_app
    from .gateway.protocol import with_header_timeout

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    _raise_on_sigterm()
    repository = settings.repository
    if not complete_versions(repository) and settings.triton_url is None:
        if first_run is None:
            raise S4segError(f"{repository} has no published version (run `s4seg quickstart`)")
        first_run(repository, settings.runtime)
    triton = None
    # This replica's own folder: Triton's view and log (replicas may share log_dir and repository).
    view = settings.replica_dir / "triton-repository"
    if settings.triton_url is None:
        triton = TritonProcess(
            TritonSettings(
                view,
                host=settings.triton_host,
                http_port=settings.triton_http_port,
                grpc_port=settings.triton_grpc_port,
                metrics_port=settings.triton_metrics_port,
                log_file=settings.replica_dir / "tritonserver.log",
            )
        )
    versions = None
    if triton is not None:  # with --triton-url its owner decides what it serves
        versions = VersionManager(
            repository,
            f"http://{settings.triton_http}",
            settings.runtime,
            log=log.info,
            segmenter_instances=settings.segmenter_instances,
            threads=settings.threads_per_instance,
            view=view,
            replica=settings.replica_name,
            admin_key=triton.settings.admin_key,
        )
    supervisor = Supervisor(triton, versions, settings.version_poll_seconds) if versions else None
    try:
        if triton is not None:
            log.info("starting tritonserver (log: %s)", triton.settings.log_file)
            triton.start()
            triton.wait_live(120)
        if supervisor is not None and versions is not None:
            versions.start_heartbeat()
            served = versions.sync()
            if served is None:
                problems = "; ".join(f"v{v}: {r}" for v, r in versions.problems().items())
                raise S4segError(f"no published version loads in Triton: {problems or 'none'}")
            supervisor.start()
        log.info("gateway on http://%s:%d (docs at /docs)", settings.host, settings.port)
        config = uvicorn.Config(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            log_level="info",
            http=with_header_timeout(settings.header_timeout, settings.write_timeout),
            forwarded_allow_ips=settings.forwarded_allow_ips,
            timeout_graceful_shutdown=int(settings.shutdown_timeout),
            limit_concurrency=settings.max_connections,
        )
        uvicorn.Server(config).run()
    except KeyboardInterrupt:
        log.info("interrupted")
    finally:
        if supervisor is not None:
            supervisor.stop()
        if versions is not None:
            versions.close()
        if triton is not None:
            triton.stop()
        log.info("stopped")
    return 0
