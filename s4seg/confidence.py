"""Calibrated confidence of the segmenter: temperature-scaled probabilities, conformal prediction
sets and the expected calibration error (ECE). numpy only: export fits the numbers
(``export/confidence_fit.py``), the manifest records them (``Manifest.confidence``), and anything
that serves or ranks applies them without torch.

Prediction sets are split-conformal with the LAC score (Sadinle et al. 2019): a pixel's set is
every class whose calibrated probability is at least ``threshold``, where ``1 - threshold`` is the
``ceil((n + 1) * coverage)``-th smallest of ``1 - p(true class)`` over the n calibration pixels.
On images exchangeable with the calibration part, the set holds the true class of a pixel with
probability at least ``coverage`` (marginally, over pixels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

ECE_BINS = 15  # equal-width confidence bins (Guo et al. 2017)
DEFAULT_COVERAGE = 0.9


def calibrated(logits: np.ndarray, temperature: list[float] | float, axis: int = 0) -> np.ndarray:
    """Softmax of ``logits / temperature`` along the class ``axis``. One temperature for every
    pixel, or one per class, each pixel divided by its predicted class's: a positive scale per
    pixel, so the argmax (the served label) never changes."""
    t = np.asarray(temperature, dtype=np.float32)
    z = logits.astype(np.float32, copy=False)
    per_pixel = np.expand_dims(t[z.argmax(axis=axis)], axis) if t.size > 1 else t.reshape(())
    z = z / per_pixel
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def conformal_threshold(true_class_probability: np.ndarray, coverage: float) -> float:
    """The LAC threshold: classes with calibrated probability >= it form sets that hold the true
    class on at least ``coverage`` of exchangeable pixels."""
    scores = 1.0 - np.asarray(true_class_probability, dtype=np.float64).ravel()
    n = scores.size
    if n == 0:
        raise ValueError("no calibration pixels")
    k = math.ceil((n + 1) * coverage)  # the k-th smallest score
    if k > n:  # too few pixels for this coverage: every class is in every set
        return 0.0
    return float(1.0 - np.partition(scores, k - 1)[k - 1])


def set_sizes(probabilities: np.ndarray, threshold: float, axis: int = 0) -> np.ndarray:
    """How many classes each pixel's prediction set holds (0 where none reaches it)."""
    return (probabilities >= threshold).sum(axis=axis)


@dataclass
class Reliability:
    """Running figures over pixels: ECE (top-label, ``ECE_BINS`` bins), accuracy, and, given a
    conformal threshold, the sets' coverage and size. Fed one image at a time."""

    threshold: float | None = None
    count: np.ndarray = field(default_factory=lambda: np.zeros(ECE_BINS, dtype=np.int64))
    confidence: np.ndarray = field(default_factory=lambda: np.zeros(ECE_BINS))
    correct: np.ndarray = field(default_factory=lambda: np.zeros(ECE_BINS))
    covered: int = 0
    set_size: int = 0
    multiple: int = 0

    def add(self, probabilities: np.ndarray, truth: np.ndarray, valid: np.ndarray) -> None:
        """``probabilities`` (C, ...) calibrated; ``truth`` (...) class indices; ``valid`` (...)
        the pixels to count (not ignore, not padding)."""
        p = probabilities.reshape(len(probabilities), -1)[:, valid.ravel()]
        t = truth.ravel()[valid.ravel()].astype(np.int64)
        top = p.max(0)
        right = p.argmax(0) == t
        bins = np.minimum((top * ECE_BINS).astype(np.int64), ECE_BINS - 1)
        self.count += np.bincount(bins, minlength=ECE_BINS)
        self.confidence += np.bincount(bins, weights=top, minlength=ECE_BINS)
        self.correct += np.bincount(bins, weights=right, minlength=ECE_BINS)
        if self.threshold is not None:
            in_set = p >= self.threshold
            sizes = in_set.sum(0)
            self.covered += int(in_set[t, np.arange(t.size)].sum())
            self.set_size += int(sizes.sum())
            self.multiple += int((sizes > 1).sum())

    @property
    def pixels(self) -> int:
        return int(self.count.sum())

    @property
    def ece(self) -> float:
        if not self.pixels:
            return float("nan")
        return float(np.abs(self.correct - self.confidence).sum() / self.pixels)

    @property
    def accuracy(self) -> float:
        return float(self.correct.sum() / self.pixels) if self.pixels else float("nan")

    @property
    def coverage(self) -> float:
        return self.covered / self.pixels if self.pixels else float("nan")

    @property
    def mean_set_size(self) -> float:
        return self.set_size / self.pixels if self.pixels else float("nan")

    @property
    def multiple_share(self) -> float:
        """The share of pixels whose set holds more than one class."""
        return self.multiple / self.pixels if self.pixels else float("nan")
