"""How far one answer can be trusted (issue 34, item 2): figures computed from what the ensemble
answered, cheap enough for every request, in the JSON answer and the gateway's metrics.

- ``mean_confidence``: the calibrated top-class probability (``Manifest.confidence``'s
  temperature; 1 without one) averaged over the image's content;
- ``uncertain_share``: the share of pixels whose prediction set (the manifest's conformal
  threshold) holds more than one class; None without a calibration;
- ``disagreeing``: the classes the classifier and the segmenter disagree on: present by the
  classifier (p >= 0.5) but in no pixel, or in pixels the classifier gives p < 0.5 (what the gate
  exists to catch, and a drift signal). None without a classifier.

The scores are read on a grid of every ``STRIDE``-th pixel of the content: the served scores are
the network's output (stride 8) resized bilinearly, so the grid sees what the network said, at a
sixteenth of the work.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from s4seg.confidence import calibrated
from s4seg.letterbox import Placement
from s4seg.manifest import Manifest

STRIDE = 4
PRESENT = 0.5  # the classifier's probability above which it says a class is in the image


@dataclass(frozen=True)
class Quality:
    mean_confidence: float
    calibrated: bool  # mean_confidence is temperature-scaled (the export measured it)
    uncertain_share: float | None
    disagreeing: list[str] | None

    def rounded(self) -> dict:
        """For the JSON answer: shares to 4 decimals."""
        figures = asdict(self)
        for key in ("mean_confidence", "uncertain_share"):
            if figures[key] is not None:
                figures[key] = round(figures[key], 4)
        return figures


def content_grid(scores: np.ndarray, placement: Placement) -> np.ndarray:
    """Every ``STRIDE``-th pixel of the content (not the letterbox's padding) of ``scores``
    (C, H, W) at the served size."""
    (top, left), (height, width) = placement.offset, placement.content
    return scores[:, top : top + height : STRIDE, left : left + width : STRIDE]


def answer_quality(
    scores: np.ndarray, placement: Placement, class_probs: np.ndarray, manifest: Manifest
) -> Quality:
    """``scores`` (C, H, W): the gated scores at the served size; ``class_probs`` (C,)."""
    grid = content_grid(scores, placement)
    confidence = manifest.confidence
    probabilities = calibrated(grid, confidence.temperature if confidence else 1.0)
    uncertain = None
    if confidence is not None:
        uncertain = float(((probabilities >= confidence.threshold).sum(0) > 1).mean())
    disagreeing = None
    if manifest.classifier is not None:
        in_map = np.zeros(len(manifest.classes), dtype=bool)
        in_map[np.unique(grid.argmax(0))] = True
        said = np.asarray(class_probs) >= PRESENT
        if manifest.background_index is not None:
            said[manifest.background_index] = in_map[manifest.background_index]
        disagreeing = [manifest.classes[i] for i in np.flatnonzero(said != in_map)]
    return Quality(
        mean_confidence=float(probabilities.max(0).mean()),
        calibrated=confidence is not None,
        uncertain_share=uncertain,
        disagreeing=disagreeing,
    )


def uncertainty_map(scores: np.ndarray, placement: Placement, manifest: Manifest) -> np.ndarray:
    """(h, w) uint8 over the content at the served size (the network's output, resized): 0
    where the calibrated top probability is 1, 255 where every class is as likely (1/C)."""
    (top, left), (height, width) = placement.offset, placement.content
    content = scores[:, top : top + height, left : left + width]
    confidence = manifest.confidence
    sure = calibrated(content, confidence.temperature if confidence else 1.0).max(0)
    spread = 1.0 - 1.0 / len(manifest.classes)
    return np.round(255 * np.clip((1.0 - sure) / spread, 0.0, 1.0)).astype(np.uint8)
