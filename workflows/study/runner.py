"""The whole study: cells in turn (or side by side, or one by index), the report after each,
the log with an ETA, and the dry run's estimate."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from s4seg.cluster import torchrun_rank
from s4seg.errors import ConfigError, S4segError

from .cells import run_cell, stale_cells
from .report import report_study
from .spec import Cell, StudySpec, budget_slug, claim_folder, parse_cell, resolve_spec


@dataclass
class StudyRequest:
    """``s4seg study``'s options (workflows/commands.py builds it from the flags)."""

    out: Path
    preset: str | None = None
    config: str | None = None
    methods: list[str] | None = None
    labels: list[str] | None = None
    seeds: list[int] | None = None
    overrides: list[str] = field(default_factory=list)
    jobs: int = 1
    cell: str | None = None  # i/N or auto
    device: str | None = None
    dry_run: bool = False
    report: bool = False
    # The dry run's step times (seconds per iteration by trainer), e.g. from BENCHMARKS' bench
    # train table for another device; without, each step is timed here.
    step_seconds: dict[str, float] | None = None


def run_study(request: StudyRequest) -> int:
    out, device = request.out, request.device
    spec = resolve_spec(
        out,
        request.preset,
        request.config,
        request.methods,
        request.labels,
        request.seeds,
        request.overrides,
    )
    cells = spec.cells()
    if request.dry_run:
        print(dry_run(spec, cells, out, device, request.step_seconds))
        return 0
    if torchrun_rank() > 0:  # a cell under torchrun: rank 0 keeps the books, every rank trains
        if not request.cell:
            raise ConfigError("under torchrun, run one cell per job: --cell i/N or --cell auto")
        run_cell(spec, cells[parse_cell(request.cell, len(cells))], out, device, lambda _: None)
        return 0
    claim_folder(out, spec)
    log = StudyLog(out / "study.log")
    if request.report:  # what the finished cells say, without training more
        report_study(spec, out, device, log)
        return 0
    if request.cell:
        run_cell(spec, cells[parse_cell(request.cell, len(cells))], out, device, log)
        return 0
    for cell in stale_cells(spec, out):
        log(f"{cell.name}: its checkpoint is gone and a gated row still needs it: trained again")
    todo = [c for c in cells if not (out / "runs" / c.name / "result.json").is_file()]
    log(f"study {out}: {len(cells)} cells, {len(cells) - len(todo)} done, {len(todo)} to run")
    if request.jobs > 1:
        run_parallel(out, cells, todo, request.jobs, device, log)
    else:
        timer = Eta(len(todo))
        for done, cell in enumerate(todo):
            log(f"cell {cells.index(cell) + 1}/{len(cells)}: {cell.name} ({timer.left(done)})")
            run_cell(spec, cell, out, device, log)
            if done + 1 < len(todo):  # the figures so far, after every cell (a study runs hours)
                report_study(spec, out, device, log, quiet=True)
    report_study(spec, out, device, log)
    return 0


class StudyLog:
    """Lines to stderr and to ``study.log`` (a study runs for hours: the log says where it is)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, message: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {message}"
        print(f"study: {line}", file=sys.stderr, flush=True)
        with open(self.path, "a") as handle:
            handle.write(line + "\n")


class Eta:
    def __init__(self, total: int) -> None:
        self.total, self.started = total, time.monotonic()

    def left(self, done: int) -> str:
        if not done:
            return f"{self.total} to go"
        per = (time.monotonic() - self.started) / done
        return f"{self.total - done} to go, about {clock(per * (self.total - done))} left"


def clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def run_parallel(
    out: Path, cells: list[Cell], todo: list[Cell], jobs: int, device: str | None, log
) -> None:
    """``--jobs N``: N child processes (``s4seg study --out OUT --cell i/N``), each with its
    share of the cores."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    queue, failed = list(todo), []
    running: list[tuple[Cell, subprocess.Popen]] = []
    timer = Eta(len(todo))
    finished = 0
    while queue or running:
        while queue and len(running) < jobs:
            cell = queue.pop(0)
            command = [
                sys.executable,
                "-m",
                "s4seg",
                "study",
                "--out",
                str(out),
                "--cell",
                f"{cells.index(cell)}/{len(cells)}",
                *(["--device", device] if device else []),
            ]
            log(f"start {cell.name} ({timer.left(finished)})")
            running.append((cell, subprocess.Popen(command, env=env)))
        time.sleep(2)
        for cell, process in list(running):
            if process.poll() is not None:
                running.remove((cell, process))
                finished += 1
                if process.returncode != 0:
                    failed.append(cell.name)
                    log(f"{cell.name} failed (exit code {process.returncode})")
    if failed:
        raise S4segError(f"{len(failed)} cells failed: {', '.join(failed)} (see study.log)")


def dry_run(
    spec: StudySpec,
    cells: list[Cell],
    out: Path,
    device: str | None,
    recorded: dict[str, float] | None = None,
) -> str:
    """The cells, the command each amounts to, and the time they would take: the training step
    timed here as ``s4seg bench train`` times it (or the ``recorded`` seconds per iteration,
    e.g. bench train's figures for another device), times the iterations."""
    from s4seg.training.config import load_config

    cfg = load_config(spec.config, spec.overrides)
    if recorded:
        per_iteration, source = dict(recorded), "given"
    else:
        per_iteration = step_seconds(cfg, device or cfg.train.device, {c.trainer for c in cells})
        source = f"timed on {device or cfg.train.device}"
    lines = [
        f"study {out}: {len(cells)} cells ({', '.join(spec.methods)}; budgets "
        f"{', '.join(spec.labels)}; seeds {', '.join(map(str, spec.seeds))}), "
        f"{spec.config}, {cfg.train.iterations} iterations each"
    ]
    total = 0.0
    for i, cell in enumerate(cells):
        split = out / "splits" / f"{budget_slug(cell.budget)}-s{cell.seed}.json"
        given = [
            *spec.overrides,
            f"data.split_file={split}",
            f"train.out_dir={out}/runs/{cell.name}",
            f"train.seed={cell.seed}",
        ]
        sets = " ".join(f"--set {o}" for o in given)
        seconds = per_iteration.get(cell.trainer)
        if seconds is not None:
            total += seconds * cfg.train.iterations
        estimate = clock(seconds * cfg.train.iterations) if seconds is not None else "not timed"
        lines.append(
            f"  {i}/{len(cells)} {cell.name}: {estimate}  "
            f"s4seg train {cell.trainer} --config {spec.config} {sets}"
        )
    timed = ", ".join(f"{k} {v:.2f} s/iteration" for k, v in per_iteration.items())
    untimed = sorted({c.trainer for c in cells} - set(per_iteration))
    lines.append(
        f"estimate: {clock(total)} of training, {timed} ({source})"
        + (f"; not timed: {', '.join(untimed)}" if untimed else "")
        + ", plus evaluation"
    )
    return "\n".join(lines)


# The bench-train step that times each segmenter trainer's iteration.
STEPS = {"baseline": "segmenter", "s4gan": "s4gan", "unimatch": "unimatch"}
# On a ViT (model.architecture dpt): the baseline's step on it, and UniMatch V2's.
VIT_STEPS = {"baseline": "segmenter", "unimatch-v2": "unimatch-v2"}


def step_seconds(cfg, device: str, trainers: set[str] | None = None) -> dict[str, float]:
    """Median seconds of one training step per segmenter trainer (of ``trainers``, default
    all), timed as ``bench train`` does (a few iterations after a warm-up) at the config's
    backbone, batch and crop. Says what it times, where, and how far it is (a ResNet-101 step on
    a CPU takes a minute)."""
    from ..bench.train import time_case
    from ..bench.train_steps import backbone_name

    vit = cfg.model.architecture == "dpt"
    backbone = cfg.model.backbone if vit else cfg.model.backbone_depth
    batch, crop = cfg.train.batch_size, max(cfg.data.crop_size)
    steps = {t: s for t, s in (VIT_STEPS if vit else STEPS).items() if t in (trainers or {t})}
    times = {}
    for i, (trainer, step) in enumerate(steps.items()):
        print(
            f"dry run: timing {trainer}'s step ({i + 1}/{len(steps)}): {backbone_name(backbone)}, "
            f"batch {batch}, crop {crop}, on {device}; 1 warm-up and 3 timed iterations",
            file=sys.stderr,
            flush=True,
        )
        row = time_case(
            step,
            backbone,
            "fp32",
            device=device,
            batch_size=batch,
            crop=crop,
            warmup=1,
            iterations=3,
        )
        times[trainer] = row["median_s"]
    return times
