"""Which images to label next (issue 34, item 3): an image's acquisition scores, from what the
served pipeline answers for it, and the ranking with its diversity step. numpy only: ``s4seg
queue`` scores exports with it (``clients/label_queue.py``).

Every score says "label sooner" when higher:

- ``entropy``: the mean per-pixel entropy of the calibrated probabilities, divided by log C (0: the
  model is sure everywhere, 1: uniform everywhere);
- ``margin``: the mean of 1 - (top-1 minus top-2 probability) (1 where two classes tie);
- ``set-size``: the share of pixels whose conformal prediction set holds more than one class (the
  manifest's calibration; none without one);
- ``disagreement``: how far the classifier and the segmenter disagree, the mean over foreground
  classes of |classifier probability - 1 if the class is in the map else 0| (none without MLMT);
- ``discriminator``: 1 - the s4GAN discriminator's probability that the answer is a labeled
  map (an export of an s4GAN checkpoint carries it; none otherwise);
- ``random``: a hash of the image's name and a seed (the baseline every strategy must beat).

The diversity step walks the ranking from the top and sets aside an image whose classifier
features (centred on the pool's mean, cosine) are at least ``similarity`` close to one already
taken, until ``top`` are taken: the top of the queue holds no near-copies, and the images set
aside go to the end.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass

import numpy as np

from s4seg.confidence import calibrated
from s4seg.manifest import Confidence

STRATEGIES = ("entropy", "margin", "set-size", "disagreement", "discriminator", "random")
# What a study can score between its rounds, from a checkpoint: no export, so no calibration and
# no classifier (``training/acquisition.py``).
STUDY_STRATEGIES = ("random", "entropy", "margin")
DEFAULT_STRATEGY = "entropy"
DEFAULT_SIMILARITY = 0.9


@dataclass(frozen=True)
class ImageScores:
    entropy: float
    margin: float
    set_size: float | None
    disagreement: float | None
    discriminator: float | None = None

    def of(self, strategy: str, name: str, seed: int = 0) -> float | None:
        if strategy == "random":
            return random_score(name, seed)
        return asdict(self)[strategy.replace("-", "_")]

    def rounded(self) -> dict[str, float | None]:
        return {k: None if v is None else round(v, 5) for k, v in asdict(self).items()}


def random_score(name: str, seed: int) -> float:
    """Uniform in [0, 1), fixed by the image's name and the seed (shards and reruns agree)."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def image_scores(
    grid: np.ndarray,
    class_probs: np.ndarray | None,
    confidence: Confidence | None,
    background_index: int | None,
) -> ImageScores:
    """``grid`` (C, h, w): the segmenter's ungated logits on the image's content
    (``s4seg.quality.content_grid``), what ``confidence`` (an export's calibration; None:
    temperature 1, no prediction sets) was fitted on; ``class_probs`` (C,): the MLMT
    classifier's answer (None: no classifier)."""
    probabilities = calibrated(grid, confidence.temperature if confidence else 1.0)
    classes = len(probabilities)
    flat = probabilities.reshape(classes, -1)
    entropy = -(flat * np.log(np.clip(flat, 1e-12, 1.0))).sum(0) / math.log(classes)
    second, first = np.partition(flat, classes - 2, axis=0)[-2:]
    set_size = None
    if confidence is not None:
        set_size = float(((flat >= confidence.threshold).sum(0) > 1).mean())
    disagreement = None
    if class_probs is not None:
        in_map = np.zeros(classes)
        in_map[np.unique(flat.argmax(0))] = 1.0
        foreground = np.ones(classes, dtype=bool)
        if background_index is not None:
            foreground[background_index] = False
        said = np.asarray(class_probs, dtype=np.float64)
        disagreement = float(np.abs(said - in_map)[foreground].mean())
    return ImageScores(
        entropy=float(entropy.mean()),
        margin=float((1.0 - (first - second)).mean()),
        set_size=set_size,
        disagreement=disagreement,
    )


@dataclass(frozen=True)
class Ranked:
    order: list[int]  # indices into the scored images, first = label first
    near_copy: dict[int, tuple[int, float]]  # set aside: index -> (the image it copies, cosine)


def rank(
    values: list[float],
    features: np.ndarray | None = None,
    top: int = 0,
    similarity: float = DEFAULT_SIMILARITY,
) -> Ranked:
    """Highest value first (ties: the earlier index); with ``features`` (N, D), the diversity step
    over the first ``top`` places (0: none)."""
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    if features is None or top <= 0 or len(order) < 2:
        return Ranked(order, {})
    centred = features - features.mean(0, keepdims=True)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    unit = centred / np.where(norms > 0, norms, 1.0)
    taken: list[int] = []
    near: dict[int, tuple[int, float]] = {}
    for position, index in enumerate(order):
        if len(taken) == top:
            rest = order[position:]  # past the top: in score order, near-copies still last
            return Ranked(taken + rest + [i for i in order if i in near], near)
        if taken:
            cosines = unit[taken] @ unit[index]
            closest = int(cosines.argmax())
            if cosines[closest] >= similarity:
                near[index] = (taken[closest], float(cosines[closest]))
                continue
        taken.append(index)
    return Ranked(taken + [i for i in order if i in near], near)
