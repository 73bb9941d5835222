"""``s4seg bench precision``: an export's networks in every runtime (ONNX Runtime, OpenVINO) and
precision (FP32, INT8, BF16, FP16) they run in here."""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import onnxruntime as ort

from s4seg import tensors as t
from s4seg.export.engine_choice import Candidate, candidates
from s4seg.letterbox import Framing
from s4seg.manifest import Manifest
from s4seg.onnx_pipeline import OnnxPipeline

from .report import (
    cpu_description,
    percentile,
    provenance,
    report,
    segmenter_name,
    time_calls,
)


@dataclass
class PrecisionBenchRequest:
    """``s4seg bench precision``'s options."""

    model: str
    batch_sizes: list[int]
    repeats: int
    warmup: int
    write: str | None


def cpu_int8_support() -> str:
    """What the CPU offers for int8 dot products (ONNX Runtime picks its kernels by these)."""
    try:
        flags = next(
            line.split(":", 1)[1].split()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("flags")
        )
    except (OSError, StopIteration):
        return "CPU flags unknown"
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    return ", ".join(f"{flag} {'yes' if flag in flags else 'no'}" for flag in wanted)


def bench_precision(request: PrecisionBenchRequest) -> str:
    """The networks of an export in every runtime and precision it can run in here (ONNX
    Runtime and OpenVINO; FP32, and INT8 / FP16 / BF16 where the export has them accepted; the
    candidates of ``publish --precision auto``), the segmenter alone and the whole pipeline, on
    the same letterboxed images: median ms per image over timed calls after a warm-up, the
    p10-p90 spread, and the ratio to ONNX Runtime FP32 measured in the same run."""
    folder = Path(request.model)
    manifest = Manifest.load(folder)
    found, left_out = candidates(manifest)
    if "fp16" in manifest.variants and manifest.variants["fp16"].graphs:
        found.append(Candidate("onnxruntime", "fp16"))
    rows = measure(request, folder, manifest, found)
    # A ViT's figures in a section of their own, beside the ResNet's.
    vit = manifest.sources["segmenter"].arch.get("name") == "dpt"
    section = "precision-cpu-vit" if vit else "precision-cpu"
    return report(render(request, manifest, rows, left_out), request.write, section)


Row = tuple[int, str, Candidate, list[float]]  # batch, what, engine, seconds per image


def measure(
    request: PrecisionBenchRequest, folder: Path, manifest: Manifest, found: list[Candidate]
) -> list[Row]:
    """Each engine's segmenter alone and whole pipeline at each batch size, on one letterboxed
    photo repeated."""
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)
    framed = Framing.of(manifest).frame(photo)
    rows: list[Row] = []
    for batch in request.batch_sizes:
        images = np.repeat(framed.canvas[None], batch, axis=0)
        views = np.repeat(framed.view[None], batch, axis=0)
        for candidate in found:
            pipeline = OnnxPipeline.from_export(
                folder, device="cpu", precision=candidate.precision, runtime=candidate.runtime
            )
            session = pipeline.sessions["segmenter"]
            calls: dict[str, Callable[[], object]] = {
                "segmenter": partial(session.run, None, {t.IMAGE.name: images}),
                "pipeline": partial(pipeline.run, images, views),
            }
            for what, call in calls.items():
                times = time_calls(call, request.repeats, request.warmup, per=batch)
                rows.append((batch, what, candidate, times))
                median = 1000 * statistics.median(times)
                print(
                    f"bench precision: batch {batch} {what} {candidate.name}: {median:.1f} "
                    "ms/image",
                    file=sys.stderr,
                )
    return rows


def render(
    request: PrecisionBenchRequest, manifest: Manifest, rows: list[Row], left_out: list[str]
) -> str:
    """BENCHMARKS' section: provenance, each variant's parity, and the table (ratios to ONNX
    Runtime FP32 of the same run)."""
    import openvino

    folder = request.model
    reference = {
        (b, w): statistics.median(ts)
        for b, w, c, ts in rows
        if c == Candidate("onnxruntime", "fp32")
    }
    h, w = manifest.input_size
    lines = [
        *provenance(
            f"{cpu_description()}; {cpu_int8_support()}; onnxruntime {ort.__version__}, "
            f"openvino {openvino.__version__}"
        ),
        f"Model: {folder} ({segmenter_name(manifest.sources['segmenter'].arch)}, served "
        f"{h}x{w}); "
        f"{request.warmup} warm-up + {request.repeats} timed calls per row, one session per "
        "network "
        "with the runtime's default threads. Parity: each variant's figures from the manifest "
        "(label agreement with PyTorch and gated mIoU lost, on the calibration images at the "
        "served tau).",
    ]
    for precision in ("int8", "bf16", "fp16"):
        variant = manifest.variants.get(precision)
        if variant is None:
            continue
        judged = {"onnxruntime" if precision != "bf16" else "openvino": variant.parity}
        judged.update(variant.runtime_parity)  # INT8 in OpenVINO: its own kernels, own figures
        for runtime, parity in judged.items():
            verdict = "accepted" if variant.graphs and parity.passed else "refused"
            lines.append(
                f"- {precision.upper()} in {runtime}: label agreement "
                f"{100 * parity.label_agreement:.2f}%, gated mIoU drop "
                f"{100 * (parity.gated_miou_drop or 0):.2f} points on {parity.images} images; "
                f"{verdict}" + (f" ({parity.rule})" if parity.rule else "")
            )
    lines += [f"- left out: {reason}" for reason in left_out]
    lines += [
        "",
        "| batch | what | runtime | precision | median ms/image | p10-p90 | vs ONNX Runtime FP32 |",
        "|---|---|---|---|---|---|---|",
    ]
    for batch, what, candidate, times in rows:
        p10, p90 = percentile(times, 0.1), percentile(times, 0.9)
        median = statistics.median(times)
        lines.append(
            f"| {batch} | {what} | {candidate.runtime} | {candidate.precision} | "
            f"{1000 * median:.1f} | {1000 * p10:.1f}-{1000 * p90:.1f} | "
            f"{reference[(batch, what)] / median:.2f}x |"
        )
    return "\n".join(lines)
