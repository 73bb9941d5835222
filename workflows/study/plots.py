"""The study's pictures: mIoU against labels (study.png) and the training curves behind it
(curves.png), from the runs' TensorBoard events and s4GAN's D-score history."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import TYPE_CHECKING

from .spec import METHODS, Cell, StudySpec

if TYPE_CHECKING:
    from matplotlib.axes import Axes


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
        values = [
            [100 * r["miou"] for r in rows if r["method"] == method and r["labeled"] == n]
            for n in points
        ]
        means = [statistics.fmean(v) for v in values]
        sds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
        gated = METHODS[method].gated  # dashed: often on its ungated line (the gate off)
        (line,) = axis.plot(
            points,
            means,
            marker="s" if gated else "o",
            label=method,
            linestyle="--" if gated else "-",
        )
        axis.fill_between(
            points,
            [m - s for m, s in zip(means, sds, strict=True)],
            [m + s for m, s in zip(means, sds, strict=True)],
            color=line.get_color(),
            alpha=0.15,
        )
        for n, v in zip(points, values, strict=True):
            axis.scatter([n] * len(v), v, color=line.get_color(), s=10, alpha=0.5)
    axis.set_xscale("log")
    budgets = sorted({r["labeled"] for r in rows})
    axis.set_xticks(budgets, [str(n) for n in budgets])  # the budgets, not powers of ten
    axis.minorticks_off()
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    segmenters = {METHODS[m].segmenter for m in spec.methods}
    panels = ["val"]
    if any(METHODS[m].segmenter == "s4gan" for m in spec.methods):
        panels += ["d", "st"]
    consistency = [t for t in ("unimatch", "unimatch-v2") if t in segmenters]
    if consistency:
        panels.append("pl")
    if any(METHODS[m].gated for m in spec.methods):
        panels.append("map")
    figure, axes = plt.subplots(len(panels), 1, figsize=(7, 2.6 * len(panels)), sharex=False)
    axis_of = dict(zip(panels, [axes] if len(panels) == 1 else list(axes), strict=True))
    for budget in spec.labels:
        runs = finished_runs(spec, out, budget)
        trainers = list(dict.fromkeys(METHODS[m].segmenter for m in spec.methods))
        plot_validation(axis_of["val"], budget, {t: runs[t] for t in trainers})
        if "d" in axis_of:
            plot_discriminator(axis_of["d"], axis_of["st"], budget, runs["s4gan"])
        if "pl" in axis_of:
            plot_pseudo_labels(axis_of["pl"], budget, runs[consistency[0]])
        if "map" in axis_of:
            steps, maps = mean_curve(runs["mlmt"], "val/teacher_map")
            if steps:
                axis_of["map"].plot(steps, [100 * m for m in maps], marker="o", label=budget)
    for panel, axis in axis_of.items():
        name, limits = PANEL_LABELS[panel]
        axis.set_ylabel(name)
        if limits is not None:
            axis.set_ylim(*limits)
        axis.set_xlabel("iteration")
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
    axis_of["val"].set_title("training curves (mean over seeds, per budget)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def finished_runs(spec: StudySpec, out: Path, budget: str) -> dict[str, list[Path]]:
    """Each trainer's finished runs at a budget (``result.json`` written): a cell still training
    has a shorter history, and a mean over seeds stops where the shortest does."""
    return {
        trainer: [
            folder
            for folder in (out / "runs" / Cell(trainer, budget, s).name for s in spec.seeds)
            if (folder / "result.json").is_file()
        ]
        for trainer in ("baseline", "s4gan", "unimatch", "unimatch-v2", "mlmt")
    }


PANEL_LABELS: dict[str, tuple[str, tuple[float, float] | None]] = {
    "val": ("val mIoU during training, %", None),
    "d": ("s4GAN: D score", (0, 1)),
    "st": ("s4GAN: share self-trained", (0, 1)),
    "pl": ("UniMatch: unlabeled pixels", (0, 1)),
    "map": ("MLMT teacher mAP, %", None),
}
TRAINER_STYLES = {"baseline": "-", "s4gan": "--", "unimatch": ":", "unimatch-v2": "-."}


def plot_validation(axis: Axes, budget: str, runs: dict[str, list[Path]]) -> None:
    """Validation mIoU during training, one line per segmenter trainer: where each run stands;
    the budget's trainers share a colour."""
    colour = None
    for trainer, folders in runs.items():
        steps, mious = mean_curve(folders, "val/miou")
        if steps:
            (line,) = axis.plot(
                steps,
                [100 * m for m in mious],
                TRAINER_STYLES.get(trainer, "-"),
                marker="o",
                markersize=3,
                color=colour,
                label=f"{budget}: {trainer}",
            )
            colour = line.get_color()


def plot_discriminator(scores: Axes, share: Axes, budget: str, runs: list[Path]) -> None:
    """s4GAN's D(real) and D(fake), and the share of unlabeled samples self-trained on."""
    import csv

    files = [run / "d_scores.csv" for run in runs]
    histories = [list(csv.DictReader(f.open())) for f in files if f.is_file()]
    if not histories:
        return
    steps, real, fake, selected = mean_history(histories)
    (line,) = scores.plot(steps, real, label=f"{budget}: D(real)")
    scores.plot(steps, fake, "--", color=line.get_color(), label=f"{budget}: D(fake)")
    share.plot(steps, selected, color=line.get_color(), label=budget)


def plot_pseudo_labels(axis: Axes, budget: str, runs: list[Path]) -> None:
    """UniMatch's confident share, the foreground share of it, pseudo-label accuracy and
    foreground recall."""
    confident_steps, confident = mean_curve(runs, "train/confident")
    if not confident_steps:
        return
    (line,) = axis.plot(confident_steps, confident, label=f"{budget}: confident share")
    for tag, style, name in (
        ("train/confident_fg", "-.", "foreground share of confident"),
        ("train/pl_accuracy", "--", "pseudo-label accuracy"),
        ("train/pl_fg_recall_confident", ":", "foreground recall (confident)"),
    ):
        steps, values = mean_curve(runs, tag)
        if steps:
            axis.plot(steps, values, style, color=line.get_color(), label=f"{budget}: {name}")


def mean_history(
    histories: list[list[dict]],
) -> tuple[list[int], list[float], list[float], list[float]]:
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
