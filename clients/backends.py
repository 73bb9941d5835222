"""The three ways ``s4seg predict`` reaches a model: the gateway over HTTP, Triton directly, or
the exported ONNX pipeline in-process. Each gives ``segment(path) -> bytes`` of the output.

``Backend`` says which, as plain data: predict checks it once where it runs, then each of its
worker processes builds its own ``segment`` from it (``clients/predict.py``)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from s4seg.errors import S4segError
from s4seg.imaging import DEFAULT_MAX_PIXELS, read_image_file
from s4seg.letterbox import Framing, labels_from_scores
from s4seg.manifest import Manifest
from s4seg.onnx_pipeline import UNGATED_TAU, OnnxPipeline
from s4seg.outputs import Answer, label_png, overlay_bytes, segmentation_json
from s4seg.quality import answer_quality

Segment = Callable[[Path], bytes]


@dataclass(frozen=True)
class OutputFormat:
    format: str  # png, overlay or json
    encoding: str | None = None  # overlay only: png (None), jpeg or webp


def encode_output(pixels: np.ndarray, answer: Answer, fmt: OutputFormat) -> bytes:
    if fmt.format == "json":
        return (json.dumps(segmentation_json(answer)) + "\n").encode()
    if fmt.format == "overlay":
        return overlay_bytes(pixels, answer.labels, answer.manifest, fmt.encoding or "png")
    return label_png(answer.labels, answer.manifest)


def pipeline_segmenter(
    run: Callable,
    manifest: Manifest,
    version: Callable[[], str],
    fmt: OutputFormat,
    tau,
    gate: bool,
) -> Segment:
    """Decode, frame (canvas and classifier view), run (a pipeline's ``run``), map back,
    encode: as the gateway does."""
    used = manifest.request_tau(tau, gate)
    framing = Framing.of(manifest)
    fit = None if fmt.format == "overlay" else framing.fit  # only the overlay shows the photo

    def segment(path: Path) -> bytes:
        decoded = read_image_file(path, DEFAULT_MAX_PIXELS, fit)
        framed = framing.frame(decoded.pixels, decoded.size)
        out = run(framed.canvas[None], framed.view[None], used)
        scores, placement = out.scores[0], framed.placement
        answer = Answer(
            labels_from_scores(scores, placement),
            out.class_probs[0],
            out.suppressed[0],
            manifest,
            version(),
            None if used == UNGATED_TAU else used,  # gate=false, or served "gate off"
            answer_quality(scores, placement, out.class_probs[0], manifest)
            if fmt.format == "json"
            else None,
        )
        return encode_output(decoded.pixels, answer, fmt)

    return segment


def gateway_segmenter(url: str, fmt: OutputFormat, tau, gate: bool, api_key: str | None) -> Segment:
    from .client import SegmentationClient

    client = SegmentationClient(url, api_key)  # httpx.Client is safe to share between threads
    if not client.ready():
        raise S4segError(f"the gateway at {url} is not ready (is `s4seg serve` running?)")
    return lambda path: client.segment(path, fmt.format, tau, gate, fmt.encoding).content


def triton_segmenter(url: str, repository: Path, fmt: OutputFormat, tau, gate: bool) -> Segment:
    from s4seg.repository import served_manifest

    from .triton_pipeline import TritonPipeline

    manifest = served_manifest(repository)
    if manifest is None:
        raise S4segError(f"{repository} has no published version (needed for the manifest)")
    local = threading.local()  # tritonclient's HTTP client is not thread-safe: one per thread

    def client() -> TritonPipeline:
        if not hasattr(local, "pipeline"):
            local.pipeline = TritonPipeline(url, manifest)
        return local.pipeline

    TritonPipeline(url, manifest).close()  # fail early when Triton is not there
    return pipeline_segmenter(
        lambda images, views, t: client().run(images, views, t),
        manifest,
        lambda: client().last_version or "",
        fmt,
        tau,
        gate,
    )


def local_version(model: str | None, repository: Path) -> int | None:
    """The published version ``--via local`` runs (None: the export folder ``model``)."""
    if model:
        Manifest.load(model)  # refused by name here, before any worker starts
        return None
    from s4seg.repository import served_version

    served = served_version(repository)
    if served is None:
        raise S4segError(f"{repository} has no published version; pass --model EXPORT_DIR")
    return served


def local_segmenter(
    model: str | None,
    repository: Path,
    fmt: OutputFormat,
    tau,
    gate: bool,
    device: str,
    threads: int | None = None,
) -> Segment:
    """The exported pipeline in-process: an export folder, else the repository's served one;
    ``threads``: each network's intra-op threads (None: the runtime's default)."""
    served = local_version(model, repository)
    if served is None:
        pipeline = OnnxPipeline.from_export(model or "", device=device, threads=threads)
    else:
        from s4seg.repository import version_pipeline

        pipeline = version_pipeline(repository, served, device=device, threads=threads)
    version = "local" if served is None else str(served)
    return pipeline_segmenter(pipeline.run, pipeline.manifest, lambda: version, fmt, tau, gate)


@dataclass(frozen=True)
class Backend:
    """Where ``s4seg predict`` sends its images, and how the answers are encoded: plain data,
    so that each worker process builds its own connection or sessions from it."""

    via: str  # gateway, triton or local
    fmt: OutputFormat
    tau: float | None = None
    gate: bool = True
    url: str = "http://127.0.0.1:8080"  # gateway
    api_key: str | None = None  # gateway
    triton_url: str = "127.0.0.1:8000"  # triton
    repository: Path = Path("model_repository")  # triton, local
    model: str | None = None  # local: an export folder (None: the served version)
    device: str = "auto"  # local
    threads: int | None = None  # local: each network's intra-op threads in a worker

    def check(self) -> None:
        """Refuse, by name and before any worker starts, what no worker could run."""
        if self.via == "gateway":
            from .client import SegmentationClient

            with SegmentationClient(self.url, self.api_key) as client:
                if not client.ready():
                    raise S4segError(
                        f"the gateway at {self.url} is not ready (is `s4seg serve` running?)"
                    )
        elif self.via == "triton":
            self.build()  # Triton answers, and a version is published
        else:
            local_version(self.model, self.repository)

    def build(self) -> Segment:
        if self.via == "gateway":
            return gateway_segmenter(self.url, self.fmt, self.tau, self.gate, self.api_key)
        if self.via == "triton":
            return triton_segmenter(self.triton_url, self.repository, self.fmt, self.tau, self.gate)
        return local_segmenter(
            self.model, self.repository, self.fmt, self.tau, self.gate, self.device, self.threads
        )
