"""The three ways ``s4seg predict`` reaches a model: the gateway over HTTP, Triton directly, or
the exported ONNX pipeline in-process. Each gives ``segment(path) -> bytes`` of the output."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from s4seg.errors import S4segError
from s4seg.imaging import DEFAULT_MAX_PIXELS, read_image_file
from s4seg.letterbox import Framing, labels_from_scores
from s4seg.manifest import Manifest
from s4seg.onnx_pipeline import UNGATED_TAU, OnnxPipeline
from s4seg.outputs import label_png, overlay_bytes, segmentation_json

Segment = Callable[[Path], bytes]


@dataclass(frozen=True)
class OutputFormat:
    format: str  # png, overlay or json
    encoding: str | None = None  # overlay only: png (None), jpeg or webp


def encode_output(
    pixels, labels, class_probs, suppressed, manifest: Manifest, version: str,
    fmt: OutputFormat, tau,
) -> bytes:  # fmt: skip
    if fmt.format == "json":
        body = segmentation_json(labels, class_probs, suppressed, manifest, version, tau)
        return (json.dumps(body) + "\n").encode()
    if fmt.format == "overlay":
        return overlay_bytes(pixels, labels, manifest, fmt.encoding or "png")
    return label_png(labels, manifest)


def pipeline_segmenter(
    run: Callable, manifest: Manifest, version: Callable[[], str], fmt: OutputFormat, tau,
    gate: bool,
) -> Segment:  # fmt: skip
    """Decode, frame (canvas and classifier view), run (a pipeline's ``run``), map back,
    encode: as the gateway does."""
    used = manifest.request_tau(tau, gate)
    framing = Framing.of(manifest)
    fit = None if fmt.format == "overlay" else framing.fit  # only the overlay shows the photo

    def segment(path: Path) -> bytes:
        decoded = read_image_file(path, DEFAULT_MAX_PIXELS, fit)
        framed = framing.frame(decoded.pixels, decoded.size)
        out = run(framed.canvas[None], framed.view[None], used)
        labels = labels_from_scores(out.scores[0], framed.placement)
        return encode_output(
            decoded.pixels, labels, out.class_probs[0], out.suppressed[0], manifest, version(),
            fmt, None if used == UNGATED_TAU else used,  # gate=false, or served "gate off"
        )  # fmt: skip

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
        lambda images, views, t: client().run(images, views, t), manifest,
        lambda: client().last_version or "", fmt, tau, gate,
    )  # fmt: skip


def local_segmenter(
    model: str | None, repository: Path, fmt: OutputFormat, tau, gate: bool, device: str
) -> Segment:
    """The exported pipeline in-process: an export folder, else the repository's served one."""
    if model:
        pipeline = OnnxPipeline.from_export(model, device=device)
        version = "local"
    else:
        from s4seg.repository import served_version, version_pipeline

        served = served_version(repository)
        if served is None:
            raise S4segError(f"{repository} has no published version; pass --model EXPORT_DIR")
        pipeline = version_pipeline(repository, served, device=device)
        version = str(served)
    return pipeline_segmenter(pipeline.run, pipeline.manifest, lambda: version, fmt, tau, gate)
