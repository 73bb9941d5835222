"""The README's picture of the pipeline: the stages left to right, each box naming its folder,
the manifest as the contract between export and everything after it, the core underneath and
the workflows layer on top.

    .venv/bin/python scripts/pipeline_picture.py [OUT.png]   # default: docs/images/pipeline.png

Drawn in inches on a 12.35 x 7.25 canvas, so that it reads at 1200 px wide (no text under 9 pt).
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure  # no pyplot: no GUI backend, nothing to close
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

OUT = Path(__file__).resolve().parents[1] / "docs" / "images" / "pipeline.png"
WIDTH, HEIGHT = 12.35, 7.25  # inches
DPI = 150

INK = "#222222"
GREY = "#666666"
COLOURS = {
    "data": "#eeeeee",
    "training": "#dbe9f6",
    "export": "#fde5c8",
    "repository": "#fff3b0",
    "serving": "#d9f0d3",
    "clients": "#ead9f2",
    "manifest": "#ffd6d6",
    "core": "#f2f2f2",
    "workflows": "#e0e0e0",
}

STAGE_BOTTOM, STAGE_TOP = 2.35, 5.85
GAP = 0.3  # between stage boxes: room for an arrow


def box(
    ax: Axes, x: float, y: float, w: float, h: float, colour: str, *, dashed: bool = False
) -> None:
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


def arrow(
    ax: Axes,
    start: tuple[float, float],
    end: tuple[float, float],
    *,
    colour: str = INK,
    width: float = 1.6,
    dashed: bool = False,
) -> None:
    ax.add_patch(
        FancyArrowPatch(
            start,
            end,
            arrowstyle="-|>",
            mutation_scale=14,
            color=colour,
            linewidth=width,
            linestyle="--" if dashed else "-",
            shrinkA=0,
            shrinkB=0,
        )
    )


def stage(
    ax: Axes, x: float, w: float, title: str, folder: str, colour: str, lines: list[str]
) -> float:
    """A stage: its box, its name, its folder and what it does; returns the y below the folder."""
    h = STAGE_TOP - STAGE_BOTTOM
    box(ax, x, STAGE_BOTTOM, w, h, colour)
    cx = x + w / 2
    ax.text(cx, STAGE_TOP - 0.12, title, ha="center", va="top", fontsize=13, weight="bold")
    ax.text(cx, STAGE_TOP - 0.45, folder, ha="center", va="top", fontsize=10.5, family="monospace")
    y = STAGE_TOP - 0.85
    if lines:
        ax.text(cx, y, "\n".join(lines), ha="center", va="top", fontsize=10, linespacing=1.45)
    return y


def inner(ax: Axes, x: float, y: float, w: float, h: float, text: str, colour: str) -> None:
    """A small box inside a stage (a trainer, an ensemble step)."""
    box(ax, x, y, w, h, colour)
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=10)


def draw(out: Path) -> None:
    fig = Figure(figsize=(WIDTH, HEIGHT), dpi=DPI)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, WIDTH)
    ax.set_ylim(0, HEIGHT)
    ax.axis("off")

    # The stages, left to right: (x, width).
    widths = {
        "data": 1.4,
        "training": 1.75,
        "export": 1.7,
        "repository": 1.75,
        "serving": 2.2,
        "clients": 1.75,
    }
    xs, x = {}, 0.15
    for name, w in widths.items():
        xs[name] = x
        x += w + GAP

    def left(name: str) -> float:
        return xs[name]

    def right(name: str) -> float:
        return xs[name] + widths[name]

    def centre(name: str) -> float:
        return xs[name] + widths[name] / 2

    stage(
        ax,
        left("data"),
        widths["data"],
        "data",
        "data/",
        COLOURS["data"],
        [
            "s4seg data synth",
            "s4seg data split",
            "",
            "layouts:",
            "voc, cityscapes,",
            "context, folder",
            "",
            "seeded splits",
        ],
    )

    y = stage(
        ax,
        left("training"),
        widths["training"],
        "train",
        "training/",
        COLOURS["training"],
        [],
    )
    tx, tw = left("training") + 0.1, widths["training"] - 0.2
    for i, name in enumerate(("baseline", "s4GAN (segmenter)", "MLMT (classifier)")):
        inner(ax, tx, y - 0.5 - i * 0.6, tw, 0.45, name, "white")
    ax.text(
        centre("training"),
        STAGE_BOTTOM + 0.12,
        "checkpoints\nlast.pt, best.pt",
        ha="center",
        va="bottom",
        fontsize=10,
        linespacing=1.45,
    )

    stage(
        ax,
        left("export"),
        widths["export"],
        "export",
        "export/",
        COLOURS["export"],
        [
            "3 ONNX graphs",
            "+ manifest.json",
            "",
            "parity vs PyTorch",
            "tau calibration",
            "FP16 / INT8 / BF16",
            "",
            "an export folder",
        ],
    )

    stage(
        ax,
        left("repository"),
        widths["repository"],
        "publish",
        "model_repository/",
        COLOURS["repository"],
        [
            "versions 1 … N",
            "",
            "publish: N + 1",
            "promotion gate",
            "rollback",
            "",
            "(code:",
            "export/repository.py)",
        ],
    )

    stage(
        ax,
        left("serving"),
        widths["serving"],
        "serve",
        "serving/",
        COLOURS["serving"],
        [],
    )
    # The Triton ensemble, top to bottom, then the gateway.
    sx, sw = left("serving") + 0.12, widths["serving"] - 0.24
    ens_top = STAGE_TOP - 0.72
    step_h, pitch = 0.34, 0.52
    ens_bottom = ens_top - 0.28 - 2 * pitch - step_h - 0.12
    box(ax, sx, ens_bottom, sw, ens_top - ens_bottom, "white", dashed=True)
    ax.text(sx + sw / 2, ens_top - 0.05, "Triton ensemble", ha="center", va="top", fontsize=10)
    px, pw = sx + 0.1, sw - 0.2
    rows = [ens_top - 0.28 - step_h - i * pitch for i in range(3)]  # bottoms of the three rows
    # What comes in (not a step): the networks normalise the uint8 images in their own graphs.
    inner(ax, px, rows[0], pw, step_h, "uint8 image + view", "white")
    half = (pw - 0.1) / 2
    inner(ax, px, rows[1], half, step_h, "segmenter", COLOURS["serving"])
    inner(ax, px + half + 0.1, rows[1], half, step_h, "classifier", COLOURS["serving"])
    inner(ax, px, rows[2], pw, step_h, "gate", COLOURS["serving"])
    for a in (px + half / 2, px + half + 0.1 + half / 2):
        arrow(ax, (a, rows[0]), (a, rows[1] + step_h), width=1.2)
        arrow(ax, (a, rows[1]), (a, rows[2] + step_h), width=1.2)
    gw_top = ens_bottom - 0.18
    inner(ax, sx, gw_top - 0.58, sw, 0.58, "FastAPI gateway\n/v1/segment, page /", "white")
    arrow(ax, (sx + sw / 2, ens_bottom), (sx + sw / 2, gw_top), width=1.2)

    stage(
        ax,
        left("clients"),
        widths["clients"],
        "clients",
        "clients/",
        COLOURS["clients"],
        [
            "s4seg segment",
            "Python client",
            "",
            "s4seg predict",
            "(batch: via gateway,",
            "Triton or local)",
            "",
            "evaluate",
            "--onnx / --triton",
        ],
    )

    # The flow between stages.
    flow_y = STAGE_BOTTOM + (STAGE_TOP - STAGE_BOTTOM) * 0.55
    names = list(widths)
    for a, b in itertools.pairwise(names):
        arrow(ax, (right(a), flow_y), (left(b), flow_y), width=2.2)

    # The manifest: written by export, read by everything after it.
    m_bottom, m_top = 1.3, 1.95
    m_left, m_right = left("export"), right("clients")
    box(ax, m_left, m_bottom, m_right - m_left, m_top - m_bottom, COLOURS["manifest"])
    ax.text(
        (m_left + m_right) / 2,
        (m_bottom + m_top) / 2,
        "manifest.json: the contract between export and everything after it\n"
        "classes, palette, served size, normalisation, tau, tensors, sha256   (s4seg/manifest.py)",
        ha="center",
        va="center",
        fontsize=10.5,
        linespacing=1.45,
    )
    arrow(ax, (centre("export"), STAGE_BOTTOM), (centre("export"), m_top), colour="#b03030")
    for name in ("repository", "serving", "clients"):
        arrow(ax, (centre(name), m_top), (centre(name), STAGE_BOTTOM), colour="#b03030")
    ax.text(
        centre("export") + 0.08, (STAGE_BOTTOM + m_top) / 2, "writes", fontsize=9.5, va="center"
    )
    ax.text(
        centre("repository") + 0.08, (STAGE_BOTTOM + m_top) / 2, "reads", fontsize=9.5, va="center"
    )

    # The core, under everything; the workflows layer, over everything.
    c_left, c_right = left("data"), right("clients")
    box(ax, c_left, 0.12, c_right - c_left, 0.95, COLOURS["core"])
    ax.text(
        (c_left + c_right) / 2,
        0.595,
        "s4seg/   the core, no torch: manifest · repository contract · tensors · "
        "letterbox (Framing) · imaging · onnx_pipeline\n"
        "outputs · metrics · boundaries · layouts · pipeline_evaluation · holdout · "
        "triton_config · errors · defaults",
        ha="center",
        va="center",
        fontsize=10.5,
        linespacing=1.5,
    )

    w_bottom, w_top = 6.35, HEIGHT - 0.12
    box(ax, c_left, w_bottom, c_right - c_left, w_top - w_bottom, COLOURS["workflows"])
    ax.text(
        (c_left + c_right) / 2,
        (w_bottom + w_top) / 2,
        "workflows/   the top layer, drives the stages:  the s4seg command (cli.py, commands.py)"
        "  ·  quickstart  ·  doctor\n"
        "bench (train, export, mapback, precision, serve)        "
        "imports: core ← training ← export ← serving ← clients ← workflows",
        ha="center",
        va="center",
        fontsize=10.5,
        linespacing=1.5,
    )
    for name in names:
        arrow(ax, (centre(name), w_bottom), (centre(name), STAGE_TOP), colour=GREY, width=1.1)

    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI, facecolor="white")
    print(f"wrote {out}")


if __name__ == "__main__":
    draw(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
