"""A served pipeline's report on labeled data: gated (and ungated) mIoU through the exported
graphs, in-process or in Triton. No torch. Used by ``s4seg evaluate --onnx/--triton`` and by the
promotion gate of ``s4seg publish``.

Same protocol as the PyTorch evaluation: each image at its own size, single scale, no flip, so
the figures are comparable (they agree within 0.1 mIoU; a test checks it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm import tqdm

from s4seg.errors import DatasetError
from s4seg.holdout import evaluation_samples
from s4seg.letterbox import Framing, classifier_view, labels_from_scores
from s4seg.manifest import Manifest
from s4seg.metrics import confusion_matrix, format_table, scores, write_report
from s4seg.onnx_pipeline import UNGATED_TAU, PipelineOutput
from s4seg.visualize import colorize


class Pipeline(Protocol):
    manifest: Manifest

    def run(
        self, images: np.ndarray, views: np.ndarray, tau: float | None = None
    ) -> PipelineOutput: ...


def evaluate_pipeline(  # noqa: PLR0913 (what to evaluate and how, by keyword)
    pipeline: Pipeline,
    data: str,
    kind: str | None = None,
    split: str | None = None,
    tau: float | None = None,
    max_images: int | None = None,
    out_dir: str | None = None,
    save_predictions: int = 0,
    part: str = "report",
    served_path: bool = False,
) -> tuple[dict, str]:
    """Gated (and, with a classifier, ungated) mIoU of a pipeline on a data set split: each
    image at its own size, or with ``served_path`` as the gateway runs it (letterboxed into
    the served size, the gated scores mapped back to the image's size)."""
    from s4seg.layouts import open_layout  # numpy/PIL only, no torch

    manifest = pipeline.manifest
    layout = open_layout(data, kind or "auto")
    classes = list(layout.classes)
    if classes != manifest.classes:
        raise DatasetError(
            f"{layout.root} has classes {classes[:6]}... "
            f"but the model serves {manifest.classes[:6]}..."
        )
    tau = manifest.request_tau(tau)
    split, part, samples = evaluation_samples(layout, split, part, max_images)
    gated = manifest.classifier is not None
    n = len(classes)
    confusion = np.zeros((n, n), dtype=np.int64)
    ungated_confusion = np.zeros_like(confusion)
    out = Path(out_dir) if out_dir else None
    for index, sample in enumerate(tqdm(samples, desc="evaluate", leave=False, disable=None)):
        image = np.asarray(layout.read_image(sample))
        truth = layout.read_mask(sample)
        labels = _labels(pipeline, image, tau, served_path)
        confusion += confusion_matrix(truth, labels, n)
        if gated:
            plain = _labels(pipeline, image, UNGATED_TAU, served_path)
            ungated_confusion += confusion_matrix(truth, plain, n)
        if out is not None and index < save_predictions:
            (out / "predictions").mkdir(parents=True, exist_ok=True)
            name = sample.id.replace("/", "_")
            colorize(labels, manifest.palette).save(out / "predictions" / f"{name}.png")
    measured = scores(confusion)
    report: dict = {
        "pipeline": type(pipeline).__name__,
        "data": layout.describe(),
        "split": split,
        "part": part,
        "images": len(samples),
        "protocol": "single scale, no flip"
        + (", letterboxed to the served size and mapped back" if served_path else ""),
        **({"tau": tau} if gated else {}),
        **measured.as_dict(classes),
        "confusion_matrix": confusion.tolist(),
    }
    table = format_table(classes, measured)
    if gated:
        ungated = scores(ungated_confusion)
        report["ungated"] = {
            **ungated.as_dict(classes),
            "confusion_matrix": ungated_confusion.tolist(),
        }
        table += f"\n(ungated mIoU {100 * ungated.miou:.2f}; gated at tau {tau:g})"
    if out is not None:
        write_report(out, classes, report)
    return report, table


def _labels(pipeline: Pipeline, image: np.ndarray, tau: float, served_path: bool) -> np.ndarray:
    framing = Framing.of(pipeline.manifest)
    if not served_path:
        view = classifier_view(image, framing.classifier_size)
        return pipeline.run(image[None], view[None], tau).labels[0]
    framed = framing.frame(image)
    out = pipeline.run(framed.canvas[None], framed.view[None], tau)
    return labels_from_scores(out.scores[0], framed.placement)
