"""The acquisition axis of a study (issue 34, item 4): each round's split, its images picked by a
strategy with the checkpoint of the round before, and the comparison at equal labels, each
strategy against random on the same seed.

A round's split is made once, when its cell first runs, and kept in ``splits/`` (the picks with
their scores in ``acquired/``): a study that resumes in another session needs the checkpoint of
the round before only for a split not yet made (``stale_rounds`` retrains it then)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from s4seg.acquisition import random_score, rank
from s4seg.atomic import write_json_atomic
from s4seg.errors import S4segError

from .spec import Acquisition, Cell, StudySpec, acquired_budget, budget_slug, parse_acquired
from .stats import interval, percent, summarise, verdict


def previous_cell(acquiring: Acquisition, cell: Cell) -> Cell:
    """The cell whose checkpoint picks this round's images: the round before, same strategy."""
    parsed = parse_acquired(cell.budget)
    assert parsed is not None
    start, added, strategy = parsed
    if added == acquiring.add:
        return Cell(cell.trainer, start, cell.seed)
    return Cell(cell.trainer, acquired_budget(start, added - acquiring.add, strategy), cell.seed)


def acquired_split(spec: StudySpec, cell: Cell, out: Path, device: str | None):
    """The round before's split with ``add`` more images labeled: the top of its unlabeled
    images by the strategy's score (random: a hash of the id and the seed)."""
    from s4seg.training.data.split import Split

    acquiring, parsed = spec.acquiring, parse_acquired(cell.budget)
    assert acquiring is not None and parsed is not None
    strategy = parsed[2]
    before = previous_cell(acquiring, cell)
    result = json.loads((out / "runs" / before.name / "result.json").read_text())
    previous = Split.load(result["split_file"])
    pool = list(previous.unlabeled)
    if strategy == "random":
        values = [random_score(i, cell.seed) for i in pool]
    else:
        from s4seg.training.acquisition import score_pool

        checkpoint = result["checkpoint"]
        if not Path(checkpoint).is_file():
            raise S4segError(
                f"{cell.name}: its images are picked with {before.name}'s checkpoint, and "
                f"{checkpoint} is gone (run the study again: it retrains {before.name})"
            )
        scored = score_pool(checkpoint, previous.train_split, pool, device or "auto")
        values = [float(scored[i].of(strategy, i, cell.seed) or 0.0) for i in pool]
    order = rank(values).order[: acquiring.add]
    picked = [pool[k] for k in order]
    write_json_atomic(
        out / "acquired" / f"{budget_slug(cell.budget)}-s{cell.seed}.json",
        {
            "strategy": strategy,
            "picked_with": before.name,
            "picked": [{"id": pool[k], "score": round(values[k], 5)} for k in order],
        },
    )
    labeled = [*previous.labeled, *picked]
    unlabeled = [i for i in pool if i not in set(picked)]
    return replace(
        previous,
        ratio=f"{len(labeled)}/{len(labeled) + len(unlabeled)}",
        labeled=labeled,
        unlabeled=unlabeled,
    )


def stale_rounds(spec: StudySpec, out: Path) -> set[Cell]:
    """Finished cells whose checkpoint a round still to split needs, and is gone."""
    acquiring, stale = spec.acquiring, set[Cell]()
    if acquiring is None:
        return stale
    for cell in spec.cells():
        parsed = parse_acquired(cell.budget)
        split = out / "splits" / f"{budget_slug(cell.budget)}-s{cell.seed}.json"
        if parsed is None or parsed[2] == "random" or split.is_file():
            continue
        before = previous_cell(acquiring, cell)
        result = out / "runs" / before.name / "result.json"
        if result.is_file() and not Path(json.loads(result.read_text())["checkpoint"]).is_file():
            stale.add(before)
    return stale


def acquisition_rows(spec: StudySpec, out: Path) -> list[dict]:
    """(strategy, labeled, seed, mIoU) for every finished cell; the starting cell counts for
    every strategy (round 0)."""
    acquiring = spec.acquiring
    assert acquiring is not None
    rows = []
    for cell in spec.cells():
        path = out / "runs" / cell.name / "result.json"
        if not path.is_file():
            continue
        result = json.loads(path.read_text())
        parsed = parse_acquired(cell.budget)
        strategies = acquiring.strategies if parsed is None else [parsed[2]]
        for strategy in strategies:
            rows.append(
                {
                    "strategy": strategy,
                    "round": 0 if parsed is None else parsed[1] // acquiring.add,
                    "labeled": result["labeled"],
                    "seed": cell.seed,
                    "miou": result["figures"]["miou"],
                }
            )
    return rows


def acquisition_table(spec: StudySpec, rows: list[dict]) -> str:
    acquiring = spec.acquiring
    assert acquiring is not None
    lines = [
        f"Acquisition study: {spec.config}, {spec.methods[0]} from {spec.labels[0]} labels, "
        f"+{acquiring.add} a round by each strategy, seeds {', '.join(map(str, spec.seeds))}; "
        "mIoU on the report part. Paired: the strategy minus random on the same seed and round.",
        "",
        "| round | labeled | strategy | n | mIoU mean +- sd | paired vs random (mean +- sd) | "
        "95% interval | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for round_ in range(1, acquiring.rounds + 1):
        here = [r for r in rows if r["round"] == round_]
        random = {r["seed"]: r["miou"] for r in here if r["strategy"] == "random"}
        for strategy in acquiring.strategies:
            mine = [r for r in here if r["strategy"] == strategy]
            if not mine:
                continue
            s = summarise(r["miou"] for r in mine)
            paired = paired_interval = decided = "-"
            diff = summarise(r["miou"] - random[r["seed"]] for r in mine if r["seed"] in random)
            if strategy != "random" and diff.n:
                paired = f"{percent(diff.mean)} +- {percent(diff.sd)} (n={diff.n})"
                paired_interval, decided = interval(diff), verdict(diff)
            lines.append(
                f"| {round_} | {mine[0]['labeled']} | {strategy} | {s.n} | {percent(s.mean)} +- "
                f"{percent(s.sd)} | {paired} | {paired_interval} | {decided} |"
            )
    return "\n".join(lines)


def picked_contents(spec: StudySpec, out: Path) -> list[dict]:
    """What each strategy's picks hold, read from their own masks (the labels an annotator gives
    them, never used to pick): foreground share and classes per image, one row per image, the
    pool the first round picks from as strategy "pool". Empty where the data set is not here."""
    from s4seg.layouts import open_layout
    from s4seg.training.data.split import Split

    acquiring = spec.acquiring
    assert acquiring is not None
    rows: list[dict] = []
    masks: dict[str, dict] = {}
    for cell in spec.cells():
        parsed = parse_acquired(cell.budget)
        picks = out / "acquired" / f"{budget_slug(cell.budget)}-s{cell.seed}.json"
        split_path = out / "splits" / f"{budget_slug(cell.budget)}-s{cell.seed}.json"
        if not split_path.is_file() or (parsed is not None and not picks.is_file()):
            continue
        split = Split.load(split_path)
        root = str(split.dataset.get("root", ""))
        if not Path(root).is_dir():
            return []
        if root not in masks:
            layout = open_layout(root, str(split.dataset.get("kind", "auto")))
            masks[root] = {"layout": layout, "samples": {}}
            for sample in layout.samples(split.train_split):
                masks[root]["samples"][sample.id] = sample
        layout, samples = masks[root]["layout"], masks[root]["samples"]
        if parsed is None:
            ids, strategy, round_ = split.unlabeled, "pool", 0
        else:
            ids = [p["id"] for p in json.loads(picks.read_text())["picked"]]
            strategy, round_ = parsed[2], parsed[1] // acquiring.add
        for sample_id in ids:
            if sample_id in samples and samples[sample_id].mask is not None:
                mask = layout.read_mask(samples[sample_id])
                rows.append({"strategy": strategy, "round": round_, "seed": cell.seed,
                             **mask_contents(mask, layout.background_index)})  # fmt: skip
    return rows


def mask_contents(mask: np.ndarray, background: int | None) -> dict:
    """Foreground share of the labeled pixels and the classes present (background not counted)."""
    from s4seg import IGNORE_INDEX

    labeled = mask != IGNORE_INDEX
    classes = {int(c) for c in np.unique(mask[labeled])} - {background}
    foreground = labeled & (mask != background) if background is not None else labeled
    return {"foreground": float(foreground.sum()) / max(int(labeled.sum()), 1),
            "classes": len(classes)}  # fmt: skip


def picked_table(contents: list[dict]) -> str:
    """Mean over the picked images of all seeds, per round and strategy."""
    if not contents:
        return ""
    lines = [
        "What each strategy picked, from the picked images' own masks (the labels they get; never "
        "used to pick), mean over the images of every seed; pool: the images the first round "
        "picks from.",
        "",
        "| round | picked by | images | foreground share (%) | classes per image |",
        "|---|---|---|---|---|",
    ]
    keys = sorted({(r["round"], r["strategy"]) for r in contents})
    for round_, strategy in keys:
        mine = [r for r in contents if r["round"] == round_ and r["strategy"] == strategy]
        share = summarise(r["foreground"] for r in mine)
        count = summarise(float(r["classes"]) for r in mine)
        lines.append(
            f"| {round_ or '-'} | {strategy} | {len(mine)} | {percent(share.mean)} | "
            f"{count.mean:.2f} |"
        )
    return "\n".join(lines)


def plot_acquisition(spec: StudySpec, rows: list[dict], path: Path) -> None:
    """Left: mIoU against labeled images, one line per strategy (mean over seeds, sd as bars).
    Right: what the verdict reads, each strategy minus random on the same seed and round (the
    seeds as dots, their mean with its 95% interval)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acquiring = spec.acquiring
    assert acquiring is not None
    figure, (curves, paired) = plt.subplots(1, 2, figsize=(11, 4))
    for offset, strategy in enumerate(acquiring.strategies):
        points = []
        for round_ in range(acquiring.rounds + 1):
            mine = [r for r in rows if r["strategy"] == strategy and r["round"] == round_]
            if mine:
                s = summarise(r["miou"] for r in mine)
                points.append((mine[0]["labeled"] + 0.3 * offset, 100 * s.mean, 100 * s.sd))
        if points:
            x, y, sd = zip(*points, strict=True)
            curves.errorbar(x, y, yerr=[0 if v != v else v for v in sd], marker="o", capsize=3,
                            label=strategy)  # fmt: skip
    seeds = len({r["seed"] for r in rows})
    curves.set(xlabel="labeled images", ylabel="mIoU (%), report part")
    curves.set_title(f"{spec.config}: mean +- sd over {seeds} seed(s)", fontsize=11)
    curves.legend()
    curves.grid(alpha=0.3)
    plot_paired(paired, acquiring, rows)
    figure.suptitle("Which images to label next", fontsize=12)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_paired(axes, acquiring: Acquisition, rows: list[dict]) -> None:
    """Each strategy minus random, per round: the seeds as dots, the mean and its 95% interval."""
    ticks: list[str] = []
    for round_ in range(1, acquiring.rounds + 1):
        here = [r for r in rows if r["round"] == round_]
        random = {r["seed"]: r["miou"] for r in here if r["strategy"] == "random"}
        for strategy in (s for s in acquiring.strategies if s != "random"):
            diffs = [
                100 * (r["miou"] - random[r["seed"]])
                for r in here
                if r["strategy"] == strategy and r["seed"] in random
            ]
            x = len(ticks)
            ticks.append(f"{strategy}\n+{round_ * acquiring.add}")
            if not diffs:
                continue
            axes.plot([x] * len(diffs), diffs, "o", color="0.6", markersize=4)
            s = summarise(diffs)
            bar = 0 if s.half_width != s.half_width else s.half_width
            axes.errorbar([x], [s.mean], yerr=[bar], fmt="s", color="C3", capsize=5)
    axes.axhline(0, color="black", linewidth=0.8)
    axes.set_xticks(range(len(ticks)), ticks)
    axes.set_xlim(-0.6, max(len(ticks), 1) - 0.4)
    axes.set_ylabel("mIoU minus random, same seed (points)")
    axes.set_title("paired: seeds (dots), mean and 95% interval", fontsize=11)
    axes.grid(alpha=0.3, axis="y")


def report_acquisition(spec: StudySpec, out: Path) -> str:
    rows = acquisition_rows(spec, out)
    text = acquisition_table(spec, rows)
    picked = picked_table(picked_contents(spec, out))
    text = f"{text}\n\n{picked}" if picked else text
    (out / "study.md").write_text(text + "\n")
    write_json_atomic(out / "study.json", {"spec": spec.__dict__, "rows": rows})
    plot_acquisition(spec, rows, out / "study.png")
    return text
