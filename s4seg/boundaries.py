"""Boundary quality of label maps: the edges of a map, and the boundary F-score (label edges of
prediction and truth matched within a tolerance). Torch-free: ``s4seg bench mapback`` and
tests use it on maps at any resolution."""

from __future__ import annotations

import numpy as np


def boundary(labels: np.ndarray) -> np.ndarray:
    """Pixels whose right or lower neighbour has another label."""
    edge = np.zeros(labels.shape, dtype=bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return edge


def near(edge: np.ndarray, tolerance: int) -> np.ndarray:
    """Pixels within ``tolerance`` (chessboard distance) of an edge pixel: a square dilation,
    done as a row pass and a column pass of shifted ORs."""
    out = edge.copy()
    for shift in range(1, tolerance + 1):
        out[:, shift:] |= edge[:, :-shift]
        out[:, :-shift] |= edge[:, shift:]
    rows = out.copy()
    for shift in range(1, tolerance + 1):
        out[shift:] |= rows[:-shift]
        out[:-shift] |= rows[shift:]
    return out


def boundary_counts(truth: np.ndarray, labels: np.ndarray, tolerance: int) -> np.ndarray:
    """[predicted edge pixels near a true edge, predicted edge pixels, true edge pixels near a
    predicted edge, true edge pixels]: sums of these give the boundary F-score of a data set."""
    pred, true = boundary(labels), boundary(truth)
    return np.array(
        [
            (pred & near(true, tolerance)).sum(),
            pred.sum(),
            (true & near(pred, tolerance)).sum(),
            true.sum(),
        ],
        dtype=np.int64,
    )


def f_score(counts: np.ndarray) -> float:
    precision, recall = counts[0] / max(counts[1], 1), counts[2] / max(counts[3], 1)
    return 2 * precision * recall / max(precision + recall, 1e-12)
