"""RESULTS.md's picture of a baseline-only pilot: the validation mIoU during training of every
study folder given (one learning rate each), per budget; what a regime is decided from before
any semi-supervised method runs on it (issue 31).

    .venv/bin/python scripts/pilot_picture.py OUT.png LABEL=STUDY_DIR [LABEL=STUDY_DIR ...]

e.g. ``docs/results/pilot-dense/pilot.png "lr 2.5e-3=runs/pilot-dense-lr0.0025" ...``. Reads
each folder's ``runs/baseline-*/tensorboard`` (``val/miou``, on the whole val split).
"""

from __future__ import annotations

import sys
from pathlib import Path

from matplotlib.figure import Figure  # no pyplot: no GUI backend, nothing to close

from s4seg.workflows.study.plots import scalar_curve


def draw(out: Path, studies: dict[str, Path]) -> None:
    figure = Figure(figsize=(7, 4.2))
    axis = figure.add_subplot()
    styles = ["-", "--", ":", "-."]
    for style, (label, folder) in zip(styles, studies.items(), strict=False):
        for run in sorted((folder / "runs").glob("baseline-*")):
            curve = scalar_curve(run, "val/miou")
            if not curve:
                continue
            budget = run.name.split("-")[1]
            steps = sorted(curve)
            axis.plot(
                steps,
                [100 * curve[s] for s in steps],
                style,
                marker="o",
                markersize=3,
                label=f"{label}, {budget} labels",
            )
    axis.set_xlabel("iteration")
    axis.set_ylabel("val mIoU during training, %")
    axis.set_title("baseline-only pilot (seed 0)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)


if __name__ == "__main__":
    pairs = dict(arg.split("=", 1) for arg in sys.argv[2:])
    draw(Path(sys.argv[1]), {label: Path(folder) for label, folder in pairs.items()})
