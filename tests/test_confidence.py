"""Calibrated confidence (issue 34, item 1) on a model whose miscalibration is known: pixels
whose classes are drawn from softmax(z), scored by a model that says softmax(3 z) (three times
too sure). The fit finds the temperature, ECE falls on held-out pixels, and the conformal sets
reach their coverage there."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from s4seg.confidence import Reliability, calibrated, conformal_threshold, set_sizes
from s4seg.export.confidence_fit import choose_scope, fit_temperature, keeps_unscaled

CLASSES, PIXELS = 5, 16_000


def pixels(scale: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits a model reports (n, C): the true ones times ``scale`` of the predicted class;
    the classes drawn from the true ones; an image index (100 images)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (PIXELS, CLASSES)).astype(np.float32)
    p = calibrated(z, 1.0, axis=1)
    truth = (rng.random(PIXELS)[:, None] > p.cumsum(1)).sum(1).clip(0, CLASSES - 1)
    reported = z * scale[z.argmax(1)][:, None]
    return reported, truth.astype(np.int64), np.arange(PIXELS) % 100


def held_out(
    logits: np.ndarray, truth: np.ndarray, temperature: list[float], threshold: float | None
) -> Reliability:
    figures = Reliability(threshold=threshold)
    figures.add(logits.T, truth, np.ones(truth.size, dtype=bool))
    return figures


def test_the_known_temperature_is_found_and_ece_falls_on_held_out_pixels() -> None:
    logits, truth, _ = pixels(np.full(CLASSES, 3.0))
    fit, test = slice(0, PIXELS // 2), slice(PIXELS // 2, None)
    (temperature,) = fit_temperature(logits[fit], truth[fit], per_class=False)
    assert temperature == pytest.approx(3.0, rel=0.08)
    before = held_out(calibrated(logits[test], 1.0, axis=1), truth[test], [1.0], None)
    after = held_out(calibrated(logits[test], temperature, axis=1), truth[test], [1.0], None)
    assert before.ece > 0.1 and after.ece < 0.02, (before.ece, after.ece)
    assert after.accuracy == pytest.approx(before.accuracy)  # scaling keeps every argmax


@pytest.mark.parametrize("coverage", [0.8, 0.9, 0.95])
def test_conformal_sets_reach_their_coverage_on_held_out_pixels(coverage: float) -> None:
    logits, truth, _ = pixels(np.full(CLASSES, 3.0), seed=1)
    fit, test = slice(0, PIXELS // 2), slice(PIXELS // 2, None)
    temperature = fit_temperature(logits[fit], truth[fit], per_class=False)
    probabilities = calibrated(logits, temperature, axis=1)
    threshold = conformal_threshold(
        probabilities[fit][np.arange(PIXELS // 2), truth[fit]], coverage
    )
    figures = held_out(probabilities[test], truth[test], temperature, threshold)
    assert abs(figures.coverage - coverage) < 0.02, figures.coverage
    sizes = set_sizes(probabilities[test], threshold, axis=1)
    assert figures.mean_set_size == pytest.approx(sizes.mean())
    assert figures.multiple_share == pytest.approx((sizes > 1).mean())


def test_one_temperature_per_class_is_chosen_only_when_classes_differ() -> None:
    skewed = np.array([6.0, 1.0, 1.0, 1.0, 1.0])  # too sure only where it says class 0
    logits, truth, image = pixels(skewed, seed=2)
    per_class, reason = choose_scope(logits, truth, image)
    assert per_class, reason
    temperatures = fit_temperature(logits, truth, per_class=True)
    assert temperatures[0] == pytest.approx(6.0, rel=0.15)
    assert temperatures[1:] == pytest.approx([1.0] * 4, rel=0.15)
    served = logits.argmax(1)
    assert (calibrated(logits, temperatures, axis=1).argmax(1) == served).all()  # labels kept
    even, _ = choose_scope(*pixels(np.full(CLASSES, 3.0), seed=3))
    assert not even  # the same miscalibration everywhere: one temperature predicts as well


def test_a_fit_that_does_not_predict_held_out_images_better_is_not_served() -> None:
    """Images that disagree (the even ones three times too sure, the odd ones three times too
    unsure): a temperature fitted on one half makes the other worse than no temperature, so
    temperature 1 stays; a model three times too sure everywhere keeps its fit."""
    for seed in range(2):
        logits, truth, image = pixels(np.full(CLASSES, 1.0), seed=seed)
        logits = logits * np.where(image % 2 == 0, 3.0, 1 / 3)[:, None].astype(np.float32)
        keep, reason = keeps_unscaled(logits, truth, image, per_class=False)
        assert keep, reason
        sure, sure_truth, sure_image = pixels(np.full(CLASSES, 3.0), seed=seed)
        keep, reason = keeps_unscaled(sure, sure_truth, sure_image, per_class=False)
        assert not keep and "the fit kept" in reason


def test_the_threshold_is_the_quantile_the_rule_names() -> None:
    # ten pixels, p(true) = 0.1 ... 1.0: at 80% coverage the ceil(11 * 0.8) = 9th smallest score
    # (1 - p) is 0.8, so the sets keep every class of probability >= 0.2
    assert conformal_threshold(np.linspace(0.1, 1.0, 10), 0.8) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="no calibration pixels"):
        conformal_threshold(np.array([]), 0.9)


def test_export_records_the_confidence_fitted_on_calibration_and_measured_on_report(
    tiny_export: Path,
) -> None:
    """The real exporter on the real pipeline: the fit uses the calibration part, the figures
    the report part (disjoint: together the validation split), each figure a share."""
    from s4seg.holdout import select_part
    from s4seg.layouts import open_layout
    from s4seg.manifest import Manifest

    manifest = Manifest.load(tiny_export)
    confidence = manifest.confidence
    assert confidence is not None
    layout = open_layout(confidence.fitted_on["root"])
    val = layout.samples(layout.default_val_split)
    assert confidence.fitted_on["part"] == "calibration"
    assert confidence.fitted_on["images"] == len(select_part(val, "calibration"))
    assert confidence.report.images == len(select_part(val, "report"))
    assert confidence.report.pixels == confidence.report.images * 64 * 64
    assert len(confidence.temperature) in (1, manifest.num_classes)
    assert all(t > 0 for t in confidence.temperature)
    report = confidence.report
    for share in (report.ece_before, report.ece_after, report.coverage, report.multiple_share):
        assert 0.0 <= share <= 1.0
    assert confidence.coverage == 0.9 and 0.0 <= report.mean_set_size <= manifest.num_classes


def test_the_quality_of_an_answer_reads_the_content_calibrated(tmp_path: Path) -> None:
    """``answer_quality`` on scores made by hand: the letterbox's padding is not counted, the
    manifest's temperature and threshold are applied, and the classifier's claims are checked
    against the map."""
    from gateway_fakes import write_repository

    from s4seg.letterbox import Placement
    from s4seg.manifest import (
        ClassifierInput,
        Confidence,
        ConfidenceReport,
        Manifest,
        Normalization,
    )
    from s4seg.quality import answer_quality
    from s4seg.repository import ENSEMBLE

    manifest = Manifest.load(write_repository(tmp_path) / ENSEMBLE / "1")
    scores = np.zeros((2, 32, 32), np.float32)
    scores[1, :16] = 0.5  # content: the top half, class 1 a little ahead everywhere
    scores[0, 16:] = 40.0  # padding: sure of class 0 (not counted)
    placement = Placement(original=(16, 32), content=(16, 32), offset=(0, 0))
    raw = answer_quality(scores, placement, np.ones(2), manifest)
    assert raw.mean_confidence == pytest.approx(float(calibrated(np.array([0.0, 0.5]), 1.0)[1]))
    assert (raw.calibrated, raw.uncertain_share, raw.disagreeing) == (False, None, None)

    report = ConfidenceReport(
        images=1,
        pixels=1,
        accuracy=1,
        ece_before=0,
        ece_after=0,
        coverage=0.9,
        mean_set_size=1,
        multiple_share=0,
    )
    confidence = Confidence(
        temperature=[2.0],
        scope="global",
        scope_reason="",
        coverage=0.9,
        threshold=0.4,
        fitted_on={},
        report=report,
    )
    classifier = ClassifierInput(
        size=32, normalization=Normalization(mean=[0.5] * 3, std=[0.5] * 3)
    )
    gated = manifest.model_copy(update={"confidence": confidence, "classifier": classifier})
    quality = answer_quality(scores, placement, np.array([0.9, 0.2]), gated)
    assert quality.mean_confidence == pytest.approx(float(calibrated(np.array([0.0, 0.5]), 2.0)[1]))
    assert quality.calibrated and quality.uncertain_share == 1.0  # 0.44 and 0.56: both >= 0.4
    assert quality.disagreeing == ["red"]  # in every pixel, yet the classifier says 0.2
