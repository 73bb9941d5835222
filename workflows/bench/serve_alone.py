"""The model alone: the segmenter and classifier sessions and nothing else, in every engine its
files run in here, at the best instances x threads x batch (the machine's limit)."""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from s4seg.engines import bf16_capable, open_session
from s4seg.export.engine_choice import Candidate
from s4seg.letterbox import Framed
from s4seg.onnx_pipeline import OnnxPipeline
from s4seg.repository import (
    graph_path,
)
from s4seg.tensors import CLS_IMAGE, IMAGE

CALL_LIMIT_S = 60.0  # a call that takes longer is a stuck engine: its window reads 0


@dataclass
class ModelAlone:
    engine: Candidate
    instances: int
    threads: int
    batch: int
    rates: list[float]  # images/s in each timed window
    images: list[int] = field(default_factory=list)  # images finished in each window

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)


def served_engines(manifest) -> tuple[Candidate, list[Candidate]]:
    """The engine the version is served with, and every engine its published files can run in
    here (the FP32 files also at bf16 where the export's BF16 variant passed and the CPU has
    it): the model alone is measured in each."""
    engine = (manifest.published or {}).get("engine") or {}
    served = Candidate(engine.get("runtime", "onnxruntime"), engine.get("precision", "fp32"))
    files = "fp32" if served.precision == "bf16" else served.precision
    found = [Candidate("onnxruntime", files), Candidate("openvino", files)]
    bf16 = manifest.variants.get("bf16")
    if files == "fp32" and bf16 is not None and bf16.graphs and bf16_capable():
        found.append(Candidate("openvino", "bf16"))
    return served, found


def model_alone(
    repository: Path,
    version: int,
    pipeline: OnnxPipeline,
    framed: Framed,
    window: float,
    windows: int,
) -> list[ModelAlone]:
    """Images/s of the segmenter + classifier alone, for each engine x instances x batch (the
    threads split the cores); each instance is a Python thread looping over its own sessions
    (both runtimes release the GIL). Warm-up outside the windows; one rate per window."""
    files = {step: graph_path(repository, step, version) for step in ("segmenter", "classifier")}
    _, engines = served_engines(pipeline.manifest)
    cores = os.cpu_count() or 1
    rows = []
    for engine in engines:
        for instances in (1, 2):
            threads = max(1, cores // instances)
            sessions = [
                {
                    step: open_session(
                        f, engine.runtime, engine.precision, pipeline.providers, threads=threads
                    )
                    for step, f in files.items()
                }
                for _ in range(instances)
            ]
            for batch in (1, 4, 8):
                rates, images = loop_rates(pipeline, sessions, framed, batch, window, windows)
                rows.append(ModelAlone(engine, instances, threads, batch, rates, images))
                print(
                    f"bench serve: model alone {engine.name} {instances}x{threads} batch "
                    f"{batch}: {rows[-1].rate:.1f} images/s",
                    file=sys.stderr,
                )
    return rows


def loop_rates(
    pipeline: OnnxPipeline,
    sessions: list[dict],
    framed: Framed,
    batch: int,
    window: float,
    windows: int,
) -> tuple[list[float], list[int]]:
    """Images/s in each window, and the images finished in it. Every instance finishes a call
    before the first window (first-call compilation is not timed), and a window lasts until at
    least one call finishes in it: a slow call on a busy machine gives a low rate, never 0."""
    images = np.repeat(framed.canvas[None], batch, axis=0)
    views = np.repeat(framed.view[None], batch, axis=0)
    done = [0] * len(sessions)
    stop = threading.Event()

    def loop(i: int) -> None:
        run = sessions[i]
        while not stop.is_set():
            run["segmenter"].run(None, {IMAGE.name: images})
            run["classifier"].run(None, {CLS_IMAGE.name: views})
            done[i] += batch

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(len(sessions))]
    for worker in workers:
        worker.start()
    deadline = time.perf_counter() + CALL_LIMIT_S
    while not all(done) and time.perf_counter() < deadline:
        time.sleep(0.005)
    time.sleep(window / 2)  # warm-up
    rates, counts = [], []
    for _ in range(windows):
        before, start = sum(done), time.perf_counter()
        time.sleep(window)
        while sum(done) == before and time.perf_counter() - start < CALL_LIMIT_S:
            time.sleep(0.005)
        counts.append(sum(done) - before)
        rates.append(counts[-1] / (time.perf_counter() - start))
    stop.set()
    for worker in workers:
        worker.join()
    return rates, counts
