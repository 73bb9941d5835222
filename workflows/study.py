"""``s4seg study``: does a method earn its labels? Methods x label budgets x split seeds on one
data set, each training run an ordinary run in a folder of its own, evaluated on the report part
of the validation split (``s4seg.holdout``); a gated method's tau is chosen on the calibration
part, never on the images it is reported on.

The unit of work (a *cell*) is one training run: a segmenter (baseline or s4GAN) or an MLMT
classifier, for one budget and one seed. Gated rows (a segmenter with a classifier) are computed
from finished cells when the study is reported. A cell with ``result.json`` is done and skipped;
a cell without continues from its ``last.pt``. ``--cell i/N`` runs cell i of the N, so that N
processes or cluster jobs can share a study; ``--jobs`` runs cells side by side here.

Writes, in the study folder: ``study.json`` (every cell and gated row, with its split, config
digest, versions, pre-training, iterations, wall time and figures), ``study.md`` (mean +- sd and a
95% interval per method and budget, the paired difference to the baseline on the same splits),
``study.png`` (mIoU against labeled images, one line per method with its band) and
``curves.png`` (what explains it: D's scores and the self-trained share for s4GAN, the teacher's
mAP for MLMT, against iteration).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from s4seg import __version__
from s4seg.atomic import write_json_atomic
from s4seg.cluster import AUTO, job_index, torchrun_rank, wait_for_file
from s4seg.errors import ConfigError, S4segError
from s4seg.manifest import GATE_OFF_TAU, PAPER_TAU, digest_json

from . import studies


@dataclass(frozen=True)
class Method:
    name: str
    segmenter: str  # the trainer of its segmenter
    gated: bool  # with an MLMT classifier (its tau chosen on the calibration part)


METHODS = {
    m.name: m
    for m in (
        Method("baseline", "baseline", False),
        Method("s4gan", "s4gan", False),
        Method("baseline+mlmt", "baseline", True),
        Method("s4gan+mlmt", "s4gan", True),
        Method("unimatch", "unimatch", False),
        Method("unimatch+mlmt", "unimatch", True),
    )
}


@dataclass(frozen=True)
class Cell:
    """One training run."""

    trainer: str  # baseline | s4gan | unimatch | mlmt
    budget: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.trainer}-{budget_slug(self.budget)}-s{self.seed}"


def budget_slug(budget: str) -> str:
    text = Path(budget).stem if Path(budget).is_file() else budget
    return "".join(c if c.isalnum() else "_" for c in text)


@dataclass
class StudySpec:
    config: str  # a training preset or YAML file
    methods: list[str]
    labels: list[str]  # budgets: ratios, counts or id files
    seeds: list[int]
    overrides: list[str] = field(default_factory=list)  # --set, for every cell

    def check(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ConfigError(f"unknown method {unknown}: choose from {', '.join(METHODS)}")
        if not self.methods or not self.labels or not self.seeds:
            raise ConfigError("a study needs at least one method, label budget and seed")

    def cells(self) -> list[Cell]:
        """Seed by seed (an unfinished study still compares the methods on the same splits),
        then budget, then trainer; the classifier, when a gated method needs it, first: each
        segmenter's gated rows are computed as soon as it is trained, while both checkpoints
        are on disk (a study that resumes in another session has only what was committed)."""
        trainers = list(dict.fromkeys(METHODS[m].segmenter for m in self.methods))
        if any(METHODS[m].gated for m in self.methods):
            trainers.insert(0, "mlmt")
        return [
            Cell(trainer, budget, seed)
            for seed in self.seeds
            for budget in self.labels
            for trainer in trainers
        ]


def load_spec(path: str) -> dict[str, Any]:
    """A study preset (``voc-paper``, ...) or a YAML file: config, methods, labels, seeds, set."""
    if not path.endswith((".yaml", ".yml")):
        names = sorted(
            p.stem for p in resources.files(studies).iterdir() if p.name.endswith(".yaml")
        )
        if path not in names:
            raise ConfigError(f"unknown study preset '{path}' (presets: {', '.join(names)})")
        text = resources.files(studies).joinpath(f"{path}.yaml").read_text()
    else:
        if not Path(path).is_file():
            raise ConfigError(f"study file not found: {path}")
        text = Path(path).read_text()
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a study file is a mapping (config, methods, labels, seeds)")
    return data


def spec_from_args(args: argparse.Namespace, out: Path) -> StudySpec:
    """The flags over the preset; with neither, the spec the study folder was started with."""
    saved = out / "spec.json"
    base: dict[str, Any] = load_spec(args.preset) if args.preset else {}
    given = {
        "config": args.config,
        "methods": args.methods.split(",") if args.methods else None,
        "labels": args.labels.split(",") if args.labels else None,
        "seeds": [int(s) for s in args.seeds.split(",")] if args.seeds else None,
    }
    if not base and not any(given.values()) and not args.overrides and saved.is_file():
        return StudySpec(**json.loads(saved.read_text()))
    data = {**base, **{k: v for k, v in given.items() if v is not None}}
    data["overrides"] = [*base.get("set", []), *args.overrides]
    data.pop("set", None)
    missing = [k for k in ("config", "methods", "labels", "seeds") if not data.get(k)]
    if missing:
        raise ConfigError(f"the study needs --{' --'.join(missing)} (or --preset)")
    spec = StudySpec(
        config=str(data["config"]),
        methods=[str(m) for m in data["methods"]],
        labels=[str(b) for b in data["labels"]],
        seeds=[int(s) for s in data["seeds"]],
        overrides=[str(o) for o in data["overrides"]],
    )
    spec.check()
    return spec


def claim_folder(out: Path, spec: StudySpec) -> None:
    """A study folder belongs to one training config (preset and overrides): cells trained under
    another would not compare. Methods, budgets and seeds may grow or shrink: a cell is known
    by its trainer, budget and seed, so the ones already done are reused."""
    saved = out / "spec.json"
    if saved.is_file():
        before = json.loads(saved.read_text())
        changed = [k for k in ("config", "overrides") if before.get(k) != asdict(spec)[k]]
        if changed:
            raise ConfigError(
                f"{out} holds a study with other {' and '.join(changed)}: use another --out, or "
                "repeat the study's own flags (or none) to resume it"
            )
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(saved, asdict(spec))


# -- one cell -------------------------------------------------------------------------------------


def cell_config(spec: StudySpec, cell: Cell, out: Path, device: str | None):
    """The cell's training config: the study's preset and overrides, its split and folder."""
    from s4seg.training.config import load_config

    split = split_file(spec, cell, out)
    overrides = [
        *spec.overrides,
        f"data.split_file={split}",
        f"train.out_dir={out / 'runs' / cell.name}",
        f"train.seed={cell.seed}",
        *([f"train.device={device}"] if device else []),
    ]
    return load_config(spec.config, overrides), overrides


def split_file(spec: StudySpec, cell: Cell, out: Path) -> Path:
    """The budget's labeled/unlabeled split for the cell's seed, made once and shared by the
    cells of that budget and seed (the methods are compared on the same labels)."""
    from s4seg.layouts import open_layout
    from s4seg.training.config import load_config
    from s4seg.training.data.split import Split, make_budget_split

    path = out / "splits" / f"{budget_slug(cell.budget)}-s{cell.seed}.json"
    if torchrun_rank() > 0:
        wait_for_file(path, 120, f"cell {cell.name}")
    if path.is_file():
        Split.load(path)  # refuse a damaged one by name
        return path
    data = load_config(spec.config, spec.overrides).data
    if data.root is None:
        raise ConfigError(f"{spec.config}: data.root is not set (--set data.root=DIR)")
    layout = open_layout(data.root, data.kind)
    split = make_budget_split(
        layout, data.train_split or layout.default_train_split, cell.budget, cell.seed
    )
    return split.save(path)


def run_cell(spec: StudySpec, cell: Cell, out: Path, device: str | None, log) -> dict:
    """Train (or continue) and evaluate one cell; ``result.json`` marks it done."""
    folder = out / "runs" / cell.name
    result_path = folder / "result.json"
    if result_path.is_file():
        return json.loads(result_path.read_text())
    import torch

    from s4seg.training.checkpoint import Checkpoint
    from s4seg.training.data.split import Split
    from s4seg.training.trainers import TRAINERS

    cfg, overrides = cell_config(spec, cell, out, device)
    started = time.monotonic()
    log(f"{cell.name}: training ({cfg.train.iterations} iterations) in {folder}")
    last, _ = TRAINERS[cell.trainer].run(cfg, log=lambda m: log(f"  {cell.name}: {m}"))
    if torchrun_rank() > 0:
        return {}  # rank 0 evaluates and writes the result
    trained = Checkpoint.load(last)
    figures: dict[str, Any]
    if cell.trainer == "mlmt":
        metrics = trained.metrics
        figures = {
            "teacher_map": metrics.get("teacher_map"),
            "student_map": metrics.get("student_map"),
        }
    else:
        from s4seg.training.evaluation import evaluate_checkpoint

        report, _ = evaluate_checkpoint(str(last), device=device or "auto", part="report")
        figures = {"miou": report["miou"], "images": report["images"], "part": "report"}
    split = Split.load(cfg.data.split_file)
    result = {
        "trainer": cell.trainer,
        "budget": cell.budget,
        "seed": cell.seed,
        "labeled": len(split.labeled),
        "train_images": len(split.labeled) + len(split.unlabeled),
        "split_file": str(cfg.data.split_file),
        "config": spec.config,
        "overrides": overrides,
        "config_digest": digest_json(cfg.to_dict()),
        "pretrained": cfg.mlmt.pretrained_backbone
        if cell.trainer == "mlmt"
        else cfg.model.pretrained_backbone,
        "iterations": trained.iteration,
        "wall_seconds": round(time.monotonic() - started, 1),  # this session's share
        "versions": {"s4seg": __version__, "torch": torch.__version__},
        "checkpoint": str(last),
        "figures": figures,
    }
    write_json_atomic(result_path, result)
    gate_now(spec, cell, out, device)
    return result


def gate_now(spec: StudySpec, cell: Cell, out: Path, device: str | None) -> None:
    """The gated rows this cell completes (a segmenter after its classifier, or the reverse),
    computed now, while the checkpoints they need are on disk; cached in ``gated/``."""
    for method in (METHODS[m] for m in spec.methods):
        if method.gated and cell.trainer in (method.segmenter, "mlmt"):
            gated_row(spec, method, cell.budget, cell.seed, out, device)


def stale_cells(spec: StudySpec, out: Path) -> list[Cell]:
    """Finished cells to train again: a gated row still to compute whose checkpoints are gone
    (the study resumed in a session that has only the committed results). Their results are
    set aside (``result.stale.json``) so that they run again."""
    stale: set[Cell] = set()
    for method in (METHODS[m] for m in spec.methods if METHODS[m].gated):
        for budget in spec.labels:
            for seed in spec.seeds:
                cached = out / "gated" / f"{method.name}-{budget_slug(budget)}-s{seed}.json"
                if cached.is_file():
                    continue
                for trainer in (method.segmenter, "mlmt"):
                    cell = Cell(trainer, budget, seed)
                    result = out / "runs" / cell.name / "result.json"
                    if result.is_file():
                        checkpoint = Path(json.loads(result.read_text())["checkpoint"])
                        if not checkpoint.is_file():
                            stale.add(cell)
    for cell in stale:
        folder = out / "runs" / cell.name
        (folder / "result.json").replace(folder / "result.stale.json")
    return sorted(stale, key=lambda c: c.name)


def gated_row(
    spec: StudySpec, method: Method, budget: str, seed: int, out: Path, device: str | None
) -> dict | None:
    """A segmenter gated by the MLMT classifier of the same budget and seed: tau chosen on the
    calibration part (the rule of ``s4seg export``), then the report part at that tau. None
    until both cells are done; cached in ``gated/``."""
    seg = out / "runs" / Cell(method.segmenter, budget, seed).name / "result.json"
    cls = out / "runs" / Cell("mlmt", budget, seed).name / "result.json"
    cached = out / "gated" / f"{method.name}-{budget_slug(budget)}-s{seed}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    if not (seg.is_file() and cls.is_file()):
        return None
    from s4seg.export.calibration import choose_tau
    from s4seg.training.evaluation import evaluate_checkpoint

    segmenter = json.loads(seg.read_text())["checkpoint"]
    classifier = json.loads(cls.read_text())["checkpoint"]
    run = {"classifier": classifier, "device": device or "auto"}
    calibration, _ = evaluate_checkpoint(
        segmenter, tau=PAPER_TAU, tau_sweep=True, part="calibration", **run
    )
    tau, reason = choose_tau(calibration["ungated"]["miou"], calibration["tau_sweep"])
    report, _ = evaluate_checkpoint(segmenter, tau=tau, part="report", **run)
    row = {
        "method": method.name,
        "budget": budget,
        "seed": seed,
        "tau": tau,
        "tau_reason": reason,
        "gate": "off" if tau == GATE_OFF_TAU else "on",
        "figures": {"miou": report["miou"], "ungated_miou": report["ungated"]["miou"]},
    }
    write_json_atomic(cached, row)
    return row


# -- the whole study ------------------------------------------------------------------------------


def parse_cell(text: str, count: int) -> int:
    """``i/N``, or ``auto``: the index of a Kubernetes Indexed Job's pod (one cell per pod)."""
    if text == AUTO:
        text = f"{job_index('--cell')}/{count}"
    try:
        index, total = (int(v) for v in text.split("/"))
    except ValueError:
        raise ConfigError(f"--cell takes i/N, e.g. 0/{count}, not {text!r}") from None
    if total != count or not 0 <= index < total:
        raise ConfigError(
            f"--cell {text}: this study has {count} cells (0/{count} .. {count - 1}/{count})"
        )
    return index


def run_study(args: argparse.Namespace) -> int:
    out = Path(args.out)
    spec = spec_from_args(args, out)
    cells = spec.cells()
    if args.dry_run:
        print(dry_run(spec, cells, out, args.device))
        return 0
    if torchrun_rank() > 0:  # a cell under torchrun: rank 0 keeps the books, every rank trains
        if not args.cell:
            raise ConfigError("under torchrun, run one cell per job: --cell i/N or --cell auto")
        run_cell(spec, cells[parse_cell(args.cell, len(cells))], out, args.device, lambda _: None)
        return 0
    claim_folder(out, spec)
    log = StudyLog(out / "study.log")
    if args.report:  # what the finished cells say, without training more
        report_study(spec, out, args.device, log)
        return 0
    if args.cell:
        index = parse_cell(args.cell, len(cells))
        run_cell(spec, cells[index], out, args.device, log)
        return 0
    for cell in stale_cells(spec, out):
        log(f"{cell.name}: its checkpoint is gone and a gated row still needs it: trained again")
    todo = [c for c in cells if not (out / "runs" / c.name / "result.json").is_file()]
    log(f"study {out}: {len(cells)} cells, {len(cells) - len(todo)} done, {len(todo)} to run")
    if args.jobs > 1:
        run_parallel(out, cells, todo, args, log)
    else:
        timer = Eta(len(todo))
        for done, cell in enumerate(todo):
            log(f"cell {cells.index(cell) + 1}/{len(cells)}: {cell.name} ({timer.left(done)})")
            run_cell(spec, cell, out, args.device, log)
            if done + 1 < len(todo):  # the figures so far, after every cell (a study runs hours)
                report_study(spec, out, args.device, log, quiet=True)
    report_study(spec, out, args.device, log)
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


def run_parallel(out: Path, cells: list[Cell], todo: list[Cell], args, log) -> None:
    """``--jobs N``: N child processes (``s4seg study --out OUT --cell i/N``), each with its
    share of the cores."""
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    queue, running, failed = list(todo), [], []
    timer = Eta(len(todo))
    finished = 0
    while queue or running:
        while queue and len(running) < args.jobs:
            cell = queue.pop(0)
            command = [sys.executable, "-m", "s4seg", "study", "--out", str(out),
                       "--cell", f"{cells.index(cell)}/{len(cells)}",
                       *(["--device", args.device] if args.device else [])]  # fmt: skip
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


def dry_run(spec: StudySpec, cells: list[Cell], out: Path, device: str | None) -> str:
    """The cells, the command each amounts to, and the time they would take on this machine:
    the training step timed as ``s4seg bench train`` times it, times the iterations."""
    from s4seg.training.config import load_config

    cfg = load_config(spec.config, spec.overrides)
    per_iteration = step_seconds(cfg, device)
    lines = [f"study {out}: {len(cells)} cells ({', '.join(spec.methods)}; budgets "
             f"{', '.join(spec.labels)}; seeds {', '.join(map(str, spec.seeds))}), "
             f"{spec.config}, {cfg.train.iterations} iterations each"]  # fmt: skip
    total = 0.0
    for i, cell in enumerate(cells):
        split = out / "splits" / f"{budget_slug(cell.budget)}-s{cell.seed}.json"
        given = [*spec.overrides, f"data.split_file={split}",
                 f"train.out_dir={out}/runs/{cell.name}", f"train.seed={cell.seed}"]  # fmt: skip
        sets = " ".join(f"--set {o}" for o in given)
        seconds = per_iteration.get(cell.trainer)
        if seconds is not None:
            total += seconds * cfg.train.iterations
        estimate = clock(seconds * cfg.train.iterations) if seconds is not None else "not timed"
        lines.append(f"  {i}/{len(cells)} {cell.name}: {estimate}  "
                     f"s4seg train {cell.trainer} --config {spec.config} {sets}")  # fmt: skip
    timed = ", ".join(f"{k} {v:.2f} s/iteration" for k, v in per_iteration.items())
    lines.append(f"estimate: {clock(total)} of training on {timed} (MLMT not timed: its step is "
                 "not in bench train), plus evaluation")  # fmt: skip
    return "\n".join(lines)


def step_seconds(cfg, device: str | None) -> dict[str, float]:
    """Median seconds of one training step per segmenter trainer, timed as ``bench train``
    does (a few iterations after a warm-up) at the config's depth, batch and crop."""
    from .bench.train import time_case

    bench = argparse.Namespace(
        device=device or cfg.train.device, batch_size=cfg.train.batch_size,
        crop=max(cfg.data.crop_size), warmup=1, iterations=3,
    )  # fmt: skip
    times = {}
    for trainer, step in (("baseline", "segmenter"), ("s4gan", "s4gan"), ("unimatch", "unimatch")):
        row = time_case(step, cfg.model.backbone_depth, "fp32", bench)
        times[trainer] = row["median_s"]
    return times


# -- the report -----------------------------------------------------------------------------------

# Two-sided 95% quantiles of Student's t by degrees of freedom (1..30; beyond, the normal's).
T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
       2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
       2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip


@dataclass
class Summary:
    n: int
    mean: float
    sd: float
    half_width: float  # of the 95% interval (t); nan for n < 2


def summarise(values: Iterable[float]) -> Summary:
    values = list(values)
    n = len(values)
    mean = statistics.fmean(values) if values else math.nan
    sd = statistics.stdev(values) if n >= 2 else math.nan
    t = T95[n - 2] if 2 <= n <= 31 else 1.96
    return Summary(n, mean, sd, t * sd / math.sqrt(n) if n >= 2 else math.nan)


def method_rows(spec: StudySpec, out: Path, device: str | None) -> list[dict]:
    """Every (method, budget, seed) with its figure, as far as the cells are done."""
    rows = []
    for method_name in spec.methods:
        method = METHODS[method_name]
        for budget in spec.labels:
            for seed in spec.seeds:
                seg = out / "runs" / Cell(method.segmenter, budget, seed).name / "result.json"
                if not seg.is_file():
                    continue
                cell = json.loads(seg.read_text())
                row = {"method": method_name, "budget": budget, "seed": seed,
                       "labeled": cell["labeled"], "miou": cell["figures"]["miou"]}  # fmt: skip
                if method.gated:
                    gated = gated_row(spec, method, budget, seed, out, device)
                    if gated is None:
                        continue
                    row.update(miou=gated["figures"]["miou"], tau=gated["tau"])
                rows.append(row)
    return rows


def verdict(diff: Summary) -> str:
    if diff.n < 2:
        return "one pair: no verdict"
    low, high = diff.mean - diff.half_width, diff.mean + diff.half_width
    if low > 0:
        return "better (95% interval above 0)"
    if high < 0:
        return "worse (95% interval below 0)"
    return "no difference shown"


def table(spec: StudySpec, rows: list[dict], cells: list[dict]) -> str:
    pct = lambda v: "n/a" if math.isnan(v) else f"{100 * v:.2f}"  # noqa: E731
    lines = [
        f"Study: {spec.config}, methods {', '.join(spec.methods)}, seeds "
        f"{', '.join(map(str, spec.seeds))}; mIoU on the report part of the validation split "
        "(gated methods: tau chosen on the calibration part). Paired: the method minus the "
        "baseline on the same split and seed.",
        "",
        "| budget | labeled | method | n | mIoU mean +- sd | 95% interval | paired vs baseline "
        "(mean +- sd) | 95% interval | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for budget in spec.labels:
        base = {
            r["seed"]: r["miou"]
            for r in rows
            if r["budget"] == budget and r["method"] == "baseline"
        }
        for method in spec.methods:
            mine = [r for r in rows if r["budget"] == budget and r["method"] == method]
            if not mine:
                continue
            s = summarise(r["miou"] for r in mine)
            paired = "-"
            interval = verdict_text = "-"
            if method != "baseline" and base:
                diff = summarise(r["miou"] - base[r["seed"]] for r in mine if r["seed"] in base)
                if diff.n:
                    paired = f"{pct(diff.mean)} +- {pct(diff.sd)} (n={diff.n})"
                    interval = (
                        f"[{pct(diff.mean - diff.half_width)}, {pct(diff.mean + diff.half_width)}]"
                    )
                    verdict_text = verdict(diff)
            lines.append(
                f"| {budget} | {mine[0]['labeled']} | {method} | {s.n} | {pct(s.mean)} +- "
                f"{pct(s.sd)} | [{pct(s.mean - s.half_width)}, {pct(s.mean + s.half_width)}] | "
                f"{paired} | {interval} | {verdict_text} |"
            )
    classifiers = [c for c in cells if c["trainer"] == "mlmt"]
    if classifiers:
        lines += ["", "| budget | MLMT teacher mAP mean +- sd (n) |", "|---|---|"]
        for budget in spec.labels:
            maps = [c["figures"]["teacher_map"] for c in classifiers if c["budget"] == budget]
            if maps:
                s = summarise(maps)
                lines.append(f"| {budget} | {pct(s.mean)} +- {pct(s.sd)} ({s.n}) |")
    return "\n".join(lines)


def report_study(spec: StudySpec, out: Path, device: str | None, log, quiet: bool = False) -> None:
    cells = [
        json.loads(p.read_text())
        for c in spec.cells()
        if (p := out / "runs" / c.name / "result.json").is_file()
    ]
    rows = method_rows(spec, out, device)
    text = table(spec, rows, cells)
    (out / "study.md").write_text(text + "\n")
    write_json_atomic(out / "study.json", {"spec": asdict(spec), "cells": cells, "rows": rows})
    plot_study(spec, rows, out / "study.png")
    plot_curves(spec, out, out / "curves.png")
    log(f"report: {out / 'study.md'}, {out / 'study.png'}, {out / 'curves.png'}")
    if not quiet:
        print(text)


def plot_study(spec: StudySpec, rows: list[dict], path: Path) -> None:
    """mIoU against the number of labeled images (log axis), one line per method: the mean,
    a band of +- one sd, each seed a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for method in spec.methods:
        points = sorted({r["labeled"] for r in rows if r["method"] == method})
        if not points:
            continue
        values = [[100 * r["miou"] for r in rows if r["method"] == method and r["labeled"] == n]
                  for n in points]  # fmt: skip
        means = [statistics.fmean(v) for v in values]
        sds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
        gated = METHODS[method].gated  # dashed: often on its ungated line (the gate off)
        (line,) = axis.plot(points, means, marker="s" if gated else "o", label=method,
                            linestyle="--" if gated else "-")  # fmt: skip
        axis.fill_between(points, [m - s for m, s in zip(means, sds, strict=True)],
                          [m + s for m, s in zip(means, sds, strict=True)],
                          color=line.get_color(), alpha=0.15)  # fmt: skip
        for n, v in zip(points, values, strict=True):
            axis.scatter([n] * len(v), v, color=line.get_color(), s=10, alpha=0.5)
    axis.set_xscale("log")
    axis.set_xlabel("labeled images (log scale)")
    axis.set_ylabel("mIoU (report part of val), %")
    axis.set_title(f"{spec.config}: label efficiency (mean +- sd over seeds)")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_curves(spec: StudySpec, out: Path, path: Path) -> None:
    """The training curves behind the figures: every segmenter's validation mIoU (whether a
    run was still rising); for s4GAN, D(real), D(fake) and the share of unlabeled samples
    self-trained on; for UniMatch, the share of unlabeled pixels above the confidence
    threshold, the foreground share of those, the pseudo-labels' accuracy and their foreground
    recall (on masks never trained on); for MLMT, the teacher's val mAP; against iteration.
    One line per budget, the mean over its seeds."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = ["val"]
    if any(METHODS[m].segmenter == "s4gan" for m in spec.methods):
        panels += ["d", "st"]
    if any(METHODS[m].segmenter == "unimatch" for m in spec.methods):
        panels.append("pl")
    if any(METHODS[m].gated for m in spec.methods):
        panels.append("map")
    figure, axes = plt.subplots(len(panels), 1, figsize=(7, 2.6 * len(panels)), sharex=False)
    axes = [axes] if len(panels) == 1 else list(axes)
    trainers = list(dict.fromkeys(METHODS[m].segmenter for m in spec.methods))
    styles = {"baseline": "-", "s4gan": "--", "unimatch": ":"}
    for budget in spec.labels:
        colour = None
        for trainer in trainers:  # validation mIoU during training: where each run stands
            runs = [out / "runs" / Cell(trainer, budget, s).name for s in spec.seeds]
            steps, mious = mean_curve(runs, "val/miou")
            if steps:
                (line,) = axes[0].plot(steps, [100 * m for m in mious], styles.get(trainer, "-"),
                                       marker="o", markersize=3, color=colour,
                                       label=f"{budget}: {trainer}")  # fmt: skip
                colour = line.get_color()
        gan = [out / "runs" / Cell("s4gan", budget, s).name / "d_scores.csv" for s in spec.seeds]
        histories = [list(csv.DictReader(p.open())) for p in gan if p.is_file()]
        if histories and "d" in panels:
            steps, real, fake, share = mean_history(histories)
            (line,) = axes[panels.index("d")].plot(steps, real, label=f"{budget}: D(real)")
            axes[panels.index("d")].plot(steps, fake, "--", color=line.get_color(),
                                         label=f"{budget}: D(fake)")  # fmt: skip
            axes[panels.index("st")].plot(steps, share, color=line.get_color(), label=budget)
        if "pl" in panels:
            runs = [out / "runs" / Cell("unimatch", budget, s).name for s in spec.seeds]
            axis = axes[panels.index("pl")]
            steps, share = mean_curve(runs, "train/confident")
            if steps:
                (line,) = axis.plot(steps, share, label=f"{budget}: confident share")
                for tag, style, name in (
                    ("train/confident_fg", "-.", "foreground share of confident"),
                    ("train/pl_accuracy", "--", "pseudo-label accuracy"),
                    ("train/pl_fg_recall_confident", ":", "foreground recall (confident)"),
                ):
                    steps, values = mean_curve(runs, tag)
                    if steps:
                        axis.plot(steps, values, style, color=line.get_color(),
                                  label=f"{budget}: {name}")  # fmt: skip
        if "map" in panels:
            runs = [out / "runs" / Cell("mlmt", budget, s).name for s in spec.seeds]
            steps, maps = mean_curve(runs, "val/teacher_map")
            if steps:
                axes[panels.index("map")].plot(
                    steps, [100 * m for m in maps], marker="o", label=budget
                )
    labels = {"val": ("val mIoU during training, %", None),
              "d": ("s4GAN: D score", (0, 1)), "st": ("s4GAN: share self-trained", (0, 1)),
              "pl": ("UniMatch: unlabeled pixels", (0, 1)),
              "map": ("MLMT teacher mAP, %", None)}  # fmt: skip
    for axis, panel in zip(axes, panels, strict=True):
        axis.set_ylabel(labels[panel][0])
        if labels[panel][1]:
            axis.set_ylim(*labels[panel][1])
        axis.set_xlabel("iteration")
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
    axes[0].set_title("training curves (mean over seeds, per budget)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def mean_history(histories: list[list[dict]]) -> tuple[list[int], ...]:
    length = min(len(h) for h in histories)
    steps = [int(float(histories[0][i]["iteration"])) for i in range(length)]

    def mean(key) -> list[float]:
        return [statistics.fmean(key(h[i]) for h in histories) for i in range(length)]

    return (
        steps,
        mean(lambda r: float(r["d_real"])),
        mean(lambda r: float(r["d_fake"])),
        mean(lambda r: float(r["st_selected"]) / max(float(r["st_batch"]), 1.0)),
    )


def scalar_curve(run: Path, tag: str) -> dict[int, float]:
    """One logged scalar by iteration (``val/teacher_map``, ``train/confident``, ...), from the
    run's TensorBoard events."""
    events = run / "tensorboard"
    if not events.is_dir():
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    if tag not in accumulator.Tags().get("scalars", []):
        return {}
    return {e.step: e.value for e in accumulator.Scalars(tag)}


def mean_curve(runs: list[Path], tag: str) -> tuple[list[int], list[float]]:
    """The mean over runs of a scalar, at the iterations every run logged."""
    curves = [c for c in (scalar_curve(r, tag) for r in runs) if c]
    if not curves:
        return [], []
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    return steps, [statistics.fmean(c[s] for c in curves) for s in steps]
