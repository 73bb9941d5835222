"""The real gateway app in-process, with Triton replaced at its dependency (FastAPI's
``dependency_overrides``): for the HTTP contracts that need no model (limits, errors, headers,
metrics, admission). The ensemble here is a stand-in with a known answer; everything else
(middleware, routers, decoding, map-back, encoding) is the product's code."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import uvicorn

from s4seg.manifest import GraphFile, Manifest, Normalization
from s4seg.repository import ENSEMBLE
from s4seg.serving.gateway.app import create_app
from s4seg.serving.gateway.dependencies import get_triton
from s4seg.serving.gateway.protocol import with_header_timeout
from s4seg.serving.gateway.triton_client import Segmentation
from s4seg.serving.settings import ServeSettings
from s4seg.serving.triton import free_port

CLASSES = ["background", "red"]


def write_repository(root: Path, version: int = 1, size: int = 32) -> Path:
    """A repository whose version holds a manifest (no graphs: the fake ensemble answers)."""
    graph = GraphFile(file="x.onnx", sha256="0", inputs={}, outputs={})
    manifest = Manifest(
        created="2026-12-01T00:00:00",
        s4seg_version="test",
        dataset={"kind": "folder", "root": "/home/someone/private/data/shapes"},
        classes=CLASSES,
        palette=[[0, 0, 0], [255, 0, 0]],
        background_index=0,
        input_size=[size, size],
        pad_value=[0, 0, 0],
        normalization=Normalization(mean=[0.5] * 3, std=[0.5] * 3),
        classifier=None,
        tau=-1.0,
        opset=18,
        graphs={step: graph for step in ("segmenter", "classifier", "gate")},
        sources={
            "segmenter": {
                "path": "/home/someone/private/runs/s4gan/checkpoint.pt",
                "sha256": "0",
                "kind": "segmenter",
                "arch": {},
            }
        },
        config_digest="sha256:0",
    )
    manifest.save(root / ENSEMBLE / str(version) / "manifest.json")
    return root


class FakeEnsemble:
    """Answers like the ensemble: class 1 where the red channel is above 128, after ``delay``.
    ``down``: like a Triton that is not there (not ready, no served version)."""

    def __init__(self, delay: float = 0.0, down: bool = False) -> None:
        self.delay = delay
        self.down = down
        self.calls = 0
        self.last_inputs: tuple[np.ndarray, np.ndarray] | None = None  # (canvas, view)
        self.in_flight = 0
        self.most_in_flight = 0

    async def served_version(self, max_age: float = 0.5) -> int | None:
        return None if self.down else 1

    async def readiness(self) -> tuple[bool, str]:
        return (False, "Triton is not live") if self.down else (True, "ready")

    async def segment(self, canvas, view, tau, classes, wait=None, version=None) -> Segmentation:
        self.calls += 1
        self.last_inputs = (canvas, view)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.wait_for(asyncio.sleep(self.delay), wait)
        except TimeoutError:
            from s4seg.serving.gateway.triton_client import TritonFailed

            raise TritonFailed("Triton did not answer", 504) from None
        finally:
            self.in_flight -= 1
        red = (canvas[..., 0] > 128).astype(np.float32)
        scores = np.stack([1.0 - red, red])
        return Segmentation(scores, np.ones(2, np.float32), np.zeros(2, bool), "1")


def fake_app(repository: Path, ensemble: FakeEnsemble | None = None, **settings):
    settings = ServeSettings(repository=repository, triton_shared_memory=False, **settings)
    app = create_app(settings)
    ensemble = ensemble or FakeEnsemble()

    async def fake_triton() -> FakeEnsemble:
        return ensemble

    app.dependency_overrides[get_triton] = fake_triton
    return app, ensemble


@contextmanager
def running(app, header_timeout: float = 5.0, write_timeout: float = 30.0) -> Iterator[str]:
    """The app under a real uvicorn (our protocol class) on a free port, in a thread."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        http=with_header_timeout(header_timeout, write_timeout),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
