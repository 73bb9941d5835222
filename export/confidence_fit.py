"""Calibrated confidence at export (issue 34, item 1): the segmenter's temperature (one, or one
per class: chosen by held-out NLL) and the conformal threshold of its prediction sets, fitted on
the calibration part of the validation split; ECE before and after, and the coverage reached,
measured on the report part. Both run through the exported pipeline as served (letterboxed, at
the served size, ungated logits), so what is measured is what will be served.

Libraries: netcal needs numpy >= 2 (this stage runs beside serving's numpy < 2) and brings pyro
and gpytorch; MAPIE and puncc wrap scikit-learn estimators and bring scikit-learn, scipy (and
pandas) for what is here one quantile. The temperature is a one- (or C-) parameter convex fit,
done with torch's L-BFGS; the conformal rule and ECE are ``s4seg.confidence`` (numpy).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from PIL import Image

from s4seg.confidence import Reliability, calibrated, conformal_threshold
from s4seg.errors import DatasetError
from s4seg.letterbox import Framing
from s4seg.manifest import GATE_OFF_TAU, Confidence, ConfidenceReport
from s4seg.onnx_pipeline import OnnxPipeline
from s4seg.training.checkpoint import Checkpoint

from .calibration import calibration_data

PIXELS_PER_IMAGE = 4096  # sampled for the fit (all pixels are measured on the report part)
BATCH = 8


def content_logits(
    pipeline: OnnxPipeline, images: list[np.ndarray], masks: list[np.ndarray]
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per image: the segmenter's logits over the letterboxed content at the served size
    (C, h, w), the mask brought to that size (nearest) and the pixels that count (a class,
    not ignore)."""
    framing = Framing.of(pipeline.manifest)
    classes = pipeline.manifest.num_classes
    for start in range(0, len(images), BATCH):
        canvases, views, placed = framing.batch(images[start : start + BATCH])
        logits = pipeline.run(canvases, views, GATE_OFF_TAU, keep_logits=True).logits
        assert logits is not None  # asked for
        for i, placement in enumerate(placed):
            (top, left), (h, w) = placement.offset, placement.content
            crop = logits[i, :, top : top + h, left : left + w]
            mask = masks[start + i]
            if mask.shape != (h, w):
                mask = np.asarray(Image.fromarray(mask).resize((w, h), Image.Resampling.NEAREST))
            yield crop, mask, mask < classes


def sample_pixels(
    pipeline: OnnxPipeline, images: list[np.ndarray], masks: list[np.ndarray], seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits (n, C), true classes (n,) and image index (n,) of up to ``PIXELS_PER_IMAGE``
    valid pixels of each image, seeded."""
    rng = np.random.default_rng(seed)
    logits, truth, image = [], [], []
    for index, (crop, mask, valid) in enumerate(content_logits(pipeline, images, masks)):
        where = np.flatnonzero(valid.ravel())
        if where.size > PIXELS_PER_IMAGE:
            where = rng.choice(where, PIXELS_PER_IMAGE, replace=False)
        logits.append(crop.reshape(len(crop), -1)[:, where].T)
        truth.append(mask.ravel()[where].astype(np.int64))
        image.append(np.full(where.size, index))
    return np.concatenate(logits), np.concatenate(truth), np.concatenate(image)


def fit_temperature(logits: np.ndarray, truth: np.ndarray, per_class: bool) -> list[float]:
    """The temperature(s) minimising the negative log-likelihood of the true classes: one, or
    one per predicted class (``s4seg.confidence.calibrated``)."""
    z = torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))
    y = torch.from_numpy(truth)
    predicted = z.argmax(1) if per_class else torch.zeros(len(z), dtype=torch.long)
    log_t = torch.zeros(z.shape[1] if per_class else 1, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [log_t], lr=1.0, max_iter=50, tolerance_change=1e-7, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp()[predicted, None], y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return [float(t) for t in log_t.detach().exp()]


def nll(logits: np.ndarray, truth: np.ndarray, temperature: list[float]) -> float:
    p = calibrated(logits, temperature, axis=1)[np.arange(truth.size), truth]
    return float(-np.log(np.clip(p, 1e-12, None)).mean())


def choose_scope(logits: np.ndarray, truth: np.ndarray, image: np.ndarray) -> tuple[bool, str]:
    """Per-class temperatures only when they predict held-out images better: two folds by
    image (even, odd), each fitted on one and scored on the other (mean NLL)."""
    folds = [image % 2 == 0, image % 2 == 1]
    if not all(f.any() for f in folds):
        return False, "one temperature (too few images to compare it with one per class)"
    scores = {}
    for per_class in (False, True):
        held = []
        for fit, score in (folds, folds[::-1]):
            t = fit_temperature(logits[fit], truth[fit], per_class)
            held.append(nll(logits[score], truth[score], t))
        scores[per_class] = float(np.mean(held))
    per_class = scores[True] < scores[False]
    reason = (
        f"held-out NLL {scores[False]:.4f} with one temperature, {scores[True]:.4f} with one "
        f"per class (two folds by image): {'per class' if per_class else 'one'} chosen"
    )
    return per_class, reason


def keeps_unscaled(
    logits: np.ndarray, truth: np.ndarray, image: np.ndarray, per_class: bool
) -> tuple[bool, str]:
    """Whether temperature 1 predicts held-out images at least as well as a fitted one (two
    folds by image): on a few images a fit can learn the images rather than the model and make
    the served confidence worse (seen: a barely trained model fitted T = 61 on 9 images and its
    ECE rose 0.14 -> 0.39). Then nothing is rescaled."""
    folds = [image % 2 == 0, image % 2 == 1]
    if not all(f.any() for f in folds):
        return False, "too few images to check the fit on held-out ones"
    fitted, unscaled = [], []
    for fit, score in (folds, folds[::-1]):
        t = fit_temperature(logits[fit], truth[fit], per_class)
        fitted.append(nll(logits[score], truth[score], t))
        unscaled.append(nll(logits[score], truth[score], [1.0]))
    keep = float(np.mean(unscaled)) <= float(np.mean(fitted))
    verdict = "temperature 1 kept" if keep else "the fit kept"
    return keep, (
        f"held-out NLL {np.mean(fitted):.4f} fitted, {np.mean(unscaled):.4f} at temperature 1: "
        f"{verdict}"
    )


def measure(
    pipeline: OnnxPipeline,
    images: list[np.ndarray],
    masks: list[np.ndarray],
    temperature: list[float],
    threshold: float,
) -> ConfidenceReport:
    """ECE before and after, and the sets' coverage and size, over every valid pixel."""
    before, after = Reliability(), Reliability(threshold=threshold)
    for crop, mask, valid in content_logits(pipeline, images, masks):
        before.add(calibrated(crop, 1.0), mask, valid)
        after.add(calibrated(crop, temperature), mask, valid)
    return ConfidenceReport(
        images=len(images),
        pixels=after.pixels,
        accuracy=after.accuracy,
        ece_before=before.ece,
        ece_after=after.ece,
        coverage=after.coverage,
        mean_set_size=after.mean_set_size,
        multiple_share=after.multiple_share,
    )


def fit_confidence(
    pipeline: OnnxPipeline,
    checkpoint: Checkpoint,
    data: str,
    kind: str | None,
    max_images: int,
    coverage: float,
    log: Callable[[str], None] = print,
) -> Confidence:
    """Fit on the calibration part of ``data``, measure on its report part."""
    images, masks, source = calibration_data(checkpoint, data, kind, max_images)
    logits, truth, image = sample_pixels(pipeline, images, masks)
    if not truth.size:
        raise DatasetError(f"{source['root']}: the calibration part has no labeled pixels")
    per_class, reason = choose_scope(logits, truth, image)
    temperature = fit_temperature(logits, truth, per_class)
    unscaled, check = keeps_unscaled(logits, truth, image, per_class)
    reason = f"{reason}; {check}"
    if unscaled:
        per_class, temperature = False, [1.0]
    true_p = calibrated(logits, temperature, axis=1)[np.arange(truth.size), truth]
    threshold = conformal_threshold(true_p, coverage)
    report_images, report_masks, _ = calibration_data(checkpoint, data, kind, max_images, "report")
    report = measure(pipeline, report_images, report_masks, temperature, threshold)
    shown = f"{temperature[0]:.3f}" if len(temperature) == 1 else f"{len(temperature)} classes'"
    log(
        f"confidence: temperature {shown}, prediction sets at {100 * coverage:g}% coverage "
        f"(threshold {threshold:.3f}); on {report.images} report images ECE "
        f"{report.ece_before:.4f} -> {report.ece_after:.4f}, coverage {100 * report.coverage:.1f}%,"
        f" {100 * report.multiple_share:.1f}% of pixels with more than one class"
    )
    fitted_on = {
        **{k: source[k] for k in ("root", "kind", "split", "part") if k in source},
        "images": len(images),
        "pixels": int(truth.size),
    }
    return Confidence(
        temperature=temperature,
        scope="per class" if per_class else "global",
        scope_reason=reason,
        coverage=coverage,
        threshold=threshold,
        fitted_on=fitted_on,
        report=report,
    )
