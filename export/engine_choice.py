"""``publish --precision auto``: how this export's networks run fastest on the machine that
serves them, among the ways that passed their parity (FP32 always; INT8 and BF16 when the export
has them accepted; BF16 only where the CPU has BF16 instructions), measured here.

Each candidate runs the segmenter and the classifier (the steps that hold the networks) on one
letterboxed image, batch 1, in the same process and interleaved rounds, after a warm-up outside
the window; the fastest median wins. What was measured and why the winner won go into the
published manifest (``published.engine``), which ``/v1/models`` shows.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from s4seg import tensors as t
from s4seg.engines import bf16_capable, cpu_flags
from s4seg.letterbox import Framing
from s4seg.manifest import Manifest, Parity
from s4seg.onnx_pipeline import OnnxPipeline
from s4seg.timing import percentile, time_calls

ROUNDS, REPEATS, WARMUP = 3, 8, 3
RUNTIME_NAMES = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}


@dataclass(frozen=True)
class Candidate:
    runtime: str
    precision: str

    @property
    def name(self) -> str:
        return f"{self.runtime} {self.precision}"


def candidates(manifest: Manifest, runtime: str | None = None) -> tuple[list[Candidate], list[str]]:
    """The ways to run this export here (``runtime``: only that runtime's, for Triton's native
    backend of it), and why the others are left out."""
    found, left_out = _candidates(manifest)
    if runtime is None:
        return found, left_out
    if runtime == "openvino":  # the native backend sets bf16 per model, not per version
        left_out += [
            f"{c.name}: not on Triton's native OpenVINO backend"
            for c in found
            if c.precision == "bf16"
        ]
        found = [c for c in found if c.precision != "bf16"]
    left_out += [f"{c.name}: not on the {runtime} backend" for c in found if c.runtime != runtime]
    return [c for c in found if c.runtime == runtime], left_out


def _candidates(manifest: Manifest) -> tuple[list[Candidate], list[str]]:
    found = [Candidate("onnxruntime", "fp32"), Candidate("openvino", "fp32")]
    left_out = []
    for precision, runtimes in (("int8", ("onnxruntime", "openvino")), ("bf16", ("openvino",))):
        variant = manifest.variants.get(precision)  # type: ignore[call-overload]
        if variant is None:
            left_out.append(f"{precision}: not in this export (export --{precision})")
        elif not variant.graphs:
            left_out.append(f"{precision}: refused at export ({variant.parity.rule} needed)")
        elif precision == "bf16" and not bf16_capable():
            left_out.append("bf16: this CPU has no BF16 instructions")
        else:
            for runtime in runtimes:
                parity = variant_parity(manifest, Candidate(runtime, precision))
                if parity is None:
                    left_out.append(f"{precision} in {runtime}: not judged (export again)")
                elif not parity.passed:
                    left_out.append(f"{precision} in {runtime}: refused ({parity.rule} needed)")
                else:
                    found.append(Candidate(runtime, precision))
    return found, left_out


def variant_parity(manifest: Manifest, candidate: Candidate) -> Parity | None:
    """The figures a lower precision was judged by in this runtime (None: not judged in it)."""
    variant = manifest.variants[candidate.precision]  # type: ignore[index]
    if candidate.precision == "bf16" or candidate.runtime == "onnxruntime":
        return variant.parity  # BF16 is judged in OpenVINO, INT8 and FP16 in ONNX Runtime
    return variant.runtime_parity.get(candidate.runtime)


def model_steps_call(pipeline: OnnxPipeline) -> Callable[[], object]:
    """One image through the segmenter and the classifier (normalisation included: it is in
    their graphs)."""
    framed = Framing.of(pipeline.manifest).frame(
        np.random.default_rng(0).integers(0, 256, (375, 500, 3), dtype=np.uint8)
    )
    image, view = framed.canvas[None], framed.view[None]
    segmenter, classifier = pipeline.sessions["segmenter"], pipeline.sessions["classifier"]

    def call() -> None:
        segmenter.run(None, {t.IMAGE.name: image})
        classifier.run(None, {t.CLS_IMAGE.name: view})

    return call


Measure = Callable[[Path, Candidate], Callable[[], object]]


def open_candidate(folder: Path, candidate: Candidate) -> Callable[[], object]:
    pipeline = OnnxPipeline.from_export(
        folder, device="cpu", precision=candidate.precision, runtime=candidate.runtime
    )
    return model_steps_call(pipeline)


def choose_engine(
    folder: Path,
    manifest: Manifest,
    log: Callable[[str], None],
    measure: Measure = open_candidate,
    runtime: str | None = None,
) -> tuple[Candidate, dict[str, Any]]:
    """The fastest candidate here (``runtime``: among that runtime's only), and the record of
    the choice (for the manifest)."""
    found, left_out = candidates(manifest, runtime)
    calls = {c: measure(folder, c) for c in found}
    times: dict[Candidate, list[float]] = {c: [] for c in found}
    for _ in range(ROUNDS):  # interleaved: a machine that slows down slows every candidate
        for candidate, call in calls.items():
            times[candidate] += time_calls(call, REPEATS, WARMUP)
    medians = {c: statistics.median(ts) for c, ts in times.items()}
    best = min(found, key=lambda c: medians[c])
    # What the speed-ups are against: FP32 in the first runtime measured (ONNX Runtime's,
    # unless the native OpenVINO backend is all there is)
    base = next(c for c in found if c.precision == "fp32")
    reference = medians[base]
    figures = {
        c.name: {
            "median_ms": round(1000 * medians[c], 2),
            "p10_p90_ms": [round(1000 * percentile(times[c], q), 2) for q in (0.1, 0.9)],
            f"vs_{base.runtime}_fp32": round(reference / medians[c], 2),
        }
        for c in found
    }
    for name, row in figures.items():
        log(f"precision auto: {name}: {row['median_ms']} ms (segmenter + classifier, batch 1)")
    flags = sorted(cpu_flags() & {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16"})
    why = (
        f"fastest of {len(found)} on this machine ({', '.join(flags) or 'no vector flags read'}):"
        f" {medians[best] * 1000:.1f} ms for segmenter + classifier, "
        f"{reference / medians[best]:.2f}x {RUNTIME_NAMES[base.runtime]} FP32"
    )
    if best.precision != "fp32":
        parity = variant_parity(manifest, best)
        assert parity is not None  # only judged candidates are measured
        why += (
            f"; its parity: {100 * parity.label_agreement:.2f}% label agreement, "
            f"{100 * (parity.gated_miou_drop or 0):.2f} gated mIoU points lost"
        )
    record = {
        "runtime": best.runtime,
        "precision": best.precision,
        "why": why,
        "measured": figures,
        "left_out": left_out,
    }
    return best, record
