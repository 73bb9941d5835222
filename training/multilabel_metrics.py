"""Multi-label classification metrics: average precision per class and ROC curves (numpy)."""

from __future__ import annotations

import numpy as np


def average_precision(targets: np.ndarray, scores: np.ndarray) -> float | None:
    """AP = sum over positives ranked by score of precision at that rank / #positives
    (the step-wise area under the precision-recall curve). None when there is no positive."""
    positives = targets.sum()
    if positives == 0:
        return None
    order = np.argsort(-scores, kind="stable")
    hits = targets[order]
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision_at * hits).sum() / positives)


def roc_curve(targets: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """False and true positive rates at every threshold, and the area under the curve."""
    order = np.argsort(-scores, kind="stable")
    hits = targets[order]
    tps = np.concatenate([[0], np.cumsum(hits)])
    fps = np.concatenate([[0], np.cumsum(1 - hits)])
    tpr = tps / max(tps[-1], 1)
    fpr = fps / max(fps[-1], 1)
    return fpr, tpr, trapezoid_area(fpr, tpr)


def trapezoid_area(x: np.ndarray, y: np.ndarray) -> float:
    """Area under y(x) by the trapezoid rule, written out: numpy 2 removed ``np.trapz`` and
    numpy 1.x lacks ``np.trapezoid``, and the training stage runs on both."""
    return float(((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2).sum())


def multilabel_report(targets: np.ndarray, scores: np.ndarray, classes: list[str]) -> dict:
    """mAP (over classes with positives) and per-class AP and ROC AUC."""
    per_class = {}
    for index, name in enumerate(classes):
        ap = average_precision(targets[:, index], scores[:, index])
        _, _, auc = roc_curve(targets[:, index], scores[:, index])
        per_class[name] = {"ap": ap, "roc_auc": auc if targets[:, index].any() else None}
    aps = [v["ap"] for v in per_class.values() if v["ap"] is not None]
    return {"map": float(np.mean(aps)) if aps else 0.0, "per_class": per_class}


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str, path) -> None:
    """One figure, one micro-averaged ROC curve per model (student, teacher): paper Fig. 12."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 5))
    for label, (targets, scores) in curves.items():
        fpr, tpr, auc = roc_curve(targets.ravel(), scores.ravel())
        axis.plot(fpr, tpr, label=f"{label} (AUC {auc:.3f})")
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":")
    axis.set_xlabel("false positive rate")
    axis.set_ylabel("true positive rate")
    axis.set_title(title)
    axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
