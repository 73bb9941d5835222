"""The README's picture of deploy/kubernetes: clients through the Service to the serving
replicas (each its own gateway and Triton), every replica and the batch Jobs on one model
repository volume, what the HPA scales on, and where publish and rollback write.

    .venv/bin/python scripts/deployment_picture.py [OUT.png]   # default: docs/images/deployment.png

Drawn in inches on a 12.35 x 6.6 canvas, so that it reads at 1200 px wide (no text under 9 pt).
"""

from __future__ import annotations

import sys
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure  # no pyplot: no GUI backend, nothing to close
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

OUT = Path(__file__).resolve().parents[1] / "docs" / "images" / "deployment.png"
WIDTH, HEIGHT = 12.35, 6.6
DPI = 150
INK, GREY = "#222222", "#555555"
COLOURS = {
    "client": "#eeeeee",
    "service": "#d9f0d3",
    "pod": "#eaf6e6",
    "triton": "#fde5c8",
    "volume": "#fff3b0",
    "job": "#dbe9f6",
    "control": "#ead9f2",
}


def box(ax: Axes, x: float, y: float, w: float, h: float, colour: str, dashed=False) -> None:
    ax.add_patch(
        FancyBboxPatch(
            (x, y),
            w,
            h,
            boxstyle="round,pad=0,rounding_size=0.08",
            facecolor=colour,
            edgecolor=INK,
            linewidth=1.2,
            linestyle="--" if dashed else "-",
        )
    )


def arrow(ax: Axes, start, end, colour: str = INK, dashed: bool = False, both=False) -> None:
    ax.add_patch(
        FancyArrowPatch(
            start,
            end,
            arrowstyle="<|-|>" if both else "-|>",
            mutation_scale=13,
            color=colour,
            linewidth=1.4,
            linestyle="--" if dashed else "-",
            shrinkA=0,
            shrinkB=0,
        )
    )


def text(ax: Axes, x: float, y: float, words: str, size: float = 10, **options) -> None:
    ax.text(
        x,
        y,
        words,
        fontsize=size,
        color=options.pop("color", INK),
        va="center",
        ha=options.pop("ha", "center"),
        **options,
    )


def draw(path: Path) -> Path:
    figure = Figure(figsize=(WIDTH, HEIGHT), dpi=DPI)
    ax = figure.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, WIDTH)
    ax.set_ylim(0, HEIGHT)
    ax.axis("off")
    text(
        ax,
        WIDTH / 2,
        6.3,
        "deploy/kubernetes: serving replicas and batch Jobs on one model repository",
        13,
        weight="bold",
    )

    # Clients -> Service -> replicas.
    box(ax, 0.3, 3.4, 1.6, 1.0, COLOURS["client"])
    text(ax, 1.1, 4.05, "clients", 11, weight="bold")
    text(ax, 1.1, 3.7, "HTTP /v1/segment", 9)
    box(ax, 2.4, 3.25, 1.7, 1.3, COLOURS["service"])
    text(ax, 3.25, 4.2, "Service", 11, weight="bold")
    text(ax, 3.25, 3.85, "s4seg-serving", 9)
    text(ax, 3.25, 3.55, "ready pods only", 9)
    arrow(ax, (1.9, 3.9), (2.4, 3.9))

    pod_x, pod_w = 4.7, 3.6
    for i, y in enumerate((4.35, 2.35)):
        box(ax, pod_x, y, pod_w, 1.6, COLOURS["pod"])
        text(
            ax,
            pod_x + pod_w / 2,
            y + 1.35,
            f"replica {i + 1}: pod of Deployment s4seg-serving",
            9.5,
            weight="bold",
        )
        box(ax, pod_x + 0.15, y + 0.15, 1.45, 0.95, "#ffffff")
        text(ax, pod_x + 0.875, y + 0.8, "gateway :8080", 9)
        text(ax, pod_x + 0.875, y + 0.45, "/readyz /healthz", 9, color=GREY)
        box(ax, pod_x + 1.95, y + 0.15, 1.5, 0.95, COLOURS["triton"])
        text(ax, pod_x + 2.7, y + 0.8, "tritonserver", 9)
        text(ax, pod_x + 2.7, y + 0.45, "version manager", 9, color=GREY)
        arrow(ax, (pod_x + 1.6, y + 0.62), (pod_x + 1.95, y + 0.62), both=True)
        arrow(ax, (4.1, 3.9), (pod_x, y + 0.8))
    text(ax, 3.25, 2.95, "HPA: 2-8 replicas", 9.5, color=GREY)
    text(ax, 3.25, 2.65, "on CPU use (70%)", 9.5, color=GREY)
    text(ax, 3.25, 2.35, "PDB: 1 always up", 9.5, color=GREY)

    # The volume.
    vol_x, vol_w = 9.0, 3.05
    box(ax, vol_x, 3.2, vol_w, 2.75, COLOURS["volume"])
    text(ax, vol_x + vol_w / 2, 5.6, "PVC s4seg-models (RWX)", 10.5, weight="bold")
    text(ax, vol_x + vol_w / 2, 5.2, "/models/model_repository/", 9.5)
    text(ax, vol_x + vol_w / 2, 4.9, "versions 1..N (publish, rollback)", 9, color=GREY)
    text(ax, vol_x + vol_w / 2, 4.35, "/models/.model_repository.serving/", 9.5)
    text(ax, vol_x + vol_w / 2, 4.05, "one status file per replica", 9, color=GREY)
    text(ax, vol_x + vol_w / 2, 3.75, "(served version, heartbeat)", 9, color=GREY)
    for y in (5.15, 3.15):
        arrow(ax, (pod_x + pod_w, y), (vol_x, y if y > 4 else 3.5), dashed=True)
    text(ax, 8.65, 5.4, "reads", 9, color=GREY)
    text(ax, 8.65, 2.85, "writes its own", 9, color=GREY)

    # Publish / rollback.
    box(ax, 9.0, 0.35, 3.05, 1.35, COLOURS["control"])
    text(ax, 10.525, 1.35, "s4seg publish / rollback", 10, weight="bold")
    text(ax, 10.525, 1.0, "a Job or a workstation", 9)
    text(ax, 10.525, 0.68, "rollback waits for every replica", 9, color=GREY)
    arrow(ax, (10.525, 1.7), (10.525, 3.2))

    # Batch Jobs.
    jobs = [
        ("Indexed Job s4seg-predict", "predict --shard auto"),
        ("Job s4seg-train", "torchrun ... s4seg train"),
        ("Indexed Job s4seg-study-cell", "study --cell auto"),
    ]
    for i, (name, command) in enumerate(jobs):
        x = 0.3 + i * 2.85
        box(ax, x, 0.35, 2.65, 1.35, COLOURS["job"])
        text(ax, x + 1.325, 1.35, name, 9.5, weight="bold")
        text(ax, x + 1.325, 1.0, command, 9)
    text(ax, 1.625, 0.6, "pod i: shard i of n", 9, color=GREY)
    text(ax, 4.475, 0.6, "--resume auto, 1 proc/GPU", 9, color=GREY)
    text(ax, 7.325, 0.6, "pod i: cell i", 9, color=GREY)
    text(
        ax,
        0.3,
        1.95,
        "on PVC s4seg-work (RWX): data, runs, studies, outputs; predict reads /models",
        9.5,
        ha="left",
        color=GREY,
    )

    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    return path


if __name__ == "__main__":
    print(draw(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT))
