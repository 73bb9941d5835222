"""``publish --precision auto``: how this export's networks run fastest on the machine that
serves them, among the ways that passed their parity (FP32 always; INT8 and BF16 when the export
has them accepted; BF16 only where the CPU has BF16 instructions), measured here.

Each candidate runs the segmenter and the classifier (the steps that hold the networks) on one
letterboxed image, batch 1, in the same process, in interleaved rounds after a warm-up outside
the window. A busy machine (a training beside the publish) slows some rounds and some candidates
more than others, so each candidate is judged by its best round (the median of that round's
calls), the least disturbed measure of what it costs on this machine; the choice is *sure* when
the winner was also faster than the runner-up in every round, and says otherwise, with the
command that chooses again (issue 36: published beside a training, ONNX Runtime INT8 won; idle,
OpenVINO INT8 was 24% faster). What was measured, the load, and how sure the choice was go into
the published manifest (``published.engine``), which ``/v1/models`` shows.
"""

from __future__ import annotations

import os
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
from s4seg.timing import time_calls

ROUNDS, REPEATS, WARMUP = 7, 4, 3
BUSY_SPREAD = 0.3  # a candidate whose slowest round is this much over its best: a busy machine
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


@dataclass(frozen=True)
class Verdict:
    """The candidates judged from their rounds (seconds per call, per round)."""

    best: Candidate
    ms: dict[Candidate, float]  # each candidate's best round: the median of its calls, in ms
    rounds_ms: dict[Candidate, list[float]]  # every round's median, in ms
    runner_up: Candidate | None
    wins: int  # rounds in which the winner was faster than the runner-up
    spread: float  # the widest (slowest round / best round - 1) of any candidate

    @property
    def sure(self) -> bool:
        """The winner was faster than the runner-up in every round (alone, it is sure)."""
        return self.runner_up is None or self.wins == len(self.rounds_ms[self.best])


def judge(rounds: dict[Candidate, list[list[float]]]) -> Verdict:
    """Each candidate by its best round; the winner's rounds against the runner-up's."""
    medians = {c: [1000 * statistics.median(r) for r in rs] for c, rs in rounds.items()}
    ms = {c: min(m) for c, m in medians.items()}
    ranked = sorted(ms, key=lambda c: ms[c])
    best, runner_up = ranked[0], (ranked[1] if len(ranked) > 1 else None)
    wins = (
        sum(a < b for a, b in zip(medians[best], medians[runner_up], strict=True))
        if runner_up is not None
        else len(medians[best])
    )
    spread = max(max(m) / min(m) - 1 for m in medians.values())
    return Verdict(best, ms, medians, runner_up, wins, spread)


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
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    rounds: dict[Candidate, list[list[float]]] = {c: [] for c in found}
    for _ in range(ROUNDS):  # interleaved: a machine that slows down slows every candidate
        for candidate, call in calls.items():
            rounds[candidate].append(time_calls(call, REPEATS, WARMUP))
    verdict = judge(rounds)
    best = verdict.best
    # What the speed-ups are against: FP32 in the first runtime measured (ONNX Runtime's,
    # unless the native OpenVINO backend is all there is)
    base = next(c for c in found if c.precision == "fp32")
    reference = verdict.ms[base]
    figures = {
        c.name: {
            "ms": round(verdict.ms[c], 2),
            "rounds_ms": [round(m, 2) for m in verdict.rounds_ms[c]],
            f"vs_{base.runtime}_fp32": round(reference / verdict.ms[c], 2),
        }
        for c in found
    }
    for name, row in figures.items():
        log(
            f"precision auto: {name}: {row['ms']} ms in its best of {ROUNDS} rounds (segmenter "
            f"+ classifier, batch 1; rounds {row['rounds_ms']})"
        )
    flags = sorted(cpu_flags() & {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16"})
    why = (
        f"fastest of {len(found)} on this machine ({', '.join(flags) or 'no vector flags read'}):"
        f" {verdict.ms[best]:.1f} ms for segmenter + classifier, "
        f"{reference / verdict.ms[best]:.2f}x {RUNTIME_NAMES[base.runtime]} FP32"
    )
    if best.precision != "fp32":
        parity = variant_parity(manifest, best)
        assert parity is not None  # only judged candidates are measured
        why += (
            f"; its parity: {100 * parity.label_agreement:.2f}% label agreement, "
            f"{100 * (parity.gated_miou_drop or 0):.2f} gated mIoU points lost"
        )
    confidence = confidence_record(verdict, load, folder)
    if not confidence["sure"] or verdict.spread > BUSY_SPREAD:
        log(f"precision auto: warning: {confidence['says']}")
    record = {
        "runtime": best.runtime,
        "precision": best.precision,
        "why": why,
        "confidence": confidence,
        "measured": figures,
        "left_out": left_out,
    }
    return best, record


def confidence_record(verdict: Verdict, load: float | None, folder: Path) -> dict[str, Any]:
    """How sure the choice is, in figures and in words (the manifest's ``engine.confidence``)."""
    rounds = len(verdict.rounds_ms[verdict.best])
    cpus = os.cpu_count() or 1
    record: dict[str, Any] = {
        "sure": verdict.sure,
        "rounds": rounds,
        "runner_up": verdict.runner_up.name if verdict.runner_up else None,
        "wins": verdict.wins,
        "margin": (
            round(verdict.ms[verdict.runner_up] / verdict.ms[verdict.best], 3)
            if verdict.runner_up
            else None
        ),
        "spread": round(verdict.spread, 3),
        "load_1min": None if load is None else round(load, 2),
        "cpus": cpus,
    }
    if verdict.runner_up is None:
        says = "the only candidate"
    else:
        says = (
            f"faster than {verdict.runner_up.name} in {verdict.wins} of {rounds} rounds, "
            f"{record['margin']:.2f}x in the best rounds"
            + (" (a near tie: either costs under 5% more)" if record["margin"] < 1.05 else "")
        )
    busy = verdict.spread > BUSY_SPREAD or (load is not None and load > 0.5 * cpus)
    if busy:
        says += (
            f"; the machine was busy (rounds up to {100 * verdict.spread:.0f}% over the best, "
            f"load {record['load_1min']} on {cpus} cores)"
        )
    if not verdict.sure or busy:
        says += (
            f"; not sure: choose again where it serves, when the machine is idle: "
            f"`s4seg publish {folder} --precision auto`"
        )
    record["says"] = says
    return record
