"""``s4seg quickstart``: synthetic data -> s4GAN + MLMT -> export -> publish, for the first run.

Every step is skipped when its result is already there (data, finished runs, a published
version), so a second run is quick and an interrupted one continues where it stopped. Each step
starts with a line saying how long the whole demo has left: the steps' costs measured on our
2-core CPU machines, scaled by how fast this machine did the steps so far.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from s4seg.errors import S4segError, first_line
from s4seg.export.exporter import export_models
from s4seg.export.repository import publish, served_version
from s4seg.export.requests import ExportRequest, PublishRequest
from s4seg.training.config import load_config
from s4seg.training.trainers import TRAINERS

SERVED_SIZE = (128, 128)  # the synthetic images' own size
# The segmenter's iterations are the preset's (quickstart.yaml); the classifier needs fewer for
# a demo, and its steps cost less than half of s4GAN's.
MLMT_ITERATIONS = 80


def log(message: str) -> None:
    print(f"quickstart: {message}", file=sys.stderr, flush=True)


def clock(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}m{seconds:02d}s"


@dataclass
class Step:
    name: str
    reference_s: float  # on a 2-core Xeon of our CI machines (docs/serving.md, the first run)
    paced: bool = True  # False: its speed says little about the others' (disk-bound)


class Plan:
    """The demo's steps and an ETA for what is left."""

    def __init__(self, steps: list[Step]) -> None:
        self.steps = steps
        self.done_reference = 0.0
        self.done_actual = 0.0

    def begin(self, index: int, what: str) -> float:
        """Say which step starts and how long the demo has left; returns the step's start."""
        elapsed = self.done_actual
        pace = min(max(elapsed / self.done_reference, 0.3), 5.0) if self.done_reference else 1.0
        left = pace * sum(s.reference_s for s in self.steps[index:])
        log(f"[{index + 1}/{len(self.steps)}] {what} (demo ready in about {clock(left)})")
        return time.monotonic()

    def end(self, index: int, started: float, skipped: bool = False) -> None:
        if not skipped and self.steps[index].paced:  # skipped: says nothing about this machine
            self.done_reference += self.steps[index].reference_s
            self.done_actual += time.monotonic() - started


def _train(trainer: str, data: Path, runs: Path, iterations: int) -> tuple[Path, bool]:
    """The run's last checkpoint, and whether it had to be trained (False: it was complete)."""
    out = runs / trainer
    overrides = [f"data.root={data}", f"train.out_dir={out}", f"train.iterations={iterations}"]
    last, trained = TRAINERS[trainer].run(load_config("quickstart", overrides))
    if not trained:
        log(f"{trainer}: {last} is complete")
    return last, trained


def quickstart(
    data: Path,
    runs: Path,
    repository: Path,
    iterations: int | None = None,
    force: bool = False,
    runtime: str = "python",
) -> int:
    if served_version(repository) is not None and not force:
        log(f"{repository} already serves version {served_version(repository)} (--force to redo)")
        return served_version(repository)  # type: ignore[return-value]
    segmenter_iterations = iterations or load_config("quickstart", []).train.iterations
    classifier_iterations = iterations or MLMT_ITERATIONS
    plan = Plan(
        [
            Step("data", 15, paced=False),
            Step("s4gan", 12 + 1.1 * segmenter_iterations),
            Step("mlmt", 8 + 0.5 * classifier_iterations),
            Step("export", 50),
        ]
    )
    start = time.monotonic()

    begun = plan.begin(0, f"the synthetic data set in {data}")
    fresh = not (data / "classes.yaml").is_file()
    if fresh:
        from s4seg.training.data.synth import write_synthetic

        write_synthetic(data)
    plan.end(0, begun, skipped=not fresh)

    begun = plan.begin(1, f"s4GAN segmenter, {segmenter_iterations} iterations ({runs / 's4gan'})")
    segmenter, trained = _train("s4gan", data, runs, segmenter_iterations)
    plan.end(1, begun, skipped=not trained)

    begun = plan.begin(2, f"MLMT classifier, {classifier_iterations} iterations ({runs / 'mlmt'})")
    classifier, trained = _train("mlmt", data, runs, classifier_iterations)
    plan.end(2, begun, skipped=not trained)

    out = runs / "export"
    plan.begin(3, f"export to ONNX with parity and tau calibration, publish to {repository}")
    # INT8 and BF16 judged too, and the python runner serves the fastest that passed, measured
    # on this machine (issue 25; docs/export.md); the native backend serves FP32.
    export_models(
        ExportRequest(
            str(segmenter),
            str(classifier),
            str(out),
            input_size=SERVED_SIZE,
            overwrite=True,
            variants=frozenset({"int8", "bf16"}),
        ),
        log=log,
    )
    precision = "auto" if runtime == "python" else "fp32"
    version = publish(
        PublishRequest(out, repository, runtime=runtime, precision=precision), log=log
    )
    log(f"done in {clock(time.monotonic() - start)}: version {version} in {repository}")
    return version


def _first_run_child(repository: Path, runtime: str) -> None:
    try:
        quickstart(Path("data/synth"), Path("runs/quickstart"), repository, runtime=runtime)
    except S4segError as error:
        print(f"s4seg: error: {first_line(error)}", file=sys.stderr)
        sys.exit(2)


def first_run(repository: Path, runtime: str) -> None:
    """``s4seg serve`` with nothing published: the demo model, built in a child process (it
    needs torch; the serving process does not import it)."""
    log(f"no version in {repository}: building the demo model first (a few minutes on a CPU)")
    child = multiprocessing.get_context("spawn").Process(
        target=_first_run_child, args=(repository, runtime), name="s4seg-quickstart"
    )
    child.start()
    child.join()
    if child.exitcode != 0:
        raise S4segError(f"building the demo model failed (exit code {child.exitcode})")
