"""One cell: its config and split, its training and evaluation (``result.json`` marks it done),
and the gated rows it completes."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from s4seg import __version__
from s4seg.atomic import write_json_atomic
from s4seg.cluster import torchrun_rank, wait_for_file
from s4seg.errors import ConfigError
from s4seg.manifest import GATE_OFF_TAU, PAPER_TAU, digest_json

from .spec import METHODS, Cell, Method, StudySpec, budget_slug, parse_acquired


def cell_config(spec: StudySpec, cell: Cell, out: Path, device: str | None):
    """The cell's training config: the study's preset and overrides, its split and folder."""
    from s4seg.training.config import load_config

    split = split_file(spec, cell, out, device)
    overrides = [
        *spec.overrides,
        f"data.split_file={split}",
        f"train.out_dir={out / 'runs' / cell.name}",
        f"train.seed={cell.seed}",
        *([f"train.device={device}"] if device else []),
    ]
    return load_config(spec.config, overrides), overrides


def split_file(spec: StudySpec, cell: Cell, out: Path, device: str | None = None) -> Path:
    """The budget's labeled/unlabeled split for the cell's seed, made once and shared by the
    cells of that budget and seed (the methods are compared on the same labels); an acquired
    budget's from the round before it (``acquisition.py``)."""
    from s4seg.layouts import open_layout
    from s4seg.training.config import load_config
    from s4seg.training.data.split import Split, make_budget_split

    path = out / "splits" / f"{budget_slug(cell.budget)}-s{cell.seed}.json"
    if torchrun_rank() > 0:
        wait_for_file(path, 120, f"cell {cell.name}")
    if path.is_file():
        Split.load(path)  # refuse a damaged one by name
        return path
    if parse_acquired(cell.budget):
        from .acquisition import acquired_split

        return acquired_split(spec, cell, out, device).save(path)
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
        from s4seg.training.evaluation import EvaluationRequest, evaluate_checkpoint

        request = EvaluationRequest(str(last), device=device or "auto", part="report")
        report, _ = evaluate_checkpoint(request)
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
    """Finished cells to train again: a gated row still to compute, or an acquisition round
    still to split, whose checkpoints are gone (the study resumed in a session that has only
    the committed results). Their results are
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
    from .acquisition import stale_rounds

    stale |= stale_rounds(spec, out)
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
    from s4seg.training.evaluation import EvaluationRequest, evaluate_checkpoint

    segmenter = json.loads(seg.read_text())["checkpoint"]
    classifier = json.loads(cls.read_text())["checkpoint"]
    calibrate = EvaluationRequest(
        segmenter, classifier=classifier, device=device or "auto", tau=PAPER_TAU, tau_sweep=True
    )
    calibration, _ = evaluate_checkpoint(replace(calibrate, part="calibration"))
    tau, reason = choose_tau(calibration["ungated"]["miou"], calibration["tau_sweep"])
    report, _ = evaluate_checkpoint(replace(calibrate, tau=tau, tau_sweep=False, part="report"))
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
