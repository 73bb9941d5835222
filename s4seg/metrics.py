"""Segmentation metrics from a confusion matrix (numpy only: shared by every evaluation path)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from s4seg import IGNORE_INDEX


def confusion_matrix(
    target: np.ndarray, prediction: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """Counts of (target, prediction) pairs over pixels whose target is a class (< C).

    Rows are ground truth, columns predictions. Pixels labelled ``ignore_index`` (or anything
    outside [0, C)) are left out, as in the paper's evaluation.
    """
    if target.shape != prediction.shape:
        raise ValueError(f"target {target.shape} and prediction {prediction.shape} differ in shape")
    target = target.astype(np.int64).ravel()
    prediction = prediction.astype(np.int64).ravel()
    valid = (target >= 0) & (target < num_classes) & (target != ignore_index)
    if np.any((prediction[valid] < 0) | (prediction[valid] >= num_classes)):
        raise ValueError("prediction holds values outside [0, num_classes)")
    flat = target[valid] * num_classes + prediction[valid]
    counts = np.bincount(flat, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


@dataclass(frozen=True)
class SegmentationScores:
    """Scores derived from one confusion matrix."""

    iou: list[float | None]  # None where a class is absent from both target and prediction
    miou: float
    pixel_accuracy: float
    mean_class_accuracy: float

    def as_dict(self, class_names: Sequence[str]) -> dict:
        return {
            "miou": self.miou,
            "pixel_accuracy": self.pixel_accuracy,
            "mean_class_accuracy": self.mean_class_accuracy,
            "per_class_iou": dict(zip(class_names, self.iou, strict=True)),
        }


def scores(confusion: np.ndarray) -> SegmentationScores:
    """mIoU (mean over classes that occur in target or prediction), pixel and class accuracy."""
    confusion = confusion.astype(np.float64)
    true_positive = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - true_positive
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, true_positive / union, np.nan)
        per_class_acc = np.where(confusion.sum(1) > 0, true_positive / confusion.sum(1), np.nan)
    total = confusion.sum()
    return SegmentationScores(
        iou=[None if np.isnan(v) else float(v) for v in iou],
        miou=float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else 0.0,
        pixel_accuracy=float(true_positive.sum() / total) if total > 0 else 0.0,
        mean_class_accuracy=float(np.nanmean(per_class_acc))
        if np.any(~np.isnan(per_class_acc))
        else 0.0,
    )


def format_table(class_names: Sequence[str], result: SegmentationScores) -> str:
    """A plain-text table of per-class IoU followed by the summary figures."""
    width = max(len("class"), *(len(n) for n in class_names))
    lines = [f"{'class':<{width}}  IoU (%)", f"{'-' * width}  -------"]
    for name, value in zip(class_names, result.iou, strict=True):
        shown = "   n/a" if value is None else f"{100 * value:6.2f}"
        lines.append(f"{name:<{width}}  {shown}")
    lines.append(f"{'-' * width}  -------")
    lines.append(f"{'mIoU':<{width}}  {100 * result.miou:6.2f}")
    lines.append(f"{'pixel acc':<{width}}  {100 * result.pixel_accuracy:6.2f}")
    lines.append(f"{'mean acc':<{width}}  {100 * result.mean_class_accuracy:6.2f}")
    return "\n".join(lines)


def write_report(out_dir: Path, class_names: list[str], report: dict) -> None:
    """report.json (figures + confusion matrix) and confusion.csv, both machine-readable."""
    confusion = report["confusion_matrix"]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    header = "target\\prediction," + ",".join(class_names)
    rows = [
        f"{name}," + ",".join(str(v) for v in row)
        for name, row in zip(class_names, confusion, strict=True)
    ]
    (out_dir / "confusion.csv").write_text("\n".join([header, *rows]) + "\n")
