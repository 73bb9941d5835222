"""The study's figures: rows per method, budget and seed; the table (study.md), study.json and
the pictures."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from s4seg.atomic import write_json_atomic

from .cells import gated_row
from .plots import plot_curves, plot_study
from .spec import METHODS, Cell, StudySpec
from .stats import interval, percent, summarise, verdict


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
                row = {
                    "method": method_name,
                    "budget": budget,
                    "seed": seed,
                    "labeled": cell["labeled"],
                    "miou": cell["figures"]["miou"],
                }
                if method.gated:
                    gated = gated_row(spec, method, budget, seed, out, device)
                    if gated is None:
                        continue
                    row.update(miou=gated["figures"]["miou"], tau=gated["tau"])
                rows.append(row)
    return rows


def table(spec: StudySpec, rows: list[dict], cells: list[dict]) -> str:
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
            paired_interval = verdict_text = "-"
            if method != "baseline" and base:
                diff = summarise(r["miou"] - base[r["seed"]] for r in mine if r["seed"] in base)
                if diff.n:
                    paired = f"{percent(diff.mean)} +- {percent(diff.sd)} (n={diff.n})"
                    paired_interval = interval(diff)
                    verdict_text = verdict(diff)
            lines.append(
                f"| {budget} | {mine[0]['labeled']} | {method} | {s.n} | {percent(s.mean)} +- "
                f"{percent(s.sd)} | {interval(s)} | {paired} | {paired_interval} | {verdict_text} |"
            )
    classifiers = [c for c in cells if c["trainer"] == "mlmt"]
    if classifiers:
        lines += ["", "| budget | MLMT teacher mAP mean +- sd (n) |", "|---|---|"]
        for budget in spec.labels:
            maps = [c["figures"]["teacher_map"] for c in classifiers if c["budget"] == budget]
            if maps:
                s = summarise(maps)
                lines.append(f"| {budget} | {percent(s.mean)} +- {percent(s.sd)} ({s.n}) |")
    return "\n".join(lines)


def report_study(spec: StudySpec, out: Path, device: str | None, log, quiet: bool = False) -> None:
    if spec.acquiring is not None:
        from .acquisition import report_acquisition

        text = report_acquisition(spec, out)
        log(f"report: {out / 'study.md'}, {out / 'study.png'}")
        if not quiet:
            print(text)
        return
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
